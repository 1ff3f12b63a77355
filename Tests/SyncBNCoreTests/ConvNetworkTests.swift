/// A whole small convolutional network's training step: [Conv2d(1→3, 3, pad 1), BatchNorm2d(3), ReLU,
/// MaxPool2d(2), Residual(body: [Conv2d(3→3, 3, pad 1), BatchNorm2d(3)]), ReLU, Flatten, Linear(27→4)] on
/// 6×6 inputs, batch 5 in chunks of 2, 2, 1.
///
/// Oracles: (1) for the gradients a step applies (learning rate and momentum 0, read from the store after
/// `trainStep`), central finite differences (h = 1e-6) of the Float64 training-mode loss of
/// `Reference.forward` (direct loops, BatchNorm over the global batch's N·H·W values) followed by softmax
/// cross-entropy averaged over the batch, for every parameter; (2) for determinism, one process on the
/// whole batch through a `LocalCollective` that counts H·W values per row (as the training run builds it):
/// 1 to 4 replicas on threads meeting in the in-process hub (InProcessCluster.swift) must end with the same
/// bits — parameters, velocity, running statistics — after 3 steps of SGD with momentum. With 4 workers the
/// 3 chunks leave one replica an empty slice, and with 2 the slices are uneven (2 chunks and 1).
import Foundation
import XCTest
@testable import SyncBNCore

/// `HubCollective` whose moments rounds count H·W values per row for each BatchNorm2d layer, as the
/// coordinator does (`Network.valuesPerRow(of:)`); the hub's own collective counts one value per row.
final class ImageHubCollective: Collective {
    let inner: HubCollective
    let valuesPerRow: [Int]

    init(_ inner: HubCollective, valuesPerRow: [Int]) {
        self.inner = inner
        self.valuesPerRow = valuesPerRow
    }

    func allReduce(_ round: Round, partials: UnsafeBufferPointer<Double>, into result: UnsafeMutableBufferPointer<Double>,
                   riding: RidingGradients?) throws {
        let plan = inner.hub.plan, width = result.count
        var scale = 1
        if case .moments(let layer) = round { scale = valuesPerRow[layer] }
        let reduced = inner.hub.exchange(rank: inner.rank, round: round, partials: Array(partials), width: width) { all in
            withDoubles(width) { out in
                all.withUnsafeBufferPointer { round.reduce($0, plan: plan, chunks: 0..<plan.chunkCount, width: width, valuesPerRow: scale, into: out) }
            }
        }
        for i in 0..<width { result[i] = reduced[i] }
        if let riding { inner.combineGradients(riding.partials, exchange: riding.exchange, into: riding.result, logged: false) }
    }

    func allGather(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int, into result: UnsafeMutableBufferPointer<Double>,
                   riding: RidingGradients?) throws {
        try inner.allGather(round, partials: partials, width: width, into: result, riding: riding)
    }

    func exchangeGradients(_ partials: UnsafeBufferPointer<Float>, exchange: GradientExchange, into result: UnsafeMutableBufferPointer<Float>) throws {
        try inner.exchangeGradients(partials, exchange: exchange, into: result)
    }

    func report(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int) throws {
        try inner.report(round, partials: partials, width: width)
    }
}

final class ConvNetworkTests: XCTestCase {
    override func setUp() {
        super.setUp()
        BLAS.useSingleThread()
    }

    private let plan = ChunkPlan(batchSize: 5, chunkSize: 2)
    private let classes = 4

    private func spec(_ mode: BatchNormMode) throws -> ModelSpec {
        func bn(_ c: Int) -> LayerSpec { .batchNorm2d(numFeatures: c, eps: 1e-5, momentum: 0.1) }
        return try ModelSpec(name: "small-cnn", input: TensorShape([1, 6, 6]), layers: [
            .conv2d(inChannels: 1, outChannels: 3, kernelSize: 3, stride: 1, padding: 1, bias: true), bn(3), .relu,
            .maxPool2d(kernelSize: 2, stride: 2, padding: 0),
            .residual(body: [.conv2d(inChannels: 3, outChannels: 3, kernelSize: 3, stride: 1, padding: 1, bias: true), bn(3)], shortcut: []),
            .relu, .flatten, .linear(inFeatures: 27, outFeatures: classes, bias: true),
        ], batchNorm: mode)
    }

