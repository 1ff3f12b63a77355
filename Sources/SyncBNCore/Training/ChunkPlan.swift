/// How a global batch is cut into fixed micro-chunks, and how chunks are shared out among workers.
///
/// Chunks are the unit of determinism: every partial (BatchNorm moments, Σdy, Σdy·x̂, parameter
/// gradients) is computed per chunk, the same way wherever the chunk is processed, and partials are
/// combined in chunk order. The chunk size is a training setting, independent of the worker count, so
/// one process and any number of workers produce the same bits.
public struct ChunkPlan: Equatable, Sendable, Codable {
    public let batchSize: Int
    public let chunkSize: Int

    public init(batchSize: Int, chunkSize: Int) {
        precondition(batchSize > 0 && chunkSize > 0, "batch and chunk sizes must be positive")
        self.batchSize = batchSize
        self.chunkSize = min(chunkSize, batchSize)
    }

    /// Decodes and checks a plan (a worker receives it from the coordinator): both sizes must be positive.
    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let batchSize = try container.decode(Int.self, forKey: .batchSize)
        let chunkSize = try container.decode(Int.self, forKey: .chunkSize)
        guard batchSize > 0, chunkSize > 0 else {
            throw DecodingError.dataCorruptedError(forKey: .batchSize, in: container, debugDescription: "batch size \(batchSize) and chunk size \(chunkSize) must be positive")
        }
        self.init(batchSize: batchSize, chunkSize: chunkSize)
    }

    public var chunkCount: Int { (batchSize + chunkSize - 1) / chunkSize }

    /// The rows of the global batch that chunk `index` holds (the last chunk may be shorter).
    public func rows(ofChunk index: Int) -> Range<Int> {
        precondition(index >= 0 && index < chunkCount)
        return (index * chunkSize)..<min((index + 1) * chunkSize, batchSize)
    }

    public func rows(ofChunks chunks: Range<Int>) -> Range<Int> {
        guard !chunks.isEmpty else { return 0..<0 }
        return rows(ofChunk: chunks.lowerBound).lowerBound..<rows(ofChunk: chunks.upperBound - 1).upperBound
    }

    /// The contiguous chunks worker `rank` of `workerCount` processes: the first `chunkCount % workerCount`
    /// workers get one chunk more; with more workers than chunks, the last workers get none.
    public func chunks(forRank rank: Int, of workerCount: Int) -> Range<Int> {
        Self.chunks(forRank: rank, of: workerCount, chunkCount: chunkCount)
    }

    /// The contiguous chunks worker `rank` processes when each worker's share of the batch is in proportion
    /// to its weight (its threads): worker r starts at chunk ⌊chunkCount · Σ_{i<r} wᵢ / Σ wᵢ⌋. Deterministic
    /// for given weights; a worker of small weight may get none.
    /// - Precondition: every weight is at least 1.
    public static func chunks<Weights: RandomAccessCollection<Int>>(forRank rank: Int, weights: Weights, chunkCount: Int) -> Range<Int>
    where Weights.Index == Int {
        precondition(rank >= 0 && rank < weights.count && weights.allSatisfy { $0 >= 1 })
        let total = weights.reduce(0, +)
        func boundary(_ r: Int) -> Int { chunkCount * weights[weights.startIndex..<(weights.startIndex + r)].reduce(0, +) / total }
        return boundary(rank)..<boundary(rank + 1)
    }

    /// `chunks(forRank:of:)` for a plan of `chunkCount` chunks.
    public static func chunks(forRank rank: Int, of workerCount: Int, chunkCount: Int) -> Range<Int> {
        precondition(rank >= 0 && rank < workerCount)
        let base = chunkCount / workerCount, extra = chunkCount % workerCount
        let start = rank * base + min(rank, extra)
        return start..<(start + base + (rank < extra ? 1 : 0))
    }
}

/// The part of a global batch that one replica processes: a run of whole chunks.
public struct BatchSlice: Equatable, Sendable {
    public let plan: ChunkPlan
    public let chunks: Range<Int>

    public init(plan: ChunkPlan, chunks: Range<Int>) {
        precondition(chunks.lowerBound >= 0 && chunks.upperBound <= plan.chunkCount, "chunks \(chunks) outside the plan")
        self.plan = plan
        self.chunks = chunks
    }

    /// The whole batch, as one process sees it.
    public static func whole(_ plan: ChunkPlan) -> BatchSlice { BatchSlice(plan: plan, chunks: 0..<plan.chunkCount) }

    public var globalRows: Range<Int> { plan.rows(ofChunks: chunks) }
    public var rowCount: Int { globalRows.count }

    /// Rows of chunk `index` relative to the start of this slice.
    public func localRows(ofChunk index: Int) -> Range<Int> {
        let rows = plan.rows(ofChunk: index)
        let offset = globalRows.lowerBound
        return (rows.lowerBound - offset)..<(rows.upperBound - offset)
    }

    /// Local row ranges of this slice's chunks, in chunk order.
    public var localChunkRows: [Range<Int>] { chunks.map(localRows(ofChunk:)) }
}
