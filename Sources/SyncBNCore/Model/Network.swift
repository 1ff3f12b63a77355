/// What a training step reports when its metrics are computed: mean loss and accuracy over the global batch.
public struct StepMetrics: Equatable, Sendable {
    public var loss: Double
    public var accuracy: Double

    public init(loss: Double, accuracy: Double) {
        self.loss = loss
        self.accuracy = accuracy
    }
}

/// A multi-layer perceptron replica: parameters, BatchNorm buffers, optimizer state and the work buffers
/// of one training step, sized once for the largest slice it can get (the whole global batch).
///
/// A step runs forward, loss and backward over the replica's slice, calling the collective at each
/// BatchNorm layer and once for the parameter gradients, then applies the optimizer. The rounds come in
/// the order `rounds(computeMetrics:)` lists, which is what a coordinator expects.
public final class Network {
    public let spec: ModelSpec
    public let plan: ChunkPlan
    public var optimizer: SGD
    public let store: ParameterStore
    public let linears: [Linear]
    public let norms: [BatchNorm]
    /// Input rows of this replica's slice and their labels; the caller fills them before `trainStep`.
    public let input: Matrix
    public let labels: UnsafeMutablePointer<Int32>
    /// Input rows of the whole global batch, from which every replica computes the first layer's weight
    /// gradient when it travels as factors; the caller fills them before `trainStep` (and before
    /// `apply(gradients:)` on a coordinator).
    public let batchInput: Matrix
    /// How the gradient round's values are laid out and combined. ∂γ, ∂β are in it only when BatchNorm is
    /// not synchronized (synchronized, they come global out of the backward-sums rounds).
    public let exchange: GradientExchange

    private let activations: [Matrix]
    private let logitGradient: Matrix
    /// Store-shaped per-chunk gradients of the summed layers, before packing.
    private let chunkGradients: UnsafeMutableBufferPointer<Float>
    private let gradientPartials: UnsafeMutableBufferPointer<Float>
    private let gradientResult: UnsafeMutableBufferPointer<Float>
    private let chunkWeightGradient: UnsafeMutableBufferPointer<Float>
    private let chunkMetrics: UnsafeMutableBufferPointer<Double>
    private let reducedMetrics: UnsafeMutableBufferPointer<Double>

    public init(spec: ModelSpec, plan: ChunkPlan, optimizer: SGD, seed: UInt64) {
        self.spec = spec
        self.plan = plan
        self.optimizer = optimizer
        let capacity = plan.batchSize
        let widths = spec.widths
        var offset = 0
        var linearOffsets: [(Int, Int)] = []
        for l in 0..<(widths.count - 1) {
            linearOffsets.append((offset, offset + widths[l] * widths[l + 1]))
            offset += widths[l] * widths[l + 1] + widths[l + 1]
        }
        let linearCount = offset
        var normOffsets: [(Int, Int)] = []
        if spec.hasBatchNorm {
            for width in spec.hiddenSizes {
                normOffsets.append((offset, offset + width))
                offset += 2 * width
            }
        }
        store = ParameterStore(count: offset)
        let linears = (0..<(widths.count - 1)).map { l in
            Linear(inputs: widths[l], outputs: widths[l + 1], weightOffset: linearOffsets[l].0,
                   biasOffset: linearOffsets[l].1, capacity: capacity)
        }
        self.linears = linears
        exchange = GradientExchange(linears: linears, extraSumRanges: spec.batchNorm == .local ? [linearCount..<offset] : [], plan: plan)
        norms = normOffsets.enumerated().map { i, offsets in
            BatchNorm(index: i, features: spec.hiddenSizes[i], gammaOffset: offsets.0, betaOffset: offsets.1,
                      capacity: capacity, maxChunks: plan.chunkCount)
        }
        activations = spec.hiddenSizes.map { Matrix(capacity: capacity, columns: $0) }
        input = Matrix(capacity: capacity, columns: spec.inputSize)
        batchInput = Matrix(capacity: capacity, columns: spec.inputSize)
        labels = .allocate(capacity: max(1, capacity))
        labels.initialize(repeating: 0, count: max(1, capacity))
        logitGradient = Matrix(capacity: capacity, columns: spec.classes)
        chunkGradients = .allocate(capacity: plan.chunkCount * store.count)
        chunkGradients.initialize(repeating: 0)
        gradientPartials = .allocate(capacity: max(1, plan.chunkCount * exchange.chunkWidth))
        gradientPartials.initialize(repeating: 0)
        gradientResult = .allocate(capacity: max(1, exchange.resultWidth))
        gradientResult.initialize(repeating: 0)
        chunkWeightGradient = .allocate(capacity: (widths.indices.dropLast().map { widths[$0] * widths[$0 + 1] }.max() ?? 1) + (widths.max() ?? 1))
        chunkWeightGradient.initialize(repeating: 0)
        chunkMetrics = .allocate(capacity: plan.chunkCount * 2)
        chunkMetrics.initialize(repeating: 0)
        reducedMetrics = .allocate(capacity: 2)
        reducedMetrics.initialize(repeating: 0)

        var random = SplitMix64(seed: seed, stream: 1)
        for linear in linears { linear.initialize(store, random: &random) }
        for norm in norms { norm.initialize(store) }
    }

