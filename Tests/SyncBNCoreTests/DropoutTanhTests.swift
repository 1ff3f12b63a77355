/// Tests of `Tanh` and `Dropout` built through `LayerBuilder`.
///
/// Oracles: Foundation's Float64 tanh and central finite differences (h = 1e-6) of L = Σ w⊙tanh(x) for
/// Tanh. For Dropout, `torch.nn.Dropout`'s definition — each value zeroed with probability p or scaled by
/// 1/(1 − p), the identity for p = 0 and in evaluation, ∂x = dy·mask — with the kept fraction checked
/// against 1 − p within 5 binomial standard deviations; and the documented determinism contract: the mask
/// depends only on (seed, step, global row, position), so the same global rows get the same mask whichever
/// slice holds them.
import Foundation
import XCTest
@testable import SyncBNCore

final class TanhLayerTests: XCTestCase {
    func testTanhForwardAndBackward() throws {
        let plan = ChunkPlan(batchSize: 3, chunkSize: 2)
        let tanh = LayerUnderTest(.tanh, input: try TensorShape([2, 3, 3]), plan: plan)
        let x = randomFloats(plan.batchSize * 18, seed: 1, low: -3, high: 3), w = randomFloats(plan.batchSize * 18, seed: 2)
        let result = try tanh.run(x: x, dy: w)
        assertAllClose(result.y, x.map { Foundation.tanh(Double($0)) }, absolute: 1e-6, "y")
        let numeric = Reference.finiteDifferences(x: x.map(Double.init), p: [], w: w.map(Double.init)) { x, _ in x.map { Foundation.tanh($0) } }
        assertAllClose(result.dx, numeric.dx, absolute: 1e-6, relative: 1e-5, "∂x")
    }
}

final class DropoutTests: XCTestCase {
    private let shape = try! TensorShape([2, 10, 10])
    private let plan = ChunkPlan(batchSize: 6, chunkSize: 2)

    /// Inputs away from 0, so that y/x recovers the mask.
    private func input() -> [Float] {
        randomFloats(plan.batchSize * shape.count, seed: 1, low: 0.5, high: 2).enumerated().map { $0.offset % 2 == 0 ? $0.element : -$0.element }
    }

    private func masks(p: Double, slice: BatchSlice? = nil, step: Int = 0, seed: UInt64 = 7) throws -> (mask: [Float], result: LayerUnderTest.Result) {
        let dropout = LayerUnderTest(.dropout(p: p), input: shape, plan: plan)
        let slice = slice ?? .whole(plan)
        let width = shape.count, rows = slice.globalRows
        let x = Array(input()[(rows.lowerBound * width)..<(rows.upperBound * width)])
        let dy = randomFloats(x.count, seed: 3)
        let result = try dropout.run(x: x, dy: dy, slice: slice, step: step, seed: seed)
        let mask = zip(result.y, x).map { $0 / $1 }
        // ∂x = dy·mask, value for value.
        for i in 0..<x.count { assertClose(result.dx[i], Double(dy[i]) * Double(mask[i]), absolute: 1e-6, relative: 1e-5) }
        return (mask, result)
    }

    func testKeptValuesAreScaledAndTheKeptFractionIsOneMinusP() throws {
        for p in [0.2, 0.5, 0.8] {
            let (mask, _) = try masks(p: p)
            let scale = 1 / (1 - p)
            var kept = 0
            for m in mask {
                if m == 0 { continue }
                kept += 1
                assertClose(m, scale, relative: 1e-6, "a kept value is scaled by 1/(1 − p), p = \(p)")
            }
            let n = Double(mask.count), fraction = Double(kept) / n
            let sigma = (p * (1 - p) / n).squareRoot()
            XCTAssertLessThan(abs(fraction - (1 - p)), 5 * sigma, "kept fraction \(fraction) for p = \(p)")
        }
    }

    func testZeroProbabilityIsTheIdentity() throws {
        let (mask, result) = try masks(p: 0)
        XCTAssertTrue(mask.allSatisfy { $0 == 1 })
        XCTAssertEqual(bits(result.y), bits(input()))
    }

    func testEvaluationIsTheIdentity() throws {
        let dropout = LayerUnderTest(.dropout(p: 0.5), input: shape, plan: plan)
        let x = input()
        XCTAssertEqual(bits(dropout.layer.infer(makeMatrix(x, rows: plan.batchSize, columns: shape.count), store: dropout.store).toArray()), bits(x))
    }

    func testMaskDependsOnlyOnSeedStepGlobalRowAndPosition() throws {
        let width = shape.count
        let whole = try masks(p: 0.5).mask
        // The same global rows, held by slices of one chunk, two chunks or the rest of the batch.
        for chunks in [0..<1, 1..<2, 2..<3, 1..<3] {
            let slice = BatchSlice(plan: plan, chunks: chunks)
            let rows = slice.globalRows
            XCTAssertEqual(bits(try masks(p: 0.5, slice: slice).mask), bits(Array(whole[(rows.lowerBound * width)..<(rows.upperBound * width)])),
                           "chunks \(chunks)")
        }
        // Another step, another seed, another row or another position: other masks.
        XCTAssertNotEqual(try masks(p: 0.5, step: 1).mask, whole)
        XCTAssertNotEqual(try masks(p: 0.5, seed: 8).mask, whole)
        XCTAssertNotEqual(Array(whole[0..<width]), Array(whole[width..<(2 * width)]), "rows 0 and 1 have different masks")
        XCTAssertNotEqual(Array(whole[0..<100]), Array(whole[100..<200]), "channels 0 and 1 of a row have different masks")
    }

    func testTwoDropoutLayersDrawDifferentMasks() throws {
        // Oracle: the contract that layers are separated by their ordinal among the network's Dropout layers.
        var builder = LayerBuilder(capacity: plan.batchSize, plan: plan)
        let layers = builder.build([.dropout(p: 0.5), .dropout(p: 0.5)], input: shape)
        let store = ParameterStore(count: 0)
        let context = StepContext.forTest(slice: .whole(plan), store: store, gradientWidth: 1)
        let x = makeMatrix([Float](repeating: 1, count: plan.batchSize * shape.count), rows: plan.batchSize, columns: shape.count)
        let first = try layers[0].forward(x, context).toArray(), second = try layers[1].forward(x, context).toArray()
        XCTAssertNotEqual(first, second)
    }
}
