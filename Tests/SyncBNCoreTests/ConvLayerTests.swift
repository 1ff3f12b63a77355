/// Tests of the `Conv2d` layer built through `LayerBuilder`: stride 1 and 2, padding 0 and 1, bias on and
/// off, odd 5×7 inputs, several input channels, 1×1 and even kernels.
///
/// Oracles: `Reference.conv2d` (ReferenceLayers.swift), the convolution's definition as direct loops in
/// Float64, with the tolerance relative to Σ|terms| of each output; central finite differences
/// (h = 1e-6, Float64) of L = Σ w⊙y through that reference for ∂x and for ∂W, ∂b summed over the chunk
/// gradient rows, with the tolerance relative to the same derivatives of the all-|·| problem (Σ|terms|
/// of each derivative). Chunk invariance is checked against the layer itself: a chunk's output,
/// ∂x and gradient row must have the same bits whether its slice holds one chunk or all of them.
import Foundation
import XCTest
@testable import SyncBNCore

final class ConvLayerTests: XCTestCase {
    override func setUp() {
        super.setUp()
        BLAS.useSingleThread()
    }

    private struct Case: CustomStringConvertible {
        var input: [Int], out: Int, k: Int, stride: Int, padding: Int, bias: Bool
        var spec: LayerSpec { .conv2d(inChannels: input[0], outChannels: out, kernelSize: k, stride: stride, padding: padding, bias: bias) }
        var description: String { "Conv2d(\(input[0])→\(out), k \(k), stride \(stride), padding \(padding), bias \(bias)) on \(input)" }
    }

    private let cases = [
        Case(input: [3, 5, 7], out: 4, k: 3, stride: 1, padding: 0, bias: true),
        Case(input: [3, 5, 7], out: 4, k: 3, stride: 2, padding: 1, bias: false),
        Case(input: [2, 5, 7], out: 3, k: 3, stride: 1, padding: 1, bias: true),
        Case(input: [2, 5, 7], out: 3, k: 3, stride: 2, padding: 0, bias: true),
        Case(input: [2, 5, 7], out: 3, k: 2, stride: 2, padding: 1, bias: false),
        Case(input: [3, 5, 7], out: 2, k: 1, stride: 2, padding: 0, bias: false),
    ]
    /// Three samples in chunks of 2 and 1.
    private let plan = ChunkPlan(batchSize: 3, chunkSize: 2)

    private func makeLayer(_ c: Case) throws -> LayerUnderTest {
        let conv = LayerUnderTest(c.spec, input: try TensorShape(c.input), plan: plan, seed: 9)
        XCTAssertTrue(conv.layer is Conv2d)
        // Biases of the same size as the weights, so that they matter.
        if let bias = (conv.layer as! Conv2d).bias {
            let values = randomFloats(bias.count, seed: 4, low: -0.5, high: 0.5)
            for (i, v) in zip(bias.range, values) { conv.store.values[i] = v }
        }
        return conv
    }

    func testOutputShapesFollowPyTorchFormula() throws {
        // Oracle: ⌊(n + 2p − k)/s⌋ + 1 worked out by hand for each case.
        let expected = [[4, 3, 5], [4, 3, 4], [3, 5, 7], [3, 2, 3], [3, 3, 4], [2, 3, 4]]
        for (c, shape) in zip(cases, expected) {
            XCTAssertEqual(try makeLayer(c).layer.outputShape.dimensions, shape, "\(c)")
        }
        // Parameter tensors in PyTorch's order and shapes: weight [Cout, Cin, k, k], then bias [Cout].
        let conv = try makeLayer(cases[0]).layer
        XCTAssertEqual(conv.parameters.map(\.name), ["weight", "bias"])
        XCTAssertEqual(conv.parameters.map(\.shape), [[4, 3, 3, 3], [4]])
        XCTAssertEqual(try makeLayer(cases[1]).layer.parameters.map(\.name), ["weight"])
    }

    func testForwardMatchesDirectLoopsInFloat64() throws {
        for c in cases {
            let conv = try makeLayer(c)
            let x = randomFloats(plan.batchSize * conv.inputWidth, seed: 11, low: -2, high: 2)
            let dy = [Float](repeating: 0, count: plan.batchSize * conv.outputWidth)
            let result = try conv.run(x: x, dy: dy)
            let layer = conv.layer as! Conv2d
            let reference = Reference.conv2d(x.map(Double.init), n: plan.batchSize, input: layer.inputShape, p: conv.parameters.map(Double.init),
                                             weight: layer.weight.offset, bias: layer.bias?.offset, outChannels: c.out, k: c.k,
                                             stride: c.stride, padding: c.padding)
            assertAllClose(result.y, reference.y, absolute: 1e-7, scale: reference.scale, scaled: 1e-5, "y, \(c)")
            // Evaluation (16-sample blocks, no chunks) computes the same function.
            let inferred = layer.infer(makeMatrix(x, rows: plan.batchSize, columns: conv.inputWidth), store: conv.store).toArray()
            assertAllClose(inferred, reference.y, absolute: 1e-7, scale: reference.scale, scaled: 1e-5, "infer, \(c)")
        }
    }

