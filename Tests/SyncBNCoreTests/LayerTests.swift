/// Tests of `Linear`, `Activation` and `SoftmaxCrossEntropy`.
///
/// Oracles: naive triple loops in Float64 for Linear (tolerance 1e-5 relative to Σ|terms|, the natural
/// scale of a Float32 dot product); central finite differences of the Float32 forward for the activations;
/// and softmax / cross-entropy written out in Float64 for the loss layer ((p − onehot)/B).
import Foundation
import XCTest
@testable import SyncBNCore

final class LinearTests: XCTestCase {
    private let inputs = 13, outputs = 6
    private let plan = ChunkPlan(batchSize: 11, chunkSize: 4)  // chunks of 4, 4 and 3 rows

    private func makeLayer(seed: UInt64) -> (Linear, ParameterStore) {
        // Put the layer at non-zero offsets, after 5 unrelated parameters, to check the offsets are honoured.
        let store = ParameterStore(count: 5 + inputs * outputs + outputs)
        let linear = Linear(inputs: inputs, outputs: outputs, weightOffset: 5, biasOffset: 5 + inputs * outputs, capacity: plan.batchSize)
        var random = SplitMix64(seed: seed)
        linear.initialize(store, random: &random)
        return (linear, store)
    }

    private func weight(_ store: ParameterStore, _ linear: Linear, _ o: Int, _ i: Int) -> Double {
        Double(store.values[linear.weightOffset + o * inputs + i])
    }

    func testInitializationIsPyTorchUniformAndSeeded() {
        // Oracle: PyTorch's default bound 1/√inputs, and SplitMix64's determinism (same seed, same values).
        let (linear, store) = makeLayer(seed: 1)
        let bound = 1 / Float(inputs).squareRoot()
        let values = Array(UnsafeBufferPointer(start: store.values + linear.weightOffset, count: inputs * outputs + outputs))
        XCTAssertTrue(values.allSatisfy { $0 >= -bound && $0 < bound })
        XCTAssertGreaterThan(Set(values).count, values.count - 2, "values should be distinct draws")
        XCTAssertEqual(Array(UnsafeBufferPointer(start: store.values, count: 5)), [0, 0, 0, 0, 0])
        let (_, again) = makeLayer(seed: 1)
        XCTAssertEqual(Array(UnsafeBufferPointer(start: again.values, count: store.count)), Array(UnsafeBufferPointer(start: store.values, count: store.count)))
    }

    func testForwardMatchesNaiveLoop() {
        // Oracle: y[r,o] = b[o] + Σᵢ x[r,i]·W[o,i], a triple loop in Float64.
        let (linear, store) = makeLayer(seed: 2)
        let rows = plan.batchSize
        let x = randomFloats(rows * inputs, seed: 3, low: -2, high: 2)
        let y = linear.forward(makeMatrix(x, rows: rows, columns: inputs), chunks: BatchSlice.whole(plan).localChunkRows, store: store)
        XCTAssertEqual(y.rows, rows)
        XCTAssertEqual(y.columns, outputs)
        for r in 0..<rows {
            for o in 0..<outputs {
                var sum = Double(store.values[linear.biasOffset + o]), scale = abs(sum)
                for i in 0..<inputs {
                    let term = Double(x[r * inputs + i]) * weight(store, linear, o, i)
                    sum += term; scale += abs(term)
                }
                assertClose(y.row(r)[o], sum, absolute: 1e-5 * scale, "y[\(r), \(o)]")
            }
        }
        // Evaluation (one gemm over all rows) computes the same function.
        let inferred = linear.infer(makeMatrix(x, rows: rows, columns: inputs), store: store).toArray()
        for (a, b) in zip(inferred, y.toArray()) { assertClose(a, Double(b), absolute: 1e-5, relative: 1e-5) }
    }

