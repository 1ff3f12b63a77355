/// Tests of `Residual` built through `LayerBuilder`: an identity shortcut, and He et al.'s downsampling
/// block whose shortcut is a 1×1 stride-2 Conv2d + BatchNorm2d; synchronized BatchNorm over a batch of 5
/// in chunks of 2, 2, 1.
///
/// Oracles: `Reference.forward` (ReferenceLayers.swift) — body(x) + shortcut(x) through the direct-loop
/// Float64 references of Conv2d, BatchNorm2d (batch statistics over N·H·W) and Tanh — and central finite
/// differences (h = 1e-6) of L = Σ w⊙y through it for ∂x and every parameter (conv gradients from the
/// chunk rows, γ and β from the store's gradients). Tanh rather than ReLU keeps the loss smooth.
import Foundation
import XCTest
@testable import SyncBNCore

final class ResidualTests: XCTestCase {
    override func setUp() {
        super.setUp()
        BLAS.useSingleThread()
    }

    private let plan = ChunkPlan(batchSize: 5, chunkSize: 2)

    private func bn(_ c: Int) -> LayerSpec { .batchNorm2d(numFeatures: c, eps: 1e-5, momentum: 0.1) }

    private func check(_ spec: LayerSpec, input: [Int], output: [Int], file: StaticString = #filePath, line: UInt = #line) throws {
        let residual = LayerUnderTest(spec, input: try TensorShape(input), plan: plan, seed: 17)
        XCTAssertEqual(residual.layer.outputShape.dimensions, output, file: file, line: line)
        // γ, β away from (1, 0).
        for norm in residual.norms {
            for f in 0..<norm.features {
                residual.store.values[norm.gammaOffset + f] = 0.6 + 0.3 * Float(f)
                residual.store.values[norm.betaOffset + f] = 0.2 * Float(f) - 0.1
            }
        }
        XCTAssertEqual(residual.norms.map(\.index), Array(0..<residual.norms.count), file: file, line: line)
        let n = plan.batchSize
        let x = randomNormals(n * residual.inputWidth, seed: 30, mean: 0.3, std: 1.2)
        let w = randomFloats(n * residual.outputWidth, seed: 31)
        let result = try residual.run(x: x, dy: w)
        let p = residual.parameters.map(Double.init)
        let f = { (x: [Double], p: [Double]) in Reference.forward([residual.layer], x, n: n, p: p) }
        assertAllClose(result.y, f(x.map(Double.init), p), absolute: 2e-5, relative: 1e-5, "y", file: file, line: line)
        let numeric = Reference.finiteDifferences(x: x.map(Double.init), p: p, w: w.map(Double.init), f)
        assertAllClose(result.dx, numeric.dx, absolute: 2e-5, relative: 1e-3, "∂x", file: file, line: line)
        assertAllClose(result.gradients, numeric.dp, absolute: 2e-5, relative: 1e-3, "∂parameters", file: file, line: line)
    }

    func testIdentityShortcut() throws {
        let spec = LayerSpec.residual(body: [.conv2d(inChannels: 2, outChannels: 2, kernelSize: 3, stride: 1, padding: 1, bias: true), bn(2), .tanh,
                                             .conv2d(inChannels: 2, outChannels: 2, kernelSize: 3, stride: 1, padding: 1, bias: false), bn(2)],
                                      shortcut: [])
        try check(spec, input: [2, 4, 5], output: [2, 4, 5])
    }

    func testStrideTwoConvolutionAndBatchNormShortcut() throws {
        let spec = LayerSpec.residual(body: [.conv2d(inChannels: 2, outChannels: 3, kernelSize: 3, stride: 2, padding: 1, bias: false), bn(3), .tanh,
                                             .conv2d(inChannels: 3, outChannels: 3, kernelSize: 3, stride: 1, padding: 1, bias: false), bn(3)],
                                      shortcut: [.conv2d(inChannels: 2, outChannels: 3, kernelSize: 1, stride: 2, padding: 0, bias: false), bn(3)])
        try check(spec, input: [2, 5, 7], output: [3, 3, 4])
    }

    func testChildrenAreNamedBodyThenShortcut() {
        // Oracle: PyTorch module attribute names `body` and `shortcut`, each an nn.Sequential.
        let spec = LayerSpec.residual(body: [.conv2d(inChannels: 2, outChannels: 3, kernelSize: 3, stride: 2, padding: 1, bias: false), bn(3)],
                                      shortcut: [.conv2d(inChannels: 2, outChannels: 3, kernelSize: 1, stride: 2, padding: 0, bias: false), bn(3)])
        let residual = LayerUnderTest(spec, input: try! TensorShape([2, 5, 7]), plan: plan)
        XCTAssertEqual(residual.layer.flattened(name: "4").map(\.name), ["4", "4.body.0", "4.body.1", "4.shortcut.0", "4.shortcut.1"])
    }
}
