/// Gradient checks of a whole `Network` training step — synchronized, local and no BatchNorm — with chunk
/// sizes that send the Linear gradients as summed partials, as gathered factors, and a mix of both.
///
/// Oracles: (1) an independent Float64 re-implementation of the MLP's training-mode loss written here
/// (Linear → BatchNorm with batch statistics → sigmoid, …, softmax cross-entropy averaged over the global
/// batch; for local BatchNorm across workers, statistics per worker slice), differentiated by central finite
/// differences (h = 1e-6) for every parameter — tight tolerance; and (2) central finite differences
/// (h = 1e-2) of the network's own Float32 loss, as reported by `trainStep(computeMetrics: true)`, for a
/// few parameters — loose tolerance. Learning rate and momentum are 0 so that `trainStep` leaves the
/// parameters where they are.
import Foundation
import XCTest
@testable import SyncBNCore

/// The training-mode loss of `network`'s architecture, in Float64, for parameters `p` laid out as in its store.
struct ReferenceMLP {
    let spec: ModelSpec
    let weightOffsets: [Int], biasOffsets: [Int]
    let gammaOffsets: [Int], betaOffsets: [Int]

    init(_ network: Network) {
        spec = network.spec
        weightOffsets = network.linears.map(\.weightOffset)
        biasOffsets = network.linears.map(\.biasOffset)
        gammaOffsets = network.norms.map(\.gammaOffset)
        betaOffsets = network.norms.map(\.betaOffset)
    }

    /// The mean cross-entropy over all rows. BatchNorm statistics are taken over each of `groups` (the
    /// workers' slices, for local BatchNorm) or over the whole batch; the mean is always over all rows.
    func loss(_ p: [Double], x: [Float], labels: [Int32], groups: [Range<Int>]? = nil) -> Double {
        let n = labels.count, widths = spec.widths
        let groups = groups ?? [0..<n]
        var h = x.map(Double.init)
        for l in 0..<(widths.count - 1) {
            let inputs = widths[l], outputs = widths[l + 1]
            var z = [Double](repeating: 0, count: n * outputs)
            for r in 0..<n {
                for o in 0..<outputs {
                    var sum = p[biasOffsets[l] + o]
                    for i in 0..<inputs { sum += h[r * inputs + i] * p[weightOffsets[l] + o * inputs + i] }
                    z[r * outputs + o] = sum
                }
            }
            if l < spec.hiddenSizes.count {
                if spec.hasBatchNorm {
                    for group in groups where !group.isEmpty {
                        let count = Double(group.count)
                        for o in 0..<outputs {
                            let mean = group.reduce(0.0) { $0 + z[$1 * outputs + o] } / count
                            let variance = group.reduce(0.0) { $0 + (z[$1 * outputs + o] - mean) * (z[$1 * outputs + o] - mean) } / count
                            let inverseStd = 1 / (variance + BatchNorm.epsilon).squareRoot()
                            for r in group {
                                z[r * outputs + o] = p[gammaOffsets[l] + o] * (z[r * outputs + o] - mean) * inverseStd + p[betaOffsets[l] + o]
                            }
                        }
                    }
                }
                switch spec.activation {
                case .sigmoid: z = z.map { 1 / (1 + Foundation.exp(-$0)) }
                case .relu: z = z.map { max($0, 0) }
                default: preconditionFailure("the reference MLP knows sigmoid and ReLU only")
                }
            }
            h = z
        }
        let classes = spec.classes
        var total = 0.0
        for r in 0..<n {
            let row = Array(h[(r * classes)..<((r + 1) * classes)])
            let top = row.max()!
            total += Foundation.log(row.reduce(0) { $0 + Foundation.exp($1 - top) }) + top - row[Int(labels[r])]
        }
        return total / Double(n)
    }
}

final class NetworkGradientTests: XCTestCase {
    /// Batch 7 cut in chunks of 2, 4 and 7: with these sizes the gradient exchange sends every Linear layer as
    /// factors, the first as factors and the others as summed partials, and every layer as summed partials.
    private let plans = [ChunkPlan(batchSize: 7, chunkSize: 2), ChunkPlan(batchSize: 7, chunkSize: 4), ChunkPlan(batchSize: 7, chunkSize: 7)]

    private func spec(_ mode: BatchNormMode) -> ModelSpec {
        ModelSpec.mlp(name: "mlp", inputSize: 6, hiddenSizes: [5, 4], classes: 3, activation: .sigmoid, batchNorm: mode)
    }

