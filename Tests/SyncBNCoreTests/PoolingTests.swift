/// Tests of `MaxPool2d` (kernel 2 stride 2; kernel 3 stride 2 padding 1), `AvgPool2d` (PyTorch's
/// count_include_pad=True: a window's sum divided by k² even where it overlaps the padding),
/// `AdaptiveAvgPool2d(1)` and `Flatten`, built through `LayerBuilder` on odd 5×7 inputs.
///
/// Oracles: `Reference.pool2d` and `Reference.globalAveragePool` (ReferenceLayers.swift), direct loops in
/// Float64 over each window; a corner of a padded average pool worked out by hand; central finite
/// differences (h = 1e-6) of L = Σ w⊙y through the reference for ∂x. The inputs are distinct values at
/// least 0.01 apart, so no max-pool window has a tie and no difference step crosses one.
import Foundation
import XCTest
@testable import SyncBNCore

final class PoolingTests: XCTestCase {
    private let shape = try! TensorShape([2, 5, 7])
    private let plan = ChunkPlan(batchSize: 3, chunkSize: 2)

    /// Distinct values 0.05 apart (plus < 0.01 of noise), shuffled.
    private func input(seed: UInt64) -> [Float] {
        let count = plan.batchSize * shape.count
        var values = (0..<count).map { Float($0) * 0.05 - Float(count) * 0.025 }
        var random = SplitMix64(seed: seed)
        for i in stride(from: count - 1, to: 0, by: -1) { values.swapAt(i, random.below(i + 1)) }
        let noise = randomFloats(count, seed: seed + 1, low: 0, high: 0.01)
        return zip(values, noise).map { $0 + $1 }
    }

    private func check(_ spec: LayerSpec, expectedShape: [Int], file: StaticString = #filePath, line: UInt = #line,
                       reference: @escaping ([Double]) -> [Double]) throws -> LayerUnderTest.Result {
        let pool = LayerUnderTest(spec, input: shape, plan: plan)
        XCTAssertEqual(pool.layer.outputShape.dimensions, expectedShape, "\(spec)", file: file, line: line)
        XCTAssertEqual(pool.store.count, 0, "\(spec) has no parameters", file: file, line: line)
        let x = input(seed: 3), w = randomFloats(plan.batchSize * pool.outputWidth, seed: 4)
        let result = try pool.run(x: x, dy: w)
        let expected = reference(x.map(Double.init))
        assertAllClose(result.y, expected, absolute: 1e-6, relative: 1e-6, "y, \(spec)", file: file, line: line)
        let inferred = pool.layer.infer(makeMatrix(x, rows: plan.batchSize, columns: pool.inputWidth), store: pool.store).toArray()
        XCTAssertEqual(bits(inferred), bits(result.y), "evaluation and training agree, \(spec)", file: file, line: line)
        let numeric = Reference.finiteDifferences(x: x.map(Double.init), p: [], w: w.map(Double.init)) { x, _ in reference(x) }
        assertAllClose(result.dx, numeric.dx, absolute: 1e-6, relative: 1e-5, "∂x, \(spec)", file: file, line: line)
        return result
    }

    func testMaxPoolKernel2Stride2() throws {
        let result = try check(.maxPool2d(kernelSize: 2, stride: 2, padding: 0), expectedShape: [2, 2, 3]) {
            Reference.pool2d($0, n: self.plan.batchSize, input: self.shape, k: 2, stride: 2, padding: 0, max: true)
        }
        // Row 4 and column 6 are in no window: they receive no gradient.
        for s in 0..<plan.batchSize {
            for c in 0..<2 {
                for j in 0..<7 { XCTAssertEqual(result.dx[((s * 2 + c) * 5 + 4) * 7 + j], 0) }
                for i in 0..<5 { XCTAssertEqual(result.dx[((s * 2 + c) * 5 + i) * 7 + 6], 0) }
            }
        }
    }

    func testMaxPoolKernel3Stride2Padding1() throws {
        // Overlapping windows: an input that is the maximum of two windows receives both gradients.
        _ = try check(.maxPool2d(kernelSize: 3, stride: 2, padding: 1), expectedShape: [2, 3, 4]) {
            Reference.pool2d($0, n: self.plan.batchSize, input: self.shape, k: 3, stride: 2, padding: 1, max: true)
        }
    }

