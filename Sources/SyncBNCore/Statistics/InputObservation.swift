import TensorBoardEvents

/// What a logged step records about the inputs of BatchNorm and activation layers, over the global batch:
/// a histogram of every input value, and every value of one fixed feature (channel 0 of an image, feature 0
/// of a vector), from which the {15, 50, 85}th percentiles are taken — the paper's Figure 1 plots them for a
/// sigmoid's input over training.
///
/// Each replica computes, per chunk of its slice and per observed layer, the block
///   [count per bucket (B)] [min, max, Σx, Σx²] [the tracked feature's values, chunkSize·H·W, zero-padded]
/// in Float64 (`ObservationLayout.width` values per chunk; buckets of `FloatBuckets`). The coordinator gathers every chunk's blocks (the
/// `.observations` round, sent only on logged steps; workers do not wait for an answer) and `summarize`s them
/// in chunk order, so the result depends on the global batch only, not on how it was split.
public struct ObservationLayout: Sendable {
    /// One observed layer: its state-dict name, type (`BatchNorm2d`, `Sigmoid`…) and input shape.
    public struct ObservedLayer: Sendable, Equatable {
        public let name: String
        public let type: String
        public let shape: TensorShape
        /// Values per sample of the tracked feature: H·W for an image, 1 for a vector.
        public var trackedPerRow: Int { shape.spatialSize }
        /// The tag of this layer in logs: "3.BatchNorm2d".
        public var label: String { "\(name).\(type)" }
    }

    public let layers: [ObservedLayer]
    /// Rows of the largest chunk: the tracked block of every chunk has room for this many samples.
    public let chunkSize: Int
    /// Float64 values per chunk, all layers together.
    public let width: Int
    /// Where each layer's block starts within a chunk's values.
    let offsets: [Int]

    static let statisticsCount = 4
    static let bucketCount = FloatBuckets.count

    public init(layers: [ObservedLayer], chunkSize: Int) {
        self.layers = layers
        self.chunkSize = chunkSize
        var offsets: [Int] = [], position = 0
        for layer in layers {
            offsets.append(position)
            position += Self.bucketCount + Self.statisticsCount + chunkSize * layer.trackedPerRow
        }
        self.offsets = offsets
        width = position
    }

    /// Writes layer `index`'s block for rows `rows` of `x` at `block` (the layer's place in a chunk's values).
    func record(layer index: Int, _ x: Matrix, rows: Range<Int>, into chunkValues: UnsafeMutablePointer<Double>) {
        let layer = layers[index]
        let buckets = chunkValues + offsets[index]
        let statistics = buckets + Self.bucketCount
        let tracked = statistics + Self.statisticsCount
        buckets.update(repeating: 0, count: Self.bucketCount)
        var low = Double.infinity, high = -Double.infinity, sum = 0.0, sumOfSquares = 0.0
        for r in rows {
            let row = x.row(r)
            for i in 0..<x.columns { buckets[FloatBuckets.index(of: row[i])] += 1 }
            let summary = VectorKernels.summary(row, count: x.columns)
            low = Swift.min(low, Double(summary.min))
            high = Swift.max(high, Double(summary.max))
            sum += summary.sum
            sumOfSquares += summary.sumOfSquares
        }
        statistics[0] = rows.isEmpty ? 0 : low
        statistics[1] = rows.isEmpty ? 0 : high
        statistics[2] = sum
        statistics[3] = sumOfSquares
        let perRow = layer.trackedPerRow
        tracked.update(repeating: 0, count: chunkSize * perRow)
        for (i, r) in rows.enumerated() {
            let row = x.row(r)
            for j in 0..<perRow { tracked[i * perRow + j] = Double(row[j]) }
        }
    }