    deinit {
        labels.deallocate()
        chunkGradients.deallocate()
        gradientPartials.deallocate()
        gradientResult.deallocate()
        chunkWeightGradient.deallocate()
        chunkMetrics.deallocate()
        reducedMetrics.deallocate()
    }

    /// The all-reduce rounds of one training step, in order. Coordinator and replicas agree on it.
    public func rounds(computeMetrics: Bool) -> [Round] {
        var rounds: [Round] = norms.map { .moments(layer: $0.index) }
        if spec.batchNorm == .sync { rounds += norms.reversed().map { .sums(layer: $0.index) } }
        rounds.append(.gradients)
        if computeMetrics { rounds.append(.metrics) }
        return rounds
    }

    /// Width (values per chunk) of a round's partials.
    public func width(of round: Round) -> Int {
        switch round {
        case .moments(let layer), .sums(let layer): 2 * norms[layer].features
        case .gradients: exchange.chunkWidth
        case .metrics: 2
        }
    }

    // MARK: Training

    /// One training step over `slice`, whose rows are in `input` and `labels`, and the whole global batch's
    /// rows in `batchInput` (the first layer's gradient may be computed from all of them). Every replica of the job
    /// calls this for the same step with its own slice; the collective makes the results global.
    /// Returns the global batch's metrics if `computeMetrics`.
    @discardableResult
    public func trainStep(slice: BatchSlice, collective: Collective, computeMetrics: Bool) throws -> StepMetrics? {
        precondition(slice.plan == plan, "a step's slice must come from the network's chunk plan")
        let chunks = slice.localChunkRows
        input.rows = slice.rowCount

        // Forward.
        var x = input
        for (l, width) in spec.hiddenSizes.enumerated() {
            var z = linears[l].forward(x, chunks: chunks, store: store)
            if spec.hasBatchNorm {
                z = try norms[l].forward(z, slice: slice, mode: spec.batchNorm, collective: collective, store: store)
            }
            let a = activations[l]
            a.rows = z.rows
            spec.activation.forward(z.storage, a.storage, count: z.rows * width)
            x = a
        }
        let logits = linears.last!.forward(x, chunks: chunks, store: store)
        SoftmaxCrossEntropy.forwardBackward(logits: logits, labels: labels, chunks: chunks, batchSize: plan.batchSize,
                                            gradient: logitGradient, metrics: chunkMetrics.baseAddress!)

        // Backward.
        let gradients = chunkGradients.baseAddress!, width = store.count
        var dy = logitGradient
        var factorIndex = exchange.factorLayers.count - 1
        for l in stride(from: linears.count - 1, through: 0, by: -1) {
            let below = l == 0 ? input : activations[l - 1]
            let bySum = exchange.methods[l] == .sum
            if !bySum {
                packFactors(exchange.factorLayers[factorIndex], x: below, dy: dy, chunks: chunks)
                factorIndex -= 1
            }
            dy = linears[l].backward(dy, input: below, chunks: chunks, store: store, gradients: gradients,
                                     gradientWidth: width, weightGradient: bySum, needsInputGradient: l > 0)
            guard l > 0 else { break }
            let a = activations[l - 1]
            spec.activation.backward(output: a.storage, gradient: dy.storage, count: dy.rows * a.columns)
            if spec.hasBatchNorm {
                dy = try norms[l - 1].backward(dy, slice: slice, mode: spec.batchNorm, collective: collective, store: store,
                                               gradients: gradients, gradientWidth: width)
            }
        }

        packSums(chunkCount: chunks.count)
        try collective.exchangeGradients(UnsafeBufferPointer(rebasing: gradientPartials[0..<(chunks.count * exchange.chunkWidth)]),
                                         exchange: exchange, into: UnsafeMutableBufferPointer(rebasing: gradientResult[0..<exchange.resultWidth]))
        apply(gradients: UnsafeBufferPointer(rebasing: gradientResult[0..<exchange.resultWidth]))
        var metrics: StepMetrics?
        if computeMetrics {
            try collective.allReduce(.metrics, partials: UnsafeBufferPointer(rebasing: chunkMetrics[0..<(2 * chunks.count)]),
                                     into: reducedMetrics)
            metrics = Self.metrics(UnsafeBufferPointer(reducedMetrics), batchSize: plan.batchSize)
        }
        finishStep()
        return metrics
    }

