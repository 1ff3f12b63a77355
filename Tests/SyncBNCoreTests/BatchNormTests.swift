/// Tests of the `BatchNorm` layer alone, through a `LocalCollective` over the whole batch.
///
/// Oracles: a straightforward Float64 implementation of BatchNorm1d written here (batch mean, biased
/// variance, ε = 1e-5; running statistics with momentum 0.1 and the unbiased variance, as PyTorch); the
/// analytic backward ∂x = γ/σ·(dy − mean(dy) − x̂·mean(dy·x̂)), ∂γ = Σdy·x̂, ∂β = Σdy evaluated in
/// Float64; and central finite differences of the scalar L = Σ w⊙y through the layer's own Float32 forward.
import XCTest
@testable import SyncBNCore

final class BatchNormTests: XCTestCase {
    private let features = 4
    private let plan = ChunkPlan(batchSize: 7, chunkSize: 3)  // chunks of 3, 3 and 1 rows

    /// A layer with γ, β at offsets 0 and F of a store of 2F parameters.
    private func makeLayer(gamma: [Float], beta: [Float]) -> (BatchNorm, ParameterStore) {
        let store = ParameterStore(count: 2 * features)
        let norm = BatchNorm(index: 0, features: features, gammaOffset: 0, betaOffset: features,
                             capacity: plan.batchSize, maxChunks: plan.chunkCount)
        norm.initialize(store)
        for f in 0..<features {
            store.values[f] = gamma[f]
            store.values[features + f] = beta[f]
        }
        return (norm, store)
    }

    /// Input with a different mean and scale per feature.
    private func input(seed: UInt64) -> [Float] {
        let rows = plan.batchSize
        let columns = [randomNormals(rows, seed: seed, mean: 3, std: 2),
                       randomNormals(rows, seed: seed + 1, mean: -1, std: 0.5),
                       randomNormals(rows, seed: seed + 2, mean: 0, std: 1),
                       randomNormals(rows, seed: seed + 3, mean: 20, std: 5)]
        var x = [Float](repeating: 0, count: rows * features)
        for r in 0..<rows { for f in 0..<features { x[r * features + f] = columns[f][r] } }
        return x
    }

    private let gamma: [Float] = [1.5, 0.5, -2, 1]
    private let beta: [Float] = [0.25, -1, 3, 0]

    // MARK: Float64 oracle

    private struct Reference {
        var mean: [Double], biasedVariance: [Double], xhat: [Double], y: [Double]
    }

    private func reference(_ x: [Float], gamma: [Float], beta: [Float]) -> Reference {
        let n = x.count / features
        var mean = [Double](repeating: 0, count: features), variance = mean
        for f in 0..<features {
            let column = (0..<n).map { Double(x[$0 * features + f]) }
            mean[f] = column.reduce(0, +) / Double(n)
            variance[f] = column.reduce(0) { $0 + ($1 - mean[f]) * ($1 - mean[f]) } / Double(n)
        }
        var xhat = [Double](repeating: 0, count: x.count), y = xhat
        for r in 0..<n {
            for f in 0..<features {
                let i = r * features + f
                xhat[i] = (Double(x[i]) - mean[f]) / (variance[f] + BatchNorm.epsilon).squareRoot()
                y[i] = Double(gamma[f]) * xhat[i] + Double(beta[f])
            }
        }
        return Reference(mean: mean, biasedVariance: variance, xhat: xhat, y: y)
    }

    private func forward(_ norm: BatchNorm, _ store: ParameterStore, _ x: [Float], mode: BatchNormMode = .sync) throws -> [Float] {
        let matrix = makeMatrix(x, rows: plan.batchSize, columns: features)
        let y = try norm.forward(matrix, slice: .whole(plan), mode: mode, collective: LocalCollective(plan: plan, valuesPerRow: flatScales), store: store).toArray()
        norm.commitRunningStatistics(count: plan.batchSize)  // what Network.finishStep does at the end of a step
        return y
    }

