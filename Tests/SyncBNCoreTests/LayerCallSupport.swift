/// Calls single layers outside a network, the way a network's step calls them: builds the `StepContext` of
/// a slice (with a collective, a store and per-chunk gradient rows of the caller's) around one call.
/// Test machinery, not an oracle.
import XCTest
@testable import SyncBNCore

extension StepContext {
    static func forTest(slice: BatchSlice, store: ParameterStore, mode: BatchNormMode = .sync, collective: Collective? = nil,
                        gradients: UnsafeMutablePointer<Float>? = nil, gradientWidth: Int? = nil, step: Int = 0, seed: UInt64 = 1) -> StepContext {
        let scratch = gradients ?? UnsafeMutablePointer<Float>.allocate(capacity: max(1, slice.plan.chunkCount * (gradientWidth ?? store.count)))
        let context = StepContext(plan: slice.plan, store: store, batchNorm: mode, seed: seed, chunkGradients: scratch, gradientWidth: gradientWidth)
        context.slice = slice
        context.chunks = slice.localChunkRows
        context.collective = collective ?? LocalCollective(plan: slice.plan, valuesPerRow: flatScales)
        context.step = step
        return context
    }
}

extension Linear {
    /// A layer whose W starts at `weightOffset`, b right after it.
    convenience init(inputs: Int, outputs: Int, weightOffset: Int, biasOffset: Int, capacity: Int) {
        precondition(biasOffset == weightOffset + inputs * outputs)
        var allocator = ParameterAllocator(startingAt: weightOffset)
        self.init(inputs: inputs, outputs: outputs, bias: true, capacity: capacity, allocator: &allocator)
    }

    func forward(_ x: Matrix, chunks: [Range<Int>], store: ParameterStore) -> Matrix {
        let plan = ChunkPlan(batchSize: max(1, x.rows), chunkSize: chunks.first?.count ?? 1)
        return try! forward(x, .forTest(slice: .whole(plan), store: store))
    }

    func backward(_ dy: Matrix, input x: Matrix, chunks: [Range<Int>], store: ParameterStore, gradients: UnsafeMutablePointer<Float>,
                  gradientWidth: Int, weightGradient: Bool = true, needsInputGradient: Bool) -> Matrix {
        let plan = ChunkPlan(batchSize: max(1, x.rows), chunkSize: chunks.first?.count ?? 1)
        let context = StepContext.forTest(slice: .whole(plan), store: store, gradients: gradients, gradientWidth: gradientWidth)
        _ = try! forward(x, context)
        sendsFactors = !weightGradient
        computesInputGradient = needsInputGradient
        return try! backward(dy, context)
    }
}

extension BatchNorm {
    static var epsilon: Double { defaultEpsilon }

    /// A BatchNorm1d layer whose γ starts at `gammaOffset`, β right after it.
    convenience init(index: Int, features: Int, gammaOffset: Int, betaOffset: Int, capacity: Int, maxChunks: Int) {
        precondition(betaOffset == gammaOffset + features)
        var allocator = ParameterAllocator(startingAt: gammaOffset)
        self.init(index: index, shape: try! TensorShape([features]), capacity: capacity, maxChunks: maxChunks, allocator: &allocator)
    }

    func initialize(_ store: ParameterStore) {
        var random = SplitMix64(seed: 0)
        initialize(store, random: &random)
    }

    func forward(_ x: Matrix, slice: BatchSlice, mode: BatchNormMode, collective: Collective, store: ParameterStore) throws -> Matrix {
        try forward(x, .forTest(slice: slice, store: store, mode: mode, collective: collective))
    }

    func backward(_ dy: Matrix, slice: BatchSlice, mode: BatchNormMode, collective: Collective, store: ParameterStore,
                  gradients: UnsafeMutablePointer<Float>, gradientWidth: Int) throws -> Matrix {
        try backward(dy, .forTest(slice: slice, store: store, mode: mode, collective: collective, gradients: gradients, gradientWidth: gradientWidth))
    }

    func commitRunningStatistics(count: Int) { commitRunningStatistics(batchSize: count) }
}

extension ModelSpec {
    /// An MLP: [Linear, BatchNorm1d (unless mode is none), activation] per hidden layer, then a Linear.
    static func mlp(name: String, inputSize: Int, hiddenSizes: [Int], classes: Int, activation: LayerSpec, batchNorm: BatchNormMode) -> ModelSpec {
        try! ModelSpec(name: name, input: TensorShape([inputSize]),
                       layers: mlp(inputs: inputSize, hidden: hiddenSizes, classes: classes, activation: activation), batchNorm: batchNorm)
    }

    static func named(_ name: String, batchNorm: BatchNormMode) -> ModelSpec? {
        try! preset(name, input: TensorShape([1, 28, 28]), classes: 10, batchNorm: batchNorm)
    }

    /// Sizes from input to output of an MLP built by `mlp`.
    var widths: [Int] {
        [input.count] + layers.compactMap { if case .linear(_, let o, _) = $0 { return o } else { return nil } }
    }
    var hiddenSizes: [Int] { Array(widths.dropFirst().dropLast()) }
    var activation: LayerSpec { layers.first { if case .linear = $0 { return false }; return !$0.isBatchNorm } ?? .sigmoid }
}

extension GradientExchange {
    /// An MLP's exchange: `linears` in order, the first one's input the network's input batch.
    init(linears: [Linear], extraSumRanges: [Range<Int>], plan: ChunkPlan) {
        self.init(factorCandidates: linears.enumerated().map { ($0.element, $0.offset == 0) }, sumRanges: extraSumRanges, plan: plan)
    }
}
