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

/// What BatchNorm's backward pass differentiates through.
public enum BatchNormBackward: String, Codable, Sendable, CaseIterable {
    /// Through the batch mean and variance, as the paper derives (§3): the gradient sees that shifting or
    /// scaling a feature's input changes its statistics.
    case full
    /// An ablation (`--bn-backward no-stats`): μ and σ² are treated as constants, ∂L/∂x = γ/√(σ² + ε)·dy. The
    /// paper (§2) predicts that a bias feeding BatchNorm then grows without bound while the loss stays flat:
    /// the update to the bias is cancelled by the normalization it does not see.
    case noStatistics = "no-stats"
}

/// Batch Normalization per feature, as `torch.nn.BatchNorm1d` (input [N, F]: statistics per feature over the
/// N rows) and `torch.nn.BatchNorm2d` (input [N, C, H, W]: statistics per channel over N·H·W values).
///
/// Training, with μ and σ² the mean and biased variance of a channel over the batch's n = N·H·W values:
///   x̂ = (x − μ) / √(σ² + ε),   y = γ·x̂ + β.
/// Backward, through the batch statistics (Ioffe & Szegedy 2015, §3), with means over the same n values:
///   ∂L/∂x = γ/√(σ² + ε) · (dy − mean(dy) − x̂·mean(dy·x̂)),   ∂L/∂γ = Σ dy·x̂,   ∂L/∂β = Σ dy.
/// Running statistics, with momentum m (0.1) and the unbiased variance over the global count n:
///   running_mean ← (1 − m)·running_mean + m·μ,   running_var ← (1 − m)·running_var + m·σ²·n/(n − 1).
/// Evaluation normalizes by the running statistics and needs no communication.
///
/// Synchronization is one collective call between two local computations in each direction: the forward
/// pass reduces per-chunk `[mean(C), M2(C)]` (each chunk counting rows·H·W values), the backward pass
/// per-chunk `[Σdy(C), Σdy·x̂(C)]`. Statistics are kept in Float64; the tensors are Float32.
///
/// Reference: S. Ioffe, C. Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing
/// Internal Covariate Shift", ICML 2015.
public final class BatchNorm: Layer {
    public static let defaultEpsilon = 1e-5
    public static let defaultMomentum = 0.1

    /// Position among the network's BatchNorm layers (0, 1, 2 … in forward order), which names its rounds.
    public let index: Int
    /// Features (BatchNorm1d) or channels (BatchNorm2d).
    public let features: Int
    /// Values per feature in one sample: H·W for BatchNorm2d, 1 for BatchNorm1d.
    public let spatialSize: Int
    public let epsilon: Double
    public let momentum: Double
    public let inputShape: TensorShape
    public var outputShape: TensorShape { inputShape }
    /// γ (scale, `weight` in PyTorch) and β (shift, `bias`).
    public let gamma: ParameterTensor
    public let beta: ParameterTensor
    public var gammaOffset: Int { gamma.offset }
    public var betaOffset: Int { beta.offset }
    public var runningMean: [Float]
    public var runningVariance: [Float]
    public var batchesTracked: Int64 = 0
    /// Set by the network when a ReLU follows this layer: the forward pass then writes max(y, 0) in the same pass
    /// over the values and hands it to that ReLU (`StepContext.rectified`), which passes it on untouched, and the
    /// ReLU's backward pass hands its gradient on unmasked for this layer's passes to mask (y ≤ 0 exactly where
    /// γ·x̂ + β ≤ 0) — a pass over the activations fewer each way, the same bits. Not on a step that records the
    /// ReLU's input.
    public internal(set) var rectifiesOutput = false

    let output: Matrix
    let inputGradient: Matrix
    /// x̂, kept from forward for backward.
    private let normalized: Matrix
    /// μ and 1/√(σ² + ε) of the statistics used to normalize the last forward batch: per local chunk with
    /// BatchNorm groups (`maxChunks` × features), else chunk 0's serve every chunk (`statisticsOffset`).
    private let mean: UnsafeMutablePointer<Double>
    private let inverseStd: UnsafeMutablePointer<Double>
    /// Every chunk's partials of a gathered round (BatchNorm groups).
    private let gathered: UnsafeMutableBufferPointer<Double>
    /// Per-chunk partials of this replica's slice, and the reductions.
    private let partials: UnsafeMutableBufferPointer<Double>
    private let reduced: UnsafeMutableBufferPointer<Double>
    private let localReduced: UnsafeMutableBufferPointer<Double>
    private let stagedMoments: UnsafeMutablePointer<Double>
    /// Per-chunk, per-feature factors of the backward pass: γ/σ, mean(dy), mean(dy·x̂) (three blocks of
    /// maxChunks × features).
    private let coefficients: UnsafeMutablePointer<Float>
    private var hasStagedMoments = false
    private let maxChunks: Int