    private func backward(_ norm: BatchNorm, _ store: ParameterStore, dy: [Float], mode: BatchNormMode = .sync,
                          chunkGradients: UnsafeMutablePointer<Float>? = nil) throws -> [Float] {
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: plan.chunkCount * 2 * features)
        scratch.initialize(repeating: 0, count: plan.chunkCount * 2 * features)
        defer { scratch.deallocate() }
        return try norm.backward(makeMatrix(dy, rows: plan.batchSize, columns: features), slice: .whole(plan), mode: mode,
                                 collective: LocalCollective(plan: plan, valuesPerRow: flatScales), store: store,
                                 gradients: chunkGradients ?? scratch, gradientWidth: 2 * features).toArray()
    }

    // MARK: Forward

    func testForwardNormalizesByBatchStatistics() throws {
        // Oracle: Float64 BatchNorm1d; per feature, mean(y) = β and biased var(y) = γ²·σ²/(σ² + ε).
        let (norm, store) = makeLayer(gamma: gamma, beta: beta)
        let x = input(seed: 10)
        let y = try forward(norm, store, x)
        let ref = reference(x, gamma: gamma, beta: beta)
        let n = plan.batchSize
        for i in 0..<y.count { assertClose(y[i], ref.y[i], absolute: 2e-6, relative: 2e-6, "y[\(i)]") }
        for f in 0..<features {
            let column = (0..<n).map { Double(y[$0 * features + f]) }
            let mean = column.reduce(0, +) / Double(n)
            let variance = column.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(n)
            let g = Double(gamma[f]), s2 = ref.biasedVariance[f]
            assertClose(mean, Double(beta[f]), absolute: 1e-5, "mean of y, feature \(f)")
            assertClose(variance, g * g * s2 / (s2 + BatchNorm.epsilon), relative: 1e-5, "variance of y, feature \(f)")
        }
    }

    func testForwardUpdatesRunningStatisticsWithUnbiasedVariance() throws {
        // Oracle: PyTorch's rule, running ← 0.9·running + 0.1·batch, with var·n/(n − 1), from (0, 1).
        let (norm, store) = makeLayer(gamma: gamma, beta: beta)
        XCTAssertEqual(norm.runningMean, [0, 0, 0, 0])
        XCTAssertEqual(norm.runningVariance, [1, 1, 1, 1])
        XCTAssertEqual(norm.batchesTracked, 0)
        let n = Double(plan.batchSize)
        var expectedMean = [Double](repeating: 0, count: features), expectedVariance = [Double](repeating: 1, count: features)
        for (step, seed) in [20, 30, 40].enumerated() {
            let x = input(seed: UInt64(seed))
            _ = try forward(norm, store, x)
            let ref = reference(x, gamma: gamma, beta: beta)
            for f in 0..<features {
                expectedMean[f] = 0.9 * expectedMean[f] + 0.1 * ref.mean[f]
                expectedVariance[f] = 0.9 * expectedVariance[f] + 0.1 * ref.biasedVariance[f] * n / (n - 1)
                assertClose(norm.runningMean[f], expectedMean[f], absolute: 1e-6, relative: 1e-5, "running mean, step \(step), feature \(f)")
                assertClose(norm.runningVariance[f], expectedVariance[f], relative: 1e-5, "running var, step \(step), feature \(f)")
            }
            XCTAssertEqual(norm.batchesTracked, Int64(step + 1))
        }
    }

    func testInferenceNormalizesByRunningStatistics() {
        // Oracle: y = γ(x − running_mean)/√(running_var + ε) + β in Float64.
        let (norm, store) = makeLayer(gamma: gamma, beta: beta)
        norm.runningMean = [1, -2, 0.5, 10]
        norm.runningVariance = [4, 0.25, 1, 9]
        let x = input(seed: 50)
        let y = norm.infer(makeMatrix(x, rows: plan.batchSize, columns: features), store: store).toArray()
        for r in 0..<plan.batchSize {
            for f in 0..<features {
                let i = r * features + f
                let expected = Double(gamma[f]) * (Double(x[i]) - Double(norm.runningMean[f]))
                    / (Double(norm.runningVariance[f]) + BatchNorm.epsilon).squareRoot() + Double(beta[f])
                assertClose(y[i], expected, absolute: 1e-5, relative: 1e-5, "y[\(r), \(f)]")
            }
        }
    }

    // MARK: Backward

    func testBackwardMatchesAnalyticFormulaInFloat64() throws {
        // Oracle: ∂x = γ/√(σ²+ε)·(dy − mean(dy) − x̂·mean(dy·x̂)), ∂γ = Σdy·x̂, ∂β = Σdy, all in Float64.
        let (norm, store) = makeLayer(gamma: gamma, beta: beta)
        let x = input(seed: 60)
        let dy = randomFloats(x.count, seed: 61)
        _ = try forward(norm, store, x)
        let dx = try backward(norm, store, dy: dy)

        let ref = reference(x, gamma: gamma, beta: beta)
        let n = plan.batchSize
        for f in 0..<features {
            var sumDy = 0.0, sumDyXhat = 0.0
            for r in 0..<n {
                sumDy += Double(dy[r * features + f])
                sumDyXhat += Double(dy[r * features + f]) * ref.xhat[r * features + f]
            }
            assertClose(store.gradients[f], sumDyXhat, absolute: 1e-5, relative: 1e-5, "∂γ[\(f)]")
            assertClose(store.gradients[features + f], sumDy, absolute: 1e-5, relative: 1e-5, "∂β[\(f)]")
            let scale = Double(gamma[f]) / (ref.biasedVariance[f] + BatchNorm.epsilon).squareRoot()
            for r in 0..<n {
                let i = r * features + f
                let expected = scale * (Double(dy[i]) - sumDy / Double(n) - ref.xhat[i] * sumDyXhat / Double(n))
                assertClose(dx[i], expected, absolute: 1e-5 * abs(scale), relative: 1e-4, "∂x[\(r), \(f)]")
            }
        }
        // ∂x sums to zero per feature (normalization removes a shift), a property independent of the formula.
        for f in 0..<features {
            let total = (0..<n).reduce(0.0) { $0 + Double(dx[$1 * features + f]) }
            XCTAssertLessThan(abs(total), 1e-5, "Σ∂x for feature \(f)")
        }
    }

    func testBackwardMatchesFiniteDifferences() throws {
        // Oracle: central differences of L = Σ w⊙y (so ∂L/∂y = w), h = 1e-2, through the layer's own forward.
        let (norm, store) = makeLayer(gamma: gamma, beta: beta)
        let x = input(seed: 70)
        let w = randomFloats(x.count, seed: 71)
        func loss(_ x: [Float]) throws -> Double {
            zip(try forward(norm, store, x), w).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        }
        _ = try forward(norm, store, x)
        let dx = try backward(norm, store, dy: w)
        let parameterGradients = Array(UnsafeBufferPointer(start: store.gradients, count: 2 * features))

        let h: Float = 1e-2
        for i in 0..<x.count {
            var plus = x, minus = x
            plus[i] += h; minus[i] -= h
            let numeric = (try loss(plus) - loss(minus)) / Double(plus[i] - minus[i])
            assertClose(dx[i], numeric, absolute: 2e-3, relative: 1e-2, "∂L/∂x[\(i)]")
        }
        for p in 0..<(2 * features) {
            let saved = store.values[p]
            store.values[p] = saved + h
            let up = try loss(x)
            store.values[p] = saved - h
            let down = try loss(x)
            store.values[p] = saved
            let numeric = (up - down) / Double(2 * h)
            assertClose(parameterGradients[p], numeric, absolute: 2e-3, relative: 1e-2, p < features ? "∂γ[\(p)]" : "∂β[\(p - features)]")
        }
    }

    func testLocalModeOverTheWholeBatchAgreesWithSync() throws {
        // Oracle: with one replica holding the whole batch, local statistics are the global ones, so ∂x is
        // the same bits as with sync, and the per-chunk ∂γ, ∂β partials add up to sync's global ∂γ, ∂β.
        let x = input(seed: 80), dy = randomFloats(x.count, seed: 81)
        let (syncNorm, syncStore) = makeLayer(gamma: gamma, beta: beta)
        let ySync = try forward(syncNorm, syncStore, x, mode: .sync)
        let dxSync = try backward(syncNorm, syncStore, dy: dy, mode: .sync)

        let (localNorm, localStore) = makeLayer(gamma: gamma, beta: beta)
        let yLocal = try forward(localNorm, localStore, x, mode: .local)
        let width = 2 * features
        var chunkGradients = [Float](repeating: .nan, count: plan.chunkCount * width)
        let dxLocal = try chunkGradients.withUnsafeMutableBufferPointer {
            try backward(localNorm, localStore, dy: dy, mode: .local, chunkGradients: $0.baseAddress!)
        }
        XCTAssertEqual(bits(yLocal), bits(ySync))
        XCTAssertEqual(bits(dxLocal), bits(dxSync))
        XCTAssertEqual(localNorm.runningMean, syncNorm.runningMean)
        XCTAssertEqual(localNorm.runningVariance, syncNorm.runningVariance)
        for p in 0..<width {
            let total = (0..<plan.chunkCount).reduce(0.0) { $0 + Double(chunkGradients[$1 * width + p]) }
            assertClose(total, Double(syncStore.gradients[p]), absolute: 1e-5, relative: 1e-5, "parameter \(p)")
        }
    }
}
