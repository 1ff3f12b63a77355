/// Determinism of training across worker counts, the round protocol a coordinator follows, and SGD.
///
/// Oracles: a single process training on the whole batch through `LocalCollective` is the reference; N
/// replicas (on N threads) that each hold only their ranks' chunks and meet in the in-process collective of
/// InProcessCluster.swift (partials gathered in rank order = chunk order, reduced over the whole plan) must
/// end with the same bits. A coordinator replica that only `apply`s the recorded round results must also
/// end with the same bits. SGD is checked against PyTorch's update written out by hand.
import Foundation
import XCTest
@testable import SyncBNCore

/// Records every round's result on the way through a `LocalCollective`.
final class RecordingCollective: Collective {
    let inner: LocalCollective
    var doubles: [(Round, [Double])] = []
    var floats: [(Round, [Float])] = []
    var order: [Round] = []
    /// Results of the gradients that rode with backward rounds this step: recorded with the gradient round's.
    private var ridden: [Float] = []

    init(plan: ChunkPlan) { inner = LocalCollective(plan: plan, valuesPerRow: flatScales) }

    func allReduce(_ round: Round, partials: UnsafeBufferPointer<Double>, into result: UnsafeMutableBufferPointer<Double>,
                   riding: RidingGradients?) throws {
        try inner.allReduce(round, partials: partials, into: result, riding: riding)
        if let riding { ridden += riding.result }
        doubles.append((round, Array(result)))
        order.append(round)
    }

    func allGather(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int, into result: UnsafeMutableBufferPointer<Double>,
                   riding: RidingGradients?) throws {
        try inner.allGather(round, partials: partials, width: width, into: result, riding: riding)
        if let riding { ridden += riding.result }
        doubles.append((round, Array(result)))
        order.append(round)
    }

    func exchangeGradients(_ partials: UnsafeBufferPointer<Float>, exchange: GradientExchange, into result: UnsafeMutableBufferPointer<Float>) throws {
        try inner.exchangeGradients(partials, exchange: exchange, into: result)
        floats.append((.gradients, ridden + Array(result)))
        ridden = []
        order.append(.gradients)
    }

    func report(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int) throws {
        order.append(round)
    }
}

final class DeterminismTests: XCTestCase {
    override func setUp() {
        super.setUp()
        BLAS.useSingleThread()
    }

    /// Chunks of 2, 2, 2, 1 rows (every Linear layer's gradient travels as factors) and of 4, 3 rows (the
    /// first layer's as factors, the others as summed partials).
    private let plans = [ChunkPlan(batchSize: 7, chunkSize: 2), ChunkPlan(batchSize: 7, chunkSize: 4)]
    private let steps = 3

    private func spec(_ mode: BatchNormMode) -> ModelSpec {
        ModelSpec.mlp(name: "mlp", inputSize: 6, hiddenSizes: [5, 4], classes: 3, activation: .sigmoid, batchNorm: mode)
    }

    private func makeNetwork(_ mode: BatchNormMode, _ plan: ChunkPlan) -> Network {
        Network(spec: spec(mode), plan: plan, optimizer: SGD(learningRate: 0.5, momentum: 0.9), seed: 3)
    }

    private func batch(_ step: Int, _ plan: ChunkPlan) -> (x: [Float], labels: [Int32]) {
        let x = randomNormals(plan.batchSize * 6, seed: UInt64(100 + step), mean: 0.2, std: 1.5)
        var random = SplitMix64(seed: UInt64(200 + step))
        return (x, (0..<plan.batchSize).map { _ in Int32(random.below(3)) })
    }

    /// Fills `batchInput` with the whole batch and `input`, `labels` with the rows `rows`, as a worker does.
    private func load(_ network: Network, step: Int, rows: Range<Int>) {
        let (x, labels) = batch(step, network.plan)
        network.batchInput.assign(x, rows: network.plan.batchSize)
        if !rows.isEmpty { network.input.assign(Array(x[(rows.lowerBound * 6)..<(rows.upperBound * 6)]), rows: rows.count) }
        for (r, global) in rows.enumerated() { network.labels[r] = labels[global] }
    }


    /// Trains one process on the whole batch; returns its state and the per-step losses. `riding`: whether
    /// gradients ride with the backward rounds (`Network.gradientsRideWithBatchNorm`).
    /// `collective`: what the process calls (its `LocalCollective`, unless a test wraps it).
    private func trainAlone(_ mode: BatchNormMode, _ plan: ChunkPlan, riding: Bool = true,
                            collective: (() -> Collective)? = nil) throws -> (ReplicaState, [UInt64]) {
        let network = makeNetwork(mode, plan)
        network.gradientsRideWithBatchNorm = riding
        var losses: [UInt64] = []
        for step in 0..<steps {
            load(network, step: step, rows: 0..<plan.batchSize)
            let metrics = try network.trainStep(slice: .whole(plan), collective: collective?() ?? LocalCollective(plan: plan, valuesPerRow: flatScales),
                                                computeMetrics: true)
            losses.append(try XCTUnwrap(metrics).loss.bitPattern)
        }
        return (ReplicaState(network), losses)
    }