    init(index: Int, shape: TensorShape, epsilon: Double = defaultEpsilon, momentum: Double = defaultMomentum,
         capacity: Int, maxChunks: Int, allocator: inout ParameterAllocator) {
        self.index = index
        self.maxChunks = max(1, maxChunks)
        inputShape = shape
        features = shape.isImage ? shape.channels : shape.count
        spatialSize = shape.spatialSize
        self.epsilon = epsilon
        self.momentum = momentum
        gamma = allocator.allocate("weight", shape: [features])
        beta = allocator.allocate("bias", shape: [features])
        runningMean = Array(repeating: 0, count: features)
        runningVariance = Array(repeating: 1, count: features)
        output = Matrix(capacity: capacity, columns: shape.count)
        inputGradient = Matrix(capacity: capacity, columns: shape.count)
        normalized = Matrix(capacity: capacity, columns: shape.count)
        mean = .allocate(capacity: max(1, maxChunks) * features)
        mean.initialize(repeating: 0, count: max(1, maxChunks) * features)
        inverseStd = .allocate(capacity: max(1, maxChunks) * features)
        inverseStd.initialize(repeating: 1, count: max(1, maxChunks) * features)
        gathered = .allocate(capacity: max(1, maxChunks) * 2 * features)
        gathered.initialize(repeating: 0)
        partials = .allocate(capacity: max(1, maxChunks) * 2 * features)
        partials.initialize(repeating: 0)
        reduced = .allocate(capacity: 2 * features)
        reduced.initialize(repeating: 0)
        localReduced = .allocate(capacity: 2 * features)
        localReduced.initialize(repeating: 0)
        stagedMoments = .allocate(capacity: 2 * features)
        stagedMoments.initialize(repeating: 0, count: 2 * features)
        coefficients = .allocate(capacity: 3 * max(1, maxChunks) * features)
        coefficients.initialize(repeating: 0, count: 3 * max(1, maxChunks) * features)
    }

    deinit {
        mean.deallocate()
        inverseStd.deallocate()
        gathered.deallocate()
        partials.deallocate()
        reduced.deallocate()
        localReduced.deallocate()
        stagedMoments.deallocate()
        coefficients.deallocate()
    }

    public var parameters: [ParameterTensor] { [gamma, beta] }

    public func initialize(_ store: ParameterStore, random: inout SplitMix64) {
        for f in 0..<features {
            store.values[gamma.offset + f] = 1
            store.values[beta.offset + f] = 0
        }
    }

    // MARK: Forward

