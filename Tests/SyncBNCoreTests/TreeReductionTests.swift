/// Tests of `TreeReduction`: the tiling of a run of chunks into tree nodes, and that evaluating the tree from
/// pre-summed tiles gives the same bits as from every chunk's partial.
///
/// Oracles: hand-derived tilings of small trees; grouping-sensitive values (1e8 trick) whose Float32 sum is 0
/// for the tree's grouping and 1 left to right; bit equality between the two ways of evaluating.
import XCTest
@testable import SyncBNCore

final class TreeReductionTests: XCTestCase {
    func testTilesAreTheLargestNodesInsideTheRun() {
        XCTAssertEqual(TreeReduction.blocks(covering: 0..<5, chunkCount: 5), [0..<5])
        XCTAssertEqual(TreeReduction.blocks(covering: 0..<4, chunkCount: 5), [0..<4])
        XCTAssertEqual(TreeReduction.blocks(covering: 1..<4, chunkCount: 5), [1..<2, 2..<4])
        XCTAssertEqual(TreeReduction.blocks(covering: 4..<5, chunkCount: 5), [4..<5])
        XCTAssertEqual(TreeReduction.blocks(covering: 3..<7, chunkCount: 7), [3..<4, 4..<7])  // [4, 8) clipped
        XCTAssertEqual(TreeReduction.blocks(covering: 2..<2, chunkCount: 7), [])
        XCTAssertEqual(TreeReduction.blocks(covering: 0..<1, chunkCount: 1), [0..<1])
    }

    func testTilesPartitionEveryWorkersRun() {
        for chunkCount in 1...40 {
            let plan = ChunkPlan(batchSize: chunkCount, chunkSize: 1)
            for workers in 1...9 {
                for rank in 0..<workers {
                    let run = plan.chunks(forRank: rank, of: workers)
                    let tiles = TreeReduction.blocks(covering: run, chunkCount: chunkCount)
                    XCTAssertEqual(tiles.first?.lowerBound ?? run.lowerBound, run.lowerBound)
                    XCTAssertEqual(tiles.last?.upperBound ?? run.upperBound, run.upperBound)
                    for (a, b) in zip(tiles, tiles.dropFirst()) { XCTAssertEqual(a.upperBound, b.lowerBound) }
                    let bound = 2 * TreeReduction.paddedCount(chunkCount).trailingZeroBitCount + 1
                    XCTAssertLessThanOrEqual(tiles.count, bound, "C \(chunkCount), \(workers) workers, rank \(rank)")
                }
            }
        }
    }

    func testSumUsesTheTreesGrouping() {
        // (1 + 1e8) + (−1e8 + 1) = 1e8 − 1e8 = 0 in Float32; left to right it is ((1 + 1e8) − 1e8) + 1 = 1.
        let partials: [Float] = [1, 1e8, -1e8, 1]
        XCTAssertEqual(total(partials, chunkCount: 4, width: 1), [0])
    }

    func testPreSummedTilesGiveTheSameBitsAsEveryChunk() {
        for chunkCount in [1, 2, 3, 4, 5, 7, 8, 13, 35] {
            let width = 17
            let partials = randomNormals(chunkCount * width, seed: UInt64(chunkCount), std: 1e3)
            let expected = total(partials, chunkCount: chunkCount, width: width)
            let plan = ChunkPlan(batchSize: chunkCount, chunkSize: 1)
            for workers in 1...8 {
                // Each worker pre-sums its tiles from its own chunks, as a worker does before sending them.
                var tiles: [Range<Int>: [Float]] = [:]
                for rank in 0..<workers {
                    for tile in TreeReduction.blocks(covering: plan.chunks(forRank: rank, of: workers), chunkCount: chunkCount) {
                        tiles[tile] = node(tile, of: partials, chunkCount: chunkCount, width: width)
                    }
                }
                let combined = evaluate(0..<chunkCount, chunkCount: chunkCount, width: width) { tiles[$0] }
                XCTAssertEqual(combined.map(\.bitPattern), expected.map(\.bitPattern), "C \(chunkCount), \(workers) workers")
            }
        }
    }

    // MARK: Helpers

    private func total(_ partials: [Float], chunkCount: Int, width: Int) -> [Float] {
        node(0..<chunkCount, of: partials, chunkCount: chunkCount, width: width)
    }

    /// A node's value evaluated from every chunk's partial.
    private func node(_ range: Range<Int>, of partials: [Float], chunkCount: Int, width: Int) -> [Float] {
        evaluate(range, chunkCount: chunkCount, width: width) { r in
            r.count == 1 ? Array(partials[(r.lowerBound * width)..<((r.lowerBound + 1) * width)]) : nil
        }
    }

    private func evaluate(_ range: Range<Int>, chunkCount: Int, width: Int, stored: (Range<Int>) -> [Float]?) -> [Float] {
        var result = [Float](repeating: .nan, count: width)
        var scratch = [Float](repeating: .nan, count: TreeReduction.scratchCount(chunkCount: chunkCount) * width)
        var pointers: [Range<Int>: UnsafeMutablePointer<Float>] = [:]
        defer { for p in pointers.values { p.deallocate() } }
        result.withUnsafeMutableBufferPointer { out in
            scratch.withUnsafeMutableBufferPointer { s in
                TreeReduction.evaluate(range, chunkCount: chunkCount, width: width, value: { r in
                    if let p = pointers[r] { return UnsafePointer(p) }
                    guard let values = stored(r) else { return nil }
                    let p = UnsafeMutablePointer<Float>.allocate(capacity: width)
                    p.initialize(from: values, count: width)
                    pointers[r] = p
                    return UnsafePointer(p)
                }, into: out.baseAddress!, scratch: s.baseAddress!)
            }
        }
        return result
    }
}
