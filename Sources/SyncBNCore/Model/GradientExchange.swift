/// How one step's parameter gradients cross replicas, chosen per Linear layer by what is cheaper to send;
/// every other layer's gradients (Conv2d, BatchNorm with local statistics, Linear layers inside a Residual)
/// are summed.
///
/// A Linear layer's weight gradient over the batch is a sum of per-chunk products, ∂W = Σ_c dy_cᵀ·x_c.
/// A replica can send either
/// - **sum**: its chunks' partial gradients ∂W_c (`outputs × (inputs + 1)` values per chunk), which are
///   summed in chunk order; or
/// - **factors**: the rows of x_c and dy_c themselves (`chunkSize × (inputs + outputs)` values per chunk),
///   which are gathered so that every replica computes every ∂W_c and sums them in chunk order itself
///   (sufficient-factor broadcasting). The first layer's x is the input batch, which every replica
///   already holds, so only dy travels.
///
/// A layer uses factors when they are fewer values than its partial gradient. Either way each ∂W_c is
/// computed by the same code from the same bytes and summed in the same order, so the result does not
/// depend on the number of workers.
///
/// Reference: P. Xie et al., "Lighter-Communication Distributed Machine Learning via Sufficient Factor
/// Broadcasting", UAI 2016.
public struct GradientExchange: Sendable {
    public enum Method: Sendable { case sum, factors }

    /// Where one factor layer's columns sit in a gathered row: x at `inputColumn` (none for the first
    /// layer) and dy at `outputColumn`.
    public struct FactorLayer: Sendable {
        public let layer: Int
        public let inputColumn: Int?
        public let outputColumn: Int
    }

    public let methods: [Method]
    /// Parameter-store ranges whose per-chunk partials are summed, in this order in a chunk's partial.
    public let sumRanges: [Range<Int>]
    public let sumWidth: Int
    public private(set) var factorLayers: [FactorLayer]
    /// Values per gathered row (0 in `withoutFactorRows`).
    public private(set) var factorRowWidth: Int
    public let chunkSize: Int
    public let chunkCount: Int

    /// Values one chunk contributes: its summed partials, then `chunkSize` factor rows (zero past the
    /// chunk's last row).
    public var chunkWidth: Int { sumWidth + chunkSize * factorRowWidth }
    /// Values of the exchanged result: the sums, then every chunk's factor rows in chunk order.
    public var resultWidth: Int { sumWidth + chunkCount * chunkSize * factorRowWidth }

    /// Chooses per Linear layer of `factorCandidates` (the network's top-level Linear layers with a bias, and
    /// whether each one's input is the network's input batch, which every replica holds); every range of
    /// `sumRanges` (all other parameters whose gradients are per-chunk partials) is summed.
    init(factorCandidates: [(linear: Linear, inputIsBatch: Bool)], sumRanges otherRanges: [Range<Int>], plan: ChunkPlan) {
        var methods: [Method] = [], sumRanges: [Range<Int>] = [], factorLayers: [FactorLayer] = []
        var column = 0
        for (l, candidate) in factorCandidates.enumerated() {
            let linear = candidate.linear
            let factorValues = plan.chunkSize * ((candidate.inputIsBatch ? 0 : linear.inputs) + linear.outputs)
            let partialValues = (linear.inputs + 1) * linear.outputs
            if factorValues < partialValues && linear.bias != nil {
                methods.append(.factors)
                let inputColumn: Int? = candidate.inputIsBatch ? nil : column
                if !candidate.inputIsBatch { column += linear.inputs }
                factorLayers.append(FactorLayer(layer: l, inputColumn: inputColumn, outputColumn: column))
                column += linear.outputs
            } else {
                methods.append(.sum)
                sumRanges += linear.parameters.map(\.range)
            }
        }
        sumRanges += otherRanges
        // Adjacent ranges travel as one (a Linear's W and b, say).
        var merged: [Range<Int>] = []
        for range in sumRanges.sorted(by: { $0.lowerBound < $1.lowerBound }) where !range.isEmpty {
            if let last = merged.last, last.upperBound == range.lowerBound { merged[merged.count - 1] = last.lowerBound..<range.upperBound }
            else { merged.append(range) }
        }
        self.methods = methods
        self.sumRanges = merged
        sumWidth = merged.reduce(0) { $0 + $1.count }
        self.factorLayers = factorLayers
        factorRowWidth = column
        chunkSize = plan.chunkSize
        chunkCount = plan.chunkCount
    }

    /// This exchange without factor layers: its summed part alone (`chunkWidth == sumWidth`). What one process
    /// that holds the whole batch hands an in-process collective (`Collective.combinesInProcess`), reading the
    /// factor rows in its layers' own matrices instead of copying them in and out (`Network.trainStep`).
    public var withoutFactorRows: GradientExchange {
        var copy = self
        copy.factorLayers = []
        copy.factorRowWidth = 0
        return copy
    }

    /// Combines every chunk's partial (`partials.count == chunkCount × chunkWidth`, chunk-major): sums the
    /// summed part over chunks by `TreeReduction`'s fixed tree, and concatenates the factor rows in chunk order.
    public func reduce(_ partials: UnsafeBufferPointer<Float>, into result: UnsafeMutableBufferPointer<Float>) {
        precondition(partials.count == chunkCount * chunkWidth && result.count == resultWidth, "gradient partials must hold every chunk")
        let p = partials.baseAddress!, out = result.baseAddress!
        if sumWidth > 0 {
            let chunkWidth = chunkWidth
            withUnsafeTemporaryAllocation(of: Float.self, capacity: TreeReduction.scratchCount(chunkCount: chunkCount) * sumWidth) { scratch in
                TreeReduction.evaluate(0..<chunkCount, chunkCount: chunkCount, width: sumWidth,
                                       value: { $0.count == 1 ? UnsafePointer(p + $0.lowerBound * chunkWidth) : nil },
                                       into: out, scratch: scratch.baseAddress!)
            }
        }
        let rowsBlock = chunkSize * factorRowWidth
        for c in 0..<chunkCount where rowsBlock > 0 {
            (out + sumWidth + c * rowsBlock).update(from: p + c * chunkWidth + sumWidth, count: rowsBlock)
        }
    }

    /// Values of one chunk's factor rows.
    public var rowsPerChunk: Int { chunkSize * factorRowWidth }
}