    /// Normalizes `x` (this replica's slice) by the statistics the step's mode asks for, and stages the
    /// running statistics' update from the global batch.
    ///
    /// With BatchNorm groups, every chunk's moments are gathered; each chunk is normalized by its group's
    /// (chunks merged in order, as the coordinator would), and the running statistics by the whole batch's.
    public func forward(_ x: Matrix, _ step: StepContext) throws -> Matrix {
        step.observe(self, x)
        let chunks = step.chunks
        let width = 2 * features
        step.forEachChunk(work: 4 * x.count) { c, _ in
            OrderedReduction.chunkMoments(x.storage, rows: chunks[c], features: features, spatial: spatialSize, into: partials.baseAddress! + c * width)
        }
        let mine = UnsafeBufferPointer(rebasing: partials[0..<(chunks.count * width)])
        let plan = step.plan
        if let groupChunks = step.batchNormGroupChunks {
            let all = UnsafeMutableBufferPointer(rebasing: gathered[0..<(plan.chunkCount * width)])
            try step.collective.allGather(.moments(layer: index), partials: mine, width: width, into: all)
            stageRunningStatistics(gathered: UnsafeBufferPointer(all), plan: plan)
            var merged: Range<Int>?  // the group whose moments `localReduced` holds: merged once per group
            for c in 0..<chunks.count {
                let group = Self.group(ofChunk: step.slice.chunks.lowerBound + c, groupChunks: groupChunks, plan: plan)
                if group != merged {
                    Round.moments(layer: index).reduce(UnsafeBufferPointer(rebasing: all[(group.lowerBound * width)..<(group.upperBound * width)]),
                                                       plan: plan, chunks: group, width: width, valuesPerRow: spatialSize, into: localReduced)
                    merged = group
                }
                setStatistics(chunk: c, moments: UnsafeBufferPointer(localReduced), count: plan.rows(ofChunks: group).count * spatialSize)
            }
        } else {
            try step.collective.allReduce(.moments(layer: index), partials: mine, into: reduced)
            stageRunningStatistics(moments: UnsafeBufferPointer(reduced))
            var count = plan.batchSize * spatialSize
            var moments = UnsafeBufferPointer(reduced)
            if step.batchNorm == .local {
                Round.moments(layer: index).reduce(mine, plan: plan, chunks: step.slice.chunks, width: width,
                                                   valuesPerRow: spatialSize, into: localReduced)
                count = step.slice.rowCount * spatialSize
                moments = UnsafeBufferPointer(localReduced)
            }
            if !chunks.isEmpty { setStatistics(chunk: 0, moments: moments, count: count) }  // for every chunk
        }

        output.rows = x.rows
        normalized.rows = x.rows
        let g = step.store.values + gamma.offset, b = step.store.values + beta.offset
        let s = spatialSize
        // The ReLU that follows is applied here, in the same pass, unless the step records that ReLU's input.
        let rectify = rectifiesOutput && step.observer == nil
        step.forEachChunk(work: 4 * x.count, splittingRows: { c, rows, _ in
            let statistics = Self.statisticsOffset(chunk: c, features: features, step: step)
            for r in rows {
                let xr = x.row(r), nr = normalized.row(r), yr = output.row(r)
                if s == 1 {  // BatchNorm1d: one value per feature, a plain loop over the features
                    VectorKernels.normalizeRow(xr, xhat: nr, y: yr, count: features, mean: mean + statistics,
                                               inverseStd: inverseStd + statistics, gamma: g, beta: b, rectify: rectify)
                    continue
                }
                for f in 0..<features {
                    VectorKernels.normalize(xr + f * s, xhat: nr + f * s, y: yr + f * s, count: s,
                                            mean: mean[statistics + f], inverseStd: inverseStd[statistics + f], gamma: g[f], beta: b[f],
                                            rectify: rectify)
                }
            }
        })
        if rectify { step.rectified = output }
        return output
    }

    /// Where local chunk `c`'s statistics (μ, 1/√(σ² + ε)) and backward coefficients are: its own with BatchNorm
    /// groups, else chunk 0's, which every chunk of the slice shares.
    static func statisticsOffset(chunk c: Int, features: Int, step: StepContext) -> Int {
        step.batchNormGroupChunks == nil ? 0 : c * features
    }

    /// The chunks of the BatchNorm group that holds global chunk `chunk`: runs of `groupChunks` chunks.
    static func group(ofChunk chunk: Int, groupChunks: Int, plan: ChunkPlan) -> Range<Int> {
        let first = chunk / groupChunks * groupChunks
        return first..<min(first + groupChunks, plan.chunkCount)
    }

    /// Local chunk `c` normalizes by `moments` (`[mean(F), M2(F)]` over `count` values per feature).
    private func setStatistics(chunk c: Int, moments: UnsafeBufferPointer<Double>, count: Int) {
        for f in 0..<features {
            mean[c * features + f] = moments[f]
            inverseStd[c * features + f] = 1 / (moments[features + f] / Double(count) + epsilon).squareRoot()
        }
    }

    /// Stages the running statistics' update from every chunk's moments (BatchNorm groups), merged in chunk order.
    public func stageRunningStatistics(gathered: UnsafeBufferPointer<Double>, plan: ChunkPlan) {
        withUnsafeTemporaryAllocation(of: Double.self, capacity: 2 * features) { merged in
            Round.moments(layer: index).reduce(gathered, plan: plan, chunks: 0..<plan.chunkCount, width: 2 * features,
                                               valuesPerRow: spatialSize, into: merged)
            stageRunningStatistics(moments: UnsafeBufferPointer(merged))
        }
    }

    /// Keeps the global batch's moments `[mean(F), M2(F)]` for `commitRunningStatistics`.
    ///
    /// The running statistics change only when a step completes, so that a step abandoned half-way (a
    /// worker died, a partial was not finite) and redone leaves no trace.
    public func stageRunningStatistics(moments: UnsafeBufferPointer<Double>) {
        stagedMoments.update(from: moments.baseAddress!, count: 2 * features)
        hasStagedMoments = true
    }

