// Oracle: `syncbn train` (one process, local reduction) is the reference. For the same flags, a
// `syncbn launch --workers N` run (a coordinator process and N worker processes talking over loopback TCP)
// must save a model.safetensors that is byte-for-byte the same file, whatever N and however the batch
// splits (uneven slices, a worker with no rows), and log the same training metrics (metrics.jsonl, whose
// losses are all-reduced in chunk order too).

import Foundation
import XCTest

final class DeterminismTests: SyncBNProcessTestCase {
    /// Short runs (a debug build takes ~5 ms per step of 60 samples), with metrics every 10 steps.
    static let steps = ["--steps", "30", "--log-every", "10"]

    /// Reference models by flags, computed once per test process (each `train` costs ~0.6 s).
    private static let referenceCache = ReferenceCache()

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

    // MARK: Helpers

    /// Runs `train flags` (cached) and `launch --workers N flags`, and asserts the two models are the same bytes.
    /// Returns the model.
    @discardableResult
    func assertLaunchMatchesTrain(workers: Int, flags: [String], launchFlags: [String] = [], file: StaticString = #filePath, line: UInt = #line) throws -> Data {
        try requireDataSet()
        let expected = try reference(flags, file: file, line: line)
        let out = try makeTemporaryDirectory("launch\(workers)")
        let launch = try runSuccessfully(["launch", "--workers", "\(workers)"] + flags + launchFlags + ["--out", out.path], file: file, line: line)
        let actual = try model(in: out, file: file, line: line)
        let metrics = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        XCTAssertFalse(metrics.isEmpty, "launch wrote no metrics", file: file, line: line)
        XCTAssertEqual(metrics, expected.metrics, "launch --workers \(workers) logged different metrics than train", file: file, line: line)

        // Every worker really took part: each joined with its rank, and the coordinator trained on N.
        XCTAssertTrue(launch.stderr.contains("on \(workers) worker(s)"), "no training line for \(workers) workers\n\(launch.transcript)", file: file, line: line)
        for rank in 0..<workers {
            XCTAssertTrue(launch.stderr.contains("[worker \(rank)] ") && launch.stderr.contains("joined as worker \(rank) of \(workers)"),
                          "worker \(rank) of \(workers) did not report joining\n\(launch.transcript)", file: file, line: line)
            XCTAssertTrue(launch.stderr.contains("training finished; worker \(rank) exits"),
                          "worker \(rank) did not finish cleanly\n\(launch.transcript)", file: file, line: line)
        }

        let reference = expected.model
        XCTAssertEqual(actual.count, reference.count, "model sizes differ: launch \(actual.count) B, train \(reference.count) B", file: file, line: line)
        if actual != reference {
            let firstDifference = zip(actual, reference).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? min(actual.count, reference.count)
            XCTFail("launch --workers \(workers) \(flags.joined(separator: " ")) saved a model that differs from train's, first at byte \(firstDifference) of \(reference.count)", file: file, line: line)
        }
        return actual
    }

    /// What `syncbn train flags` saves: the model and the metrics log.
    func reference(_ flags: [String], file: StaticString = #filePath, line: UInt = #line) throws -> TrainedRun {
        if let cached = Self.referenceCache[flags] { return cached }
        let out = try makeTemporaryDirectory("train")
        try runSuccessfully(["train"] + flags + ["--out", out.path], file: file, line: line)
        let run = TrainedRun(model: try model(in: out, file: file, line: line),
                             metrics: try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8))
        Self.referenceCache[flags] = run
        return run
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
