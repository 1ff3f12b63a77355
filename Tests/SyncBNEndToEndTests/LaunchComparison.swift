import Foundation
import XCTest

/// Reference models by flags, computed once per test process (each `train` costs ~0.6 s).
let referenceCache = ReferenceCache()

/// The determinism oracle shared by the multi-process tests: `syncbn train` (one process) is the reference,
/// and `syncbn launch --workers N` with the same flags must save the same bytes and log the same metrics.
extension SyncBNProcessTestCase {
    /// Runs `train flags` (cached) and `launch --workers N flags`, and asserts the two models are the same bytes
    /// (and, given `workerThreads`, that every worker computed on that many threads). Returns the model.
    @discardableResult
    func assertLaunchMatchesTrain(workers: Int, flags: [String], launchFlags: [String] = [], workerThreads: Int? = nil,
                                  file: StaticString = #filePath, line: UInt = #line) throws -> Data {
        if !flags.contains("--data") { try requireDataSet() }
        let expected = try reference(flags, file: file, line: line)
        let out = try makeTemporaryDirectory("launch\(workers)")
        let launch = try runSuccessfully(["launch", "--workers", "\(workers)"] + flags + launchFlags + ["--out", out.path], file: file, line: line)
        let actual = try model(in: out, file: file, line: line)
        let metrics = try trainingMetrics(in: out)
        XCTAssertFalse(metrics.isEmpty, "launch wrote no metrics", file: file, line: line)
        XCTAssertEqual(metrics, expected.metrics, "launch --workers \(workers) logged different metrics than train", file: file, line: line)

        // Every worker really took part: each joined with its rank, and the coordinator trained on N.
        XCTAssertTrue(launch.stderr.contains("on \(workers) worker(s)"), "no training line for \(workers) workers\n\(launch.transcript)", file: file, line: line)
        for rank in 0..<workers {
            XCTAssertTrue(launch.stderr.contains("[process \(rank)] ") && launch.stderr.contains("joined as worker \(rank) of \(workers)"),
                          "worker \(rank) of \(workers) did not report joining\n\(launch.transcript)", file: file, line: line)
            XCTAssertTrue(launch.stderr.contains("training finished; worker \(rank) exits"),
                          "worker \(rank) did not finish cleanly\n\(launch.transcript)", file: file, line: line)
        }
        if let workerThreads {
            let lines = launch.stderr.split(separator: "\n").filter { $0.contains("joined as worker") }
            XCTAssertEqual(lines.filter { $0.contains("computing on \(workerThreads) thread(s)") }.count, workers,
                           "not every worker computed on \(workerThreads) thread(s)\n\(launch.transcript)", file: file, line: line)
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
        if let cached = referenceCache[flags] { return cached }
        let out = try makeTemporaryDirectory("train")
        try runSuccessfully(["train"] + flags + ["--out", out.path], file: file, line: line)
        let run = TrainedRun(model: try model(in: out, file: file, line: line),
                             metrics: try trainingMetrics(in: out))
        referenceCache[flags] = run
        return run
    }
}

/// `directory`'s metrics.jsonl without what depends on the run rather than on the training (timings, live
/// workers, redone steps): what `train` and `launch` must log alike.
func trainingMetrics(in directory: URL) throws -> String {
    let text = try String(contentsOf: directory.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
    return try text.split(separator: "\n").map { line in
        guard var record = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return String(line) }
        for key in ["step_seconds", "samples_per_second", "live_workers", "redone_steps"] { record[key] = nil }
        return String(decoding: try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys, .withoutEscapingSlashes]), as: UTF8.self)
    }.map { $0 + "\n" }.joined()
}

extension SyncBNProcessTestCase {
    /// Asserts that a command was refused: a non-zero exit and one error line that mentions every word.
    func assertRefused(_ result: CompletedRun, mentioning words: [String], file: StaticString = #filePath, line: UInt = #line) {
        guard case .exited(let status) = result.termination, status != 0 else {
            XCTFail("expected a non-zero exit status, got \(result.termination)\n\(result.transcript)", file: file, line: line)
            return
        }
        let errors = result.errorLines.filter { !$0.hasPrefix("[process") }
        XCTAssertEqual(errors.count, 1, "expected one error line\n\(result.transcript)", file: file, line: line)
        for word in words {
            XCTAssertTrue(errors.first?.contains(word) == true, "the error does not mention \"\(word)\"\n\(result.transcript)", file: file, line: line)
        }
    }
}