    func testBackwardMatchesFiniteDifferencesOfTheReference() throws {
        for c in cases {
            let conv = try makeLayer(c)
            let layer = conv.layer as! Conv2d
            let n = plan.batchSize
            let x = randomFloats(n * conv.inputWidth, seed: 12, low: -2, high: 2)
            let w = randomFloats(n * conv.outputWidth, seed: 13)
            let result = try conv.run(x: x, dy: w)
            let p = conv.parameters.map(Double.init)
            func f(_ x: [Double], _ p: [Double]) -> [Double] {
                Reference.conv2d(x, n: n, input: layer.inputShape, p: p, weight: layer.weight.offset, bias: layer.bias?.offset,
                                 outChannels: c.out, k: c.k, stride: c.stride, padding: c.padding).y
            }
            let numeric = Reference.finiteDifferences(x: x.map(Double.init), p: p, w: w.map(Double.init), f)
            // Σ|terms| of each derivative: the derivatives of the same problem with every value made positive.
            let scale = Reference.finiteDifferences(x: x.map { Double(abs($0)) }, p: p.map(abs), w: w.map { Double(abs($0)) }, f)
            assertAllClose(result.dx, numeric.dx, absolute: 1e-7, scale: scale.dx, scaled: 1e-5, "∂x, \(c)")
            assertAllClose(result.gradients, numeric.dp, absolute: 1e-7, scale: scale.dp, scaled: 1e-5, "∂W, ∂b, \(c)")
            XCTAssertGreaterThan(result.gradients.map(abs).max()!, 0.1, "the gradients are not trivially zero")
        }
    }

    func testFirstLayerSkipsTheInputGradientButNotTheParameterGradient() throws {
        // Oracle: the same layer with `computesInputGradient` on; the network clears it for its first layer.
        let conv = try makeLayer(cases[2])
        let x = randomFloats(plan.batchSize * conv.inputWidth, seed: 14), w = randomFloats(plan.batchSize * conv.outputWidth, seed: 15)
        let full = try conv.run(x: x, dy: w)
        (conv.layer as! Conv2d).computesInputGradient = false
        let first = try conv.run(x: x, dy: w)
        XCTAssertEqual(bits(first.gradients), bits(full.gradients))
        XCTAssertEqual(bits(first.y), bits(full.y))
    }

    func testChunkResultsAreBitIdenticalWhateverTheSliceHolds() throws {
        // Batch 5 in chunks of 2, 2, 1: a chunk alone, with its neighbour, or with every chunk must give
        // the same output rows, ∂x rows and gradient row.
        let plan = ChunkPlan(batchSize: 5, chunkSize: 2)
        for c in cases {
            let shape = try TensorShape(c.input)
            let conv = LayerUnderTest(c.spec, input: shape, plan: plan, seed: 21)
            let inWidth = conv.inputWidth, outWidth = conv.outputWidth
            let x = randomFloats(plan.batchSize * inWidth, seed: 22, low: -3, high: 3)
            let dy = randomFloats(plan.batchSize * outWidth, seed: 23)
            let whole = try conv.run(x: x, dy: dy)
            XCTAssertEqual(whole.chunkGradients.count, 3)
            for chunks in [0..<1, 1..<2, 2..<3, 1..<3, 0..<2] {
                let slice = BatchSlice(plan: plan, chunks: chunks)
                let rows = slice.globalRows
                let part = try conv.run(x: Array(x[(rows.lowerBound * inWidth)..<(rows.upperBound * inWidth)]),
                                        dy: Array(dy[(rows.lowerBound * outWidth)..<(rows.upperBound * outWidth)]), slice: slice)
                let context = "\(c), chunks \(chunks)"
                XCTAssertEqual(bits(part.y), bits(Array(whole.y[(rows.lowerBound * outWidth)..<(rows.upperBound * outWidth)])), "y, \(context)")
                XCTAssertEqual(bits(part.dx), bits(Array(whole.dx[(rows.lowerBound * inWidth)..<(rows.upperBound * inWidth)])), "∂x, \(context)")
                for (local, chunk) in chunks.enumerated() {
                    XCTAssertEqual(bits(part.chunkGradients[local]), bits(whole.chunkGradients[chunk]), "gradient row of chunk \(chunk), \(context)")
                }
            }
        }
    }
}
