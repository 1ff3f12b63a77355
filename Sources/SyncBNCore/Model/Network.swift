/// What a training step reports when its metrics are computed: mean loss and accuracy over the global batch.
public struct StepMetrics: Equatable, Sendable {
    public var loss: Double
    public var accuracy: Double
    /// The inputs of BatchNorm and activation layers over the global batch, on a training step whose
    /// metrics are logged (empty otherwise, and for evaluation).
    public var observations: [InputObservation] = []

    public init(loss: Double, accuracy: Double) {
        self.loss = loss
        self.accuracy = accuracy
    }
}

/// A replica of a network: its layers (built from a `ModelSpec`), parameters, BatchNorm buffers, optimizer
/// state and the work buffers of one training step, sized once for the largest slice it can get (the whole
/// global batch).
///
/// A step runs forward, loss and backward over the replica's slice, calling the collective at each
/// BatchNorm layer and once for the parameter gradients, then applies the optimizer. The rounds come in
/// the order `rounds(computeMetrics:)` lists, which is what a coordinator expects.
public final class Network {
    public let spec: ModelSpec
    public let plan: ChunkPlan
    public var optimizer: SGD
    public let store: ParameterStore
    /// The top-level layers, in order (a Residual holds its own).
    public let layers: [Layer]
    /// Every layer with its state-dict name ("3", "4.body.0"), depth first.
    public let namedLayers: [(name: String, layer: Layer)]
    /// The top-level Linear layers, whose gradients may travel as factors (`exchange.factorLayers` index them).
    public let linears: [Linear]
    /// Every BatchNorm layer, in forward order: `norms[i].index == i` names its rounds.
    public let norms: [BatchNorm]
    /// Input rows of this replica's slice and their labels; the caller fills them before `trainStep`.
    public let input: Matrix
    public let labels: UnsafeMutablePointer<Int32>
    /// Input rows of the whole global batch, from which every replica computes the first layer's weight
    /// gradient when it travels as factors; the caller fills them before `trainStep` (and before
    /// `apply(gradients:)` on a coordinator).
    public let batchInput: Matrix
    /// How the step's parameter gradients are laid out and combined, all of them as one segment (what the
    /// exchange among workers uses). ∂γ, ∂β are in it only when BatchNorm is not synchronized (synchronized,
    /// they come global out of the backward-sums rounds).
    public let exchange: GradientExchange
    /// How the gradients travel now: the segments that ride with backward-sums rounds, then the gradient
    /// round's (`GradientSegment`); or one segment, `exchange`'s layout, when `gradientsRideWithBatchNorm` is
    /// off. The partials and the result have the same size either way.
    public private(set) var gradientSegments: [GradientSegment]
    /// Whether gradients of layers above a BatchNorm layer travel with its backward-sums round (the default)
    /// or all in the gradient round (what the exchange among workers needs). The model's bits are the same
    /// either way. Set it between steps.
    public var gradientsRideWithBatchNorm = true {
        didSet {
            guard gradientsRideWithBatchNorm != oldValue else { return }
            gradientSegments = gradientsRideWithBatchNorm ? ridingSegments : [wholeSegment]
            indexSegments()
            inPlaceVerdicts = [:]  // they depend on the segments' rows
        }
    }
    private let ridingSegments: [GradientSegment]
    private let wholeSegment: GradientSegment
    /// The segment whose factor rows each top-level layer packs before its backward pass, and the segment
    /// whose partials are packed before a top-level layer's backward pass issues the round they ride with.
    private var factorSegmentOfLayer: [(segment: Int, factor: GradientExchange.FactorLayer)?] = []
    private var ridingSegmentOfLayer: [Int?] = []

    private func indexSegments() {
        factorSegmentOfLayer = Array(repeating: nil, count: layers.count)
        ridingSegmentOfLayer = Array(repeating: nil, count: layers.count)
        for (k, segment) in gradientSegments.enumerated() {
            for factor in segment.exchange.factorLayers {
                factorSegmentOfLayer[linearPositions[segment.linearIndices[factor.layer]]] = (k, factor)
            }
            // The layer just below the segment issues the round it rides with.
            if segment.ridesWith != nil { ridingSegmentOfLayer[segment.layers.lowerBound - 1] = k }
        }
    }

