// Oracles:
// - A coordinator and workers started by hand, as separate processes, save the same bytes as `syncbn train`
//   with the same flags, and every process exits 0.
// - Nobody listening: a worker gives up after its --connect-timeout (not before, not much after) with
//   "no coordinator answered".
// - A coordinator whose workers do not all come gives up after --join-timeout and tells the worker that
//   joined why (the `failure` message's reason, WireProtocol.md), so that it exits non-zero saying so.
// - A worker that comes after the job is full is refused with the reason, and the job still saves
//   train's model.
// - A worker killed mid-run: `launch` notices, exits non-zero in bounded time naming the dead worker, and
//   leaves no worker process behind (each pid it reported is gone). Likewise when launch itself gets SIGTERM.

import Foundation
import XCTest

final class ProcessLifecycleTests: SyncBNProcessTestCase {
    func testCoordinatorAndWorkersStartedByHandSaveTheSameModelAsTrain() throws {
        try requireDataSet()
        let flags = ["--steps", "20", "--no-shuffle"]
        let reference = try makeTemporaryDirectory("train"), manual = try makeTemporaryDirectory("manual")
        try runSuccessfully(["train"] + flags + ["--out", reference.path])

        let port = try Self.freeLoopbackPort()
        let endpoint = "tcp://127.0.0.1:\(port)"
        let coordinator = try start(["coordinator", "--bind", endpoint, "--workers", "2", "--join-timeout", "30", "--round-timeout", "30"]
                                    + flags + ["--out", manual.path])
        // Workers may connect before the bind: ZeroMQ retries. No ordering is needed, so none is imposed.
        let workers = try (0..<2).map { _ in
            try start(["worker", "--connect", endpoint, "--connect-timeout", "30", "--round-timeout", "30"])
        }
        let coordinatorRun = try finish(coordinator, seconds: 60)
        let workerRuns = try workers.map { try finish($0, seconds: 30) }

        XCTAssertTrue(coordinatorRun.succeeded, coordinatorRun.transcript)
        XCTAssertTrue(coordinatorRun.stderr.contains("coordinator listening on \(endpoint)"), coordinatorRun.transcript)
        for (index, run) in workerRuns.enumerated() {
            XCTAssertTrue(run.succeeded, "worker process \(index)\n\(run.transcript)")
            XCTAssertTrue(run.stderr.contains("20 steps"), "worker process \(index) did not run the 20 steps\n\(run.transcript)")
        }
        let ranks = workerRuns.compactMap { run in (0..<2).first { run.stderr.contains("joined as worker \($0) of 2") } }
        XCTAssertEqual(Set(ranks), [0, 1], "the two workers should have ranks 0 and 1")
        XCTAssertEqual(try model(in: manual), try model(in: reference), "coordinator + 2 workers saved a different model than train")
    }

    func testWorkerWithNoCoordinatorGivesUpAfterItsConnectTimeout() throws {
        let port = try Self.freeLoopbackPort()
        let result = try run(["worker", "--connect", "tcp://127.0.0.1:\(port)", "--connect-timeout", "2"], seconds: 10)
        XCTAssertNotEqual(result.termination, .exited(0), result.transcript)
        XCTAssertEqual(result.errorLines.count, 1, result.transcript)
        XCTAssertTrue(result.stderr.contains("no coordinator answered"), result.transcript)
        XCTAssertTrue(result.stderr.contains("127.0.0.1:\(port)"), "the message should name the address\n\(result.transcript)")
        XCTAssertGreaterThanOrEqual(result.seconds, 1.5, "gave up before its 2 s connect timeout")
        XCTAssertLessThan(result.seconds, 10)
    }

    func testCoordinatorGivesUpWhenWorkersAreMissingAndReleasesTheOneThatCame() throws {
        try requireDataSet()
        let port = try Self.freeLoopbackPort()
        let endpoint = "tcp://127.0.0.1:\(port)"
        let out = try makeTemporaryDirectory("missing")
        let coordinator = try start(["coordinator", "--bind", endpoint, "--workers", "2", "--join-timeout", "2", "--steps", "5", "--out", out.path])
        let worker = try start(["worker", "--connect", endpoint, "--connect-timeout", "20"])
        let coordinatorRun = try finish(coordinator, seconds: 20)
        let workerRun = try finish(worker, seconds: 20)

        XCTAssertNotEqual(coordinatorRun.termination, .exited(0), coordinatorRun.transcript)
        XCTAssertTrue(coordinatorRun.stderr.contains("only 1 of 2 workers joined"), coordinatorRun.transcript)
        XCTAssertTrue(coordinatorRun.stderr.contains("syncbn worker --connect \(endpoint)"), "the message should say how to start the missing worker\n\(coordinatorRun.transcript)")
        // The worker that joined is told why the job failed, and exits non-zero instead of waiting for steps.
        XCTAssertNotEqual(workerRun.termination, .exited(0), workerRun.transcript)
        XCTAssertTrue(workerRun.stderr.contains("only 1 of 2 workers joined"), workerRun.transcript)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.appendingPathComponent("model.safetensors").path))
    }

    func testLaunchStopsEveryWorkerWhenItIsTerminated() throws {
        try requireDataSet()
        let out = try makeTemporaryDirectory("terminated")
        let launch = try start(["launch", "--workers", "2", "--steps", "1000000", "--log-every", "1000000", "--out", out.path])
        XCTAssertTrue(launch.waitForStandardError(containing: "joined as worker 1 of 2", seconds: 60), launch.transcript)
        let pids = try XCTUnwrap(Self.workerProcessIDs(in: launch.stderr), launch.transcript)
        registerForeignProcesses(pids)
        XCTAssertEqual(pids.count, 2)

        launch.signal(SIGTERM)
        let result = try finish(launch, seconds: 20)
        // Stopped at a step boundary with a checkpoint: status 75 and the command that continues the run.
        XCTAssertEqual(result.termination, .exited(75), result.transcript)
        XCTAssertTrue(result.stderr.contains("interrupted: saving a checkpoint"), result.transcript)
        XCTAssertTrue(result.stderr.contains("continue with: syncbn launch --workers 2 --resume \(out.path)"), result.transcript)
        for pid in pids {
            XCTAssertFalse(Self.isAlive(pid), "worker pid \(pid) outlived launch")
        }
    }

    /// The pids of "started N worker process(es): pids 1 2 3".
    static func workerProcessIDs(in log: String) -> [pid_t]? {
        guard let line = log.split(separator: "\n").first(where: { $0.contains("worker process(es): pids ") }),
              let range = line.range(of: "pids ") else { return nil }
        let pids = line[range.upperBound...].split(separator: " ").compactMap { pid_t($0) }
        return pids.isEmpty ? nil : pids
    }
}
