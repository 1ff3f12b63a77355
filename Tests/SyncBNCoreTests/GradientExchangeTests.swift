/// Tests of `GradientExchange` (how a step's gradients are laid out, combined and applied) and of
/// `Network.apply(gradients:)`.
///
/// Oracles: the documented choice rule (factors when chunkSize·(inputs, except for layer 0, + outputs) <
/// (inputs + 1)·outputs); hand-laid-out partials whose sum depends on the grouping (1e8 trick) for chunk
/// order; and ∂W = Σ_c Σ_rows dyᵀ·x, ∂b = Σ dy computed in Float64 from the gathered factor rows.
import XCTest
@testable import SyncBNCore

final class GradientExchangeTests: XCTestCase {
    private func linears(_ widths: [Int], capacity: Int) -> [Linear] {
        var offset = 0
        return (0..<(widths.count - 1)).map { l in
            defer { offset += widths[l] * widths[l + 1] + widths[l + 1] }
            return Linear(inputs: widths[l], outputs: widths[l + 1], weightOffset: offset,
                          biasOffset: offset + widths[l] * widths[l + 1], capacity: capacity)
        }
    }

    func testChoosesTheSmallerOfPartialsAndFactorsPerLayer() {
        // bn-mlp, 784-100-100-100-10. Partial gradients: 78 500, 10 100, 10 100, 1 010 values.
        let widths = [784, 100, 100, 100, 10]
        func methods(chunk: Int) -> [GradientExchange.Method] {
            let plan = ChunkPlan(batchSize: 1000, chunkSize: chunk)
            return GradientExchange(linears: linears(widths, capacity: 1), extraSumRanges: [], plan: plan).methods
        }
        // Factors per chunk: 100·c for layer 0 (x is the shared input), 200·c for layers 1–2, 110·c for layer 3.
        XCTAssertEqual(methods(chunk: 8), [.factors, .factors, .factors, .factors])
        XCTAssertEqual(methods(chunk: 10), [.factors, .factors, .factors, .sum])    // 1100 ≥ 1010
        XCTAssertEqual(methods(chunk: 50), [.factors, .factors, .factors, .sum])    // 10 000 < 10 100
        XCTAssertEqual(methods(chunk: 51), [.factors, .sum, .sum, .sum])            // 10 200 ≥ 10 100
        XCTAssertEqual(methods(chunk: 785), [.sum, .sum, .sum, .sum])              // 78 500 ≥ 78 500
        XCTAssertEqual(methods(chunk: 784), [.factors, .sum, .sum, .sum])
    }

    func testLayoutOfSumsAndFactorColumns() {
        // 6-5-4-3 with chunk 4: layer 0 as factors (20 < 35), layers 1, 2 summed (36 ≥ 24, 28 ≥ 15),
        // plus an extra summed range (as BatchNorm's γ, β in local mode).
        let plan = ChunkPlan(batchSize: 7, chunkSize: 4)
        let layers = linears([6, 5, 4, 3], capacity: 7)
        let exchange = GradientExchange(linears: layers, extraSumRanges: [74..<92], plan: plan)
        XCTAssertEqual(exchange.methods, [.factors, .sum, .sum])
        XCTAssertEqual(exchange.sumRanges, [35..<92])  // layers 1, 2 and the extra range are adjacent: one run
        XCTAssertEqual(exchange.sumWidth, 24 + 15 + 18)
        XCTAssertEqual(exchange.factorLayers.map(\.layer), [0])
        XCTAssertNil(exchange.factorLayers[0].inputColumn)
        XCTAssertEqual(exchange.factorLayers[0].outputColumn, 0)
        XCTAssertEqual(exchange.factorRowWidth, 5)
        XCTAssertEqual(exchange.chunkWidth, 57 + 4 * 5)
        XCTAssertEqual(exchange.resultWidth, 57 + 2 * 4 * 5)

        // 6-5-4-3 with chunk 2: every layer as factors; columns [dy₀ | x₁ dy₁ | x₂ dy₂].
        let all = GradientExchange(linears: layers, extraSumRanges: [], plan: ChunkPlan(batchSize: 7, chunkSize: 2))
        XCTAssertEqual(all.methods, [.factors, .factors, .factors])
        XCTAssertEqual(all.factorLayers.map(\.inputColumn), [nil, 5, 14])
        XCTAssertEqual(all.factorLayers.map(\.outputColumn), [0, 10, 18])
        XCTAssertEqual(all.factorRowWidth, 21)
        XCTAssertEqual(all.sumWidth, 0)
    }