    /// Applies the result of a round to this replica without computing anything: what a coordinator does to
    /// keep its copy of the model identical to the workers'. After the last round, call `finishStep()`.
    /// Returns the metrics for a metrics round.
    @discardableResult
    public func apply(_ round: Round, doubles result: UnsafeBufferPointer<Double>) -> StepMetrics? {
        switch round {
        case .moments(let layer):
            norms[layer].stageRunningStatistics(moments: result)
        case .sums(let layer):
            norms[layer].setParameterGradients(sums: result, store: store)
        case .metrics:
            return Self.metrics(result, batchSize: plan.batchSize)
        case .gradients:
            preconditionFailure("gradients are Float32: use apply(gradients:)")
        }
        return nil
    }

    /// Sets the store's gradients from the gradient round's result: the summed ranges are copied; each
    /// factor layer's ∂W = Σ_c dy_cᵀ·x_c and ∂b = Σ_c Σ_rows dy_c are computed chunk by chunk from the
    /// gathered rows (the first layer's x from `batchInput`) and summed in chunk order.
    public func apply(gradients result: UnsafeBufferPointer<Float>) {
        precondition(result.count == exchange.resultWidth, "the gradient result has \(result.count) values; the exchange expects \(exchange.resultWidth)")
        let values = result.baseAddress!
        var position = 0
        for range in exchange.sumRanges {
            (store.gradients + range.lowerBound).update(from: values + position, count: range.count)
            position += range.count
        }
        let rowWidth = exchange.factorRowWidth, rowsBlock = exchange.chunkSize * rowWidth
        let scratch = chunkWeightGradient.baseAddress!
        for factor in exchange.factorLayers {
            let linear = linears[factor.layer]
            let weight = store.gradients + linear.weightOffset, bias = store.gradients + linear.biasOffset
            let weightCount = linear.inputs * linear.outputs
            for c in 0..<plan.chunkCount {
                let rows = plan.rows(ofChunk: c)
                let block = values + exchange.sumWidth + c * rowsBlock
                let dy = block + factor.outputColumn
                let x: UnsafePointer<Float>, xStride: Int
                if let column = factor.inputColumn {
                    (x, xStride) = (UnsafePointer(block + column), rowWidth)
                } else {
                    (x, xStride) = (UnsafePointer(batchInput.row(rows.lowerBound)), linear.inputs)
                }
                let target = c == 0 ? weight : scratch, biasTarget = c == 0 ? bias : scratch + weightCount
                BLAS.gemm(transposeA: true, transposeB: false, m: linear.outputs, n: linear.inputs, k: rows.count,
                          a: dy, lda: rowWidth, b: x, ldb: xStride, c: target, ldc: linear.inputs)
                for o in 0..<linear.outputs { biasTarget[o] = 0 }
                for r in 0..<rows.count {
                    let g = dy + r * rowWidth
                    for o in 0..<linear.outputs { biasTarget[o] += g[o] }
                }
                if c > 0 {
                    for i in 0..<weightCount { weight[i] += scratch[i] }
                    for o in 0..<linear.outputs { bias[o] += biasTarget[o] }
                }
            }
        }
    }