    private let context: StepContext
    /// Each top-level layer's input in the last forward pass.
    private var layerInputs: [Matrix]
    private let logitGradient: Matrix
    /// Store-shaped per-chunk gradients of the summed layers, before packing.
    private let chunkGradients: UnsafeMutableBufferPointer<Float>
    private let gradientPartials: UnsafeMutableBufferPointer<Float>
    private let gradientResult: UnsafeMutableBufferPointer<Float>
    /// One factor layer's ∂W_c and ∂b_c per thread (`apply(gradients:)`).
    private var chunkWeightGradient: UnsafeMutableBufferPointer<Float>
    private let chunkMetrics: UnsafeMutableBufferPointer<Double>
    private let reducedMetrics: UnsafeMutableBufferPointer<Double>
    /// Top-level layer index of each factor candidate in `linears`.
    private let linearPositions: [Int]

    /// Chunks per BatchNorm group, or nil when BatchNorm sees the whole batch (or each slice, `--bn local`).
    public let batchNormGroupChunks: Int?
    /// Records the inputs of BatchNorm and activation layers on logged steps (the `.observations` round).
    public let observer: StepObserver
    /// The biases of Linear and Conv2d layers whose output goes straight into a BatchNorm layer, labelled
    /// "name.Type" ("0.Linear"): the seed's ablation watches them (`--bn-backward no-stats`).
    public let biasesFeedingBatchNorm: [(label: String, bias: ParameterTensor)]

    /// The threads that share each step's chunks (one unless set): the results are the same bits for any
    /// number. Set it between steps.
    public var threads: ChunkThreads {
        get { context.threads }
        set {
            let width = chunkWeightGradient.count / context.threads.threadCount
            chunkWeightGradient.deallocate()
            chunkWeightGradient = .allocate(capacity: width * newValue.threadCount)
            chunkWeightGradient.initialize(repeating: 0)
            context.threads = newValue
        }
    }

