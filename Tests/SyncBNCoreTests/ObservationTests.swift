// What a logged step observes of BatchNorm and activation inputs (the TensorBoard histograms and Figure 1's
// percentiles), and the `--bn-backward no-stats` ablation.
import TensorBoardEvents
import XCTest
@testable import SyncBNCore

final class ObservationTests: XCTestCase {
    override func setUp() {
        super.setUp()
        BLAS.useSingleThread()
    }

    private let plan = ChunkPlan(batchSize: 7, chunkSize: 2)

    /// BatchNorm1d straight on the input (so its observed input is the batch itself), then a conv-free head.
    private func flatSpec() throws -> ModelSpec {
        try ModelSpec(name: "flat", input: TensorShape([4]), layers: [
            .batchNorm1d(numFeatures: 4, eps: 1e-5, momentum: 0.1), .sigmoid, .linear(inFeatures: 4, outFeatures: 3, bias: true),
        ])
    }

    /// A small conv net: BatchNorm2d and ReLU on images, BatchNorm1d and Tanh on vectors.
    private func convSpec() throws -> ModelSpec {
        try ModelSpec(name: "conv", input: TensorShape([2, 5, 5]), layers: [
            .conv2d(inChannels: 2, outChannels: 3, kernelSize: 3, stride: 1, padding: 1, bias: false),
            .batchNorm2d(numFeatures: 3, eps: 1e-5, momentum: 0.1), .relu, .flatten,
            .linear(inFeatures: 75, outFeatures: 6, bias: true), .batchNorm1d(numFeatures: 6, eps: 1e-5, momentum: 0.1), .tanh,
            .linear(inFeatures: 6, outFeatures: 3, bias: true),
        ])
    }

    private func load(_ network: Network, rows: Range<Int>) -> [Float] {
        let width = network.spec.input.count
        let x = randomNormals(plan.batchSize * width, seed: 11, mean: 0.3, std: 2)
        network.batchInput.assign(x, rows: plan.batchSize)
        if !rows.isEmpty { network.input.assign(Array(x[(rows.lowerBound * width)..<(rows.upperBound * width)]), rows: rows.count) }
        for (r, global) in rows.enumerated() { network.labels[r] = Int32(global % 3) }
        return x
    }

    func testPercentilesInterpolateBetweenRanksAsNumPyDoes() {
        // numpy.percentile([1, 2, 3, 4], 50) = 2.5; of 0…10: p15 = 1.5, p85 = 8.5.
        XCTAssertEqual(percentile(sorted: [1, 2, 3, 4], 50), 2.5)
        let zeroToTen = (0...10).map(Double.init)
        XCTAssertEqual(percentile(sorted: zeroToTen, 15), 1.5, accuracy: 1e-12)
        XCTAssertEqual(percentile(sorted: zeroToTen, 85), 8.5, accuracy: 1e-12)
        XCTAssertEqual(percentile(sorted: [7], 85), 7)
        XCTAssertTrue(percentile(sorted: [], 50).isNaN)
    }

    func testObservationOfTheInputBatchMatchesADirectComputation() throws {
        let network = Network(spec: try flatSpec(), plan: plan, optimizer: SGD(learningRate: 0.1, momentum: 0), seed: 1)
        let x = load(network, rows: 0..<plan.batchSize)
        let metrics = try XCTUnwrap(try network.trainStep(slice: .whole(plan), collective: LocalCollective(plan: plan, valuesPerRow: network.momentScales),
                                                          computeMetrics: true))
        XCTAssertTrue(metrics.observations.isEmpty, "the network does not summarize: the runner does")
        let observations = network.observationsOfWholeBatch()
        XCTAssertEqual(observations.map(\.layer.label), ["0.BatchNorm1d", "1.Sigmoid"])
        let input = observations[0]
        let values = x.map(Double.init)
        XCTAssertEqual(input.count, 28)
        XCTAssertEqual(input.bucketCounts.reduce(0, +), 28)
        XCTAssertEqual(input.minimum, values.min())
        XCTAssertEqual(input.maximum, values.max())
        XCTAssertEqual(input.sum, values.reduce(0, +), accuracy: 1e-9)
        XCTAssertEqual(input.sumOfSquares, values.map { $0 * $0 }.reduce(0, +), accuracy: 1e-9)
        for v in x { XCTAssertGreaterThan(input.bucketCounts[FloatBuckets.index(of: v)], 0, "the bucket of \(v)") }
        let featureZero = stride(from: 0, to: x.count, by: 4).map { Double(x[$0]) }.sorted()
        XCTAssertEqual(input.trackedPercentiles, [15, 50, 85].map { percentile(sorted: featureZero, $0) })
        // The sigmoid sees BatchNorm's output: standardized per feature (γ = 1, β = 0), so its mean is ~0.
        XCTAssertEqual(observations[1].sum / Double(observations[1].count), 0, accuracy: 1e-5)
        let histogram = input.histogram
        XCTAssertEqual(histogram.count, 28)
        XCTAssertEqual(histogram.bucketCounts.reduce(0, +), 28)
    }