    func testBackwardMatchesNaiveLoopPerChunk() {
        // Oracle: per chunk, ∂W = Σ_rows dy[r,o]·x[r,i] and ∂b = Σ_rows dy[r,o]; ∂x = dy·W; Float64 loops.
        let (linear, store) = makeLayer(seed: 4)
        let rows = plan.batchSize
        let x = randomFloats(rows * inputs, seed: 5, low: -2, high: 2)
        let dy = randomFloats(rows * outputs, seed: 6)
        let chunks = BatchSlice.whole(plan).localChunkRows
        let width = store.count
        var gradients = [Float](repeating: .nan, count: chunks.count * width)
        let dx = gradients.withUnsafeMutableBufferPointer {
            linear.backward(makeMatrix(dy, rows: rows, columns: outputs), input: makeMatrix(x, rows: rows, columns: inputs),
                            chunks: chunks, store: store, gradients: $0.baseAddress!, gradientWidth: width,
                            needsInputGradient: true).toArray()
        }
        for (c, chunkRows) in chunks.enumerated() {
            let g = c * width
            for o in 0..<outputs {
                var biasSum = 0.0, biasScale = 0.0
                for r in chunkRows { biasSum += Double(dy[r * outputs + o]); biasScale += abs(Double(dy[r * outputs + o])) }
                assertClose(gradients[g + linear.biasOffset + o], biasSum, absolute: 1e-5 * biasScale, "chunk \(c) ∂b[\(o)]")
                for i in 0..<inputs {
                    var sum = 0.0, scale = 0.0
                    for r in chunkRows {
                        let term = Double(dy[r * outputs + o]) * Double(x[r * inputs + i])
                        sum += term; scale += abs(term)
                    }
                    assertClose(gradients[g + linear.weightOffset + o * inputs + i], sum, absolute: 1e-5 * scale, "chunk \(c) ∂W[\(o), \(i)]")
                }
            }
            // Entries of other layers in the chunk's gradient row are not touched.
            for p in 0..<5 { XCTAssertTrue(gradients[g + p].isNaN, "chunk \(c) wrote outside the layer at \(p)") }
        }
        for r in 0..<rows {
            for i in 0..<inputs {
                var sum = 0.0, scale = 0.0
                for o in 0..<outputs {
                    let term = Double(dy[r * outputs + o]) * weight(store, linear, o, i)
                    sum += term; scale += abs(term)
                }
                assertClose(dx[r * inputs + i], sum, absolute: 1e-5 * scale, "∂x[\(r), \(i)]")
            }
        }
    }
}

/// The Activation layer's ∂x for `dy`, after a forward pass over `x` (one row).
private func activationBackward(_ kind: Activation.Kind, x: [Float], dy: [Float]) -> [Float] {
    let shape = try! TensorShape([x.count])
    let layer = Activation(kind, shape: shape, capacity: 1)
    let store = ParameterStore(count: 1)
    let context = StepContext.forTest(slice: .whole(ChunkPlan(batchSize: 1, chunkSize: 1)), store: store)
    _ = try! layer.forward(makeMatrix(x, rows: 1, columns: x.count), context)
    return try! layer.backward(makeMatrix(dy, rows: 1, columns: x.count), context).toArray()
}

final class ActivationTests: XCTestCase {
    func testSigmoidForwardAndBackwardMatchFiniteDifferences() {
        // Oracle: σ(x) = 1/(1 + e^−x) in Float64 for the forward; central differences (h = 1e-3) of the
        // Float32 forward for the backward, with dy = w so that the result is w·σ′(x).
        let x = randomFloats(64, seed: 1, low: -6, high: 6)
        let w = randomFloats(64, seed: 2)
        var y = [Float](repeating: 0, count: 64)
        Activation.apply(.sigmoid, x, &y, count: 64)
        for i in 0..<64 { assertClose(y[i], 1 / (1 + Foundation.exp(-Double(x[i]))), absolute: 1e-6, relative: 1e-6) }
        var dy = w
        dy = activationBackward(.sigmoid, x: x, dy: dy)
        let h: Float = 1e-3
        for i in 0..<64 {
            var up: Float = 0, down: Float = 0
            var xp = x[i] + h, xm = x[i] - h
            Activation.apply(.sigmoid, &xp, &up, count: 1)
            Activation.apply(.sigmoid, &xm, &down, count: 1)
            let numeric = Double(w[i]) * Double(up - down) / Double(xp - xm)
            assertClose(dy[i], numeric, absolute: 1e-4, relative: 1e-3, "σ′ at \(x[i])")
        }
    }