    /// - Parameter batchNormGroupSize: samples per BatchNorm group (a multiple of the chunk size that divides
    ///   the batch size), or nil (or the batch size) for statistics over the whole global batch.
    public init(spec: ModelSpec, plan: ChunkPlan, optimizer: SGD, seed: UInt64, batchNormGroupSize: Int? = nil) {
        self.spec = spec
        if let size = batchNormGroupSize, size < plan.batchSize, spec.batchNorm == .sync {
            precondition(size % plan.chunkSize == 0 && plan.batchSize % size == 0, "a BatchNorm group is whole chunks and divides the batch")
            batchNormGroupChunks = size / plan.chunkSize
        } else {
            batchNormGroupChunks = nil
        }
        self.plan = plan
        self.optimizer = optimizer
        let capacity = plan.batchSize
        var builder = LayerBuilder(capacity: capacity, plan: plan)
        layers = builder.build(spec.layers, input: spec.input)
        norms = builder.norms
        store = ParameterStore(count: builder.allocator.count)
        namedLayers = layers.enumerated().flatMap { $0.element.flattened(name: "\($0.offset)") }
        var linears: [Linear] = [], positions: [Int] = []
        for (i, layer) in layers.enumerated() {
            if let linear = layer as? Linear { linears.append(linear); positions.append(i) }
        }
        self.linears = linears
        linearPositions = positions
        if let first = layers.first as? Linear { first.computesInputGradient = false }
        if let first = layers.first as? Conv2d { first.computesInputGradient = false }
        Self.fuseReLUs(into: layers)

        let candidateSet = Set(linears.map(ObjectIdentifier.init))
        let synchronizedSums = spec.batchNorm == .sync && batchNormGroupChunks == nil
        let layerList = layers
        func ownParameters(_ i: Int) -> [Range<Int>] {
            layerList[i].flattened(name: "").flatMap { _, layer -> [Range<Int>] in
                if candidateSet.contains(ObjectIdentifier(layer)) { return [] }
                if layer is BatchNorm && synchronizedSums { return [] }
                return layer.parameters.map(\.range)
            }
        }
        let sync = spec.batchNorm == .sync
        func segments(riding: Bool) -> [GradientSegment] {
            GradientSegment.cut(layers: layerList, linearPositions: positions, ridingWithBatchNorm: riding, plan: plan,
                                batchNormsIssued: { sync ? Self.backwardOrder([layerList[$0]]) : [] }, ownParameters: ownParameters)
        }
        wholeSegment = segments(riding: false)[0]
        exchange = wholeSegment.exchange
        ridingSegments = segments(riding: true)
        gradientSegments = ridingSegments
        for factor in exchange.factorLayers { linears[factor.layer].sendsFactors = true }

        input = Matrix(capacity: capacity, columns: spec.input.count)
        batchInput = Matrix(capacity: capacity, columns: spec.input.count)
        layerInputs = Array(repeating: input, count: layers.count)
        factorDy = Array(repeating: nil, count: layers.count)
        labels = .allocate(capacity: max(1, capacity))
        labels.initialize(repeating: 0, count: max(1, capacity))
        logitGradient = Matrix(capacity: capacity, columns: spec.classes)
        chunkGradients = .allocate(capacity: max(1, plan.chunkCount * store.count))
        chunkGradients.initialize(repeating: 0)
        context = StepContext(plan: plan, store: store, batchNorm: spec.batchNorm, seed: seed, chunkGradients: chunkGradients.baseAddress!)
        context.batchNormGroupChunks = batchNormGroupChunks
        context.batchNormBackward = spec.batchNormBackward
        let observed = namedLayers.compactMap { name, layer -> (Layer, ObservationLayout.ObservedLayer)? in
            guard let type = Self.observedType(of: layer) else { return nil }
            return (layer, .init(name: name, type: type, shape: layer.inputShape))
        }
        observer = StepObserver(layout: ObservationLayout(layers: observed.map(\.1), chunkSize: plan.chunkSize),
                                layers: observed.map(\.0), maxChunks: plan.chunkCount)
        biasesFeedingBatchNorm = zip(namedLayers, namedLayers.dropFirst()).compactMap { pair, next in
            guard next.layer is BatchNorm, pair.layer is Linear || pair.layer is Conv2d,
                  let bias = pair.layer.parameters.first(where: { $0.name == "bias" }) else { return nil }
            return ("\(pair.name).\(pair.layer is Linear ? "Linear" : "Conv2d")", bias)
        }
        precondition(ridingSegments.map(\.exchange.resultWidth).reduce(0, +) == exchange.resultWidth
                     && ridingSegments.map(\.exchange.chunkWidth).reduce(0, +) == exchange.chunkWidth, "segments cut the gradients without adding any")
        gradientPartials = .allocate(capacity: max(1, plan.chunkCount * exchange.chunkWidth))
        gradientPartials.initialize(repeating: 0)
        gradientResult = .allocate(capacity: max(1, exchange.resultWidth))
        gradientResult.initialize(repeating: 0)
        chunkWeightGradient = .allocate(capacity: max(1, exchange.factorLayers.map { linears[$0.layer].inputs * linears[$0.layer].outputs + linears[$0.layer].outputs }.max() ?? 1))
        chunkWeightGradient.initialize(repeating: 0)
        chunkMetrics = .allocate(capacity: plan.chunkCount * 2)
        chunkMetrics.initialize(repeating: 0)
        reducedMetrics = .allocate(capacity: 2)
        reducedMetrics.initialize(repeating: 0)

        let observes = !observer.layout.layers.isEmpty
        roundsWithMetrics = Self.rounds(norms: norms, layers: layers, batchNorm: spec.batchNorm, observes: observes, computeMetrics: true)
        roundsWithoutMetrics = Self.rounds(norms: norms, layers: layers, batchNorm: spec.batchNorm, observes: observes, computeMetrics: false)
        indexSegments()
        var random = SplitMix64(seed: seed, stream: 1)
        for layer in layers { layer.initialize(store, random: &random) }
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

    /// The all-reduce rounds of one training step, in order. Coordinator and replicas agree on it: moments
    /// of every BatchNorm layer in forward order, backward sums (synchronized BatchNorm) in the order the
    /// backward pass reaches them, the gradients, and the metrics when wanted. With BatchNorm groups, moments
    /// and sums are gathered rather than reduced (`gathers(_:)`).
    /// Listed once, at init: a coordinator asks at every step.
    public func rounds(computeMetrics: Bool) -> [Round] { computeMetrics ? roundsWithMetrics : roundsWithoutMetrics }
    private let roundsWithMetrics: [Round], roundsWithoutMetrics: [Round]

    private static func rounds(norms: [BatchNorm], layers: [Layer], batchNorm: BatchNormMode, observes: Bool, computeMetrics: Bool) -> [Round] {
        var rounds: [Round] = norms.map { .moments(layer: $0.index) }
        if batchNorm == .sync { rounds += backwardOrder(layers).map { .sums(layer: $0.index) } }
        rounds.append(.gradients)
        if computeMetrics && observes { rounds.append(.observations) }
        if computeMetrics { rounds.append(.metrics) }
        return rounds
    }

    /// The type name of a layer whose input a logged step observes (BatchNorm, activations), or nil.
    private static func observedType(of layer: Layer) -> String? {
        if let norm = layer as? BatchNorm { return norm.inputShape.isImage ? "BatchNorm2d" : "BatchNorm1d" }
        if let activation = layer as? Activation {
            switch activation.kind {
            case .relu: return "ReLU"
            case .sigmoid: return "Sigmoid"
            case .tanh: return "Tanh"
            }
        }
        return nil
    }

    /// BatchNorm layers in the order a backward pass through `layers` calls them.
    private static func backwardOrder(_ layers: [Layer]) -> [BatchNorm] {
        layers.reversed().flatMap { layer -> [BatchNorm] in
            if let norm = layer as? BatchNorm { return [norm] }
            if let residual = layer as? Residual { return backwardOrder(residual.body) + backwardOrder(residual.shortcut) }
            return []
        }
    }

    /// Whether a round's result is every chunk's partials (BatchNorm groups) rather than their reduction.
    public func gathers(_ round: Round) -> Bool {
        switch round {
        case .moments, .sums: batchNormGroupChunks != nil
        case .gradients, .metrics: false
        case .observations: true
        }
    }

    /// Width (values per chunk) of a round's partials.
    public func width(of round: Round) -> Int {
        switch round {
        case .moments(let layer), .sums(let layer): 2 * norms[layer].features
        case .gradients: gradientSegments.last!.exchange.chunkWidth
        case .metrics: 2
        case .observations: observer.layout.width
        }
    }

    /// Values each row of a chunk counts in a round's reduction: H·W for a BatchNorm2d layer's moments, else 1.
    public func valuesPerRow(of round: Round) -> Int {
        if case .moments(let layer) = round { return norms[layer].spatialSize }
        return 1
    }

    /// `valuesPerRow` of every BatchNorm layer's moments, by layer index (for `LocalCollective`).
    public var momentScales: [Int] { norms.map(\.spatialSize) }

    // MARK: Training

    /// One training step over `slice`, whose rows are in `input` and `labels`, and the whole global batch's
    /// rows in `batchInput` (the first layer's gradient may be computed from all of them). Every replica of the job
    /// calls this for the same step with its own slice; the collective makes the results global.
    /// `step` (the global step number) seeds dropout masks. Returns the global batch's metrics if `computeMetrics`.
    /// `inputFromBatch`: the slice is the whole batch and its rows are in `batchInput` alone (`input` is not
    /// read): what one process holding every chunk does, saving a copy.
    @discardableResult
    public func trainStep(slice: BatchSlice, collective: Collective, computeMetrics: Bool, step: Int = 0,
                          inputFromBatch: Bool = false) throws -> StepMetrics? {
        precondition(slice.plan == plan, "a step's slice must come from the network's chunk plan")
        precondition(!inputFromBatch || slice == .whole(plan), "only a slice of the whole batch can take its rows from batchInput")
        let chunks = slice.localChunkRows
        let input = inputFromBatch ? batchInput : self.input
        input.rows = slice.rowCount
        context.slice = slice
        context.chunks = chunks
        context.collective = collective
        context.step = step
        context.observer = computeMetrics ? observer : nil
        context.riding = nil  // nothing left over from a step abandoned mid-way

        // Forward.
        var x = input
        for (i, layer) in layers.enumerated() {
            layerInputs[i] = x
            x = try layer.forward(x, context)
        }
        SoftmaxCrossEntropy.forwardBackward(logits: x, labels: labels, chunks: chunks, batchSize: plan.batchSize,
                                            gradient: logitGradient, metrics: chunkMetrics.baseAddress!, threads: context.threads)

        // Backward. A segment's gradients are final before the layer whose backward round they ride with.
        // In one process with an in-process collective, factor layers' rows are read where they are (`apply`).
        let rowsInPlace = collective.combinesInProcess && slice == .whole(plan) && factorRowsCanStayInPlace()
        var dy = logitGradient
        for i in stride(from: layers.count - 1, through: 0, by: -1) {
            if let (segment, factor) = factorSegmentOfLayer[i] {
                if rowsInPlace { factorDy[i] = dy }
                else { packFactors(factor, of: gradientSegments[segment], x: layerInputs[i], dy: dy, chunks: chunks) }
            }
            if let segment = ridingSegmentOfLayer[i] {
                packSums(of: gradientSegments[segment], rowsInPlace: rowsInPlace, chunkCount: chunks.count)
                context.riding = riding(gradientSegments[segment], rowsInPlace: rowsInPlace, chunkCount: chunks.count)
            }
            dy = try layers[i].backward(dy, context)
            precondition(context.riding == nil, "layer \(i)'s backward pass issued no backward round for the gradients riding with it")
        }

        let last = gradientSegments.last!
        packSums(of: last, rowsInPlace: rowsInPlace, chunkCount: chunks.count)
        let own = riding(last, rowsInPlace: rowsInPlace, chunkCount: chunks.count)
        try collective.exchangeGradients(own.partials, exchange: own.exchange, into: own.result)
        apply(gradients: UnsafeBufferPointer(gradientResult), rowsInPlace: rowsInPlace)
        var metrics: StepMetrics?
        if computeMetrics {
            if !observer.layout.layers.isEmpty {
                try collective.report(.observations, partials: observer.values(chunkCount: chunks.count), width: observer.layout.width)
            }
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
        case .moments(let layer) where gathers(round):
            norms[layer].stageRunningStatistics(gathered: result, plan: plan)
        case .moments(let layer):
            norms[layer].stageRunningStatistics(moments: result)
        case .sums where gathers(round):
            break  // each group's sums serve its rows only; ∂γ, ∂β travel with the gradients
        case .sums(let layer):
            norms[layer].setParameterGradients(sums: result, store: store)
        case .metrics:
            return Self.metrics(result, batchSize: plan.batchSize)
        case .observations:
            break  // for the logs only: `observations(gathered:)`
        case .gradients:
            preconditionFailure("gradients are Float32: use apply(gradients:)")
        }
        return nil
    }

    /// Sets the store's gradients from the gradient round's result: the summed ranges are copied; each
    /// factor layer's ∂W = Σ_c dy_cᵀ·x_c and ∂b = Σ_c Σ_rows dy_c are computed chunk by chunk from the
    /// gathered rows (the first layer's x from `batchInput`) and summed in chunk order, tile of ∂W's rows by
    /// tile, the tiles shared among the threads (`applyByRowTiles`; one tile where OpenBLAS would not give a
    /// tile's rows the bits of the whole product).
    public func apply(gradients result: UnsafeBufferPointer<Float>) {
        precondition(result.count == exchange.resultWidth, "the gradient result has \(result.count) values; the exchange expects \(exchange.resultWidth)")
        apply(gradients: result, rowsInPlace: false)
    }

    /// `apply(gradients:)`, segment by segment; `rowsInPlace`: each segment's part holds its summed part alone
    /// (`GradientExchange.withoutFactorRows`) and the factor layers' rows are read in their own matrices.
    private func apply(gradients result: UnsafeBufferPointer<Float>, rowsInPlace: Bool) {
        for segment in gradientSegments {
            let width = segment.exchange(rowsInPlace: rowsInPlace).resultWidth
            apply(gradients: UnsafeBufferPointer(rebasing: result[segment.resultOffset..<(segment.resultOffset + width)]),
                  of: segment, rowsInPlace: rowsInPlace)
        }
    }

    /// `apply(gradients:)` for one segment's part of the result; `rowsInPlace`: the result holds the summed part
    /// alone (`GradientExchange.withoutFactorRows`) and the factor layers' rows are read in their own matrices.
    private func apply(gradients result: UnsafeBufferPointer<Float>, of segment: GradientSegment, rowsInPlace: Bool) {
        let exchange = segment.exchange
        let values = result.baseAddress!
        var position = 0
        for range in exchange.sumRanges {
            (store.gradients + range.lowerBound).update(from: values + position, count: range.count)
            position += range.count
        }
        let rowWidth = exchange.factorRowWidth, rowsBlock = exchange.chunkSize * rowWidth
        let slotWidth = chunkWeightGradient.count / context.threads.threadCount
        for factor in exchange.factorLayers {
            let linear = linears[segment.linearIndices[factor.layer]], position = linearPositions[segment.linearIndices[factor.layer]]
            let gathered = gatheredOperands(factor, linear, rowWidth: rowWidth)
            let rows: FactorRows = rowsInPlace ? .inPlace(x: layerInputs[position], dy: factorDy[position]!)
                                               : .gathered(values + exchange.sumWidth, rowsBlock: rowsBlock)
            applyByRowTiles(rowTiling(linear, gathered), factor, linear, rows: rows, gathered: gathered,
                            scratch: chunkWeightGradient.baseAddress!, slotWidth: slotWidth)
        }
    }

    /// Where a factor layer's ∂W products read their rows: gathered into the exchange's result (`rowsBlock` values
    /// per chunk, laid out as `gatheredOperands`), or in the layer's own x and dy matrices (one process).
    private enum FactorRows {
        case gathered(UnsafePointer<Float>, rowsBlock: Int)
        case inPlace(x: Matrix, dy: Matrix)
    }

    /// A factor layer's operands of ∂W_c = dy_cᵀ·x_c in gathered rows of `rowWidth` values: dy at its column, x at
    /// its column (or the batch input's own rows for the first layer).
    private func gatheredOperands(_ factor: GradientExchange.FactorLayer, _ linear: Linear, rowWidth: Int) -> RowwiseProducts.Operands {
        RowwiseProducts.Operands(aOffset: factor.outputColumn, lda: rowWidth, bOffset: factor.inputColumn ?? 0,
                                 ldb: factor.inputColumn == nil ? linear.inputs : rowWidth)
    }

    /// The same operands in the layer's own matrices: dy rows `outputs` apart, x rows `inputs` apart.
    private func inPlaceOperands(_ linear: Linear) -> RowwiseProducts.Operands {
        RowwiseProducts.Operands(aOffset: 0, lda: linear.outputs, bOffset: 0, ldb: linear.inputs)
    }

    /// Whether every factor layer's ∂W products, as its tiling makes them, give the same bits reading x and dy in
    /// the layer's matrices as reading the gathered rows that workers receive (`RowwiseProducts.stridesAgree`, for
    /// every tile, chunk row count and β): then one process may skip copying the rows in and out of the exchange
    /// and still save the bits of any number of workers. Worked out once per thread count.
    func factorRowsCanStayInPlace() -> Bool {
        let threadCount = context.threads.threadCount
        if let known = inPlaceVerdicts[threadCount] { return known }
        let verdict = RowwiseProducts.enabled && gradientSegments.allSatisfy { segment in
            segment.exchange.factorLayers.allSatisfy { productsAgreeInPlace($0, of: segment) }
        }
        inPlaceVerdicts[threadCount] = verdict
        return verdict
    }

    /// `factorRowsCanStayInPlace` for one factor layer of `segment`.
    private func productsAgreeInPlace(_ factor: GradientExchange.FactorLayer, of segment: GradientSegment) -> Bool {
        let linear = linears[segment.linearIndices[factor.layer]]
        let gathered = gatheredOperands(factor, linear, rowWidth: segment.exchange.factorRowWidth), inPlace = inPlaceOperands(linear)
        let tiling = rowTiling(linear, gathered)
        let rowCounts = Set((0..<plan.chunkCount).map { plan.rows(ofChunk: $0).count }).filter { $0 > 0 }
        for (t, tile) in tiling.tiles.enumerated() {
            let one = gathered.shiftingA(by: tile.lowerBound), other = inPlace.shiftingA(by: tile.lowerBound)
            for k in rowCounts {
                for beta: Float in tiling.accumulates[t][k]! ? [0, 1] : [0]
                where !RowwiseProducts.stridesAgree(m: tile.count, n: linear.inputs, k: k, beta: beta, one, other) { return false }
            }
        }
        return true
    }

    /// Marks every BatchNorm followed directly by a ReLU in a sequence (top level, or a residual block's body or
    /// shortcut) to apply that ReLU in its own pass (`BatchNorm.rectifiesOutput`).
    private static func fuseReLUs(into sequence: [Layer]) {
        for (layer, next) in zip(sequence, sequence.dropFirst()) {
            if let norm = layer as? BatchNorm, let activation = next as? Activation, activation.kind == .relu { norm.rectifiesOutput = true }
        }
        for case let residual as Residual in sequence {
            fuseReLUs(into: residual.body)
            fuseReLUs(into: residual.shortcut)
        }
    }

    /// How a factor layer's ∂W is formed: its rows (the layer's outputs) in tiles, each tile through every chunk
    /// (`applyByRowTiles`), with OpenBLAS's verdicts for each tile's shape.
    struct RowTiling {
        let tiles: [Range<Int>]
        /// Per tile: chunk row count → whether β = 1 gives the product added afterwards (`RowwiseProducts.accumulates`).
        let accumulates: [[Int: Bool]]
    }
    /// Per top-level factor layer, the dy of the last backward pass whose rows stayed in place (`trainStep`).
    private var factorDy: [Matrix?] = []
    /// Per thread count: whether factor rows may stay in place (`factorRowsCanStayInPlace`).
    private var inPlaceVerdicts: [Int: Bool] = [:]
    /// Per factor layer (by identity) and thread count: its tiling.
    private var rowTilings: [ObjectIdentifier: (threads: Int, tiling: RowTiling)] = [:]

    /// A factor layer's ∂W rows cut into tiles of a multiple of 16 rows, each about 256 KiB of ∂W or less (so that
    /// a tile stays in a core's cache while all the chunks' products are added onto it, instead of the whole ∂W
    /// going through memory once per chunk) and at least one per thread — or one tile of all the rows where
    /// OpenBLAS does not give every element the same bits tile by tile as in one call
    /// (`RowwiseProducts.rowBlocksAgree`, for every chunk's row count). Worked out once per layer and thread count.
    private func rowTiling(_ linear: Linear, _ gathered: RowwiseProducts.Operands) -> RowTiling {
        let rowWidth = gathered.lda, xStride = gathered.ldb
        let threadCount = context.threads.threadCount
        if let known = rowTilings[ObjectIdentifier(linear)], known.threads == threadCount { return known.tiling }
        let m = linear.outputs, n = linear.inputs
        let cacheRows = max(16, 65_536 / max(1, n) / 16 * 16)
        let threadRows = ((m + threadCount - 1) / threadCount + 15) / 16 * 16
        let rows = max(16, min(cacheRows, threadRows))
        var tiles = stride(from: 0, to: m, by: rows).map { $0..<min($0 + rows, m) }
        let rowCounts = Set((0..<plan.chunkCount).map { plan.rows(ofChunk: $0).count })
        if !rowCounts.allSatisfy({ RowwiseProducts.rowBlocksAgree(m: m, n: n, k: $0, lda: rowWidth, ldb: xStride, blocks: tiles) }) { tiles = [0..<m] }
        let tiling = RowTiling(tiles: tiles, accumulates: tiles.map { tile in
            Dictionary(uniqueKeysWithValues: rowCounts.map { ($0, RowwiseProducts.accumulates(m: tile.count, n: n, k: $0, lda: rowWidth, ldb: xStride)) })
        })
        rowTilings[ObjectIdentifier(linear)] = (threadCount, tiling)
        return tiling
    }

    /// A factor layer's ∂W = Σ_c dy_cᵀ·x_c and ∂b = Σ_c Σ_rows dy_c tile of rows by tile of rows, the tiles shared
    /// among the threads: a tile goes through every chunk in order, each chunk's product added onto it (β = 1
    /// where that equals adding it afterwards, else through the thread's scratch). Every element gets the same
    /// bits on any number of threads and tiles: chunk 0's product, then each chunk's product added in chunk order.
    private func applyByRowTiles(_ tiling: RowTiling, _ factor: GradientExchange.FactorLayer, _ linear: Linear, rows factorRows: FactorRows,
                                 gathered: RowwiseProducts.Operands, scratch scratchBase: UnsafeMutablePointer<Float>, slotWidth: Int) {
        let n = linear.inputs, chunkCount = plan.chunkCount
        let weight = store.gradients + linear.weightOffset, bias = store.gradients + linear.biasOffset
        let batchInput = self.batchInput
        let inPlace = inPlaceOperands(linear)
        /// Chunk c's dy (at the tile's first output) and x, and their rows' strides.
        func operands(chunk c: Int, first: Int) -> (dy: UnsafePointer<Float>, lda: Int, x: UnsafePointer<Float>, ldb: Int) {
            switch factorRows {
            case .gathered(let values, let rowsBlock):
                let block = values + c * rowsBlock
                let x = factor.inputColumn.map { block + $0 } ?? UnsafePointer(batchInput.row(first))
                return (block + gathered.aOffset, gathered.lda, x, gathered.ldb)
            case .inPlace(let x, let dy):
                // The first layer's x is the batch input, as for gathered rows.
                let xRows = factor.inputColumn == nil ? UnsafePointer(batchInput.row(first)) : UnsafePointer(x.row(first))
                return (UnsafePointer(dy.row(first)), inPlace.lda, xRows, inPlace.ldb)
            }
        }
        context.threads.run(tiling.tiles.count, work: plan.batchSize * linear.inputs * linear.outputs / 32) { t, slot in
            let rows = tiling.tiles[t], target = weight + rows.lowerBound * n, scratch = scratchBase + slot * slotWidth
            withUnsafeTemporaryAllocation(of: Float.self, capacity: rows.count) { sums in
                let sum = sums.baseAddress!, tileBias = bias + rows.lowerBound
                for c in 0..<chunkCount {
                    let chunkRows = plan.rows(ofChunk: c)
                    let (dy, lda, x, ldb) = operands(chunk: c, first: chunkRows.lowerBound)
                    let accumulate = c > 0 && tiling.accumulates[t][chunkRows.count]!
                    let direct = c == 0 || accumulate
                    BLAS.gemm(transposeA: true, transposeB: false, m: rows.count, n: n, k: chunkRows.count, a: dy + rows.lowerBound, lda: lda,
                              b: x, ldb: ldb, beta: accumulate ? 1 : 0, c: direct ? target : scratch, ldc: n)
                    if !direct { for i in 0..<(rows.count * n) { target[i] += scratch[i] } }
                    // ∂b_c[o] = Σ_rows dy[r][o], each output's sum in row order as one scalar loop would add it, but row by
                    // row across the tile's outputs (contiguous in a row): a sum down one column is one long chain of
                    // dependent adds.
                    sum.initialize(repeating: 0, count: rows.count)
                    for r in 0..<chunkRows.count {
                        let row = dy + r * lda + rows.lowerBound
                        for i in 0..<rows.count { sum[i] += row[i] }
                    }
                    for i in 0..<rows.count { tileBias[i] = c == 0 ? sum[i] : tileBias[i] + sum[i] }
                }
            }
        }
    }

    /// This replica's partials of `segment` and where their combination goes (`rowsInPlace`: laid out without
    /// factor rows, `GradientExchange.withoutFactorRows`).
    private func riding(_ segment: GradientSegment, rowsInPlace: Bool, chunkCount: Int) -> RidingGradients {
        let exchange = segment.exchange(rowsInPlace: rowsInPlace)
        return RidingGradients(
            exchange: exchange,
            partials: UnsafeBufferPointer(rebasing: gradientPartials[segment.partialsOffset..<(segment.partialsOffset + chunkCount * exchange.chunkWidth)]),
            result: UnsafeMutableBufferPointer(rebasing: gradientResult[segment.resultOffset..<(segment.resultOffset + exchange.resultWidth)]))
    }

    /// Copies this slice's rows of x (unless the layer's x is the input batch) and dy into each chunk's
    /// factor block of `segment`, zero past the chunk's last row.
    private func packFactors(_ factor: GradientExchange.FactorLayer, of segment: GradientSegment, x: Matrix, dy: Matrix, chunks: [Range<Int>]) {
        let exchange = segment.exchange
        let rowWidth = exchange.factorRowWidth, width = exchange.chunkWidth
        context.threads.run(chunks.count, work: chunks.count * exchange.chunkSize * rowWidth) { c, _ in
            let rows = chunks[c]
            let block = gradientPartials.baseAddress! + segment.partialsOffset + c * width + exchange.sumWidth
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

    /// Packs each chunk's store-shaped partial gradients of `segment`'s summed ranges in front of its factor block.
    private func packSums(of segment: GradientSegment, rowsInPlace: Bool, chunkCount: Int) {
        let exchange = segment.exchange(rowsInPlace: rowsInPlace)
        context.threads.run(chunkCount, work: chunkCount * exchange.sumWidth) { c, _ in
            let source = chunkGradients.baseAddress! + c * store.count
            var target = gradientPartials.baseAddress! + segment.partialsOffset + c * exchange.chunkWidth
            for range in exchange.sumRanges {
                target.update(from: source + range.lowerBound, count: range.count)
                target += range.count
            }
        }
    }

    /// Completes a step: commits the staged running statistics and takes the optimizer step. Until then a
    /// step can be abandoned and redone without trace.
    public func finishStep() {
        for norm in norms { norm.commitRunningStatistics(batchSize: plan.batchSize) }
        optimizer.step(store, threads: context.threads)
    }

    /// The observations of a logged step from every chunk's `.observations` partials, in chunk order.
    public func observations(gathered: UnsafeBufferPointer<Double>) -> [InputObservation] {
        observer.layout.summarize(gathered, plan: plan)
    }

    /// The observations of the last logged step from this replica's own partials, when it holds the whole
    /// batch (one process: `syncbn train`).
    public func observationsOfWholeBatch() -> [InputObservation] {
        observations(gathered: observer.values(chunkCount: plan.chunkCount))
    }

    private static func metrics(_ sums: UnsafeBufferPointer<Double>, batchSize: Int) -> StepMetrics {
        StepMetrics(loss: sums[0] / Double(batchSize), accuracy: sums[1] / Double(batchSize))
    }

    // MARK: Evaluation

    /// Logits for `x` (any number of rows), BatchNorm normalizing by its running statistics.
    public func infer(_ x: Matrix) -> Matrix {
        var h = x
        for layer in layers { h = layer.infer(h, store: store) }
        return h
    }

    /// Mean cross-entropy and accuracy over a whole data set, in batches of `batchSize`.
    /// - Precondition: the data's samples have the model's input size and labels below its classes
    ///   (callers check both and report the mismatch).
    public func evaluate(_ data: LabeledImages, normalization: Normalization? = nil, batchSize: Int = 250) -> StepMetrics {
        precondition(data.featureSize == spec.input.count, "the data's images do not match the model's input size")
        var lossSum = 0.0, correct = 0
        var start = 0
        let classes = spec.classes
        while start < data.count {
            let count = min(batchSize, data.count - start)
            let x = Matrix(capacity: count, columns: spec.input.count)
            data.copyFeatures(of: start..<(start + count), into: x.storage)
            InputPipeline(normalization: normalization).normalize(x.storage, rows: count, shape: data.sampleShape)
            let logits = infer(x)
            for r in 0..<count {
                let z = logits.row(r), label = Int(data.labels[start + r])
                precondition(label < classes, "label \(label) is outside the model's \(classes) classes")
                var best = 0, maxLogit = z[0]
                for j in 1..<classes where z[j] > maxLogit { best = j; maxLogit = z[j] }
                var total = 0.0
                for j in 0..<classes { total += Foundation.exp(Double(z[j] - maxLogit)) }
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