    func testObservationsOfAConvNetAreTheSameForOneToFourWorkers() throws {
        let spec = try convSpec()
        let alone = Network(spec: spec, plan: plan, optimizer: SGD(learningRate: 0.1, momentum: 0), seed: 2)
        _ = load(alone, rows: 0..<plan.batchSize)
        try alone.trainStep(slice: .whole(plan), collective: LocalCollective(plan: plan, valuesPerRow: alone.momentScales), computeMetrics: true)
        let expected = alone.observationsOfWholeBatch()
        XCTAssertEqual(expected.map(\.layer.label), ["1.BatchNorm2d", "2.ReLU", "5.BatchNorm1d", "6.Tanh"])
        XCTAssertEqual(expected.map(\.count), [7 * 75, 7 * 75, 7 * 6, 7 * 6])
        // Channel 0 of an image: 7 samples × 25 positions; feature 0 of a vector: 7 values.
        XCTAssertNotEqual(expected[0].trackedPercentiles[0], expected[0].trackedPercentiles[2])

        for workers in 1...4 {
            let hub = InProcessHub(plan: plan, workers: workers)
            let networks = (0..<workers).map { _ in Network(spec: spec, plan: plan, optimizer: SGD(learningRate: 0.1, momentum: 0), seed: 2) }
            let chunkPlan = plan
            let finished = runReplicas(hub) { rank, hubCollective in
                let network = networks[rank]
                let slice = BatchSlice(plan: chunkPlan, chunks: chunkPlan.chunks(forRank: rank, of: workers))
                _ = self.load(network, rows: slice.globalRows)
                try network.trainStep(slice: slice, collective: ImageHubCollective(hubCollective, valuesPerRow: network.momentScales), computeMetrics: true)
            }
            XCTAssertTrue(finished, "replicas deadlocked: \(hub.problems)")
            XCTAssertEqual(hub.problems, [])
            let gathered = try XCTUnwrap(hub.reported[.observations], "\(workers) workers reported no observations")
            let observed = gathered.withUnsafeBufferPointer { networks[0].observations(gathered: $0) }
            XCTAssertEqual(observed, expected, "\(workers) workers")
        }
    }

    func testFloatBucketsHoldTheirValuesAndCoverEveryFloat() {
        let limits = FloatBuckets.limits
        XCTAssertEqual(limits.count, FloatBuckets.count)
        XCTAssertEqual(limits, limits.sorted(), "upper edges increase")
        XCTAssertEqual(Set(limits).count, limits.count)
        var random = SplitMix64(seed: 9)
        var values: [Float] = [0, -0, 1, -1, 0x1p-20, -0x1p-20, 0x1p20, -0x1p20, 1e-30, -1e30, .infinity, -.infinity, .greatestFiniteMagnitude]
        for _ in 0..<20_000 { values.append(Float(bitPattern: UInt32(truncatingIfNeeded: random.next()))) }
        for v in values where v.isFinite {
            let i = FloatBuckets.index(of: v)
            XCTAssertTrue((0..<limits.count).contains(i), "\(v)")
            // Bucket i holds (limits[i−1], limits[i]] for negatives and [limits[i−1], limits[i]) for the rest.
            let upper = limits[i], lower = i > 0 ? limits[i - 1] : -Double.infinity
            XCTAssertTrue(Double(v) >= lower && Double(v) <= upper, "\(v) in bucket \(i) (\(lower), \(upper)]")
        }
        XCTAssertEqual(FloatBuckets.index(of: .nan), FloatBuckets.count - 1)
        XCTAssertEqual(FloatBuckets.index(of: .infinity), FloatBuckets.count - 1)
        XCTAssertEqual(FloatBuckets.index(of: -.infinity), 0)
        XCTAssertEqual(FloatBuckets.index(of: 1.0), FloatBuckets.index(of: 1.12), "1.125 is the next edge")
        XCTAssertEqual(FloatBuckets.index(of: 1.125), FloatBuckets.index(of: 1.0) + 1)
        XCTAssertEqual(FloatBuckets.index(of: -1.0), FloatBuckets.index(of: -1.12))
        XCTAssertEqual(FloatBuckets.index(of: 0), FloatBuckets.index(of: -1e-7), "about zero")
    }

