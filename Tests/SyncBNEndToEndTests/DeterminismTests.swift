// Oracle: `syncbn train` (one process, local reduction) is the reference. For the same flags, a
// `syncbn launch --workers N` run (a coordinator process and N worker processes talking over loopback TCP)
// must save a model.safetensors that is byte-for-byte the same file, whatever N and however the batch
// splits (uneven slices, a worker with no rows), and log the same training metrics (metrics.jsonl, whose
// losses are all-reduced in chunk order too).

import Foundation
import SyncBNCluster
import XCTest

final class DeterminismTests: SyncBNProcessTestCase {
    /// Short runs (a debug build takes ~5 ms per step of 60 samples), with metrics every 10 steps.
    static let steps = ["--steps", "30", "--log-every", "10"]

    // MARK: Worker counts, file order

    func testLaunchWithOneWorkerSavesTheSameModelAsTrain() throws {
        try assertLaunchMatchesTrain(workers: 1, flags: Self.steps + ["--no-shuffle"])
    }

    func testLaunchWithTwoWorkersSavesTheSameModelAsTrain() throws {
        try assertLaunchMatchesTrain(workers: 2, flags: Self.steps + ["--no-shuffle"])
    }

    func testLaunchWithThreeWorkersSavesTheSameModelAsTrain() throws {
        // 4 chunks of 15 over 3 workers: 2/1/1 chunks.
        try assertLaunchMatchesTrain(workers: 3, flags: Self.steps + ["--no-shuffle"])
    }

    func testLaunchWithFourWorkersSavesTheSameModelAsTrain() throws {
        try assertLaunchMatchesTrain(workers: 4, flags: Self.steps + ["--no-shuffle"])
    }

    func testLaunchWithEightWorkersSavesTheSameModelAsTrain() throws {
        // 4 chunks over 8 workers: workers 4–7 get empty slices and still take part in every round.
        try assertLaunchMatchesTrain(workers: 8, flags: Self.steps + ["--no-shuffle"])
    }

    /// Two workers exchange their BatchNorm rounds directly (`--bn-exchange auto`, the default) or through the
    /// coordinator (`star`): the model is train's either way, and directly the coordinator answers none of
    /// bn-mlp's 6 BatchNorm rounds (3 moments, 3 sums): 2 × 6 fewer messages a step, read from its status file.
    func testTwoWorkersExchangeBatchNormRoundsDirectlyWithTheBitsOfTrain() throws {
        var sent: [String: Double] = [:]
        for mode in ["auto", "star"] {
            let path = try makeTemporaryDirectory("status-\(mode)").appendingPathComponent("status.json").path
            try assertLaunchMatchesTrain(workers: 2, flags: Self.steps + ["--no-shuffle"], launchFlags: ["--bn-exchange", mode, "--status-file", path])
            let status = try RunStatus.read(from: path)
            sent[mode] = try XCTUnwrap(status.messagesSentPerStep, "\(mode): \(status)")
        }
        XCTAssertGreaterThan(sent["star"]! - sent["auto"]!, 11, "coordinator messages sent per step: \(sent)")
    }

    // MARK: Other settings

    func testShuffledLaunchSavesTheSameModelAsTrain() throws {
        let flags = Self.steps + ["--seed", "7"]
        let shuffled = try assertLaunchMatchesTrain(workers: 2, flags: flags)
        // The comparison means something only if shuffling changed the data order (and so the model).
        let fileOrder = try reference(Self.steps + ["--seed", "7", "--no-shuffle"]).model
        XCTAssertNotEqual(shuffled, fileOrder, "a shuffled run saved the same model as a file-order run: is --seed/shuffle ignored?")
    }

    func testLaunchWithoutBatchNormSavesTheSameModelAsTrain() throws {
        let none = try assertLaunchMatchesTrain(workers: 2, flags: Self.steps + ["--no-shuffle", "--bn", "none"])
        let sync = try reference(Self.steps + ["--no-shuffle"]).model
        XCTAssertNotEqual(none, sync, "--bn none saved the same model as --bn sync")
        XCTAssertLessThan(none.count, sync.count, "a model without BatchNorm layers should be the smaller file")
    }

    func testUnevenSplitOverThreeWorkersSavesTheSameModelAsTrain() throws {
        // 7 chunks of 1 row over 3 workers: 3, 2 and 2 rows.
        try assertLaunchMatchesTrain(workers: 3, flags: Self.steps + ["--no-shuffle", "--batch-size", "7", "--chunk-size", "1"])
    }

    func testUnevenSplitWithAnEmptySliceSavesTheSameModelAsTrain() throws {
        // 7 chunks of 1 row over 8 workers: worker 7 gets no rows at all.
        try assertLaunchMatchesTrain(workers: 8, flags: Self.steps + ["--no-shuffle", "--batch-size", "7", "--chunk-size", "1"])
    }

    func testChunksLargeEnoughToSumHiddenLayerGradientsSaveTheSameModelAsTrain() throws {
        // With 60-row chunks, a 100×100 layer's partial gradient (10 100 values) is smaller than its factors
        // (60 × 200), so the hidden layers' gradients are summed rather than gathered (GradientExchange);
        // 2 chunks over 3 workers leaves worker 2 without rows.
        try assertLaunchMatchesTrain(workers: 3, flags: ["--steps", "20", "--log-every", "5", "--no-shuffle", "--batch-size", "120", "--chunk-size", "60"])
    }

    // MARK: Gradients exchanged among the workers

    func testPeerGradientExchangeSavesTheSameModelAsTrain() throws {
        // bn-mlp at batch 60: 4 chunks over 3 workers (2/1/1), the summed part cut into 3 shards.
        try assertLaunchMatchesTrain(workers: 3, flags: Self.steps + ["--no-shuffle"], launchFlags: ["--gradient-exchange", "peers"])
    }

    func testPeerGradientExchangeWithSummedHiddenLayersAndAnEmptySliceSavesTheSameModelAsTrain() throws {
        // 4 chunks of 60 rows: the hidden layers' gradients are summed (≈ 21 000 values, sharded over 5
        // workers, each owner adding every worker's tree tiles); worker 4 has no rows.
        try assertLaunchMatchesTrain(workers: 5, flags: ["--steps", "20", "--log-every", "5", "--no-shuffle", "--batch-size", "240", "--chunk-size", "60"],
                                     launchFlags: ["--gradient-exchange", "peers"])
    }
}

struct TrainedRun {
    let model: Data
    let metrics: String
}

/// Reference runs by the flags that made them, shared by the tests of one run.
final class ReferenceCache: @unchecked Sendable {
    private let lock = NSLock()
    private var runs: [[String]: TrainedRun] = [:]

    subscript(flags: [String]) -> TrainedRun? {
        get { lock.withLock { runs[flags] } }
        set { lock.withLock { runs[flags] = newValue } }
    }
}
