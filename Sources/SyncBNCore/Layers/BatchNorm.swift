import Foundation

/// How BatchNorm layers are normalized when the batch is split across workers.
public enum BatchNormMode: String, Codable, Sendable, CaseIterable {
    /// By the statistics of the global batch, all-reduced across workers (SyncBN).
    case sync
    /// By the statistics of each worker's own slice (plain data-parallel BN), for comparison.
    /// Running statistics are still estimated from the global batch so that every replica keeps the same.
    case local
    /// No BatchNorm layers at all.
    case none
}

/// Batch Normalization over the feature axis of a [rows, features] matrix, as `torch.nn.BatchNorm1d`.
///
/// Training, with μ and σ² the mean and biased variance of the batch:
///   x̂ = (x − μ) / √(σ² + ε),   y = γ·x̂ + β.
/// Backward, through the batch statistics (Ioffe & Szegedy 2015, §3), with means over the batch:
///   ∂L/∂x = γ/√(σ² + ε) · (dy − mean(dy) − x̂·mean(dy·x̂)),   ∂L/∂γ = Σ dy·x̂,   ∂L/∂β = Σ dy.
/// Running statistics, with momentum m (0.1) and the unbiased variance over the global count n:
///   running_mean ← (1 − m)·running_mean + m·μ,   running_var ← (1 − m)·running_var + m·σ²·n/(n − 1).
/// Evaluation normalizes by the running statistics and needs no communication.
///
/// Synchronization is one collective call between two local computations in each direction: the forward
/// pass reduces per-chunk `[mean, M2]`, the backward pass per-chunk `[Σdy, Σdy·x̂]`. Statistics are kept in
/// Float64; the tensors are Float32.
///
/// Reference: S. Ioffe, C. Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
/// Internal Covariate Shift", ICML 2015.
public final class BatchNorm {
    public static let epsilon = 1e-5
    public static let momentum = 0.1

    /// Position among the network's BatchNorm layers (0, 1, 2 …), which names its rounds.
    public let index: Int
    public let features: Int
    /// Offsets of γ (scale, `weight` in PyTorch) and β (shift, `bias`) in the parameter store.
    public let gammaOffset: Int
    public let betaOffset: Int
    public var runningMean: [Float]
    public var runningVariance: [Float]
    public var batchesTracked: Int64 = 0

    let output: Matrix
    let inputGradient: Matrix
    /// x̂, kept from forward for backward.
    private let normalized: Matrix
    /// μ and 1/√(σ² + ε) of the statistics used to normalize the last forward batch.
    private var mean: [Double]
    private var inverseStd: [Double]
    /// Per-chunk partials of this replica's slice, and the reductions.
    private let partials: UnsafeMutableBufferPointer<Double>
    private let reduced: UnsafeMutableBufferPointer<Double>
    private let localReduced: UnsafeMutableBufferPointer<Double>
    private let stagedMoments: UnsafeMutablePointer<Double>
    /// Per-feature factors of the backward pass: γ/σ, mean(dy), mean(dy·x̂).
    private let coefficients: UnsafeMutablePointer<Float>
    private var hasStagedMoments = false

    init(index: Int, features: Int, gammaOffset: Int, betaOffset: Int, capacity: Int, maxChunks: Int) {
        self.index = index
        self.features = features
        self.gammaOffset = gammaOffset
        self.betaOffset = betaOffset
        runningMean = Array(repeating: 0, count: features)
        runningVariance = Array(repeating: 1, count: features)
        output = Matrix(capacity: capacity, columns: features)
        inputGradient = Matrix(capacity: capacity, columns: features)
        normalized = Matrix(capacity: capacity, columns: features)
        mean = Array(repeating: 0, count: features)
        inverseStd = Array(repeating: 1, count: features)
        partials = .allocate(capacity: max(1, maxChunks) * 2 * features)
        partials.initialize(repeating: 0)
        reduced = .allocate(capacity: 2 * features)
        reduced.initialize(repeating: 0)
        localReduced = .allocate(capacity: 2 * features)
        localReduced.initialize(repeating: 0)
        stagedMoments = .allocate(capacity: 2 * features)
        stagedMoments.initialize(repeating: 0, count: 2 * features)
        coefficients = .allocate(capacity: 3 * features)
        coefficients.initialize(repeating: 0, count: 3 * features)
    }