    func testNoObservationsOnStepsWithoutMetrics() throws {
        let network = Network(spec: try flatSpec(), plan: plan, optimizer: SGD(learningRate: 0.1, momentum: 0), seed: 1)
        XCTAssertFalse(network.rounds(computeMetrics: false).contains(.observations))
        XCTAssertTrue(network.rounds(computeMetrics: true).contains(.observations))
        let recording = RecordingCollective(plan: plan)
        _ = load(network, rows: 0..<plan.batchSize)
        try network.trainStep(slice: .whole(plan), collective: recording, computeMetrics: false)
        XCTAssertFalse(recording.order.contains(.observations))
    }

    /// The seed's argument (Ioffe & Szegedy §2): if the normalization's dependence on the bias is not
    /// back-propagated, the bias feeding BatchNorm gets gradients whose effect the normalization cancels, so it
    /// drifts (over a long run, grows: Scripts/bn-backward-ablation.sh). Through the statistics, that bias's
    /// gradient is zero (Σ over the batch of ∂L/∂x is 0 per feature).
    func testWithoutTheStatisticsInBackwardTheBiasBeforeBatchNormDrifts() throws {
        func biasNorm(_ backward: BatchNormBackward) throws -> (start: Double, end: Double) {
            var spec = try ModelSpec(name: "ablation", input: TensorShape([4]), layers: [
                .linear(inFeatures: 4, outFeatures: 5, bias: true), .batchNorm1d(numFeatures: 5, eps: 1e-5, momentum: 0.1), .sigmoid,
                .linear(inFeatures: 5, outFeatures: 3, bias: true),
            ])
            spec.batchNormBackward = backward
            let network = Network(spec: spec, plan: plan, optimizer: SGD(learningRate: 0.5, momentum: 0), seed: 4)
            let bias = try XCTUnwrap(network.biasesFeedingBatchNorm.first)
            XCTAssertEqual(bias.label, "0.Linear")
            func norm() -> Double { bias.bias.range.map { Double(network.store.values[$0]) * Double(network.store.values[$0]) }.reduce(0, +).squareRoot() }
            let start = norm()
            for _ in 0..<30 {
                _ = load(network, rows: 0..<plan.batchSize)
                try network.trainStep(slice: .whole(plan), collective: LocalCollective(plan: plan, valuesPerRow: network.momentScales), computeMetrics: false)
            }
            return (start, norm())
        }
        let full = try biasNorm(.full), ablated = try biasNorm(.noStatistics)
        XCTAssertEqual(full.end, full.start, accuracy: 1e-5, "through the statistics the bias gets no gradient")
        XCTAssertGreaterThan(abs(ablated.end - ablated.start), 0.03, "without them it drifts")
    }

    func testTheAblationTravelsInTheModelAndDefaultsToFull() throws {
        var spec = try flatSpec()
        XCTAssertEqual(try ModelSpec.decode(Array(try JSONEncoder().encode(spec))).batchNormBackward, .full)
        XCTAssertFalse(String(decoding: try JSONEncoder().encode(spec), as: UTF8.self).contains("batch_norm_backward"),
                       "runs without the ablation keep the metadata they had")
        spec.batchNormBackward = .noStatistics
        XCTAssertEqual(try ModelSpec.decode(Array(try JSONEncoder().encode(spec))).batchNormBackward, .noStatistics)
    }
}