    /// Trains `workers` replicas on threads, each on its ranks' chunks; returns each replica's state and losses.
    private func trainTogether(_ mode: BatchNormMode, _ plan: ChunkPlan, workers: Int) throws -> [(ReplicaState, [UInt64])] {
        let hub = InProcessHub(plan: plan, workers: workers)
        let networks = (0..<workers).map { _ in makeNetwork(mode, plan) }
        let results = LossTable(workers: workers)
        let finished = runReplicas(hub) { rank, collective in
            let network = networks[rank]
            let slice = BatchSlice(plan: plan, chunks: plan.chunks(forRank: rank, of: workers))
            for step in 0..<self.steps {
                self.load(network, step: step, rows: slice.globalRows)
                let metrics = try network.trainStep(slice: slice, collective: collective, computeMetrics: true)
                results.append(rank: rank, metrics?.loss.bitPattern ?? 0)
            }
        }
        guard finished else {
            XCTFail("replicas deadlocked: \(hub.problems)")
            return []
        }
        XCTAssertEqual(hub.problems, [])
        XCTAssertEqual(hub.log, Array((0..<steps).map { _ in networks[0].rounds(computeMetrics: true) }.joined()))
        return networks.enumerated().map { (ReplicaState($0.element), results.losses[$0.offset]) }
    }

    /// The segments change where gradients travel, not one bit of the model: both layouts, both kinds of
    /// plan (factors everywhere; sums above the first layer), and the riding layout does cut the gradients.
    func testGradientsRidingWithBackwardRoundsChangeNoBit() throws {
        for plan in plans {
            XCTAssertGreaterThan(makeNetwork(.sync, plan).gradientSegments.count, 1)
            let (riding, ridingLosses) = try trainAlone(.sync, plan, riding: true)
            let (whole, wholeLosses) = try trainAlone(.sync, plan, riding: false)
            XCTAssertTrue(riding == whole, "chunk size \(plan.chunkSize)")
            XCTAssertEqual(ridingLosses, wholeLosses)
        }
    }

    /// One process behind its `LocalCollective` reads its factor layers' rows in their own matrices; behind a
    /// collective that does not combine in process (the recording wrapper) it copies them through the exchange, as
    /// a worker does. Both plans, both segment layouts: the same bits, and the in-place reading is what is taken.
    func testFactorRowsReadInPlaceGiveTheBitsOfRowsCopiedThroughTheExchange() throws {
        for plan in plans {
            for riding in [true, false] {
                let network = makeNetwork(.sync, plan)
                network.gradientsRideWithBatchNorm = riding
                XCTAssertTrue(network.factorRowsCanStayInPlace(), "chunk size \(plan.chunkSize), riding \(riding)")
                XCTAssertFalse(RecordingCollective(plan: plan).combinesInProcess)
                let (inPlace, inPlaceLosses) = try trainAlone(.sync, plan, riding: riding)
                let (copied, copiedLosses) = try trainAlone(.sync, plan, riding: riding, collective: { RecordingCollective(plan: plan) })
                XCTAssertTrue(inPlace == copied, "chunk size \(plan.chunkSize), riding \(riding)")
                XCTAssertEqual(inPlaceLosses, copiedLosses)
            }
        }
    }

    func testSyncTrainingGivesTheSameBitsForOneToFiveWorkers() throws {
        try checkWorkerCounts(.sync)
    }

    func testTrainingWithoutBatchNormGivesTheSameBitsForOneToFiveWorkers() throws {
        try checkWorkerCounts(.none)
    }

    private func checkWorkerCounts(_ mode: BatchNormMode) throws {
        for plan in plans {
            let (alone, aloneLosses) = try trainAlone(mode, plan)
            // More workers than chunks: the last ones hold empty slices and must still take part.
            for workers in 1...5 {
                for (rank, (state, losses)) in try trainTogether(mode, plan, workers: workers).enumerated() {
                    let context = "\(mode), chunk size \(plan.chunkSize), \(workers) workers: rank \(rank)"
                    XCTAssertTrue(state == alone, "\(context) differs from one process")
                    XCTAssertEqual(losses, aloneLosses, "\(context) losses")
                }
            }
            // And the parameters did move, so the comparison was not of two untouched initializations.
            XCTAssertNotEqual(alone.values, ReplicaState(makeNetwork(mode, plan)).values)
        }
    }

