/// Tests of `ChunkPlan` and `BatchSlice`: how a global batch is cut into chunks and shared among workers,
/// and that partials computed by separate workers on their own slices reduce to the same bits.
///
/// Oracles: exhaustive enumeration of the invariants (every chunk exactly once, contiguous, in rank order,
/// balanced to within one chunk) over batch sizes 1…20, chunk sizes 1…7 and worker counts 1…9; and, for
/// determinism, the partials of the whole batch computed in one process, compared bit for bit.
import Foundation
import XCTest
@testable import SyncBNCore

final class ChunkPlanTests: XCTestCase {
    func testChunksCoverTheBatchInOrder() {
        // Oracle: the rows 0..<batch, cut every chunkSize rows (chunk sizes larger than the batch are clamped).
        for batch in 1...20 {
            for chunk in 1...25 {
                let plan = ChunkPlan(batchSize: batch, chunkSize: chunk)
                let size = min(chunk, batch)
                XCTAssertEqual(plan.chunkSize, size)
                XCTAssertEqual(plan.chunkCount, (batch + size - 1) / size)
                var next = 0
                for c in 0..<plan.chunkCount {
                    let rows = plan.rows(ofChunk: c)
                    XCTAssertEqual(rows.lowerBound, next, "batch \(batch) chunk \(chunk): chunk \(c) is not contiguous")
                    XCTAssertFalse(rows.isEmpty)
                    XCTAssertEqual(rows.count, c < plan.chunkCount - 1 ? size : batch - (plan.chunkCount - 1) * size)
                    next = rows.upperBound
                }
                XCTAssertEqual(next, batch)
                XCTAssertEqual(plan.rows(ofChunks: 0..<plan.chunkCount), 0..<batch)
                XCTAssertEqual(plan.rows(ofChunks: 0..<0), 0..<0)
            }
        }
    }

    func testWorkersGetEveryChunkOnceContiguousInRankOrderAndBalanced() {
        // Oracle: exhaustive check of the sharing invariants.
        for batch in 1...20 {
            for chunk in 1...7 {
                let plan = ChunkPlan(batchSize: batch, chunkSize: chunk)
                for workers in 1...9 {
                    let context = "batch \(batch), chunk \(chunk), \(workers) workers"
                    let ranges = (0..<workers).map { plan.chunks(forRank: $0, of: workers) }
                    var next = 0
                    for (rank, range) in ranges.enumerated() {
                        XCTAssertEqual(range.lowerBound, next, "\(context): rank \(rank) does not continue rank \(rank - 1)")
                        next = range.upperBound
                        if plan.chunkCount >= workers { XCTAssertFalse(range.isEmpty, "\(context): rank \(rank) has no chunk") }
                    }
                    XCTAssertEqual(next, plan.chunkCount, "\(context): chunks not all covered")
                    let sizes = ranges.map(\.count)
                    XCTAssertLessThanOrEqual(sizes.max()! - sizes.min()!, 1, "\(context): unbalanced \(sizes)")
                    XCTAssertEqual(sizes, sizes.sorted(by: >), "\(context): earlier ranks must get the extra chunks")

                    // The workers' global rows tile the batch in rank order.
                    var row = 0
                    for range in ranges {
                        let slice = BatchSlice(plan: plan, chunks: range)
                        if range.isEmpty { XCTAssertEqual(slice.rowCount, 0); continue }
                        XCTAssertEqual(slice.globalRows.lowerBound, row, context)
                        row = slice.globalRows.upperBound
                    }
                    XCTAssertEqual(row, batch, context)
                }
            }
        }
    }

    func testLocalRowsAreRelativeToTheSlice() {
        // Oracle: hand-computed rows for batch 10, chunk 3 (chunks 0..<3, 3..<6, 6..<9, 9..<10).
        let plan = ChunkPlan(batchSize: 10, chunkSize: 3)
        let slice = BatchSlice(plan: plan, chunks: 2..<4)
        XCTAssertEqual(slice.globalRows, 6..<10)
        XCTAssertEqual(slice.rowCount, 4)
        XCTAssertEqual(slice.localChunkRows, [0..<3, 3..<4])
        XCTAssertEqual(BatchSlice.whole(plan).localChunkRows, [0..<3, 3..<6, 6..<9, 9..<10])
        let empty = BatchSlice(plan: plan, chunks: 4..<4)
        XCTAssertEqual(empty.rowCount, 0)
        XCTAssertEqual(empty.localChunkRows, [])
    }