    /// Every layer's observation from all chunks' values of a step (`plan.chunkCount × width`, chunk order).
    public func summarize(_ gathered: UnsafeBufferPointer<Double>, plan: ChunkPlan) -> [InputObservation] {
        precondition(gathered.count == plan.chunkCount * width, "observations need every chunk's values")
        return layers.indices.map { index in
            let layer = layers[index]
            var counts = [Double](repeating: 0, count: Self.bucketCount)
            var low = Double.infinity, high = -Double.infinity, sum = 0.0, sumOfSquares = 0.0
            var tracked: [Double] = []
            tracked.reserveCapacity(plan.batchSize * layer.trackedPerRow)
            for c in 0..<plan.chunkCount {
                let rows = plan.rows(ofChunk: c).count
                let block = gathered.baseAddress! + c * width + offsets[index]
                for b in 0..<Self.bucketCount { counts[b] += block[b] }
                let statistics = block + Self.bucketCount
                if rows > 0 {
                    low = Swift.min(low, statistics[0])
                    high = Swift.max(high, statistics[1])
                }
                sum += statistics[2]
                sumOfSquares += statistics[3]
                let values = statistics + Self.statisticsCount
                tracked += UnsafeBufferPointer(start: values, count: rows * layer.trackedPerRow)
            }
            tracked.sort()
            return InputObservation(layer: layer, count: plan.batchSize * layer.shape.count, minimum: low, maximum: high, sum: sum,
                                    sumOfSquares: sumOfSquares, bucketCounts: counts,
                                    trackedPercentiles: InputObservation.percentileRanks.map { percentile(sorted: tracked, $0) })
        }
    }
}

/// One layer's input over a logged step's global batch (see `ObservationLayout`).
public struct InputObservation: Sendable, Equatable {
    public let layer: ObservationLayout.ObservedLayer
    /// Values observed: batch × C·H·W.
    public let count: Int
    public let minimum: Double
    public let maximum: Double
    public let sum: Double
    public let sumOfSquares: Double
    /// Values per bucket of `FloatBuckets.limits`.
    public let bucketCounts: [Double]
    /// The tracked feature's percentiles, at `percentileRanks`.
    public let trackedPercentiles: [Double]

    /// The percentiles the paper's Figure 1 plots.
    public static let percentileRanks: [Double] = [15, 50, 85]

    /// As TensorBoard stores it (empty buckets merged).
    public var histogram: Histogram {
        Histogram(min: minimum, max: maximum, sum: sum, sumOfSquares: sumOfSquares, denseCounts: bucketCounts, limits: FloatBuckets.limits)
    }
}

/// The p-th percentile of sorted values, interpolating linearly between the two nearest ranks (NumPy's
/// default): position p/100·(n − 1). NaN for no values.
public func percentile(sorted values: [Double], _ p: Double) -> Double {
    guard !values.isEmpty else { return .nan }
    let position = p / 100 * Double(values.count - 1)
    let below = Int(position.rounded(.down)), above = Swift.min(below + 1, values.count - 1)
    return values[below] + (values[above] - values[below]) * (position - Double(below))
}

/// Records the observed layers' inputs of one replica's slice during a logged step's forward pass: each
/// layer calls `StepContext.observe(_:_:)` with its input, and this writes the per-chunk blocks that the
/// `.observations` round carries.
public final class StepObserver {
    public let layout: ObservationLayout
    /// Per local chunk, `layout.width` values.
    let partials: UnsafeMutableBufferPointer<Double>
    private let slots: [ObjectIdentifier: Int]

    init(layout: ObservationLayout, layers: [Layer], maxChunks: Int) {
        self.layout = layout
        slots = Dictionary(uniqueKeysWithValues: layers.enumerated().map { (ObjectIdentifier($0.element), $0.offset) })
        partials = .allocate(capacity: max(1, maxChunks * layout.width))
        partials.initialize(repeating: 0)
    }

    deinit { partials.deallocate() }

    /// The place of `layer` among the observed layers, or nil if its input is not observed.
    func slot(of layer: Layer) -> Int? { slots[ObjectIdentifier(layer)] }

    /// Writes observed layer `slot`'s block of local chunk `chunk` (rows `rows` of `x`); chunks are independent.
    func record(slot: Int, _ x: Matrix, rows: Range<Int>, chunk: Int) {
        layout.record(layer: slot, x, rows: rows, into: partials.baseAddress! + chunk * layout.width)
    }

    /// This replica's values for its `chunkCount` chunks.
    func values(chunkCount: Int) -> UnsafeBufferPointer<Double> {
        UnsafeBufferPointer(rebasing: partials[0..<(chunkCount * layout.width)])
    }
}
