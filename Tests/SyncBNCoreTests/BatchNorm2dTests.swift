/// Tests of `BatchNorm2d` (statistics per channel over N·H·W) built through `LayerBuilder`, run over a
/// batch of 5 [3, 4, 5] samples in chunks of 2, 2 and 1, through a collective that counts H·W values per row.
///
/// Oracles: `Reference.batchNorm` / `Reference.channelMoments` (ReferenceLayers.swift) — per-channel mean
/// and biased variance over the N·H·W values in Float64, y = γ·(x − μ)/√(σ² + ε) + β; central finite
/// differences (h = 1e-6) of L = Σ w⊙y through that reference for ∂x, ∂γ, ∂β; PyTorch's running-statistics
/// rule written out (momentum 0.1, unbiased variance over the count n = N·H·W); and the evaluation formula
/// γ·(x − running_mean)/√(running_var + ε) + β.
import Foundation
import XCTest
@testable import SyncBNCore

final class BatchNorm2dTests: XCTestCase {
    private let shape = try! TensorShape([3, 4, 5])
    private let plan = ChunkPlan(batchSize: 5, chunkSize: 2)
    private let gamma: [Float] = [1.5, -0.5, 0.75], beta: [Float] = [0.25, -1, 2]

    private func makeLayer() -> LayerUnderTest {
        let norm = LayerUnderTest(.batchNorm2d(numFeatures: 3, eps: 1e-5, momentum: 0.1), input: shape, plan: plan)
        norm.parameters = gamma + beta
        return norm
    }

    /// Channel c has mean 3c − 2 and standard deviation 1 + c, so that normalization does something.
    private func input(seed: UInt64) -> [Float] {
        let plane = shape.spatialSize
        let noise = randomNormals(plan.batchSize * shape.count, seed: seed)
        return (0..<noise.count).map { i in
            let c = (i / plane) % 3
            return Float(3 * c - 2) + Float(1 + c) * noise[i]
        }
    }

    func testLayerIsBatchNorm2dOverHW() {
        let norm = makeLayer()
        let layer = norm.layer as! BatchNorm
        XCTAssertEqual(layer.features, 3)
        XCTAssertEqual(layer.spatialSize, 20)
        XCTAssertEqual(layer.parameters.map(\.shape), [[3], [3]])
        XCTAssertEqual(norm.store.count, 6)
    }

    func testTrainingForwardNormalizesEachChannelOverNHW() throws {
        let norm = makeLayer()
        let x = input(seed: 1)
        let result = try norm.run(x: x, dy: [Float](repeating: 0, count: x.count))
        let expected = Reference.batchNorm(x.map(Double.init), n: plan.batchSize, shape: shape, p: (gamma + beta).map(Double.init),
                                           gamma: 0, beta: 3, eps: 1e-5)
        assertAllClose(result.y, expected, absolute: 1e-5, relative: 1e-6, "y")
        // And the output's own statistics: mean β and biased variance ≈ γ² per channel.
        let (mean, variance) = Reference.channelMoments(result.y.map(Double.init), rows: 0..<plan.batchSize, shape: shape)
        for c in 0..<3 {
            assertClose(mean[c], Double(beta[c]), absolute: 1e-5, "mean of channel \(c)")
            assertClose(variance[c], Double(gamma[c] * gamma[c]), relative: 1e-4, "variance of channel \(c)")
        }
    }

    func testBackwardMatchesFiniteDifferences() throws {
        // Synchronized: ∂γ, ∂β come out of the backward-sums round into the store's gradients, and the
        // chunk rows stay untouched. Local over the whole batch: the same values, from the chunk rows.
        let x = input(seed: 2), w = randomFloats(plan.batchSize * shape.count, seed: 3)
        let p = (gamma + beta).map(Double.init)
        let numeric = Reference.finiteDifferences(x: x.map(Double.init), p: p, w: w.map(Double.init)) { x, p in
            Reference.batchNorm(x, n: self.plan.batchSize, shape: self.shape, p: p, gamma: 0, beta: 3, eps: 1e-5)
        }
        for mode in [BatchNormMode.sync, .local] {
            let norm = makeLayer()
            let result = try norm.run(x: x, dy: w, mode: mode)
            assertAllClose(result.dx, numeric.dx, absolute: 2e-5, relative: 1e-3, "∂x, \(mode)")
            assertAllClose(result.gradients, numeric.dp, absolute: 2e-5, relative: 1e-4, "∂γ, ∂β, \(mode)")
            let fromRows = result.chunkGradients.flatMap { $0 }.contains { $0 != 0 }
            XCTAssertEqual(fromRows, mode == .local, "\(mode): ∂γ, ∂β in the chunk rows only for local BatchNorm")
        }
    }

    func testRunningStatisticsUseTheUnbiasedVarianceOverNHW() throws {
        // running_mean ← 0.9·running_mean + 0.1·μ, running_var ← 0.9·running_var + 0.1·σ²·n/(n − 1) with
        // n = N·H·W = 100 (not N = 5), over two steps from (0, 1).
        let norm = makeLayer()
        let layer = norm.layer as! BatchNorm
        var expectedMean = [Double](repeating: 0, count: 3), expectedVariance = [Double](repeating: 1, count: 3)
        for step in 0..<2 {
            let x = input(seed: UInt64(10 + step))
            let before = (bits(layer.runningMean), bits(layer.runningVariance))
            _ = try norm.run(x: x, dy: [Float](repeating: 0, count: x.count))
            XCTAssertEqual(bits(layer.runningMean), before.0, "nothing changes before the step completes")
            XCTAssertEqual(bits(layer.runningVariance), before.1, "nothing changes before the step completes")
            layer.commitRunningStatistics(batchSize: plan.batchSize)
            let (mean, variance) = Reference.channelMoments(x.map(Double.init), rows: 0..<plan.batchSize, shape: shape)
            for c in 0..<3 {
                expectedMean[c] = 0.9 * expectedMean[c] + 0.1 * mean[c]
                expectedVariance[c] = 0.9 * expectedVariance[c] + 0.1 * variance[c] * 100 / 99
                assertClose(layer.runningMean[c], expectedMean[c], absolute: 1e-6, relative: 1e-6, "running_mean[\(c)], step \(step)")
                assertClose(layer.runningVariance[c], expectedVariance[c], relative: 1e-6, "running_var[\(c)], step \(step)")
            }
        }
        XCTAssertEqual(layer.batchesTracked, 2)
    }

    func testEvaluationUsesRunningStatistics() throws {
        let norm = makeLayer()
        let layer = norm.layer as! BatchNorm
        layer.runningMean = [0.5, -2, 4]
        layer.runningVariance = [2, 0.25, 9]
        let x = input(seed: 20)
        let rows = 3
        let y = layer.infer(makeMatrix(Array(x[0..<(rows * shape.count)]), rows: rows, columns: shape.count), store: norm.store).toArray()
        for r in 0..<rows {
            for c in 0..<3 {
                for i in 0..<20 {
                    let index = (r * 3 + c) * 20 + i
                    let expected = Double(gamma[c]) * (Double(x[index]) - Double(layer.runningMean[c]))
                        / (Double(layer.runningVariance[c]) + 1e-5).squareRoot() + Double(beta[c])
                    assertClose(y[index], expected, absolute: 1e-5, relative: 1e-6, "y[\(index)]")
                }
            }
        }
    }
}