    private func makeNetwork(_ mode: BatchNormMode, plan: ChunkPlan) -> (Network, [Float], [Int32]) {
        let network = Network(spec: spec(mode), plan: plan, optimizer: SGD(learningRate: 0, momentum: 0), seed: 42)
        // Non-trivial γ, β so that their gradients are exercised away from the (1, 0) initialization.
        for (n, norm) in network.norms.enumerated() {
            for f in 0..<norm.features {
                network.store.values[norm.gammaOffset + f] = 0.5 + 0.25 * Float((f + n) % 4)
                network.store.values[norm.betaOffset + f] = 0.3 * Float(f % 3) - 0.3
            }
        }
        let x = randomNormals(plan.batchSize * 6, seed: 7, mean: 0.5, std: 1)
        let labels: [Int32] = [0, 1, 2, 2, 1, 0, 1]
        network.input.assign(x, rows: plan.batchSize)
        network.batchInput.assign(x, rows: plan.batchSize)
        for (r, label) in labels.enumerated() { network.labels[r] = label }
        return (network, x, labels)
    }

    private func step(_ network: Network) throws -> Double {
        let plan = network.plan
        return try XCTUnwrap(network.trainStep(slice: .whole(plan), collective: LocalCollective(plan: plan, valuesPerRow: flatScales), computeMetrics: true)).loss
    }

    func testThePlansExerciseBothGradientExchangeMethods() {
        // Oracle: the rule "factors when chunkSize·(inputs (not for layer 0) + outputs) < (inputs + 1)·outputs".
        let methods = plans.map { makeNetwork(.sync, plan: $0).0.exchange.methods }
        XCTAssertEqual(methods, [[.factors, .factors, .factors], [.factors, .sum, .sum], [.sum, .sum, .sum]])
    }

    func testSyncBatchNormGradientsMatchFloat64FiniteDifferences() throws {
        for plan in plans { try checkAgainstFloat64Reference(.sync, plan: plan) }
    }

    func testLocalBatchNormOverTheWholeBatchGradientsMatchFloat64FiniteDifferences() throws {
        // One replica holding the whole batch: local statistics are global ones, so the loss is the same.
        for plan in plans { try checkAgainstFloat64Reference(.local, plan: plan) }
    }

    func testNoBatchNormGradientsMatchFloat64FiniteDifferences() throws {
        for plan in plans { try checkAgainstFloat64Reference(.none, plan: plan) }
    }

    private func checkAgainstFloat64Reference(_ mode: BatchNormMode, plan: ChunkPlan) throws {
        let (network, x, labels) = makeNetwork(mode, plan: plan)
        let store = network.store
        let before = Array(UnsafeBufferPointer(start: store.values, count: store.count))
        let loss = try step(network)
        let gradients = Array(UnsafeBufferPointer(start: store.gradients, count: store.count))
        XCTAssertEqual(bits(Array(UnsafeBufferPointer(start: store.values, count: store.count))), bits(before),
                       "a step with learning rate 0 must not move the parameters")

        let reference = ReferenceMLP(network)
        let p = before.map(Double.init)
        let context = "\(mode), chunk size \(plan.chunkSize)"
        assertClose(loss, reference.loss(p, x: x, labels: labels), relative: 1e-5, "loss, \(context)")
        let expectedCount = 6 * 5 + 5 + 5 * 4 + 4 + 4 * 3 + 3 + (mode == .none ? 0 : 2 * (5 + 4))
        XCTAssertEqual(store.count, expectedCount)

        let h = 1e-6
        for i in 0..<store.count {
            var plus = p, minus = p
            plus[i] += h; minus[i] -= h
            let numeric = (reference.loss(plus, x: x, labels: labels) - reference.loss(minus, x: x, labels: labels)) / (2 * h)
            assertClose(gradients[i], numeric, absolute: 2e-6, relative: 1e-3, "\(context): ∂L/∂p[\(i)]")
        }
        if mode != .none {
            // A bias right before BatchNorm cannot change the loss: normalization subtracts it again.
            for linear in network.linears.dropLast() {
                for o in 0..<linear.outputs {
                    XCTAssertLessThan(abs(gradients[linear.biasOffset + o]), 1e-6, "bias before BatchNorm, \(context)")
                }
            }
        }
    }