    /// Applies the staged moments to the running statistics, if a forward pass staged any. `batchSize` is
    /// the global batch's number of samples (each contributing `spatialSize` values per feature).
    public func commitRunningStatistics(batchSize: Int) {
        guard hasStagedMoments else { return }
        hasStagedMoments = false
        updateRunningStatistics(moments: UnsafeBufferPointer(start: stagedMoments, count: 2 * features), count: batchSize * spatialSize)
    }

    /// running ← (1 − m)·running + m·batch, with the unbiased variance M2/(n − 1) of the global batch.
    /// `moments` is `[mean(F), M2(F)]` over `count` values per feature.
    public func updateRunningStatistics(moments: UnsafeBufferPointer<Double>, count: Int) {
        let m = momentum
        let unbiased = count > 1 ? 1 / Double(count - 1) : 0
        // Through buffer pointers: indexing the arrays of a class in the loop costs an exclusivity check each.
        runningMean.withUnsafeMutableBufferPointer { mean in
            runningVariance.withUnsafeMutableBufferPointer { variance in
                for f in 0..<features {
                    mean[f] = Float((1 - m) * Double(mean[f]) + m * moments[f])
                    variance[f] = Float((1 - m) * Double(variance[f]) + m * moments[features + f] * unbiased)
                }
            }
        }
        batchesTracked += 1
    }

    // MARK: Backward