    private func batch(_ step: Int) -> (x: [Float], labels: [Int32]) {
        let x = randomNormals(plan.batchSize * 36, seed: UInt64(100 + step), mean: 0.2, std: 1.5)
        var random = SplitMix64(seed: UInt64(200 + step))
        return (x, (0..<plan.batchSize).map { _ in Int32(random.below(classes)) })
    }

    /// Fills `batchInput` with the whole batch and `input`, `labels` with the rows `rows`, as a worker does.
    private func load(_ network: Network, step: Int, rows: Range<Int>) {
        let (x, labels) = batch(step)
        network.batchInput.assign(x, rows: plan.batchSize)
        if !rows.isEmpty { network.input.assign(Array(x[(rows.lowerBound * 36)..<(rows.upperBound * 36)]), rows: rows.count) }
        network.input.rows = rows.count
        for (r, global) in rows.enumerated() { network.labels[r] = labels[global] }
    }

    // MARK: Gradients

    func testAppliedGradientsMatchFiniteDifferencesOfTheFloat64Loss() throws {
        for mode in [BatchNormMode.sync, .local] {
            let network = Network(spec: try spec(mode), plan: plan, optimizer: SGD(learningRate: 0, momentum: 0), seed: 42)
            XCTAssertEqual(network.norms.map(\.spatialSize), [36, 9])
            XCTAssertEqual(network.store.count, (27 + 3) + 6 + (81 + 3) + 6 + (27 * 4 + 4), "parameters counted by hand")
            for (n, norm) in network.norms.enumerated() {
                for f in 0..<norm.features {
                    network.store.values[norm.gammaOffset + f] = 0.5 + 0.25 * Float((f + n) % 3)
                    network.store.values[norm.betaOffset + f] = 0.3 * Float(f) - 0.2
                }
            }
            load(network, step: 0, rows: 0..<plan.batchSize)
            let (x, labels) = batch(0)
            let store = network.store
            let before = Array(UnsafeBufferPointer(start: store.values, count: store.count))
            let collective = LocalCollective(plan: plan, valuesPerRow: network.momentScales)
            let metrics = try XCTUnwrap(network.trainStep(slice: .whole(plan), collective: collective, computeMetrics: true))
            let gradients = Array(UnsafeBufferPointer(start: store.gradients, count: store.count))
            XCTAssertEqual(bits(Array(UnsafeBufferPointer(start: store.values, count: store.count))), bits(before), "learning rate 0")

            let p = before.map(Double.init)
            func loss(_ p: [Double]) -> Double {
                Reference.crossEntropy(Reference.forward(network.layers, x.map(Double.init), n: plan.batchSize, p: p), labels: labels, classes: classes)
            }
            assertClose(metrics.loss, loss(p), relative: 1e-5, "loss, \(mode)")
            let h = 1e-6
            var numeric = [Double](repeating: 0, count: p.count)
            for i in 0..<p.count {
                var plus = p, minus = p
                plus[i] += h; minus[i] -= h
                numeric[i] = (loss(plus) - loss(minus)) / (2 * h)
            }
            assertAllClose(gradients, numeric, absolute: 5e-6, relative: 1e-3, "∂L/∂p, \(mode)")
            XCTAssertGreaterThan(gradients.map(abs).max()!, 1e-2, "the gradients are not trivially zero")
            // A convolution bias right before BatchNorm cannot change the loss: normalization subtracts it.
            for case let conv as Conv2d in network.namedLayers.map(\.layer) {
                for i in conv.bias!.range { XCTAssertLessThan(abs(gradients[i]), 1e-6, "bias before BatchNorm, \(mode)") }
            }
        }
    }

