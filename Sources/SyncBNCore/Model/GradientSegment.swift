/// A run of top-level layers whose parameter gradients travel together: with the backward-sums round of a
/// BatchNorm layer below them, or in the step's gradient round.
///
/// Going backward, the gradients of every layer above a BatchNorm layer are final before that layer's
/// backward round, so they can ride with it (`RidingGradients`): the gradient round itself then carries only
/// the layers from the lowest BatchNorm-holding layer down, and the coordinator combines the rest while the
/// replicas go on with the backward pass. A network with top-level layers `0..<L` whose layers b₁ > b₂ > … hold
/// synchronized BatchNorm is cut into segments (b₁, L), (b₂, b₁], …, [0, b_k]: the first k ride, each with the
/// first backward-sums round its lower end's layer issues, and the last is the gradient round's.
///
/// Each segment has its own `GradientExchange` over its layers' parameters. Summed values are combined
/// element by element and factor products chunk by chunk, so the cut changes no bit of the result.
public struct GradientSegment: Sendable {
    /// How this segment's gradients are laid out and combined.
    public let exchange: GradientExchange
    /// The BatchNorm layer whose backward-sums round carries this segment; nil for the gradient round's.
    public let ridesWith: Int?
    /// The top-level layers whose parameters it holds.
    public let layers: Range<Int>
    /// `Network.linears` index of each of the exchange's factor candidates (`FactorLayer.layer` indexes this).
    public let linearIndices: [Int]
    /// Where this segment's per-chunk partials start in the network's partials buffer, which has room for
    /// every chunk of the batch in each segment.
    public let partialsOffset: Int
    /// Where its combination starts in the gradient result: the segments' results follow each other.
    public let resultOffset: Int
    /// `exchange` without its factor rows, for one process that reads them in its layers' matrices.
    private let summedPart: GradientExchange

    init(exchange: GradientExchange, ridesWith: Int?, layers: Range<Int>, linearIndices: [Int], partialsOffset: Int, resultOffset: Int) {
        (self.exchange, self.ridesWith, self.layers, self.linearIndices) = (exchange, ridesWith, layers, linearIndices)
        (self.partialsOffset, self.resultOffset) = (partialsOffset, resultOffset)
        summedPart = exchange.withoutFactorRows
    }

    /// How this segment's gradients travel: `exchange`, or its summed part alone when the factor rows stay in
    /// place (`GradientExchange.withoutFactorRows`).
    public func exchange(rowsInPlace: Bool) -> GradientExchange { rowsInPlace ? summedPart : exchange }

    /// Cuts `layers` into segments (`ridingWithBatchNorm` false: one segment, the gradient round's).
    /// `batchNormsIssued(i)`: the BatchNorm layers whose backward rounds top-level layer i's backward pass issues,
    /// in that order (none unless BatchNorm is synchronized). `ownParameters(i)`: the parameter ranges of layer i
    /// (and of the layers it holds) that are exchanged as gradients, except those of a factor candidate.
    static func cut(layers: [Layer], linearPositions: [Int], ridingWithBatchNorm: Bool, plan: ChunkPlan,
                    batchNormsIssued: (Int) -> [BatchNorm], ownParameters: (Int) -> [Range<Int>]) -> [GradientSegment] {
        var ranges: [(layers: Range<Int>, ridesWith: Int?)] = []
        var upper = layers.count
        if ridingWithBatchNorm {
            for i in stride(from: layers.count - 1, through: 0, by: -1) {
                guard let first = batchNormsIssued(i).first else { continue }
                ranges.append(((i + 1)..<upper, first.index))
                upper = i + 1
            }
        }
        ranges.append((0..<upper, nil))

        var segments: [GradientSegment] = []
        var partialsOffset = 0, resultOffset = 0
        for (span, ridesWith) in ranges {
            let linearIndices = linearPositions.indices.filter { span.contains(linearPositions[$0]) }
            let candidates = linearIndices.map { (linear: layers[linearPositions[$0]] as! Linear, inputIsBatch: linearPositions[$0] == 0) }
            let exchange = GradientExchange(factorCandidates: candidates, sumRanges: span.flatMap(ownParameters), plan: plan)
            // A segment with nothing to send does not ride; the gradient round's is always there.
            if ridesWith != nil && exchange.chunkWidth == 0 { continue }
            segments.append(GradientSegment(exchange: exchange, ridesWith: ridesWith, layers: span, linearIndices: linearIndices,
                                            partialsOffset: partialsOffset, resultOffset: resultOffset))
            partialsOffset += plan.chunkCount * exchange.chunkWidth
            resultOffset += exchange.resultWidth
        }
        return segments
    }
}
