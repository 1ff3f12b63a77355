/// A layer of a network: forward and backward over a replica's slice of the batch, evaluation, and the
/// tensors it owns.
///
/// Tensors are `Matrix`es with one sample per row (a [C, H, W] sample is a row of C·H·W values, channel-major).
/// A layer allocates its output and input-gradient buffers once, for the largest slice (the whole global
/// batch), and returns them from `forward` and `backward`: the returned matrix stays valid until the layer's
/// next call. A layer never writes into the matrix it is given.
///
/// Determinism: everything that is summed over samples (BatchNorm partials, parameter gradients) is computed
/// per chunk of the step's `BatchSlice`, the same way wherever the chunk runs; per-sample results (a
/// convolution's output) are computed per chunk too, so that they do not depend on how many rows a process
/// holds. A layer's parameter gradients are written per chunk at its offsets in the chunk's gradient row
/// (`StepContext.chunkGradient(_:)`), unless they travel otherwise (Linear factors, synchronized BatchNorm).
public protocol Layer: AnyObject {
    var inputShape: TensorShape { get }
    var outputShape: TensorShape { get }
    /// The trainable tensors, in state-dict order, named as in PyTorch ("weight", "bias").
    var parameters: [ParameterTensor] { get }
    /// Layers inside this one, with the state-dict name of each relative to this layer ("body.0").
    var children: [(name: String, layer: Layer)] { get }

    /// Sets the parameters to their initial values, drawing from `random` in a fixed order.
    func initialize(_ store: ParameterStore, random: inout SplitMix64)
    /// The training-mode output for `x` (this replica's slice).
    func forward(_ x: Matrix, _ step: StepContext) throws -> Matrix
    /// ∂L/∂x for the output gradient `dy` of the last `forward`; writes this layer's parameter gradients.
    func backward(_ dy: Matrix, _ step: StepContext) throws -> Matrix
    /// The evaluation-mode output for `x` (any number of rows), into a new matrix.
    func infer(_ x: Matrix, store: ParameterStore) -> Matrix
}

extension Layer {
    public var parameters: [ParameterTensor] { [] }
    public var children: [(name: String, layer: Layer)] { [] }
    public func initialize(_ store: ParameterStore, random: inout SplitMix64) {}

    /// This layer and every layer inside it, depth first (body before shortcut), with dotted state-dict names.
    public func flattened(name: String) -> [(name: String, layer: Layer)] {
        [(name, self)] + children.flatMap { $0.layer.flattened(name: name + "." + $0.name) }
    }
}

/// A trainable tensor of a layer: its name within the layer, its place in the parameter store and its shape.
public struct ParameterTensor: Sendable {
    public let name: String
    public let offset: Int
    public let shape: [Int]
    public var count: Int { shape.reduce(1, *) }
    public var range: Range<Int> { offset..<(offset + count) }
}

/// Hands out consecutive ranges of the parameter store while a network's layers are built.
public struct ParameterAllocator {
    public private(set) var count = 0

    /// An allocator whose first tensor starts at `offset`.
    public init(startingAt offset: Int = 0) { count = offset }

    public mutating func allocate(_ name: String, shape: [Int]) -> ParameterTensor {
        let tensor = ParameterTensor(name: name, offset: count, shape: shape)
        count += tensor.count
        return tensor
    }
}

/// What a layer's training step needs besides its input: the slice and its chunks, the collective, the
/// parameters, where per-chunk gradients go, and what names the step (for deterministic dropout).
public final class StepContext {
    public internal(set) var slice: BatchSlice
    /// Rows of this slice's chunks, relative to the slice's first row.
    public internal(set) var chunks: [Range<Int>]
    public internal(set) var collective: Collective
    public let store: ParameterStore
    public let batchNorm: BatchNormMode
    /// Chunks per BatchNorm group (`--bn-group-size` ÷ chunk size), or nil for statistics over the whole batch.
    public internal(set) var batchNormGroupChunks: Int?
    /// The global step being run and the job's seed.
    public internal(set) var step: Int
    public let seed: UInt64
    /// The threads that share the step's chunks (`forEachChunk`); one unless the network is given more.
    public internal(set) var threads = ChunkThreads.single
    /// Per-chunk gradient rows, each `gradientWidth` values (the store's size).
    let chunkGradients: UnsafeMutablePointer<Float>
    let gradientWidth: Int

    init(plan: ChunkPlan, store: ParameterStore, batchNorm: BatchNormMode, seed: UInt64, chunkGradients: UnsafeMutablePointer<Float>,
         gradientWidth: Int? = nil) {
        self.gradientWidth = gradientWidth ?? store.count
        slice = .whole(plan)
        chunks = slice.localChunkRows
        collective = LocalCollective(plan: plan, valuesPerRow: [])  // replaced by each step's collective
        self.store = store
        self.batchNorm = batchNorm
        step = 0
        self.seed = seed
        self.chunkGradients = chunkGradients
    }

    /// Chunk `c`'s (local index) gradient row: a layer writes its parameters' partial gradients at their offsets.
    @inline(__always)
    public func chunkGradient(_ c: Int) -> UnsafeMutablePointer<Float> { chunkGradients + c * gradientWidth }