    func testLocalBatchNormAcrossWorkersMatchesPerSliceFloat64Reference() throws {
        // Oracle: the Float64 reference with BatchNorm statistics per worker slice (plain data-parallel BN)
        // and the loss averaged over the global batch, differentiated by central differences; the replicas
        // run on threads through the in-process collective, and every one must hold the same gradients.
        for plan in plans {
            for workers in 2...4 where workers <= plan.chunkCount {
                let hub = InProcessHub(plan: plan, workers: workers)
                let made = (0..<workers).map { _ in makeNetwork(.local, plan: plan) }
                let replicas = made.map(\.0), x = made[0].1, labels = made[0].2
                let slices = (0..<workers).map { BatchSlice(plan: plan, chunks: plan.chunks(forRank: $0, of: workers)) }
                let losses = LossTable(workers: workers)
                let finished = runReplicas(hub) { rank, collective in
                    let network = replicas[rank], rows = slices[rank].globalRows
                    network.input.assign(Array(x[(rows.lowerBound * 6)..<(rows.upperBound * 6)]), rows: rows.count)
                    for (r, global) in rows.enumerated() { network.labels[r] = labels[global] }
                    let metrics = try network.trainStep(slice: slices[rank], collective: collective, computeMetrics: true)
                    losses.append(rank: rank, metrics?.loss.bitPattern ?? 0)
                }
                XCTAssertTrue(finished, "replicas deadlocked")
                XCTAssertEqual(hub.problems, [])
                let context = "local, chunk size \(plan.chunkSize), \(workers) workers"
                let store = replicas[0].store
                let gradients = Array(UnsafeBufferPointer(start: store.gradients, count: store.count))
                for replica in replicas.dropFirst() {
                    XCTAssertEqual(bits(Array(UnsafeBufferPointer(start: replica.store.gradients, count: store.count))), bits(gradients), context)
                }
                let reference = ReferenceMLP(replicas[0])
                let groups = slices.map(\.globalRows)
                let p = Array(UnsafeBufferPointer(start: store.values, count: store.count)).map(Double.init)
                let loss = Double(bitPattern: losses.losses[0][0])
                assertClose(loss, reference.loss(p, x: x, labels: labels, groups: groups), relative: 1e-5, "loss, \(context)")
                XCTAssertGreaterThan(abs(loss - reference.loss(p, x: x, labels: labels)), 1e-4,
                                     "per-slice statistics must give another loss than global ones, \(context)")
                let h = 1e-6
                for i in 0..<store.count {
                    var plus = p, minus = p
                    plus[i] += h; minus[i] -= h
                    let numeric = (reference.loss(plus, x: x, labels: labels, groups: groups)
                                   - reference.loss(minus, x: x, labels: labels, groups: groups)) / (2 * h)
                    assertClose(gradients[i], numeric, absolute: 2e-6, relative: 1e-3, "\(context): ∂L/∂p[\(i)]")
                }
            }
        }
    }

    func testSyncBatchNormGradientsMatchFloat32FiniteDifferencesOfTheNetworkLoss() throws {
        for plan in plans { try checkAgainstNetworkLoss(.sync, plan: plan) }
    }

    func testNoBatchNormGradientsMatchFloat32FiniteDifferencesOfTheNetworkLoss() throws {
        for plan in plans { try checkAgainstNetworkLoss(.none, plan: plan) }
    }

    private func checkAgainstNetworkLoss(_ mode: BatchNormMode, plan: ChunkPlan) throws {
        let (network, _, _) = makeNetwork(mode, plan: plan)
        let store = network.store
        _ = try step(network)
        let gradients = Array(UnsafeBufferPointer(start: store.gradients, count: store.count))
        var indices = [network.linears[0].weightOffset + 3, network.linears[1].weightOffset + 7,
                       network.linears[1].biasOffset + 1, network.linears[2].weightOffset + 5,
                       network.linears[2].biasOffset + 2]
        for norm in network.norms { indices += [norm.gammaOffset + 1, norm.betaOffset + 2] }
        let h: Float = 1e-2
        for i in indices {
            let saved = store.values[i]
            store.values[i] = saved + h
            let up = try step(network)
            let actualUp = store.values[i]
            store.values[i] = saved - h
            let down = try step(network)
            let actualDown = store.values[i]
            store.values[i] = saved
            let numeric = (up - down) / Double(actualUp - actualDown)
            assertClose(gradients[i], numeric, absolute: 3e-4, relative: 2e-2, "\(mode), chunk size \(plan.chunkSize): ∂L/∂p[\(i)]")
        }
    }
}
