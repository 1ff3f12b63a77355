// Oracle: WireProtocol.md — "a peer on another version is refused with a `reject` saying both versions",
// and a `reject`/`failure` carries its reason to the receiver. Live tests over loopback TCP: a real
// `Coordinator` against a hand-built DEALER speaking version 99, and a real `Worker` against a hand-built
// ROUTER. The version-99 frames are written byte by byte here ("SYBN", u16 LE version, u16 LE kind,
// u64 LE step, body), not with the code under test. Every wait has a deadline; nothing sleeps.

import Foundation
import Logging
import SyncBNCluster
import SyncBNCore
import XCTest
import ZeroMQ

final class VersionMismatchTests: XCTestCase {
    /// A hand-built frame: "SYBN", version, kind, step (all little-endian), then `body`.
    static func rawFrame(version: UInt16, kind: UInt16, step: UInt64 = 0, body: [UInt8]) -> [UInt8] {
        var bytes = Array("SYBN".utf8)
        bytes += [UInt8(version & 0xff), UInt8(version >> 8)]
        bytes += [UInt8(kind & 0xff), UInt8(kind >> 8)]
        bytes += (0..<8).map { UInt8((step >> (8 * UInt64($0))) & 0xff) }
        return bytes + body
    }

    /// A job small enough to set up in microseconds: 20 samples of 4 features, a 4-3-10 network.
    static func tinyJob() -> (TrainingConfig, LabeledImages) {
        let data = LabeledImages(count: 20, featureSize: 4, labels: (0..<20).map { UInt8($0 % 10) },
                                 storage: .floats((0..<80).map { Float($0) / 80 }))
        let spec = try! ModelSpec(name: "tiny", input: TensorShape([4]), layers: ModelSpec.mlp(inputs: 4, hidden: [3], classes: 10))
        let config = TrainingConfig(model: spec, plan: ChunkPlan(batchSize: 4, chunkSize: 2), optimizer: SGD(learningRate: 0.1, momentum: 0),
                                    seed: 1, steps: 1, shuffle: false, logEvery: 1, evaluateEvery: 1)
        return (config, data)
    }

    /// Runs `body` on a background thread; `wait(seconds:)` returns its result, or nil at the deadline.
    final class Background<T>: @unchecked Sendable {
        private let done = DispatchSemaphore(value: 0)
        private var result: Result<T, Error>?

        init(_ name: String, _ body: @escaping () throws -> T) {
            let thread = Thread { [self] in
                result = Result { try body() }
                done.signal()
            }
            thread.name = name
            thread.start()
        }

        func wait(seconds: Double) -> Result<T, Error>? {
            guard done.wait(timeout: .now() + seconds) == .success else { return nil }
            done.signal()  // so that later waits return at once too
            return result
        }
    }

    /// Receives one message within `milliseconds`, or fails the test.
    func receive(_ socket: Socket, milliseconds: Int = 5000, file: StaticString = #filePath, line: UInt = #line) throws -> [[UInt8]] {
        guard try socket.waitReadable(timeoutMilliseconds: milliseconds), let frames = try socket.receiveFrames(dontWait: true) else {
            XCTFail("nothing received within \(milliseconds) ms", file: file, line: line)
            throw ClusterError("timeout")
        }
        return frames
    }

    // MARK: Coordinator against a version-99 worker

    func testCoordinatorRejectsAnotherVersionSayingBothAndStillAdmitsARealWorker() throws {
        let (config, data) = Self.tinyJob()
        var timeouts = ClusterTimeouts()
        timeouts.joinSeconds = 10
        let log = CapturedLog()
        let coordinator = try Coordinator(config: config, data: data, bind: "tcp://127.0.0.1:*", workerCount: 1,
                                          timeouts: timeouts, logger: log.logger("coordinator"))
        XCTAssertTrue(coordinator.endpoint.hasPrefix("tcp://127.0.0.1:") && !coordinator.endpoint.hasSuffix("*"), coordinator.endpoint)
        let admitting = Background("admitWorkers") { try coordinator.admitWorkers() }

        let context = try Context()
        let dealer = try Socket(context, .dealer)
        defer { dealer.close() }
        try dealer.connect(coordinator.endpoint)

        // A hello from a worker on version 99, and a frame of a kind this version does not know: both get a reject.
        for kind: UInt16 in [1, 42] {
            try dealer.send(Self.rawFrame(version: 99, kind: kind, body: Array("future-host pid 1".utf8)))
            let frames = try receive(dealer)
            XCTAssertEqual(frames.count, 1, "a SyncBN message is one frame")
            let reply = try XCTUnwrap(frames.first)
            XCTAssertEqual(Array(reply.prefix(6)), Array("SYBN".utf8) + [UInt8(WireProtocol.version), 0], "the reject is written in the coordinator's own version")
            guard case .reject(let reason) = try Message.decode(reply) else {
                XCTFail("expected a reject, got \(try Message.decode(reply))")
                continue
            }
            XCTAssertTrue(reason.contains("99"), "the reason should name the worker's version: \(reason)")
            XCTAssertTrue(reason.contains("version \(WireProtocol.version)"), "the reason should name the coordinator's version: \(reason)")
        }
        XCTAssertTrue(log.messages.contains { $0.level == .error && $0.text.contains("99") }, "the coordinator should log the refusal: \(log.messages)")
        XCTAssertNil(admitting.wait(seconds: 0), "a rejected peer must not count as a worker")

        // The refusals left the coordinator able to admit a real worker on the same connection.
        // Its OpenBLAS kernels (a field of the hello) are not the coordinator's: admitted, with a warning.
        try dealer.send(Message.hello(peer: "real worker", peerEndpoint: "", blasKernel: "NotThisMachine").encoded())
        let welcomeFrames = try receive(dealer)
        XCTAssertTrue(log.messages.contains { $0.level == .warning && $0.text.contains("NotThisMachine") && $0.text.contains("OPENBLAS_CORETYPE=\(BLAS.kernelName)") },
                      "the coordinator should warn about other OpenBLAS kernels: \(log.messages)")
        guard case .welcome(let rank, let workerCount, let configJSON, let model)? = try welcomeFrames.first.map(Message.decode) else {
            return XCTFail("expected a welcome, got \(welcomeFrames)")
        }
        XCTAssertEqual(rank, 0)
        XCTAssertEqual(workerCount, 1)
        XCTAssertEqual(try JSONDecoder().decode(TrainingConfig.self, from: Data(configJSON)), config)
        XCTAssertFalse(model.isEmpty)

        switch admitting.wait(seconds: 10) {
        case .success?: break
        case .failure(let error)?: XCTFail("admitWorkers failed: \(error)")
        case nil: XCTFail("admitWorkers did not return after the worker joined")
        }
        coordinator.finish()
        XCTAssertEqual(try receive(dealer).first.map(Message.decode), .stop)
    }

