// `--status-file`: the machine-readable account of a run that scripts (syncbn-hosts, the bench) read instead
// of log lines. Each test runs the real command and decodes what it wrote with `RunStatus`.
import Foundation
import SyncBNCluster
import XCTest

final class StatusFileTests: SyncBNProcessTestCase {
    private let short = ["--steps", "20", "--log-every", "10"]

    /// Every JSON line of standard output, decoded.
    private func statuses(_ run: CompletedRun, file: StaticString = #filePath, line: UInt = #line) throws -> [RunStatus] {
        try run.stdout.split(separator: "\n").map { text in
            try XCTUnwrap(try? JSONDecoder().decode(RunStatus.self, from: Data(text.utf8)), "not a status line: \(text)", file: file, line: line)
        }
    }

    func testTrainReportsItsStepsAndItsEndInAFile() throws {
        try requireDataSet()
        let out = try makeTemporaryDirectory("train")
        let path = out.appendingPathComponent("status.json").path
        try runSuccessfully(["train"] + short + ["--out", out.path, "--status-file", path])
        let status = try RunStatus.read(from: path)
        XCTAssertEqual(status.state, .finished)
        XCTAssertEqual(status.step, 20)
        XCTAssertEqual(status.model, out.appendingPathComponent("model.safetensors").path)
        let metrics = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        let last = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(metrics.split(separator: "\n").last!.utf8)) as? [String: Any])
        XCTAssertEqual(status.testAccuracy, last["test_accuracy"] as? Double, "the status and metrics.jsonl agree on the final accuracy")
        XCTAssertGreaterThan(try XCTUnwrap(status.medianStepSeconds), 0)
        // One process sends no messages; its steps' CPU time is counted.
        XCTAssertEqual(status.messagesSentPerStep, 0)
        XCTAssertEqual(status.messagesReceivedPerStep, 0)
        XCTAssertGreaterThan(try XCTUnwrap(status.cpuSecondsPerStep, "\(status)"), 0)
    }

    func testLaunchReportsListeningTrainingAndEveryWorkersEndOnStandardOutput() throws {
        try requireDataSet()
        let out = try makeTemporaryDirectory("launch")
        let run = try runSuccessfully(["launch", "--workers", "2"] + short + ["--out", out.path, "--status-file", "-"])
        let lines = try statuses(run)
        XCTAssertEqual(lines.first?.state, .listening)
        XCTAssertNotNil(lines.first?.endpoint)
        XCTAssertEqual(lines.filter { $0.state == .training }.compactMap(\.step), [0, 10, 20])
        XCTAssertEqual(lines.filter { $0.state == .training }.compactMap(\.workers), [2, 2, 2])
        let final = try XCTUnwrap(lines.last)
        XCTAssertEqual(final.state, .finished)
        let workers = try XCTUnwrap(final.workerStatuses)
        XCTAssertEqual(workers.map(\.state), [.finished, .finished])
        XCTAssertEqual(Set(workers.compactMap(\.rank)), [0, 1])
        XCTAssertEqual(workers.compactMap(\.step), [20, 20])
        XCTAssertTrue(workers.allSatisfy { ($0.medianComputeSeconds ?? 0) > 0 }, "\(workers)")
        // Wake-ups per step, whatever the protocol's rounds: a step costs the coordinator a message to each
        // worker, and each worker at least that message in and one out; waits block (voluntary switches).
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(final.messagesSentPerStep, "\(final)"), 2)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(final.messagesReceivedPerStep, "\(final)"), 2)
        XCTAssertGreaterThan(try XCTUnwrap(final.voluntaryContextSwitchesPerStep, "\(final)"), 0)
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(final.involuntaryContextSwitchesPerStep, "\(final)"), 0)
        XCTAssertGreaterThan(try XCTUnwrap(final.cpuSecondsPerStep, "\(final)"), 0)
        for worker in workers {
            XCTAssertGreaterThanOrEqual(try XCTUnwrap(worker.messagesSentPerStep, "\(worker)"), 1)
            XCTAssertGreaterThanOrEqual(try XCTUnwrap(worker.messagesReceivedPerStep, "\(worker)"), 1)
            XCTAssertGreaterThan(try XCTUnwrap(worker.voluntaryContextSwitchesPerStep, "\(worker)"), 0)
            XCTAssertGreaterThanOrEqual(try XCTUnwrap(worker.involuntaryContextSwitchesPerStep, "\(worker)"), 0)
            XCTAssertGreaterThan(try XCTUnwrap(worker.cpuSecondsPerStep, "\(worker)"), 0)
        }
    }

    func testACoordinatorThatCannotBindSaysSoInItsStatus() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        XCTAssertEqual(bound, 0)
        XCTAssertEqual(listen(listener, 1), 0)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        let port = Int(UInt16(bigEndian: address.sin_port))

        let out = try makeTemporaryDirectory("bind")
        let result = try run(["coordinator", "--bind", "tcp://127.0.0.1:\(port)", "--workers", "1", "--status-file", "-", "--out", out.path])
        guard case .exited(let code) = result.termination, code != 0 else { return XCTFail("expected a failure\n\(result.transcript)") }
        let final = try XCTUnwrap(try statuses(result).last)
        XCTAssertEqual(final.state, .failed)
        XCTAssertEqual(final.errorKind, .cannotBind)
    }

    func testAStatusFileThatCannotBeWrittenIsRefusedBeforeTraining() throws {
        let out = try makeTemporaryDirectory("nowhere")
        let result = try run(["train"] + short + ["--out", out.path, "--status-file", "/nonexistent-directory/status.json"])
        assertRefused(result, mentioning: ["status file", "/nonexistent-directory/status.json"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.appendingPathComponent("metrics.jsonl").path), "refused before the first step")
    }
}
