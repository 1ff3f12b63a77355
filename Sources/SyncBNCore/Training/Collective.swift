/// One all-reduce round of a training step. Each replica contributes one partial per chunk of its
/// slice; the result is the reduction over every chunk of the global batch, in chunk order.
public enum Round: Equatable, Hashable, Sendable, CustomStringConvertible {
    /// BatchNorm layer `layer`'s forward pass: per chunk `[mean(F), M2(F)]`, merged with Chan's formula.
    case moments(layer: Int)
    /// BatchNorm layer `layer`'s backward pass: per chunk `[Σdy(F), Σdy·x̂(F)]`, summed.
    case sums(layer: Int)
    /// Parameter gradients (Float32): summed partials and gathered factors, as `GradientExchange` lays out.
    case gradients
    /// Per chunk `[Σ loss, number correct]`, summed; only on steps whose metrics are logged.
    case metrics
    /// Per chunk, what the step observes of BatchNorm and activation inputs (`ObservationLayout`), gathered
    /// by the coordinator for its logs; only on logged steps, and answered by nothing (`Collective.report`).
    case observations

    /// Whether replicas wait for this round's result: all but `.observations`, which only the coordinator's
    /// logs need (`Collective.report`), so a replica goes straight on to the next round.
    public var isAnswered: Bool { self != .observations }

    /// Whether this is one of a BatchNorm layer's rounds (moments or backward sums), which a few workers may
    /// exchange among themselves.
    public var isBatchNormRound: Bool {
        switch self {
        case .moments, .sums: true
        default: false
        }
    }

    /// Whether parameter gradients may ride with this round (`RidingGradients`): only backward sums do.
    public var carriesGradients: Bool {
        if case .sums = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case .moments(let layer): "moments of BatchNorm \(layer)"
        case .sums(let layer): "backward sums of BatchNorm \(layer)"
        case .gradients: "parameter gradients"
        case .metrics: "metrics"
        case .observations: "observations"
        }
    }

    /// Reduces chunk-major partials over the whole batch of `plan` (or a run of its chunks). For moments,
    /// each row of a chunk counts `valuesPerRow` values per feature (H·W for BatchNorm2d).
    public func reduce(
        _ partials: UnsafeBufferPointer<Double>, plan: ChunkPlan, chunks: Range<Int>, width: Int, valuesPerRow: Int = 1,
        into result: UnsafeMutableBufferPointer<Double>
    ) {
        switch self {
        case .moments:
            let counts = chunks.map { plan.rows(ofChunk: $0).count * valuesPerRow }
            OrderedReduction.mergeMoments(partials, counts: counts[...], features: width / 2, into: result)
        case .sums, .metrics, .gradients, .observations:
            OrderedReduction.sum(partials, width: width, into: result)
        }
    }
}

/// Parameter gradients that ride with a BatchNorm layer's backward-sums round: those of the layers above it,
/// final before the round (`Network.gradientSegments`). A collective combines them as `exchangeGradients`
/// would; their result must be in `result` by the time the step's own `exchangeGradients` returns, and may
/// come earlier (one process reduces them at once; a worker receives them with the gradient round's result,
/// so that the coordinator reduces them while the replicas go on with the backward pass).
public struct RidingGradients {
    public let exchange: GradientExchange
    /// This replica's chunks' partials, chunk-major (`exchange.chunkWidth` each).
    public let partials: UnsafeBufferPointer<Float>
    /// Where their combination goes (`exchange.resultWidth` values).
    public let result: UnsafeMutableBufferPointer<Float>

    public init(exchange: GradientExchange, partials: UnsafeBufferPointer<Float>, result: UnsafeMutableBufferPointer<Float>) {
        precondition(partials.count % max(1, exchange.chunkWidth) == 0 && result.count == exchange.resultWidth, "riding gradients must be whole chunks and a whole result")
        self.exchange = exchange
        self.partials = partials
        self.result = result
    }
}

