// Oracle: `syncbn train` without interruption. A `train` or `launch` stopped with SIGINT at a random step must exit with
// status 75, leave a checkpoint and print the command that continues it; that command must finish with the
// same model bytes and the same metrics log as the uninterrupted run.

import Foundation
import XCTest

final class InterruptTests: SyncBNProcessTestCase {
    private let flags = ["--data", ConvDeterminismTests.dataSet, "--model", "bn-cnn", "--steps", "300", "--batch-size", "8",
                         "--chunk-size", "2", "--log-every", "10"]

    func testInterruptedTrainResumesToTheSameBytes() throws {
        try checkInterrupts(of: ["train"], resuming: "syncbn train --resume")
    }

    func testInterruptedLaunchSavesACheckpointAndResumesToTheSameBytes() throws {
        try checkInterrupts(of: ["launch", "--workers", "2"], resuming: "syncbn launch --workers 2 --resume")
    }

    /// Interrupts `command` twice at random steps, resumes each time with the printed command, and compares
    /// with `train`'s uninterrupted run.
    private func checkInterrupts(of command: [String], resuming prefix: String) throws {
        let expected = try reference(flags)
        for attempt in 0..<2 {
            let out = try makeTemporaryDirectory("interrupted\(attempt)")
            let run = try start(command + flags + ["--out", out.path])
            // A random moment: after 1 to 20 logged steps (10 to 200 of 300).
            let lines = Int.random(in: 1...20)
            let metrics = out.appendingPathComponent("metrics.jsonl").path
            let deadline = Date().addingTimeInterval(60)
            while ((try? String(contentsOfFile: metrics, encoding: .utf8))?.split(separator: "\n").count ?? 0) < lines && Date() < deadline {
                usleep(2_000)  // a file the other process writes, under a deadline
            }
            run.signal(SIGINT)
            let result = try finish(run, seconds: 60)
            guard case .exited(75) = result.termination else {
                XCTFail("an interrupted \(command[0]) should exit with status 75\n\(result.transcript)")
                continue
            }
            let resume = try XCTUnwrap(result.stderr.components(separatedBy: "continue with: ").dropFirst().first?
                .components(separatedBy: "\n").first, result.transcript)
            XCTAssertTrue(resume.hasPrefix("\(prefix) \(out.path) --data "), resume)
            XCTAssertTrue(FileManager.default.fileExists(atPath: out.appendingPathComponent("checkpoint.safetensors").path), result.transcript)
            let arguments = Array(resume.split(separator: " ").dropFirst().map(String.init))
            try runSuccessfully(arguments)
            XCTAssertEqual(try model(in: out), expected.model, "the resumed run (interrupted after \(lines * 10) steps) saved a different model")
            XCTAssertEqual(try trainingMetrics(in: out), expected.metrics,
                           "the resumed run logged different metrics")
        }
    }

    func testResumeExtendsStepsAndRefusesFlagsItWouldIgnore() throws {
        let out = try makeTemporaryDirectory("extend")
        let short = ["--data", ConvDeterminismTests.dataSet, "--model", "bn-cnn", "--batch-size", "8", "--chunk-size", "2", "--log-every", "10"]
        let first = try start(["train", "--steps", "100000"] + short + ["--out", out.path])
        let metrics = out.appendingPathComponent("metrics.jsonl").path
        let deadline = Date().addingTimeInterval(60)
        while ((try? String(contentsOfFile: metrics, encoding: .utf8))?.split(separator: "\n").count ?? 0) < 2 && Date() < deadline {
            usleep(2_000)  // a file the other process writes, under a deadline
        }
        first.signal(SIGINT)
        XCTAssertEqual(try finish(first, seconds: 60).termination, .exited(75))
        for (flags, message) in [(["--lr", "0.05"], "--lr 0.05 differs from the checkpoint's 0.1"),
                                 (["--batch-size", "4"], "--batch-size 4 differs from the checkpoint's 8"),
                                 (["--model", "resnet20"], "--model resnet20 differs from the checkpoint's bn-cnn"),
                                 (["--steps", "3"], "must ask for more")] {
            assertRefused(try run(["train", "--resume", out.path, "--data", ConvDeterminismTests.dataSet] + flags, seconds: 60), mentioning: [message])
        }
        // More steps than the interrupted run had: it is extended, and ends where asked.
        let resumed = try runSuccessfully(["train", "--resume", out.path, "--data", ConvDeterminismTests.dataSet, "--steps", "250", "--lr", "0.1"])
        XCTAssertTrue(resumed.stderr.contains("finished 250 steps"), resumed.transcript)
    }
}