    // MARK: Determinism

    private let steps = 3


    private func makeNetwork(_ mode: BatchNormMode) throws -> Network {
        Network(spec: try spec(mode), plan: plan, optimizer: SGD(learningRate: 0.1, momentum: 0.9), seed: 3)
    }

    /// With `fusedReLUs` set, metrics (and with them the recording of layer inputs, which keeps the ReLU apart)
    /// only on the last step; nil: the network's own choice with metrics every step.
    private func trainAlone(_ mode: BatchNormMode, fusedReLUs: Bool? = nil) throws -> (ReplicaState, [UInt64]) {
        let network = try makeNetwork(mode)
        let norms = network.namedLayers.compactMap { $0.1 as? BatchNorm }
        XCTAssertEqual(norms.map(\.rectifiesOutput), [true, false], "the first BatchNorm has a ReLU after it, the residual body's last does not")
        if fusedReLUs == false { for norm in norms { norm.rectifiesOutput = false } }
        let relu = try XCTUnwrap(network.namedLayers.first { ($0.1 as? Activation)?.kind == .relu }?.1 as? Activation)
        let collective = LocalCollective(plan: plan, valuesPerRow: network.momentScales)
        var losses: [UInt64] = []
        for step in 0..<steps {
            load(network, step: step, rows: 0..<plan.batchSize)
            let metrics = try network.trainStep(slice: .whole(plan), collective: collective,
                                                computeMetrics: fusedReLUs == nil || step == steps - 1, step: step)
            if let metrics { losses.append(metrics.loss.bitPattern) }
            if fusedReLUs != nil && step < steps - 1 {
                XCTAssertEqual(relu.passedOnRectifiedInput, fusedReLUs, "step \(step): whether the ReLU took its BatchNorm's rectified output")
            }
        }
        return (ReplicaState(network), losses)
    }

    private func trainTogether(_ mode: BatchNormMode, workers: Int) throws -> [(ReplicaState, [UInt64])] {
        let hub = InProcessHub(plan: plan, workers: workers)
        let networks = try (0..<workers).map { _ in try makeNetwork(mode) }
        let results = LossTable(workers: workers)
        let plan = plan, steps = steps
        let finished = runReplicas(hub) { rank, hubCollective in
            let network = networks[rank]
            let collective = ImageHubCollective(hubCollective, valuesPerRow: network.momentScales)
            let slice = BatchSlice(plan: plan, chunks: plan.chunks(forRank: rank, of: workers))
            for step in 0..<steps {
                self.load(network, step: step, rows: slice.globalRows)
                let metrics = try network.trainStep(slice: slice, collective: collective, computeMetrics: true, step: step)
                results.append(rank: rank, metrics?.loss.bitPattern ?? 0)
            }
        }
        XCTAssertTrue(finished, "replicas deadlocked: \(hub.problems)")
        XCTAssertEqual(hub.problems, [])
        XCTAssertEqual(hub.log, Array((0..<steps).map { _ in networks[0].rounds(computeMetrics: true) }.joined()))
        return networks.enumerated().map { (ReplicaState($0.element), results.losses[$0.offset]) }
    }

    /// A ReLU applied inside the BatchNorm before it (forward: max(y, 0) in the normalizing pass; backward: the
    /// mask y > 0 taken from γ·x̂ + β in BatchNorm's passes) gives the bits of the two layers run one by one.
    func testBatchNormWithItsReLUFusedGivesTheBitsOfTheTwoLayers() throws {
        for mode in [BatchNormMode.sync, .local] {
            let (fused, fusedLosses) = try trainAlone(mode, fusedReLUs: true)
            let (apart, apartLosses) = try trainAlone(mode, fusedReLUs: false)
            XCTAssertEqual(fused, apart, "\(mode): the state differs")
            XCTAssertEqual(fusedLosses, apartLosses, "\(mode): the losses differ")
        }
    }

