// Oracles:
// - `--bn local` normalizes by each worker's slice, `--bn sync` by the global batch: with 2 workers the two
//   modes must save different models (or the mode flag does nothing), while a local run is still
//   reproducible (two identical runs save the same bytes).
// - `syncbn evaluate` on a saved model must report the test accuracy and loss that the training run itself
//   computed on the same model at its last step (metrics.jsonl), and print one JSON object with --json.

import Foundation
import XCTest

final class BatchNormModeAndEvaluateTests: SyncBNProcessTestCase {
    func testLocalBatchNormDiffersFromSyncAndIsReproducible() throws {
        try requireDataSet()
        let flags = ["--workers", "2", "--steps", "30", "--no-shuffle"]
        let sync = try makeTemporaryDirectory("sync"), local = try makeTemporaryDirectory("local"), again = try makeTemporaryDirectory("local2")
        try runSuccessfully(["launch"] + flags + ["--bn", "sync", "--out", sync.path])
        let localRun = try runSuccessfully(["launch"] + flags + ["--bn", "local", "--out", local.path])
        try runSuccessfully(["launch"] + flags + ["--bn", "local", "--out", again.path])

        XCTAssertTrue(localRun.stderr.contains("(--bn local)"), "the coordinator did not train in local mode\n\(localRun.transcript)")
        let syncModel = try model(in: sync), localModel = try model(in: local)
        XCTAssertEqual(syncModel.count, localModel.count, "both modes have the same tensors")
        XCTAssertNotEqual(syncModel, localModel, "--bn local with 2 workers saved the same model as --bn sync")
        XCTAssertEqual(try model(in: again), localModel, "two identical --bn local runs saved different models")
    }

    func testEvaluateJSONReportsTheTrainingRunsFinalTestMetrics() throws {
        try requireDataSet()
        let out = try makeTemporaryDirectory("evaluate")
        try runSuccessfully(["train", "--steps", "30", "--no-shuffle", "--out", out.path])
        let modelPath = out.appendingPathComponent("model.safetensors").path

        let evaluation = try runSuccessfully(["evaluate", "--model", modelPath, "--json"], seconds: 60)
        let lines = evaluation.stdout.split(separator: "\n", omittingEmptySubsequences: true)
        XCTAssertEqual(lines.count, 1, "--json should print exactly one line on stdout\n\(evaluation.transcript)")
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data((lines.first ?? "").utf8)) as? [String: Any],
                                   "stdout is not a JSON object\n\(evaluation.transcript)")
        let accuracy = try XCTUnwrap(object["accuracy"] as? Double, "no numeric accuracy in \(object)")
        let loss = try XCTUnwrap(object["loss"] as? Double, "no numeric loss in \(object)")
        XCTAssertGreaterThan(accuracy, 0)
        XCTAssertLessThanOrEqual(accuracy, 1)
        XCTAssertTrue(loss.isFinite && loss > 0, "loss \(loss)")
        // 30 steps of bn-mlp on Fashion-MNIST reach well above chance (0.1).
        XCTAssertGreaterThan(accuracy, 0.3, "accuracy barely above chance: did evaluate load the trained weights?")

        // The training run evaluated the same model on the same test set after its last step.
        let metrics = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        let last = try XCTUnwrap(metrics.split(separator: "\n").last, "metrics.jsonl is empty")
        let record = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any])
        let trainedAccuracy = try XCTUnwrap(record["test_accuracy"] as? Double, "last metrics record has no test_accuracy: \(record)")
        let trainedLoss = try XCTUnwrap(record["test_loss"] as? Double, "last metrics record has no test_loss: \(record)")
        XCTAssertEqual(accuracy, trainedAccuracy, accuracy: 1e-9, "evaluate disagrees with the training run's final test accuracy")
        XCTAssertEqual(loss, trainedLoss, accuracy: 1e-9, "evaluate disagrees with the training run's final test loss")

        // Without --json: one human-readable line with the same accuracy.
        let plain = try runSuccessfully(["evaluate", "--model", modelPath], seconds: 60)
        XCTAssertTrue(plain.stdout.contains(String(format: "test accuracy %.4f", accuracy)), plain.transcript)
    }
}