    func testReduceSumsInTreeOrderAndConcatenatesFactorRows() {
        // Oracle: (1 + 1e8) − 1e8 = 0 in Float32 only when chunks 0 and 1 are added first, as the tree over
        // three chunks does; factor rows copied verbatim.
        let plan = ChunkPlan(batchSize: 3, chunkSize: 1)
        let layers = linears([1, 1, 1], capacity: 3)  // partial 2 values; factors 1 (layer 0) ≥ … see methods
        let exchange = GradientExchange(linears: layers, extraSumRanges: [], plan: plan)
        XCTAssertEqual(exchange.methods, [.factors, .sum])  // layer 0: 1 < 2; layer 1: 1·(1+1) = 2 ≥ 2
        XCTAssertEqual(exchange.chunkWidth, 2 + 1)
        let partials: [Float] = [1, 5, /* row */ 10,
                                 1e8, 6, 20,
                                 -1e8, 7, 30]
        var result = [Float](repeating: .nan, count: exchange.resultWidth)
        partials.withUnsafeBufferPointer { p in result.withUnsafeMutableBufferPointer { exchange.reduce(p, into: $0) } }
        XCTAssertEqual(result, [0, 18, 10, 20, 30])
    }

    func testApplyComputesFactorLayerGradientsFromGatheredRows() {
        // Oracle: Float64 Σ over chunks and their rows of dyᵀ·x and dy; rows past a chunk's end (NaN here)
        // must be ignored, and the first layer's x comes from `batchInput`.
        let plan = ChunkPlan(batchSize: 7, chunkSize: 2)
        let spec = ModelSpec.mlp(name: "mlp", inputSize: 6, hiddenSizes: [5, 4], classes: 3, activation: .sigmoid, batchNorm: .sync)
        let network = Network(spec: spec, plan: plan, optimizer: SGD(learningRate: 0, momentum: 0), seed: 1)
        network.gradientsRideWithBatchNorm = false  // the result laid out as one segment, `exchange`'s
        let exchange = network.exchange
        XCTAssertEqual(exchange.methods, [.factors, .factors, .factors])
        let x0 = randomFloats(7 * 6, seed: 2)
        network.batchInput.assign(x0, rows: 7)
        var result = randomFloats(exchange.resultWidth, seed: 3)
        let rowWidth = exchange.factorRowWidth
        for i in 0..<rowWidth { result[exchange.sumWidth + 3 * 2 * rowWidth + rowWidth + i] = .nan }  // chunk 3 has 1 row
        // γ, β gradients (set by the backward sums in sync mode) must not be touched.
        let normStart = network.linears.last!.biasOffset + 3
        for i in normStart..<network.store.count { network.store.gradients[i] = 42 }
        result.withUnsafeBufferPointer { network.apply(gradients: $0) }

        for factor in exchange.factorLayers {
            let linear = network.linears[factor.layer]
            for o in 0..<linear.outputs {
                var biasSum = 0.0, biasScale = 0.0
                var weightSums = [Double](repeating: 0, count: linear.inputs), weightScales = weightSums
                for global in 0..<7 {
                    let row = exchange.sumWidth + global * rowWidth  // chunk c, row i sits at (c·2 + i)·rowWidth
                    let dy = Double(result[row + factor.outputColumn + o])
                    biasSum += dy; biasScale += abs(dy)
                    for i in 0..<linear.inputs {
                        let x = factor.inputColumn.map { Double(result[row + $0 + i]) } ?? Double(x0[global * 6 + i])
                        weightSums[i] += dy * x; weightScales[i] += abs(dy * x)
                    }
                }
                assertClose(network.store.gradients[linear.biasOffset + o], biasSum, absolute: 1e-6 * biasScale, "layer \(factor.layer) ∂b[\(o)]")
                for i in 0..<linear.inputs {
                    assertClose(network.store.gradients[linear.weightOffset + o * linear.inputs + i], weightSums[i],
                                absolute: 1e-6 * weightScales[i], "layer \(factor.layer) ∂W[\(o), \(i)]")
                }
            }
        }
        for i in normStart..<network.store.count { XCTAssertEqual(network.store.gradients[i], 42) }
    }
}