    /// The same for BatchNorm1d (a feature per value, the row kernels) in an MLP, on one and on three threads.
    func testBatchNorm1dWithItsReLUFusedGivesTheBitsOfTheTwoLayers() throws {
        let spec = try ModelSpec(name: "mlp-relu", input: TensorShape([1, 6, 6]), layers: [
            .flatten, .linear(inFeatures: 36, outFeatures: 20, bias: true), .batchNorm1d(numFeatures: 20, eps: 1e-5, momentum: 0.1), .relu,
            .linear(inFeatures: 20, outFeatures: classes, bias: true),
        ], batchNorm: .sync)
        func train(fused: Bool, threads: Int) throws -> ReplicaState {
            let network = Network(spec: spec, plan: plan, optimizer: SGD(learningRate: 0.1, momentum: 0.9), seed: 3)
            if threads > 1 { network.threads = ChunkThreads(threadCount: threads, inlineWork: 0) }
            let norm = try XCTUnwrap(network.namedLayers.compactMap { $0.1 as? BatchNorm }.first)
            XCTAssertTrue(norm.rectifiesOutput)
            norm.rectifiesOutput = fused
            let collective = LocalCollective(plan: plan, valuesPerRow: network.momentScales)
            for step in 0..<steps {
                load(network, step: step, rows: 0..<plan.batchSize)
                try network.trainStep(slice: .whole(plan), collective: collective, computeMetrics: false, step: step)
            }
            let relu = try XCTUnwrap(network.namedLayers.compactMap { $0.1 as? Activation }.first)
            XCTAssertEqual(relu.passedOnRectifiedInput, fused, "whether the ReLU took its BatchNorm's rectified output")
            return ReplicaState(network)
        }
        let apart = try train(fused: false, threads: 1)
        XCTAssertEqual(try train(fused: true, threads: 1), apart, "one thread")
        XCTAssertEqual(try train(fused: true, threads: 3), apart, "three threads")
    }

    func testSyncTrainingGivesTheSameBitsForOneToFourWorkers() throws {
        let (alone, losses) = try trainAlone(.sync)
        XCTAssertNotEqual(alone.values, ReplicaState(try makeNetwork(.sync)).values, "the parameters moved")
        XCTAssertNotEqual(alone.runningMeans, ReplicaState(try makeNetwork(.sync)).runningMeans, "the running statistics moved")
        XCTAssertEqual(alone.tracked, [3, 3])
        for workers in 1...4 {
            for (rank, (state, rankLosses)) in try trainTogether(.sync, workers: workers).enumerated() {
                XCTAssertTrue(state == alone, "sync, \(workers) workers: rank \(rank) differs from one process")
                XCTAssertEqual(rankLosses, losses, "sync, \(workers) workers: rank \(rank) losses")
            }
        }
    }

    func testLocalTrainingIsDeterministicAndOneWorkerMatchesOneProcess() throws {
        // Local BatchNorm normalizes by each replica's own slice, so several workers compute another
        // function than one process on the whole batch: for them the oracle is agreement between ranks
        // and between two runs, and a difference from the one-process result.
        let (alone, losses) = try trainAlone(.local)
        for workers in 1...4 {
            let run = try trainTogether(.local, workers: workers)
            let again = try trainTogether(.local, workers: workers)
            for (rank, (state, rankLosses)) in run.enumerated() {
                let context = "local, \(workers) workers: rank \(rank)"
                XCTAssertTrue(state == run[0].0, "\(context) differs from rank 0")
                XCTAssertTrue(state == again[rank].0, "\(context) differs between two runs")
                XCTAssertEqual(rankLosses, again[rank].1, "\(context) losses between two runs")
                if workers == 1 {
                    XCTAssertTrue(state == alone, "\(context) differs from one process")
                    XCTAssertEqual(rankLosses, losses, "\(context) losses")
                } else {
                    XCTAssertFalse(state.values == alone.values, "\(context): per-slice statistics must change the training")
                }
            }
        }
    }
}