    func testMaxPoolTiesGoToTheFirstInScanOrder() throws {
        // Oracle: PyTorch's rule — the first maximum in the window's row-major scan takes the gradient.
        let pool = LayerUnderTest(.maxPool2d(kernelSize: 2, stride: 2, padding: 0), input: try TensorShape([1, 2, 2]),
                                  plan: ChunkPlan(batchSize: 1, chunkSize: 1))
        let result = try pool.run(x: [1, 3, 3, 3], dy: [5])
        XCTAssertEqual(result.y, [3])
        XCTAssertEqual(result.dx, [0, 5, 0, 0])
    }

    func testMaxPool2x2LanesKeepTheScalarRuleWithTiesNaNAndSignedZeros() {
        // Oracle: the rule written out per window — the four values in scan order, `>` to replace (the first of
        // equals wins; a NaN first stays, a later NaN is passed over). Rows of 23 windows: two blocks of eight
        // lanes, one of four and a tail of three; values from a small set so that ties, NaN and ±0 meet in every
        // position.
        let width = 46, windows = 23, rows = 8
        let choices: [Float] = [-1, 0, -0.0, 1, 2, .nan]
        var random = SplitMix64(seed: 11)
        let x = (0..<(2 * rows * width)).map { _ in choices[random.below(choices.count)] }
        for row in 0..<rows {
            var y = [Float](repeating: 7, count: windows), indices = [Int32](repeating: -1, count: windows)
            let top = 2 * row * width
            x.withUnsafeBufferPointer { x in
                MaxPool2d.pool2x2(x.baseAddress!, top: top, width: width, count: windows, into: &y, indices: &indices)
            }
            for j in 0..<windows {
                let a = top + 2 * j
                var best = x[a], index = a
                for p in [a + 1, a + width, a + width + 1] where x[p] > best { best = x[p]; index = p }
                XCTAssertEqual(y[j].bitPattern, best.bitPattern, "row \(row), window \(j)")
                XCTAssertEqual(Int(indices[j]), index, "row \(row), window \(j)")
            }
        }
    }

    func testAvgPoolKernel2Stride2() throws {
        _ = try check(.avgPool2d(kernelSize: 2, stride: 2, padding: 0), expectedShape: [2, 2, 3]) {
            Reference.pool2d($0, n: self.plan.batchSize, input: self.shape, k: 2, stride: 2, padding: 0, max: false)
        }
    }

    func testAvgPoolWithPaddingDividesByKernelArea() throws {
        let result = try check(.avgPool2d(kernelSize: 3, stride: 2, padding: 1), expectedShape: [2, 3, 4]) {
            Reference.pool2d($0, n: self.plan.batchSize, input: self.shape, k: 3, stride: 2, padding: 1, max: false)
        }
        // By hand: the top-left output's window holds 4 real values (2×2) and 5 of padding: their sum / 9.
        let x = input(seed: 3)
        let corner = (Double(x[0]) + Double(x[1]) + Double(x[7]) + Double(x[8])) / 9
        assertClose(result.y[0], corner, absolute: 1e-6)
    }

    func testAdaptiveAvgPoolIsTheChannelMean() throws {
        let result = try check(.adaptiveAvgPool2d(outputSize: 1), expectedShape: [2, 1, 1]) {
            Reference.globalAveragePool($0, n: self.plan.batchSize, input: self.shape)
        }
        XCTAssertEqual(result.y.count, plan.batchSize * 2)
    }

    func testFlattenPassesRowsThroughUnchanged() throws {
        // Oracle: torch.flatten of an NCHW tensor from dim 1 is the row-major CHW order the rows already hold.
        let flatten = LayerUnderTest(.flatten, input: shape, plan: plan)
        XCTAssertEqual(flatten.layer.outputShape.dimensions, [70])
        let x = input(seed: 5), dy = randomFloats(x.count, seed: 6)
        let result = try flatten.run(x: x, dy: dy)
        XCTAssertEqual(bits(result.y), bits(x))
        XCTAssertEqual(bits(result.dx), bits(dy))
    }
}