/// What a replica calls to turn its per-chunk partials into global results.
///
/// BatchNorm never knows whether it is alone or one of eight: it hands its chunks' partials to the
/// collective and receives the reduction over the global batch. Replicas whose slice is empty still
/// call, with no partials, so that every replica goes through every round.
public protocol Collective: AnyObject {
    /// Reduces Float64 partials (`partials.count == slice.chunks.count × result.count`). `riding`: gradients
    /// that travel with this round (only a backward-sums round carries any).
    func allReduce(_ round: Round, partials: UnsafeBufferPointer<Double>, into result: UnsafeMutableBufferPointer<Double>,
                   riding: RidingGradients?) throws
    /// Gathers Float64 partials of `width` values per chunk from every replica: `result` receives all
    /// `plan.chunkCount` chunks' partials in chunk order (BatchNorm groups, which each need their own chunks).
    func allGather(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int, into result: UnsafeMutableBufferPointer<Double>,
                   riding: RidingGradients?) throws
    /// The gradient round: combines Float32 per-chunk partials laid out by `exchange` (summed parts in chunk
    /// order, factor rows gathered), `result.count == exchange.resultWidth`.
    func exchangeGradients(_ partials: UnsafeBufferPointer<Float>, exchange: GradientExchange, into result: UnsafeMutableBufferPointer<Float>) throws
    /// Hands Float64 partials of `width` values per chunk to whoever keeps the job's logs, and returns without
    /// waiting for an answer (the `.observations` of a logged step: only the coordinator needs them).
    func report(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int) throws
    /// Whether the partials stay in this process (no other replica nor coordinator reads them): a replica that
    /// holds the whole batch then leaves factor rows out of its gradient partials and reads them from its layers'
    /// matrices (`GradientExchange.withoutFactorRows`). False unless a collective says otherwise.
    var combinesInProcess: Bool { get }
}

extension Collective {
    public var combinesInProcess: Bool { false }

    /// A round that carries no gradients.
    public func allReduce(_ round: Round, partials: UnsafeBufferPointer<Double>, into result: UnsafeMutableBufferPointer<Double>) throws {
        try allReduce(round, partials: partials, into: result, riding: nil)
    }

    /// A gathered round that carries no gradients.
    public func allGather(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int, into result: UnsafeMutableBufferPointer<Double>) throws {
        try allGather(round, partials: partials, width: width, into: result, riding: nil)
    }
}

/// The collective of a single process that holds the whole batch: it reduces locally.
public final class LocalCollective: Collective {
    public let plan: ChunkPlan
    /// Values per row and feature of each BatchNorm layer's moments, by layer index: H·W for BatchNorm2d, 1 for
    /// BatchNorm1d (`Network.momentScales`). Moments of a layer not listed are refused.
    public let valuesPerRow: [Int]

    public init(plan: ChunkPlan, valuesPerRow: [Int]) {
        self.plan = plan
        self.valuesPerRow = valuesPerRow
    }

    public func allReduce(_ round: Round, partials: UnsafeBufferPointer<Double>, into result: UnsafeMutableBufferPointer<Double>,
                          riding: RidingGradients?) throws {
        if let riding { riding.exchange.reduce(riding.partials, into: riding.result) }
        var scale = 1
        if case .moments(let layer) = round {
            precondition(layer < valuesPerRow.count, "LocalCollective was not told how many values a row of BatchNorm \(layer) counts")
            scale = valuesPerRow[layer]
        }
        round.reduce(partials, plan: plan, chunks: 0..<plan.chunkCount, width: result.count, valuesPerRow: scale, into: result)
    }

    public func allGather(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int, into result: UnsafeMutableBufferPointer<Double>,
                          riding: RidingGradients?) throws {
        precondition(partials.count == result.count, "one process holds every chunk")
        if let riding { riding.exchange.reduce(riding.partials, into: riding.result) }
        _ = result.update(fromContentsOf: partials)
    }

    public func exchangeGradients(_ partials: UnsafeBufferPointer<Float>, exchange: GradientExchange, into result: UnsafeMutableBufferPointer<Float>) throws {
        exchange.reduce(partials, into: result)
    }

    /// Nothing to send: the one process already holds every chunk's partials (`Network.observations()`).
    public func report(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int) throws {}

    public var combinesInProcess: Bool { true }
}