    // MARK: Worker against a fake coordinator

    /// Starts a real `Worker` against a raw ROUTER, waits for its hello and answers with `reply`.
    /// Returns the error `run()` throws.
    func workerError(answeringHelloWith reply: [UInt8], file: StaticString = #filePath, line: UInt = #line) throws -> Error? {
        let context = try Context()
        let router = try Socket(context, .router)
        defer { router.close() }
        try router.setRouterMandatory(true)
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint

        var timeouts = ClusterTimeouts()
        timeouts.connectSeconds = 5
        timeouts.roundSeconds = 5
        timeouts.idleSeconds = 5
        let log = CapturedLog()
        let worker = Worker(endpoint: endpoint, timeouts: timeouts, logger: log.logger("worker"))
        let running = Background("worker") { try worker.run() }

        let hello = try receive(router, file: file, line: line)
        XCTAssertEqual(hello.count, 2, "identity + one frame", file: file, line: line)
        guard case .hello(let peer, _, _, _)? = try hello.last.map(Message.decode) else {
            XCTFail("the worker's first message is not a hello", file: file, line: line)
            return nil
        }
        XCTAssertTrue(peer.contains("pid \(getpid())"), peer, file: file, line: line)
        try router.send(frames: [hello[0], reply])

        // The worker must react to the reply, not sit out its 5 s connect timeout.
        let started = Date()
        switch running.wait(seconds: 10) {
        case .success(let summary)?:
            XCTFail("the worker accepted the reply and ran \(summary.steps) steps", file: file, line: line)
            return nil
        case .failure(let error)?:
            XCTAssertLessThan(Date().timeIntervalSince(started), 4, "the worker waited for its timeout instead of reading the reply", file: file, line: line)
            return error
        case nil:
            XCTFail("Worker.run() did not return within 10 s", file: file, line: line)
            return nil
        }
    }

    func testWorkerRefusesACoordinatorOnAnotherVersion() throws {
        let welcome99 = Self.rawFrame(version: 99, kind: 2, body: [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
        let error = try XCTUnwrap(try workerError(answeringHelloWith: welcome99))
        let text = "\(error)"
        XCTAssertTrue(text.contains("protocol version 99"), text)
        XCTAssertTrue(text.contains("version \(WireProtocol.version)"), "should also say which version the worker speaks: \(text)")
    }

    func testWorkerReportsTheCoordinatorsRejectReason() throws {
        let reject = Message.reject(reason: "the job already has its 3 workers").encoded()
        let error = try XCTUnwrap(try workerError(answeringHelloWith: reject))
        XCTAssertTrue("\(error)".contains("refused this worker: the job already has its 3 workers"), "\(error)")
    }

    /// WireProtocol.md: `failure` — "the sender gave up, with the reason". A coordinator that fails before
    /// training (e.g. not all workers joined) sends `failure` to the workers that did join; the worker must
    /// say why, not only that the message was not a welcome.
    func testWorkerReportsTheCoordinatorsFailureReasonBeforeWelcome() throws {
        let failure = Message.failure(reason: "only 1 of 2 workers joined within 2 s").encoded()
        let error = try XCTUnwrap(try workerError(answeringHelloWith: failure))
        XCTAssertTrue("\(error)".contains("only 1 of 2 workers joined within 2 s"), "the worker dropped the coordinator's reason: \(error)")
    }
}

/// A swift-log handler that keeps every message, for assertions.
final class CapturedLog: @unchecked Sendable {
    struct Entry { let level: Logger.Level; let text: String }
    private let lock = NSLock()
    private var entries: [Entry] = []

    var messages: [Entry] { lock.withLock { entries } }

    func append(_ entry: Entry) { lock.withLock { entries.append(entry) } }

    func logger(_ label: String) -> Logger {
        Logger(label: label) { _ in Handler(log: self) }
    }

    struct Handler: LogHandler {
        let log: CapturedLog
        var logLevel: Logger.Level = .trace
        var metadata: Logger.Metadata = [:]
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            log.append(Entry(level: event.level, text: event.message.description))
        }
    }
}