    /// ∂L/∂x = γ/√(σ² + ε) · (dy − mean(dy) − x̂·mean(dy·x̂)); ∂γ = Σ dy·x̂ and ∂β = Σ dy. With
    /// `--bn-backward no-stats` the two means are taken as zero: ∂L/∂x = γ/√(σ² + ε)·dy.
    ///
    /// With `sync`, the sums are global and ∂γ, ∂β go straight to the store's gradients. With `local`,
    /// they are this slice's own, and ∂γ, ∂β are written per chunk to the chunk gradient rows to be
    /// all-reduced with the other parameters.
    public func backward(_ dy: Matrix, _ step: StepContext) throws -> Matrix {
        let chunks = step.chunks
        let width = 2 * features, s = spatialSize
        // The ReLU after this layer passed its gradient on unmasked (`rectifiesOutput`): mask it here, in both passes.
        let masksReLU = step.unmaskedReLUGradient === dy
        step.unmaskedReLUGradient = nil
        let gammas = UnsafePointer(step.store.values + gamma.offset), betas = UnsafePointer(step.store.values + beta.offset)
        let rowMask = masksReLU ? (gamma: gammas, beta: betas) : nil
        step.forEachChunk(work: 4 * dy.count) { c, _ in
            let sumDy = partials.baseAddress! + c * width, sumDyXhat = sumDy + features
            for f in 0..<features { sumDy[f] = 0; sumDyXhat[f] = 0 }
            for r in chunks[c] {
                let g = dy.row(r), xhat = normalized.row(r)
                if s == 1 {
                    VectorKernels.accumulateSumAndDot(g, xhat, sums: sumDy, dots: sumDyXhat, count: features, relu: rowMask)
                    continue
                }
                for f in 0..<features {
                    let (dySum, dyXhatSum) = VectorKernels.sumAndDot(g + f * s, xhat + f * s, count: s,
                                                                     relu: masksReLU ? (gammas[f], betas[f]) : nil)
                    sumDy[f] += dySum
                    sumDyXhat[f] += dyXhatSum
                }
            }
        }
        let mine = UnsafeBufferPointer(rebasing: partials[0..<(chunks.count * width)])
        let plan = step.plan
        let block = maxChunks * features
        let scale = coefficients, meanDy = coefficients + block, meanDyXhat = coefficients + 2 * block
        /// Local chunk c's coefficients from `sums` over `count` values per feature.
        func setCoefficients(chunk c: Int, sums: UnsafeBufferPointer<Double>, count: Int) {
            let n = Double(count), g = step.store.values + gamma.offset, o = c * features
            let throughStatistics = step.batchNormBackward == .full
            for f in 0..<features {
                scale[o + f] = Float(Double(g[f]) * inverseStd[o + f])
                meanDy[o + f] = throughStatistics ? Float(sums[f] / n) : 0
                meanDyXhat[o + f] = throughStatistics ? Float(sums[features + f] / n) : 0
            }
        }
        if step.batchNorm == .sync && step.batchNormGroupChunks == nil {
            try step.collective.allReduce(.sums(layer: index), partials: mine, into: reduced, riding: step.takeRiding())
            setParameterGradients(sums: UnsafeBufferPointer(reduced), store: step.store)
            // Chunk 0's coefficients serve every chunk (`statisticsOffset`).
            if !chunks.isEmpty { setCoefficients(chunk: 0, sums: UnsafeBufferPointer(reduced), count: plan.batchSize * s) }
        } else {
            // ∂γ, ∂β per chunk, summed with the other parameters' gradients.
            for c in 0..<chunks.count {
                let chunkGradient = step.chunkGradient(c), p = mine.baseAddress! + c * width
                for f in 0..<features {
                    chunkGradient[beta.offset + f] = Float(p[f])
                    chunkGradient[gamma.offset + f] = Float(p[features + f])
                }
            }
            if let groupChunks = step.batchNormGroupChunks {
                let all = UnsafeMutableBufferPointer(rebasing: gathered[0..<(plan.chunkCount * width)])
                try step.collective.allGather(.sums(layer: index), partials: mine, width: width, into: all, riding: step.takeRiding())
                var summed: Range<Int>?  // the group whose sums `localReduced` holds: summed once per group
                for c in 0..<chunks.count {
                    let group = Self.group(ofChunk: step.slice.chunks.lowerBound + c, groupChunks: groupChunks, plan: plan)
                    if group != summed {
                        OrderedReduction.sum(UnsafeBufferPointer(rebasing: all[(group.lowerBound * width)..<(group.upperBound * width)]), width: width, into: localReduced)
                        summed = group
                    }
                    setCoefficients(chunk: c, sums: UnsafeBufferPointer(localReduced), count: plan.rows(ofChunks: group).count * s)
                }
            } else if !chunks.isEmpty {
                OrderedReduction.sum(mine, width: width, into: localReduced)
                setCoefficients(chunk: 0, sums: UnsafeBufferPointer(localReduced), count: step.slice.rowCount * s)
            }
        }

        inputGradient.rows = dy.rows
        step.forEachChunk(work: 4 * dy.count, splittingRows: { c, rows, _ in
            let o = Self.statisticsOffset(chunk: c, features: features, step: step)
            for r in rows {
                let gr = dy.row(r), xhat = normalized.row(r), dx = inputGradient.row(r)
                if s == 1 {
                    VectorKernels.batchNormInputGradientRow(gr, xhat: xhat, dx: dx, count: features, scale: scale + o,
                                                            meanDy: meanDy + o, meanDyXhat: meanDyXhat + o, relu: rowMask)
                    continue
                }
                for f in 0..<features {
                    VectorKernels.batchNormInputGradient(gr + f * s, xhat: xhat + f * s, dx: dx + f * s, count: s,
                                                         scale: scale[o + f], meanDy: meanDy[o + f], meanDyXhat: meanDyXhat[o + f],
                                                         relu: masksReLU ? (gammas[f], betas[f]) : nil)
                }
            }
        })
        return inputGradient
    }

    /// ∂γ = Σ dy·x̂ and ∂β = Σ dy from global sums `[Σdy(F), Σdy·x̂(F)]`.
    public func setParameterGradients(sums: UnsafeBufferPointer<Double>, store: ParameterStore) {
        for f in 0..<features {
            store.gradients[beta.offset + f] = Float(sums[f])
            store.gradients[gamma.offset + f] = Float(sums[features + f])
        }
    }

    // MARK: Evaluation

    /// y = γ·(x − running_mean)/√(running_var + ε) + β, into a new matrix.
    public func infer(_ x: Matrix, store: ParameterStore) -> Matrix {
        let y = Matrix(capacity: x.rows, columns: inputShape.count)
        let g = store.values + gamma.offset, b = store.values + beta.offset
        var scale = [Float](repeating: 0, count: features), shift = [Float](repeating: 0, count: features)
        for f in 0..<features {
            let s = Double(g[f]) / (Double(runningVariance[f]) + epsilon).squareRoot()
            scale[f] = Float(s)
            shift[f] = Float(Double(b[f]) - s * Double(runningMean[f]))
        }
        let s = spatialSize
        for r in 0..<x.rows {
            let xr = x.row(r), yr = y.row(r)
            for f in 0..<features {
                for i in (f * s)..<(f * s + s) { yr[i] = scale[f] * xr[i] + shift[f] }
            }
        }
        return y
    }
}
