/// Tests of `OrderedReduction` (chunk-ordered sums, per-chunk moments and Chan's merge) and of
/// `Round.reduce`.
///
/// Oracles: a one-pass Welford mean/M2 in Float64 over the concatenated data (for merged moments), a
/// two-pass Float64 computation (for per-chunk moments and the ill-conditioned case), and hand-picked
/// Float32 values whose sum depends on the grouping (for the left-to-right order of `sum`).
import XCTest
@testable import SyncBNCore

final class MomentsTests: XCTestCase {
    // MARK: Oracles

    /// Welford's one-pass mean and M2 = Σ(x − mean)² per column, in Float64.
    private func welford(_ x: [Float], rows: Int, features: Int) -> (mean: [Double], m2: [Double]) {
        var mean = [Double](repeating: 0, count: features), m2 = mean
        for r in 0..<rows {
            let n = Double(r + 1)
            for f in 0..<features {
                let v = Double(x[r * features + f])
                let delta = v - mean[f]
                mean[f] += delta / n
                m2[f] += delta * (v - mean[f])
            }
        }
        return (mean, m2)
    }

    /// Per-chunk `[mean(F), M2(F)]` partials, chunk-major, computed by `chunkMoments`.
    private func chunkPartials(_ x: [Float], counts: [Int], features: Int) -> [Double] {
        var partials = [Double](repeating: 0, count: counts.count * 2 * features)
        var start = 0
        x.withUnsafeBufferPointer { xp in
            partials.withUnsafeMutableBufferPointer { pp in
                for (c, count) in counts.enumerated() {
                    OrderedReduction.chunkMoments(xp.baseAddress!, rows: start..<(start + count), features: features,
                                                  into: pp.baseAddress! + c * 2 * features)
                    start += count
                }
            }
        }
        return partials
    }

    private func merge(_ partials: [Double], counts: [Int], features: Int) -> [Double] {
        withDoubles(2 * features) { out in
            partials.withUnsafeBufferPointer {
                OrderedReduction.mergeMoments($0, counts: counts[...], features: features, into: out)
            }
        }
    }

    // MARK: sum

    func testFloatSumAddsChunksLeftToRight() {
        // Oracle: in Float32, (1 + 1e8) − 1e8 = 0 (1e8's spacing is 8) while 1 + (1e8 − 1e8) = 1, so only
        // the left-to-right grouping ((c₀ + c₁) + c₂) gives 0 in column 0. Column 1 is exact either way.
        let partials: [Float] = [1, 2, 1e8, 3, -1e8, 4]
        var result = [Float](repeating: -7, count: 2)
        partials.withUnsafeBufferPointer { p in
            result.withUnsafeMutableBufferPointer { OrderedReduction.sum(p, width: 2, into: $0) }
        }
        XCTAssertEqual(result, [0, 9])
    }

    func testDoubleSumAddsChunksLeftToRight() {
        // Oracle: the same grouping argument in Float64, where 2⁵³ + 1 rounds to 2⁵³.
        let big = 0x1p53
        let partials: [Double] = [1, big, -big]
        let result = withDoubles(1) { out in partials.withUnsafeBufferPointer { OrderedReduction.sum($0, width: 1, into: out) } }
        XCTAssertEqual(result, [0])
    }

    func testSumOfNoChunksIsZero() {
        // Oracle: the documented contract ("with no chunks the result is all zeros"), over a dirty result buffer.
        var result: [Double] = [5, 6, 7]
        let empty: [Double] = []
        empty.withUnsafeBufferPointer { p in
            result.withUnsafeMutableBufferPointer { OrderedReduction.sum(p, width: 3, into: $0) }
        }
        XCTAssertEqual(result, [0, 0, 0])
    }

    // MARK: chunkMoments