    func testCodableRoundTripAndDecodingKeepsTheInitializersInvariants() throws {
        // Oracle: `init`'s contract — sizes must be positive and the chunk size is clamped to the batch.
        // A worker decodes its plan from the coordinator's JSON configuration, so decoding must not produce
        // a plan `init` would refuse (chunkSize 0 makes `chunkCount` divide by zero).
        let plan = ChunkPlan(batchSize: 7, chunkSize: 3)
        XCTAssertEqual(try JSONDecoder().decode(ChunkPlan.self, from: JSONEncoder().encode(plan)), plan)
        for bad in [#"{"batchSize":7,"chunkSize":0}"#, #"{"batchSize":0,"chunkSize":2}"#, #"{"batchSize":-4,"chunkSize":2}"#] {
            XCTAssertThrowsError(try JSONDecoder().decode(ChunkPlan.self, from: Data(bad.utf8)), "decoded \(bad)")
        }
        let unclamped = try? JSONDecoder().decode(ChunkPlan.self, from: Data(#"{"batchSize":4,"chunkSize":9}"#.utf8))
        XCTAssertEqual(unclamped?.chunkSize, 4, "chunk size larger than the batch must be clamped as init does")
    }

    func testPartialsComputedByWorkersReduceToTheSameBitsAsOneProcess() {
        // Oracle: one process computing every chunk's moments and Σ partials over the whole batch; workers
        // compute theirs on a copy of their own rows only (starting at row 0, as a worker holds them).
        // The concatenation of their partials in rank order must reduce to identical bits.
        let features = 5
        for (batch, chunk) in [(7, 2), (20, 3), (13, 13), (9, 1)] {
            let plan = ChunkPlan(batchSize: batch, chunkSize: chunk)
            let x = randomNormals(batch * features, seed: UInt64(batch * 100 + chunk), mean: 50, std: 4)
            let whole = partials(of: x, slice: .whole(plan), features: features)
            let wholeMoments = reduce(.moments(layer: 0), whole, plan: plan, width: 2 * features)
            let wholeSums = reduce(.sums(layer: 0), whole, plan: plan, width: 2 * features)
            for workers in 1...5 {
                var gathered: [Double] = []
                for rank in 0..<workers {
                    let slice = BatchSlice(plan: plan, chunks: plan.chunks(forRank: rank, of: workers))
                    let rows = slice.globalRows
                    let own = Array(x[(rows.lowerBound * features)..<(rows.upperBound * features)])
                    gathered += partials(of: own, slice: slice, features: features)
                }
                XCTAssertEqual(bits(gathered), bits(whole), "batch \(batch), chunk \(chunk), \(workers) workers: partials differ")
                XCTAssertEqual(bits(reduce(.moments(layer: 0), gathered, plan: plan, width: 2 * features)), bits(wholeMoments))
                XCTAssertEqual(bits(reduce(.sums(layer: 0), gathered, plan: plan, width: 2 * features)), bits(wholeSums))
            }
        }
    }

    /// Shares in proportion to the workers' threads: contiguous, covering every chunk once, each within one
    /// chunk of its exact share, in rank order.
    func testWeightedSharesCoverTheBatchInProportion() {
        for weights in [[1, 1], [2, 1], [1, 3], [4, 1, 1], [1, 2, 3, 4], [7], [1, 1, 1, 1, 1, 1, 1, 1, 1]] {
            for chunkCount in [0, 1, 3, 4, 8, 13, 64] {
                let total = weights.reduce(0, +)
                var next = 0
                for (rank, weight) in weights.enumerated() {
                    let chunks = ChunkPlan.chunks(forRank: rank, weights: weights, chunkCount: chunkCount)
                    XCTAssertEqual(chunks.lowerBound, next, "weights \(weights), \(chunkCount) chunks: rank \(rank) is not contiguous")
                    let exact = Double(chunkCount * weight) / Double(total)
                    XCTAssertLessThan(abs(Double(chunks.count) - exact), 1, "weights \(weights), \(chunkCount) chunks: rank \(rank) gets \(chunks)")
                    next = chunks.upperBound
                }
                XCTAssertEqual(next, chunkCount, "weights \(weights): the shares do not cover the batch")
            }
        }
        // A worker with twice the threads gets twice the chunks.
        XCTAssertEqual(ChunkPlan.chunks(forRank: 0, weights: [2, 1], chunkCount: 12), 0..<8)
        XCTAssertEqual(ChunkPlan.chunks(forRank: 1, weights: [2, 1], chunkCount: 12), 8..<12)
    }

    private func partials(of x: [Float], slice: BatchSlice, features: Int) -> [Double] {
        let chunks = slice.localChunkRows
        var out = [Double](repeating: 0, count: chunks.count * 2 * features)
        x.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                for (c, rows) in chunks.enumerated() {
                    OrderedReduction.chunkMoments(xp.baseAddress!, rows: rows, features: features, into: op.baseAddress! + c * 2 * features)
                }
            }
        }
        return out
    }

    private func reduce(_ round: Round, _ partials: [Double], plan: ChunkPlan, width: Int) -> [Double] {
        withDoubles(width) { out in
            partials.withUnsafeBufferPointer { round.reduce($0, plan: plan, chunks: 0..<plan.chunkCount, width: width, into: out) }
        }
    }
}