    /// Copies this slice's rows of x (unless the layer's x is the input batch) and dy into each chunk's
    /// factor block, zero past the chunk's last row.
    private func packFactors(_ factor: GradientExchange.FactorLayer, x: Matrix, dy: Matrix, chunks: [Range<Int>]) {
        let rowWidth = exchange.factorRowWidth, width = exchange.chunkWidth
        for (c, rows) in chunks.enumerated() {
            let block = gradientPartials.baseAddress! + c * width + exchange.sumWidth
            for i in 0..<exchange.chunkSize {
                let row = block + i * rowWidth
                let r = rows.lowerBound + i
                if let column = factor.inputColumn {
                    if r < rows.upperBound { (row + column).update(from: x.row(r), count: x.columns) }
                    else { (row + column).update(repeating: 0, count: x.columns) }
                }
                if r < rows.upperBound { (row + factor.outputColumn).update(from: dy.row(r), count: dy.columns) }
                else { (row + factor.outputColumn).update(repeating: 0, count: dy.columns) }
            }
        }
    }

    /// Packs each chunk's store-shaped partial gradients of the summed ranges in front of its factor block.
    private func packSums(chunkCount: Int) {
        for c in 0..<chunkCount {
            let source = chunkGradients.baseAddress! + c * store.count
            var target = gradientPartials.baseAddress! + c * exchange.chunkWidth
            for range in exchange.sumRanges {
                target.update(from: source + range.lowerBound, count: range.count)
                target += range.count
            }
        }
    }

    /// Completes a step: commits the staged running statistics and takes the optimizer step. Until then a
    /// step can be abandoned and redone without trace.
    public func finishStep() {
        for norm in norms { norm.commitRunningStatistics(count: plan.batchSize) }
        optimizer.step(store)
    }

    private static func metrics(_ sums: UnsafeBufferPointer<Double>, batchSize: Int) -> StepMetrics {
        StepMetrics(loss: sums[0] / Double(batchSize), accuracy: sums[1] / Double(batchSize))
    }

    // MARK: Evaluation

    /// Logits for `x` (any number of rows), BatchNorm normalizing by its running statistics.
    public func infer(_ x: Matrix) -> Matrix {
        var h = x
        for (l, width) in spec.hiddenSizes.enumerated() {
            var z = linears[l].infer(h, store: store)
            if spec.hasBatchNorm { z = norms[l].infer(z, store: store) }
            spec.activation.forward(z.storage, z.storage, count: z.rows * width)
            h = z
        }
        return linears.last!.infer(h, store: store)
    }

    /// Mean cross-entropy and accuracy over a whole data set, in batches of `batchSize`.
    public func evaluate(_ data: LabeledImages, batchSize: Int = 1000) -> StepMetrics {
        precondition(data.featureSize == spec.inputSize, "the data's images do not match the model's input size")
        var lossSum = 0.0, correct = 0
        var start = 0
        while start < data.count {
            let count = min(batchSize, data.count - start)
            let x = Matrix(capacity: count, columns: spec.inputSize)
            data.copyFeatures(of: start..<(start + count), into: x.storage)
            let logits = infer(x)
            for r in 0..<count {
                let z = logits.row(r), label = Int(data.labels[start + r])
                precondition(label < spec.classes, "label \(label) is outside the model's \(spec.classes) classes")
                var best = 0, maxLogit = z[0]
                for j in 1..<spec.classes where z[j] > maxLogit { best = j; maxLogit = z[j] }
                var total = 0.0
                for j in 0..<spec.classes { total += Foundation.exp(Double(z[j] - maxLogit)) }
                lossSum += Foundation.log(total) + Double(maxLogit - z[label])
                if best == label { correct += 1 }
            }
            start += count
        }
        let n = Double(max(1, data.count))
        return StepMetrics(loss: lossSum / n, accuracy: Double(correct) / n)
    }
}

import Foundation