    func testChunkMomentsMatchTwoPassFloat64() {
        // Oracle: mean and M2 of rows 2..<9 computed here in Float64, two passes.
        let features = 3, rows = 11
        let x = randomNormals(rows * features, seed: 1, mean: 3, std: 2)
        let partial = withDoubles(2 * features) { out in
            x.withUnsafeBufferPointer { OrderedReduction.chunkMoments($0.baseAddress!, rows: 2..<9, features: features, into: out.baseAddress!) }
        }
        for f in 0..<features {
            let values = (2..<9).map { Double(x[$0 * features + f]) }
            let mean = values.reduce(0, +) / Double(values.count)
            let m2 = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) }
            assertClose(partial[f], mean, relative: 1e-14, "mean of feature \(f)")
            assertClose(partial[features + f], m2, relative: 1e-12, "M2 of feature \(f)")
        }
        // An empty chunk has zero moments (over a dirty buffer).
        var dirty = [Double](repeating: .nan, count: 2 * features)
        x.withUnsafeBufferPointer { xp in dirty.withUnsafeMutableBufferPointer {
            OrderedReduction.chunkMoments(xp.baseAddress!, rows: 4..<4, features: features, into: $0.baseAddress!)
        } }
        XCTAssertEqual(dirty, [0, 0, 0, 0, 0, 0])
    }

    // MARK: mergeMoments

    func testMergeMatchesOnePassOverConcatenationWithUnevenAndEmptyChunks() {
        // Oracle: Welford over all rows at once, in Float64.
        let features = 3
        let counts = [0, 3, 0, 1, 5, 0, 2, 7, 0]
        let rows = counts.reduce(0, +)
        var x = [Float](repeating: 0, count: rows * features)
        let columns = [randomNormals(rows, seed: 2, mean: -4, std: 0.5),
                       randomNormals(rows, seed: 3, mean: 100, std: 30),
                       randomNormals(rows, seed: 4, mean: 0, std: 1e-3)]
        for r in 0..<rows { for f in 0..<features { x[r * features + f] = columns[f][r] } }

        var partials = chunkPartials(x, counts: counts, features: features)
        // Chunks of count 0 must be skipped, whatever their partials hold.
        for (c, count) in counts.enumerated() where count == 0 {
            for i in 0..<(2 * features) { partials[c * 2 * features + i] = .nan }
        }
        let merged = merge(partials, counts: counts, features: features)
        let reference = welford(x, rows: rows, features: features)
        for f in 0..<features {
            assertClose(merged[f], reference.mean[f], absolute: 1e-12 * 100, relative: 1e-12, "mean of feature \(f)")
            assertClose(merged[features + f], reference.m2[f], relative: 1e-10, "M2 of feature \(f)")
        }
    }

    func testMergeOfSingleChunkIsThatChunk() {
        // Oracle: merging one chunk (between empty ones) must return its partial unchanged, bit for bit.
        let partial: [Double] = [1.5, -2.25, 0.125, 7]
        let partials = [Double](repeating: .nan, count: 4) + partial + [Double](repeating: .nan, count: 4)
        XCTAssertEqual(bits(merge(partials, counts: [0, 6, 0], features: 2)), bits(partial))
    }

    func testMergeOfOnlyEmptyChunksIsZero() {
        // Oracle: no samples, so the documented result is zeros (not NaN from 0/0).
        let partials = [Double](repeating: .nan, count: 3 * 4)
        XCTAssertEqual(merge(partials, counts: [0, 0, 0], features: 2), [0, 0, 0, 0])
        XCTAssertEqual(merge([], counts: [], features: 2), [0, 0, 0, 0])
    }

    func testMergeIsAccurateForLargeMeanAndTinySpreadWhereNaiveFloat32SumsFail() {
        // Oracle: two-pass Float64 variance of the very Float32 values used. Mean 1e4 and std 1e-2 is the
        // ill-conditioned case of the sources' doc comment: variance ~1e-4 next to mean² ~1e8.
        let counts = [7, 13, 1, 0, 50, 29, 100, 300, 0, 500]
        let n = counts.reduce(0, +)
        let x = randomNormals(n, seed: 5, mean: 1e4, std: 1e-2)
        let values = x.map(Double.init)
        let trueMean = values.reduce(0, +) / Double(n)
        let trueVariance = values.reduce(0) { $0 + ($1 - trueMean) * ($1 - trueMean) } / Double(n)
        XCTAssertGreaterThan(trueVariance, 5e-5, "the data must really have a spread of about 1e-2")

        let merged = merge(chunkPartials(x, counts: counts, features: 1), counts: counts, features: 1)
        assertClose(merged[0], trueMean, relative: 1e-12, "merged mean")
        assertClose(merged[1] / Double(n), trueVariance, relative: 1e-3, "merged variance")

        // The naive Float32 formula var = Σx²/n − (Σx/n)² is badly wrong here, so a merge that went through
        // Σx and Σx² in Float32 would fail the assertion above.
        var sum: Float = 0, sumOfSquares: Float = 0
        for v in x { sum += v; sumOfSquares += v * v }
        let naiveMean = sum / Float(n)
        let naiveVariance = Double(sumOfSquares / Float(n) - naiveMean * naiveMean)
        XCTAssertGreaterThan(abs(naiveVariance - trueVariance) / trueVariance, 10,
                             "naive Float32 variance \(naiveVariance) vs true \(trueVariance)")
    }

    // MARK: Round.reduce

    func testMomentsRoundTakesChunkCountsFromThePlan() {
        // Oracle: Welford over the global batch; the plan (batch 7, chunk 3) has chunks of 3, 3 and 1 rows.
        let plan = ChunkPlan(batchSize: 7, chunkSize: 3)
        let features = 2
        let x = randomNormals(7 * features, seed: 6, mean: 1, std: 3)
        let partials = chunkPartials(x, counts: [3, 3, 1], features: features)
        let result = withDoubles(2 * features) { out in
            partials.withUnsafeBufferPointer {
                Round.moments(layer: 0).reduce($0, plan: plan, chunks: 0..<3, width: 2 * features, into: out)
            }
        }
        let reference = welford(x, rows: 7, features: features)
        for f in 0..<features {
            assertClose(result[f], reference.mean[f], absolute: 1e-13, relative: 1e-12)
            assertClose(result[features + f], reference.m2[f], relative: 1e-10)
        }
    }

    func testSumRoundsAddInChunkOrder() {
        // Oracle: the grouping example of testDoubleSumAddsChunksLeftToRight, through every summing round.
        let big = 0x1p53
        let partials: [Double] = [1, 10, big, 20, -big, 30]
        let plan = ChunkPlan(batchSize: 3, chunkSize: 1)
        for round in [Round.sums(layer: 2), .gradients, .metrics] {
            let result = withDoubles(2) { out in
                partials.withUnsafeBufferPointer { round.reduce($0, plan: plan, chunks: 0..<3, width: 2, into: out) }
            }
            XCTAssertEqual(result, [0, 60], "\(round)")
        }
    }

    func testLocalCollectiveReducesOverTheWholePlan() throws {
        // Oracle: `Round.reduce` called directly over all chunks of the plan, compared bit for bit.
        let plan = ChunkPlan(batchSize: 10, chunkSize: 4)
        let features = 3
        let x = randomNormals(10 * features, seed: 7, mean: 2, std: 1)
        let partials = chunkPartials(x, counts: [4, 4, 2], features: features)
        let collective = LocalCollective(plan: plan, valuesPerRow: flatScales)
        let viaCollective = try withDoubles(2 * features) { out in
            try partials.withUnsafeBufferPointer { try collective.allReduce(.moments(layer: 0), partials: $0, into: out) }
        }
        let direct = withDoubles(2 * features) { out in
            partials.withUnsafeBufferPointer { Round.moments(layer: 0).reduce($0, plan: plan, chunks: 0..<3, width: 2 * features, into: out) }
        }
        XCTAssertEqual(bits(viaCollective), bits(direct))
    }
}