    deinit {
        partials.deallocate()
        reduced.deallocate()
        localReduced.deallocate()
        stagedMoments.deallocate()
        coefficients.deallocate()
    }

    func initialize(_ store: ParameterStore) {
        for f in 0..<features {
            store.values[gammaOffset + f] = 1
            store.values[betaOffset + f] = 0
        }
    }

    // MARK: Forward

    /// Normalizes `x` (this replica's slice) by the statistics `mode` asks for, and updates the running
    /// statistics from the global batch.
    func forward(_ x: Matrix, slice: BatchSlice, mode: BatchNormMode, collective: Collective, store: ParameterStore) throws -> Matrix {
        let chunks = slice.localChunkRows
        let width = 2 * features
        for (c, rows) in chunks.enumerated() {
            OrderedReduction.chunkMoments(x.storage, rows: rows, features: features, into: partials.baseAddress! + c * width)
        }
        let mine = UnsafeBufferPointer(rebasing: partials[0..<(chunks.count * width)])
        try collective.allReduce(.moments(layer: index), partials: mine, into: reduced)
        stageRunningStatistics(moments: UnsafeBufferPointer(reduced))

        output.rows = x.rows
        normalized.rows = x.rows
        guard x.rows > 0 else { return output }
        var count = slice.plan.batchSize
        var moments = UnsafeBufferPointer(reduced)
        if mode == .local {
            Round.moments(layer: index).reduce(mine, plan: slice.plan, chunks: slice.chunks, width: width, into: localReduced)
            count = slice.rowCount
            moments = UnsafeBufferPointer(localReduced)
        }
        for f in 0..<features {
            mean[f] = moments[f]
            inverseStd[f] = 1 / (moments[features + f] / Double(count) + Self.epsilon).squareRoot()
        }
        let gamma = store.values + gammaOffset, beta = store.values + betaOffset
        for r in 0..<x.rows {
            let xr = x.row(r), nr = normalized.row(r), yr = output.row(r)
            for f in 0..<features {
                let xhat = Float((Double(xr[f]) - mean[f]) * inverseStd[f])
                nr[f] = xhat
                yr[f] = gamma[f] * xhat + beta[f]
            }
        }
        return output
    }

    /// Keeps the global batch's moments `[mean(F), M2(F)]` for `commitRunningStatistics`.
    ///
    /// The running statistics change only when a step completes, so that a step abandoned half-way (a
    /// worker died, a partial was not finite) and redone leaves no trace.
    public func stageRunningStatistics(moments: UnsafeBufferPointer<Double>) {
        stagedMoments.update(from: moments.baseAddress!, count: 2 * features)
        hasStagedMoments = true
    }

    /// Applies the staged moments to the running statistics, if a forward pass staged any.
    public func commitRunningStatistics(count: Int) {
        guard hasStagedMoments else { return }
        hasStagedMoments = false
        updateRunningStatistics(moments: UnsafeBufferPointer(start: stagedMoments, count: 2 * features), count: count)
    }

    /// running ← (1 − m)·running + m·batch, with the unbiased variance M2/(n − 1) of the global batch.
    /// `moments` is `[mean(F), M2(F)]` over `count` samples.
    public func updateRunningStatistics(moments: UnsafeBufferPointer<Double>, count: Int) {
        let m = Self.momentum
        let unbiased = count > 1 ? 1 / Double(count - 1) : 0
        for f in 0..<features {
            runningMean[f] = Float((1 - m) * Double(runningMean[f]) + m * moments[f])
            runningVariance[f] = Float((1 - m) * Double(runningVariance[f]) + m * moments[features + f] * unbiased)
        }
        batchesTracked += 1
    }

    // MARK: Backward

