import Foundation
import SyncBNCluster
import XCTest
import ZeroMQ

/// Failures during training, with real processes on loopback. Oracle: determinism — a disturbed run (a
/// worker killed or frozen, a worker joining late, the coordinator killed or stopped and resumed, a hostile
/// client throughout) must save exactly the bytes of `syncbn train` with the same settings.
final class FaultToleranceTests: SyncBNProcessTestCase {
    private let flags = ["--steps", "300", "--no-shuffle", "--log-every", "20"]

    private func reference() throws -> Data {
        let directory = try makeTemporaryDirectory("train")
        try runSuccessfully(["train"] + flags + ["--out", directory.path])
        return try model(in: directory)
    }

    /// Waits until `directory`'s metrics.jsonl has at least `lines` lines (training has reached a step).
    private func waitForMetrics(in directory: URL, lines: Int, seconds: Double = 60) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        let path = directory.appendingPathComponent("metrics.jsonl").path
        while Date() < deadline {
            if let text = try? String(contentsOfFile: path, encoding: .utf8), text.split(separator: "\n").count >= lines { return true }
            usleep(5_000)  // polling a file written by another process, under a deadline
        }
        return false
    }

    /// The integer after `prefix` in the first line of `log` that has it.
    private func number(after prefix: String, in log: String) -> Int? {
        guard let range = log.range(of: prefix) else { return nil }
        return Int(log[range.upperBound...].prefix { $0.isNumber })
    }

    func testKilledWorkerIsSurvivedAndTheModelIsUnchanged() throws {
        try checkKilledWorker(launchFlags: [])
    }

    func testKilledWorkerIsSurvivedWhenWorkersExchangeGradientsAmongThemselves() throws {
        // The survivors may be waiting for the dead worker's tiles or shard: the coordinator's new table of
        // peers and the redo of the step must free them.
        try checkKilledWorker(launchFlags: ["--gradient-exchange", "peers"])
    }

    func testKilledWorkerOfTwoExchangingBatchNormRoundsDirectlyIsSurvived() throws {
        // The survivor may be waiting for the dead worker's BatchNorm partials: the coordinator's redo, with a
        // table that takes the rounds back, must free it. (With three workers, the two survivors of the test
        // above take the rounds over from the redo on.)
        try checkKilledWorker(workers: 2, launchFlags: [])
    }

    private func checkKilledWorker(workers: Int = 3, launchFlags: [String]) throws {
        try requireDataSet()
        let expected = try reference()
        let out = try makeTemporaryDirectory("killed")
        let launch = try start(["launch", "--workers", "\(workers)"] + flags + launchFlags + ["--out", out.path])
        let pids = try XCTUnwrap(launch.waitForStandardError(containing: "pids ", seconds: 60) ? ProcessLifecycleTests.workerProcessIDs(in: launch.stderr) : nil, launch.transcript)
        registerForeignProcesses(pids)
        // A random step: after 20·k steps, k in 1...5.
        XCTAssertTrue(waitForMetrics(in: out, lines: Int.random(in: 1...5)), launch.transcript)
        let victim = pids[Int.random(in: 0..<pids.count)]
        XCTAssertEqual(kill(victim, SIGKILL), 0)
        let result = try finish(launch, seconds: 120)
        XCTAssertTrue(result.succeeded, result.transcript)
        XCTAssertTrue(result.stderr.contains("declared dead"), result.transcript)
        XCTAssertEqual(try model(in: out), expected, "the run that lost a worker saved a different model")
        if let detection = number(after: "last heard ", in: result.stderr), let recovery = number(after: "worker(s) in ", in: result.stderr) {
            print("fault-tolerance: kill -9 detected \(detection) ms after the worker's last message; recovery \(recovery) ms")
        }
        XCTAssertFalse(Self.isAlive(victim))
    }

    /// Also: workers of 1, 2 and 3 threads get unequal shares of the batch (the last joiner's make the first
    /// worker's share empty), and the coordinator updates its replica on 2 threads; the model is the same.
    func testLateWorkerJoinsAtAStepBoundaryAndTheModelIsUnchanged() throws {
        try requireDataSet()
        let expected = try reference()
        let out = try makeTemporaryDirectory("late")
        let endpoint = "tcp://127.0.0.1:\(try Self.freeLoopbackPort())"
        let coordinator = try start(["coordinator", "--bind", endpoint, "--workers", "2", "--threads", "2"] + flags + ["--out", out.path])
        let workers = try (1...2).map { threads in try start(["worker", "--connect", endpoint, "--threads", "\(threads)"]) }
        XCTAssertTrue(waitForMetrics(in: out, lines: 1), coordinator.transcript)
        let late = try start(["worker", "--connect", endpoint, "--threads", "3"])
        XCTAssertTrue(late.waitForStandardError(containing: "joined as worker 2", seconds: 30), late.transcript)
        let run = try finish(coordinator, seconds: 120)
        XCTAssertTrue(run.succeeded, run.transcript)
        XCTAssertTrue(run.stderr.contains("worker 2 joined at step"), run.transcript)
        XCTAssertTrue(run.stderr.contains("(3 thread(s)"), run.transcript)
        for worker in workers + [late] { XCTAssertTrue(try finish(worker, seconds: 30).succeeded, worker.transcript) }
        XCTAssertEqual(try model(in: out), expected, "a late worker changed the model")
    }

    func testFrozenWorkerIsDeclaredDeadWithinFiveSeconds() throws {
        try requireDataSet()
        let expected = try reference()
        let out = try makeTemporaryDirectory("frozen")
        let endpoint = "tcp://127.0.0.1:\(try Self.freeLoopbackPort())"
        let coordinator = try start(["coordinator", "--bind", endpoint, "--workers", "3"] + flags + ["--out", out.path])
        let workers = try (0..<3).map { _ in try start(["worker", "--connect", endpoint]) }
        XCTAssertTrue(waitForMetrics(in: out, lines: 2), coordinator.transcript)
        let frozen = workers[1]
        frozen.signal(SIGSTOP)
        let stopped = Date()
        XCTAssertTrue(coordinator.waitForStandardError(containing: "declared dead", seconds: 10), coordinator.transcript)
        let detection = Date().timeIntervalSince(stopped)
        print("fault-tolerance: SIGSTOP detected in \(Int(detection * 1000)) ms")
        XCTAssertLessThan(detection, 5, "a frozen worker must be declared dead within 5 s")
        frozen.signal(SIGCONT)
        let run = try finish(coordinator, seconds: 120)
        XCTAssertTrue(run.succeeded, run.transcript)
        XCTAssertEqual(try model(in: out), expected, "the run that froze a worker saved a different model")
        for worker in workers { _ = try finish(worker, seconds: 90) }
    }

    /// Kills (SIGKILL) or stops (SIGTERM) the coordinator after a checkpoint, resumes it, and checks that the
    /// workers rejoin by themselves and that the model is train's.
    private func checkCoordinatorResume(signal: Int32, clusterFlags: [String] = []) throws {
        try requireDataSet()
        let expected = try reference()
        let out = try makeTemporaryDirectory("resume")
        let endpoint = "tcp://127.0.0.1:\(try Self.freeLoopbackPort())"
        let coordinator = try start(["coordinator", "--bind", endpoint, "--workers", "2", "--checkpoint-every", "40"] + flags + clusterFlags + ["--out", out.path])
        let workers = try (0..<2).map { _ in try start(["worker", "--connect", endpoint, "--rejoin-timeout", "60"]) }
        XCTAssertTrue(waitForMetrics(in: out, lines: 5), coordinator.transcript)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out.appendingPathComponent("checkpoint.safetensors").path))
        coordinator.signal(signal)
        let first = try finish(coordinator, seconds: 30)
        XCTAssertFalse(first.succeeded, first.transcript)
        if signal == SIGTERM { XCTAssertTrue(first.stderr.contains("saved to"), first.transcript) }
        let resumed = try start(["coordinator", "--bind", endpoint, "--workers", "2", "--join-timeout", "60", "--resume", out.path] + clusterFlags)
        let run = try finish(resumed, seconds: 120)
        XCTAssertTrue(run.succeeded, "\(run.transcript)\nfirst coordinator:\n\(first.transcript)\nworkers:\n\(workers.map(\.transcript).joined(separator: "\n"))")
        XCTAssertTrue(run.stderr.contains("resuming at step"), run.transcript)
        for worker in workers {
            let result = try finish(worker, seconds: 30)
            XCTAssertTrue(result.succeeded, result.transcript)
            XCTAssertTrue(result.stderr.contains("rejoined as worker"), result.transcript)
        }
        XCTAssertEqual(try model(in: out), expected, "the resumed run saved a different model")
    }

    func testKilledCoordinatorResumesFromItsCheckpoint() throws { try checkCoordinatorResume(signal: SIGKILL) }

    func testTerminatedCoordinatorSavesACheckpointAndResumes() throws { try checkCoordinatorResume(signal: SIGTERM) }

    func testKilledCoordinatorResumesWhenWorkersExchangeGradientsAmongThemselves() throws {
        // The workers' links to each other outlive the coordinator; the resumed one sends a new table.
        try checkCoordinatorResume(signal: SIGKILL, clusterFlags: ["--gradient-exchange", "peers"])
    }

    func testNonFinitePartialsStopTheJobWithACheckpointOrSkipTheStep() throws {
        try requireDataSet()
        // A learning rate of 1e38 overflows the weights after the first steps: partials become NaN or infinite.
        let blowUp = ["--steps", "20", "--lr", "1e38", "--momentum", "0", "--lr-schedule", "constant"]
        let aborted = try makeTemporaryDirectory("nonfinite")
        let abort = try run(["launch", "--workers", "2"] + blowUp + ["--out", aborted.path])
        XCTAssertFalse(abort.succeeded, abort.transcript)
        let error = try XCTUnwrap(abort.errorLines.first { $0.contains("non-finite") }, abort.transcript)
        XCTAssertTrue(error.contains("worker ") && error.contains("BatchNorm") && error.contains("--on-nonfinite abort"), error)
        XCTAssertTrue(FileManager.default.fileExists(atPath: aborted.appendingPathComponent("checkpoint.safetensors").path), "no checkpoint after an abort")

        let skipped = try makeTemporaryDirectory("skip")
        let skip = try run(["launch", "--workers", "2", "--on-nonfinite", "skip"] + blowUp + ["--out", skipped.path])
        XCTAssertTrue(skip.stderr.contains("step skipped (--on-nonfinite skip)"), skip.transcript)

        // Gradients exchanged among the workers (without BatchNorm, the first round to overflow): the workers
        // hold the same non-finite result as the coordinator and drop the same steps, so every step ends.
        let peers = try run(["launch", "--workers", "2", "--on-nonfinite", "skip", "--bn", "none", "--gradient-exchange", "peers"]
                            + blowUp + ["--out", try makeTemporaryDirectory("skip-peers").path], seconds: 60)
        XCTAssertTrue(peers.stderr.contains("parameter gradients at step") && peers.stderr.contains("step skipped (--on-nonfinite skip)"), peers.transcript)
        XCTAssertTrue(peers.stderr.contains("step dropped, as the coordinator drops it"), peers.transcript)
        XCTAssertTrue(peers.stderr.contains("training finished; worker 0 exits") && peers.stderr.contains("training finished; worker 1 exits"), peers.transcript)
    }

    /// One hostile message: random bytes, the magic followed by random bytes, one of `wrong` (well formed,
    /// out of place), or two frames where SyncBN sends one.
    static func hostileFrames(wrong: [[UInt8]]) -> [[UInt8]] {
        func randomBytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8.random(in: 0...255) } }
        switch Int.random(in: 0..<4) {
        case 0: return [randomBytes(Int.random(in: 0..<64))]
        case 1: return [Array(WireProtocol.magic) + randomBytes(Int.random(in: 0..<60))]
        case 2: return [wrong.randomElement()!]
        default: return [randomBytes(8), randomBytes(8)]
        }
    }

    func testHostileSenderOnAWorkersPeerLinkChangesNothing() throws {
        // A worker's peer listener is not authenticated: whatever reaches it that does not fit the table is
        // dropped, and the run ends with train's model.
        try requireDataSet()
        let expected = try reference()
        let out = try makeTemporaryDirectory("hostile-peer")
        let endpoint = "tcp://127.0.0.1:\(try Self.freeLoopbackPort())"
        let coordinator = try start(["coordinator", "--bind", endpoint, "--workers", "2", "--gradient-exchange", "peers"] + flags + ["--out", out.path])
        let workers = try (0..<2).map { _ in try start(["worker", "--connect", endpoint]) }
        XCTAssertTrue(coordinator.waitForStandardError(containing: "worker 1 joined", seconds: 60), coordinator.transcript)
        let marker = "other workers reach it at "
        let target = try XCTUnwrap(coordinator.stderr.components(separatedBy: "\n").first { $0.contains("worker 0 joined") && $0.contains(marker) }
            .flatMap { $0.components(separatedBy: marker).last }, coordinator.transcript)

        let stop = DispatchSemaphore(value: 0), done = DispatchSemaphore(value: 0)
        let sent = Counter()
        let hostile = Thread {
            defer { done.signal() }
            guard let context = try? Context(), let socket = try? Socket(context, .push), (try? socket.connect(target)) != nil else { return }
            defer { socket.close() }
            let wrong: [[UInt8]] = [
                Message.gradientShard(step: 2, epoch: 0, from: 0, shardOffset: 0, shardWidth: 1, payload: [0, 0, 0, 0]).encoded(),
                Message.gradientShard(step: .max, epoch: .max, from: 7, shardOffset: 0, shardWidth: 0, payload: []).encoded(),
                Message.gradientTiles(step: .max, epoch: 1, from: 1, shardOffset: 0, shardWidth: 0, tiles: [], rowsFirstChunk: 0,
                                      rowsChunkCount: 0, rowsWidth: 0, payload: []).encoded(),
                Message.stop.encoded(), Message.ping.encoded(),
            ]
            while stop.wait(timeout: .now()) == .timedOut {
                _ = try? socket.send(frames: Self.hostileFrames(wrong: wrong), dontWait: true)
                sent.increment()
                usleep(1_000)  // pacing the attack, not waiting for anything
            }
        }
        hostile.start()
        let run = try finish(coordinator, seconds: 120)
        stop.signal()
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        XCTAssertTrue(run.succeeded, run.transcript)
        XCTAssertGreaterThan(sent.value, 100, "the hostile sender barely ran")
        let results = try workers.map { try finish($0, seconds: 30) }
        for result in results { XCTAssertTrue(result.succeeded, result.transcript) }
        XCTAssertTrue(results.contains { $0.stderr.contains("dropped a message from another worker's link") }, results.map(\.transcript).joined(separator: "\n"))
        XCTAssertEqual(try model(in: out), expected, "a hostile sender on a peer link changed the model")
    }

    func testHostileClientThroughoutChangesNothing() throws {
        try requireDataSet()
        let expected = try reference()
        let out = try makeTemporaryDirectory("hostile")
        let endpoint = "tcp://127.0.0.1:\(try Self.freeLoopbackPort())"
        let coordinator = try start(["coordinator", "--bind", endpoint, "--workers", "2"] + flags + ["--out", out.path])
        let workers = try (0..<2).map { _ in try start(["worker", "--connect", endpoint]) }

        let stop = DispatchSemaphore(value: 0), done = DispatchSemaphore(value: 0)
        let sent = Counter()
        let hostile = Thread {
            defer { done.signal() }
            guard let context = try? Context() else { return }
            let wrong: [[UInt8]] = [
                Message.partials(step: 3, round: .gradients, firstChunk: 0, chunkCount: 1, width: 2, element: .float32, payload: [0, 0, 0, 0, 0, 0, 0, 0]).encoded(),
                Message.partials(step: 0, round: .moments(layer: 0), firstChunk: 0, chunkCount: 0, width: 200, element: .float64, payload: []).encoded(),
                Message.reduced(step: 1, round: .metrics, width: 0, element: .float64, payload: []).encoded(),
                Message.stop.encoded(), Message.ping.encoded(), Message.failure(reason: "hostile").encoded(),
                Message.welcome(rank: 0, workerCount: 1, config: [1, 2], model: [3]).encoded(),
                Array(Message.hello(peer: "x", peerEndpoint: "").encoded().prefix(6)) + [99, 0] + Array(Message.hello(peer: "x", peerEndpoint: "").encoded().dropFirst(8)),
            ]
            while stop.wait(timeout: .now()) == .timedOut {
                // A fresh connection now and then, so that cut-off identities do not end the attack.
                guard let socket = try? Socket(context, .dealer), (try? socket.connect(endpoint)) != nil else { return }
                for _ in 0..<40 {
                    _ = try? socket.send(frames: Self.hostileFrames(wrong: wrong), dontWait: true)
                    sent.increment()
                    usleep(1_000)  // pacing the attack, not waiting for anything
                }
                socket.close()
            }
        }
        hostile.start()
        let run = try finish(coordinator, seconds: 120)
        stop.signal()
        XCTAssertEqual(done.wait(timeout: .now() + 10), .success)
        XCTAssertTrue(run.succeeded, run.transcript)
        XCTAssertGreaterThan(sent.value, 100, "the hostile client barely ran")
        XCTAssertTrue(run.stderr.contains("dropped a message from peer"), run.transcript)
        for worker in workers { XCTAssertTrue(try finish(worker, seconds: 30).succeeded, worker.transcript) }
        XCTAssertEqual(try model(in: out), expected, "a hostile client changed the model")
    }
}

/// A count shared between a test and its helper thread.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func increment() { lock.withLock { count += 1 } }
    var value: Int { lock.withLock { count } }
}