    func testRoundsAreListedInTheOrderTheStepCallsThem() throws {
        // Oracle: the documented protocol — moments per BatchNorm layer going up, backward sums going down
        // (sync only), the gradient round, then the observations (the net has activations) and metrics if asked.
        let plan = plans[0]
        let expected: [BatchNormMode: [Round]] = [
            .sync: [.moments(layer: 0), .moments(layer: 1), .sums(layer: 1), .sums(layer: 0), .gradients, .observations, .metrics],
            .local: [.moments(layer: 0), .moments(layer: 1), .gradients, .observations, .metrics],
            .none: [.gradients, .observations, .metrics],
        ]
        for mode in BatchNormMode.allCases {
            let network = makeNetwork(mode, plan)
            XCTAssertEqual(network.rounds(computeMetrics: true), expected[mode])
            XCTAssertEqual(network.rounds(computeMetrics: false), Array(expected[mode]!.dropLast(2)))
            for computeMetrics in [true, false] {
                let recorder = RecordingCollective(plan: plan)
                load(network, step: 0, rows: 0..<plan.batchSize)
                try network.trainStep(slice: .whole(plan), collective: recorder, computeMetrics: computeMetrics)
                XCTAssertEqual(recorder.order, network.rounds(computeMetrics: computeMetrics), "\(mode)")
            }
            // Gradients above a synchronized BatchNorm layer ride with its backward round; the gradient round
            // carries the rest, and the segments together are the whole exchange.
            let segments = network.gradientSegments
            XCTAssertEqual(segments.map(\.ridesWith), mode == .sync ? [1, 0, nil] : [nil], "\(mode)")
            XCTAssertEqual(network.width(of: .gradients), segments.last!.exchange.chunkWidth)
            XCTAssertEqual(segments.map(\.exchange.chunkWidth).reduce(0, +), network.exchange.chunkWidth)
            XCTAssertEqual(segments.map(\.exchange.resultWidth).reduce(0, +), network.exchange.resultWidth)
            XCTAssertEqual(network.width(of: .metrics), 2)
            for norm in network.norms {
                XCTAssertEqual(network.width(of: .moments(layer: norm.index)), 2 * norm.features)
                XCTAssertEqual(network.width(of: .sums(layer: norm.index)), 2 * norm.features)
            }
        }
    }

    func testCoordinatorApplyingRoundResultsKeepsAnIdenticalModel() throws {
        // Oracle: the worker's own state after each step; the coordinator replica computes nothing but
        // applies the recorded round results (with the global batch's inputs in `batchInput`).
        for plan in plans {
            for mode in [BatchNormMode.sync, .local, .none] {
                let worker = makeNetwork(mode, plan), coordinator = makeNetwork(mode, plan)
                for step in 0..<steps {
                    let recorder = RecordingCollective(plan: plan)
                    load(worker, step: step, rows: 0..<plan.batchSize)
                    load(coordinator, step: step, rows: 0..<0)
                    let metrics = try worker.trainStep(slice: .whole(plan), collective: recorder, computeMetrics: true)
                    var applied: StepMetrics?
                    for (round, result) in recorder.doubles {
                        let m = result.withUnsafeBufferPointer { coordinator.apply(round, doubles: $0) }
                        if round == .metrics { applied = m }
                    }
                    XCTAssertEqual(recorder.floats.count, 1)
                    let gradients = try XCTUnwrap(recorder.floats.first)
                    gradients.1.withUnsafeBufferPointer { coordinator.apply(gradients: $0) }
                    coordinator.finishStep()
                    XCTAssertTrue(ReplicaState(coordinator) == ReplicaState(worker), "\(mode), chunk size \(plan.chunkSize), step \(step)")
                    XCTAssertEqual(applied, metrics)
                }
            }
        }
    }

    func testSGDFollowsPyTorchMomentumRule() {
        // Oracle: torch.optim.SGD — v ← μ·v + g (v starts at 0), p ← p − lr·v — written out for two steps.
        let store = ParameterStore(count: 3)
        let p0: [Float] = [1, -2, 0.5], g1: [Float] = [0.1, 0.2, -0.3], g2: [Float] = [-0.4, 0.05, 0.25]
        for i in 0..<3 { store.values[i] = p0[i]; store.gradients[i] = g1[i] }
        let sgd = SGD(learningRate: 0.1, momentum: 0.9)
        sgd.step(store)
        for i in 0..<3 { store.gradients[i] = g2[i] }
        sgd.step(store)
        for i in 0..<3 {
            let v1 = Double(g1[i]), v2 = 0.9 * v1 + Double(g2[i])
            let expected = Double(p0[i]) - 0.1 * v1 - 0.1 * v2
            assertClose(store.values[i], expected, absolute: 1e-6, "p[\(i)]")
            assertClose(store.velocity[i], v2, absolute: 1e-6, "v[\(i)]")
        }
    }
}