    /// Gradients to send with the next backward-sums round (`GradientSegment`): the network sets them before
    /// the backward pass of the layer that issues that round, whose first BatchNorm takes them (`takeRiding`).
    var riding: RidingGradients?

    /// The gradients riding with this backward-sums round, if any; a BatchNorm layer calls it once per round.
    public func takeRiding() -> RidingGradients? {
        defer { riding = nil }
        return riding
    }

    /// The output of a BatchNorm layer that has already applied the ReLU after it (`BatchNorm.rectifiesOutput`);
    /// that ReLU takes it and passes it on.
    var rectified: Matrix?
    /// The gradient such a ReLU passed on without its mask, for that BatchNorm's backward pass to mask.
    var unmaskedReLUGradient: Matrix?

    /// Set on logged steps: BatchNorm and activation layers hand it their input (`observe`).
    var observer: StepObserver?
    /// Whether BatchNorm's backward pass goes through the batch statistics (the default) or treats them as
    /// constants (`--bn-backward no-stats`, an ablation).
    public internal(set) var batchNormBackward: BatchNormBackward = .full

    /// Records `x`, the input `layer` was given, if this step is observed (see `ObservationLayout`).
    @inline(__always)
    public func observe(_ layer: Layer, _ x: Matrix) {
        guard let observer, let slot = observer.slot(of: layer) else { return }
        let chunks = chunks
        forEachChunk(work: x.count * 8) { c, _ in observer.record(slot: slot, x, rows: chunks[c], chunk: c) }
    }

    /// Calls `body(c, slot)` for every local chunk c, in parallel on `threads` when the step's `work` is worth
    /// it (see `ChunkThreads` for the contract: a chunk's results depend on c alone; `slot` picks per-thread
    /// scratch; `work` is about the values read and written over all chunks, a multiply-add counting 1/32).
    @inline(__always)
    public func forEachChunk(work: Int, _ body: (_ chunk: Int, _ slot: Int) -> Void) { threads.run(chunks.count, work: work, body) }

    /// `forEachChunk(work:)` for a pass that treats every sample on its own: calls `body(c, rows, slot)` for every
    /// local chunk c with runs of its rows, in parallel — pieces, so that a thread that is done takes over part of
    /// a late thread's chunk (`ChunkThreads.pieces`). A row's results must not depend on the run it came in.
    @inline(__always)
    public func forEachChunk(work: Int, splittingRows body: (_ chunk: Int, _ rows: Range<Int>, _ slot: Int) -> Void) {
        let chunks = chunks
        let pieces = threads.pieces(work: work, count: chunks.count, limit: plan.chunkSize)
        threads.run(chunks.count * pieces, work: work) { index, slot in
            let c = index / pieces, p = index % pieces, rows = chunks[c]
            let part = (rows.lowerBound + rows.count * p / pieces)..<(rows.lowerBound + rows.count * (p + 1) / pieces)
            if !part.isEmpty { body(c, part, slot) }
        }
    }

    /// The local chunks cut into runs of consecutive chunks of about equal rows, one run per thread that
    /// `forEachChunk(work:)` would use: the whole slice when the call would run inline. For per-sample products
    /// done a run at a time (`RowwiseProducts`); a run's rows must not depend on anything but the chunks it holds.
    public func chunkRuns(work: Int) -> [Range<Int>] {
        let count = chunks.count
        let parts = count > 1 && threads.threadCount > 1 && work >= threads.inlineWork ? min(count, threads.threadCount) : 1
        guard count > 0 else { return [0..<0] }
        // Cut once per slice and thread count: the layers ask several times a step.
        if let cached = runsCache[parts], cached.chunks == chunks { return cached.runs }
        // Cut by rows, not by chunks: a short last chunk (512 = 34 × 15 + 2) would otherwise leave one run a
        // chunk longer than the other.
        let total = chunks.reduce(0) { $0 + $1.count }
        var runs: [Range<Int>] = [], start = 0, rowsSoFar = 0
        for p in 0..<parts {
            var end = start + 1
            rowsSoFar += chunks[start].count
            let target = total * (p + 1) / parts, latest = count - (parts - 1 - p)
            while end < latest, abs(rowsSoFar + chunks[end].count - target) < abs(rowsSoFar - target) || p == parts - 1 {
                rowsSoFar += chunks[end].count
                end += 1
            }
            runs.append(start..<end)
            start = end
        }
        runsCache[parts] = (chunks, runs)
        return runs
    }
    /// `chunkRuns` by the number of runs, with the slice's chunks they were cut for.
    private var runsCache: [Int: (chunks: [Range<Int>], runs: [Range<Int>])] = [:]

    /// Local rows of the local chunks `run`.
    public func rows(ofChunkRun run: Range<Int>) -> Range<Int> {
        guard !run.isEmpty else { return 0..<0 }
        return chunks[run.lowerBound].lowerBound..<chunks[run.upperBound - 1].upperBound
    }

    public var plan: ChunkPlan { slice.plan }
    /// The global batch row of this slice's local row 0.
    public var firstGlobalRow: Int { slice.globalRows.lowerBound }
}