    /// ∂L/∂x = γ/√(σ² + ε) · (dy − mean(dy) − x̂·mean(dy·x̂)); ∂γ = Σ dy·x̂ and ∂β = Σ dy.
    ///
    /// With `sync`, the sums are global and ∂γ, ∂β go straight to the store's gradients. With `local`,
    /// they are this slice's own, and ∂γ, ∂β are written per chunk to `gradients` to be all-reduced with
    /// the other parameters.
    func backward(
        _ dy: Matrix, slice: BatchSlice, mode: BatchNormMode, collective: Collective, store: ParameterStore,
        gradients: UnsafeMutablePointer<Float>, gradientWidth: Int
    ) throws -> Matrix {
        let chunks = slice.localChunkRows
        let width = 2 * features
        for (c, rows) in chunks.enumerated() {
            let sumDy = partials.baseAddress! + c * width, sumDyXhat = sumDy + features
            for f in 0..<features { sumDy[f] = 0; sumDyXhat[f] = 0 }
            for r in rows {
                let g = dy.row(r), xhat = normalized.row(r)
                for f in 0..<features {
                    sumDy[f] += Double(g[f])
                    sumDyXhat[f] += Double(g[f]) * Double(xhat[f])
                }
            }
        }
        let mine = UnsafeBufferPointer(rebasing: partials[0..<(chunks.count * width)])
        let sums: UnsafeMutableBufferPointer<Double>
        let count: Int
        switch mode {
        case .sync:
            try collective.allReduce(.sums(layer: index), partials: mine, into: reduced)
            setParameterGradients(sums: UnsafeBufferPointer(reduced), store: store)
            sums = reduced
            count = slice.plan.batchSize
        case .local, .none:
            for c in 0..<chunks.count {
                let chunkGradient = gradients + c * gradientWidth, p = mine.baseAddress! + c * width
                for f in 0..<features {
                    chunkGradient[betaOffset + f] = Float(p[f])
                    chunkGradient[gammaOffset + f] = Float(p[features + f])
                }
            }
            OrderedReduction.sum(mine, width: width, into: localReduced)
            sums = localReduced
            count = slice.rowCount
        }

        inputGradient.rows = dy.rows
        guard dy.rows > 0 else { return inputGradient }
        let gamma = store.values + gammaOffset
        let n = Double(count)
        let scale = coefficients, meanDy = coefficients + features, meanDyXhat = coefficients + 2 * features
        for f in 0..<features {
            scale[f] = Float(Double(gamma[f]) * inverseStd[f])
            meanDy[f] = Float(sums[f] / n)
            meanDyXhat[f] = Float(sums[features + f] / n)
        }
        for r in 0..<dy.rows {
            let g = dy.row(r), xhat = normalized.row(r), dx = inputGradient.row(r)
            for f in 0..<features {
                dx[f] = scale[f] * (g[f] - meanDy[f] - xhat[f] * meanDyXhat[f])
            }
        }
        return inputGradient
    }

    /// ∂γ = Σ dy·x̂ and ∂β = Σ dy from global sums `[Σdy(F), Σdy·x̂(F)]`.
    public func setParameterGradients(sums: UnsafeBufferPointer<Double>, store: ParameterStore) {
        for f in 0..<features {
            store.gradients[betaOffset + f] = Float(sums[f])
            store.gradients[gammaOffset + f] = Float(sums[features + f])
        }
    }

    // MARK: Evaluation

    /// y = γ·(x − running_mean)/√(running_var + ε) + β, into a new matrix.
    func infer(_ x: Matrix, store: ParameterStore) -> Matrix {
        let y = Matrix(capacity: x.rows, columns: features)
        let gamma = store.values + gammaOffset, beta = store.values + betaOffset
        var scale = [Float](repeating: 0, count: features), shift = [Float](repeating: 0, count: features)
        for f in 0..<features {
            let s = Double(gamma[f]) / (Double(runningVariance[f]) + Self.epsilon).squareRoot()
            scale[f] = Float(s)
            shift[f] = Float(Double(beta[f]) - s * Double(runningMean[f]))
        }
        for r in 0..<x.rows {
            let xr = x.row(r), yr = y.row(r)
            for f in 0..<features { yr[f] = scale[f] * xr[f] + shift[f] }
        }
        return y
    }
}