    func testReluForwardAndBackwardMatchFiniteDifferences() {
        // Oracle: max(x, 0) and central differences (h = 1e-3) away from the kink; at x = 0 the gradient is 0,
        // as in PyTorch.
        var x = randomFloats(64, seed: 3, low: -3, high: 3).map { abs($0) < 0.01 ? $0 + 0.05 : $0 }
        x[7] = 0
        let w = randomFloats(64, seed: 4)
        var y = [Float](repeating: -1, count: 64)
        Activation.apply(.relu, x, &y, count: 64)
        XCTAssertEqual(y, x.map { max($0, 0) })
        var dy = w
        dy = activationBackward(.relu, x: x, dy: dy)
        let h: Float = 1e-3
        for i in 0..<64 where i != 7 {
            let numeric = Double(w[i]) * Double(max(x[i] + h, 0) - max(x[i] - h, 0)) / Double(2 * h)
            assertClose(dy[i], numeric, absolute: 1e-4, relative: 1e-3, "relu′ at \(x[i])")
        }
        XCTAssertEqual(dy[7], 0)
    }
}

final class SoftmaxCrossEntropyTests: XCTestCase {
    func testGradientIsSoftmaxMinusOneHotOverGlobalBatch() {
        // Oracle: p = softmax(z), loss = −log p_y, ∂L/∂z = (p − onehot)/B in Float64, with B the *global*
        // batch (12) although this slice holds 5 rows in chunks of 2 and 3.
        let rows = 5, classes = 4, globalBatch = 12
        var z = randomFloats(rows * classes, seed: 5, low: -4, high: 4)
        z[2 * classes + 1] = 80  // a large logit: the max-shift must keep exp finite
        let labels: [Int32] = [0, 3, 1, 2, 2]
        let logits = makeMatrix(z, rows: rows, columns: classes)
        let gradient = Matrix(capacity: rows, columns: classes)
        var metrics = [Double](repeating: .nan, count: 4)
        SoftmaxCrossEntropy.forwardBackward(logits: logits, labels: labels, chunks: [0..<2, 2..<5], batchSize: globalBatch,
                                            gradient: gradient, metrics: &metrics)
        var lossSums = [0.0, 0.0], correct = [0.0, 0.0]
        for r in 0..<rows {
            let row = (0..<classes).map { Double(z[r * classes + $0]) }
            let top = row.max()!
            let total = row.reduce(0) { $0 + Foundation.exp($1 - top) }
            let label = Int(labels[r])
            let chunk = r < 2 ? 0 : 1
            lossSums[chunk] += Foundation.log(total) + top - row[label]
            if row.firstIndex(of: top) == label { correct[chunk] += 1 }
            for j in 0..<classes {
                let p = Foundation.exp(row[j] - top) / total
                let expected = (p - (j == label ? 1 : 0)) / Double(globalBatch)
                assertClose(gradient.row(r)[j], expected, absolute: 1e-7, "∂L/∂z[\(r), \(j)]")
            }
            let rowSum = (0..<classes).reduce(0.0) { $0 + Double(gradient.row(r)[$1]) }
            XCTAssertLessThan(abs(rowSum), 1e-7, "each gradient row sums to 0")
        }
        assertClose(metrics[0], lossSums[0], absolute: 1e-5, relative: 1e-6, "chunk 0 Σ loss")
        assertClose(metrics[2], lossSums[1], absolute: 1e-5, relative: 1e-6, "chunk 1 Σ loss")
        XCTAssertEqual(metrics[1], correct[0])
        XCTAssertEqual(metrics[3], correct[1])
        XCTAssertGreaterThanOrEqual(correct[1], 1, "row 2 has the large logit at its label")
    }
}
