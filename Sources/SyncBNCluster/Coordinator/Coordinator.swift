import Foundation
import Logging
import SyncBNCore
import ZeroMQ

/// The coordinator: binds a ROUTER socket, admits `workerCount` workers, and for every step sends each its
/// slice of the global batch, then runs the step's all-reduce rounds: it gathers every worker's per-chunk
/// partials, reduces them in chunk order, applies the result to its own replica and broadcasts it.
///
/// Its replica takes exactly the steps the workers take (it applies the same running-statistic updates,
/// gradients and optimizer step), so it holds the model to save and evaluate without asking anyone.
public final class Coordinator: StepRunner {
    public let network: Network
    public let config: TrainingConfig
    public let workerCount: Int
    /// The address workers connect to (the bound address, with the port filled in).
    public let endpoint: String
    /// Checked while waiting: a non-nil reason stops the job (used by `launch` when a child dies).
    public var abortReason: () -> String? = { nil }

    private let data: LabeledImages
    private let timeouts: ClusterTimeouts
    private let logger: Logger
    private let context: Context
    private let socket: Socket
    /// Admits authorized CurveZMQ keys (only with keys).
    private var authenticator: ZAPHandler?
    private var workers: [Peer] = []
    private let doublePartials: UnsafeMutableBufferPointer<Double>
    private let floatPartials: UnsafeMutableBufferPointer<Float>
    private let doubleResult: UnsafeMutableBufferPointer<Double>
    private let floatResult: UnsafeMutableBufferPointer<Float>
    /// Reused message buffers: [identity, body] in, one reply out, so steps allocate no large arrays.
    private var inbox: [[UInt8]] = [[], []]
    private var outbox: [UInt8] = []

    struct Peer {
        let identity: [UInt8]
        let description: String
    }

    /// Binds `address`. With `security`, all traffic is encrypted with CurveZMQ and only workers whose
    /// public key is authorized can connect. Without it, only addresses this machine alone can reach are
    /// accepted, unless `allowInsecure`.
    /// - Throws: `SecurityError` for an insecure non-local address, `ClusterError` if the address cannot be bound.
    public init(config: TrainingConfig, data: LabeledImages, bind address: String, workerCount: Int,
                timeouts: ClusterTimeouts = ClusterTimeouts(), security: CoordinatorSecurity? = nil,
                allowInsecure: Bool = false, logger: Logger) throws {
        precondition(workerCount > 0)
        if security == nil && !allowInsecure && !CoordinatorSecurity.isLocal(address) {
            throw SecurityError("refusing to bind \(address) without keys: anyone who reaches it could join the job or read its data; give --secret-key and --authorized-keys (see `syncbn keygen`), or --insecure on a network you trust")
        }
        self.config = config
        self.data = data
        self.workerCount = workerCount
        self.timeouts = timeouts
        self.logger = logger
        network = config.makeNetwork()
        context = try Context()
        if let security {
            let refusals = RefusalLog(logger: logger)
            authenticator = try ZAPHandler(context: context) { key in
                if security.authorizedKeys.contains(key) { return true }
                refusals.refused(key)
                return false
            }
        }
        socket = try Socket(context, .router)
        try socket.setRouterMandatory(true)
        try socket.setMaximumMessageSize(WireProtocol.maximumMessageSize)
        try socket.setHighWaterMarks(send: 0, receive: 0)
        if let security { try socket.makeCurveServer(secretKey: security.key.secret, domain: "syncbn") }
        do {
            try socket.bind(address)
        } catch let error as ZMQError {
            throw ClusterError("cannot bind \(address): \(error.message)" + (error.code == EADDRINUSE ? ": another program uses that port; pick another with --bind" : ""))
        }
        endpoint = try socket.lastEndpoint
        let chunks = config.plan.chunkCount
        let widestDouble = network.norms.map { 2 * $0.features }.max() ?? 2
        doublePartials = .allocate(capacity: chunks * max(2, widestDouble))
        floatPartials = .allocate(capacity: max(1, chunks * network.exchange.chunkWidth))
        doubleResult = .allocate(capacity: max(2, widestDouble))
        floatResult = .allocate(capacity: max(1, network.exchange.resultWidth))
    }

    deinit {
        socket.close()
        authenticator?.stop()
        doublePartials.deallocate()
        floatPartials.deallocate()
        doubleResult.deallocate()
        floatResult.deallocate()
    }

    // MARK: Joining

    /// Waits until `workerCount` workers said hello, then welcomes each with its rank, the job's settings
    /// and the initial model. Ranks follow the order of arrival.
    public func admitWorkers() throws {
        let deadline = Date().addingTimeInterval(timeouts.joinSeconds)
        logger.info("coordinator listening on \(endpoint), waiting for \(workerCount) worker(s)")
        while workers.count < workerCount {
            guard try receive(until: deadline) else {
                throw ClusterError("only \(workers.count) of \(workerCount) workers joined within \(Int(timeouts.joinSeconds)) s: start the missing workers with `syncbn worker --connect \(endpoint)`")
            }
            let identity = inbox[0]
            switch decode(inbox[1], from: identity) {
            case .hello(let peer)?:
                if workers.contains(where: { $0.identity == identity }) {
                    logger.warning("worker \(peer) said hello twice; ignored")
                    continue
                }
                workers.append(Peer(identity: identity, description: peer))
                logger.info("worker \(workers.count - 1) joined: \(peer)")
            case let other?:
                logger.warning("dropped a \(other.kind) message from \(hex(identity)) before it joined")
            case nil:
                continue
            }
        }
        let configJSON = try JSONEncoder().encode(config)
        let model = Safetensors.encode(network.stateDict())
        for (rank, peer) in workers.enumerated() {
            try send(.welcome(rank: UInt32(rank), workerCount: UInt32(workerCount), config: Array(configJSON), model: model), to: peer)
        }
    }

    // MARK: Steps

    public func runStep(_ step: Int, samples: ArraySlice<Int>, computeMetrics: Bool) throws -> StepMetrics? {
        let plan = config.plan
        let order = Array(samples)
        network.batchInput.rows = plan.batchSize
        // Every worker gets the whole batch (its first layer's weight gradient may be computed from all of
        // it, see GradientExchange) and the chunks it owns.
        let batch = BatchData(data, indices: samples)
        for (rank, peer) in workers.enumerated() {
            let chunks = plan.chunks(forRank: rank, of: workerCount)
            try send(.step(step: UInt64(step), firstChunk: UInt32(chunks.lowerBound), chunkCount: UInt32(chunks.count),
                           computeMetrics: computeMetrics, batch: batch), to: peer)
        }
        var metrics: StepMetrics?
        for round in network.rounds(computeMetrics: computeMetrics) {
            let width = network.width(of: round)
            let element: WireProtocol.Element = round == .gradients ? .float32 : .float64
            try gather(step: UInt64(step), round: round, width: width, element: element)
            outbox.removeAll(keepingCapacity: true)
            if element == .float32 {
                let exchange = network.exchange
                let partials = UnsafeBufferPointer(rebasing: floatPartials[0..<(plan.chunkCount * width)])
                let result = UnsafeMutableBufferPointer(rebasing: floatResult[0..<exchange.resultWidth])
                exchange.reduce(partials, into: result)
                outbox += Message.reducedHeader(step: UInt64(step), round: round, width: UInt32(exchange.resultWidth), element: element)
                outbox += UnsafeRawBufferPointer(result)
                for peer in workers { try send(raw: outbox, to: peer) }
                // The replica's own update runs while the workers run theirs.
                data.copyFeatures(of: order, into: network.batchInput.storage)
                network.apply(gradients: UnsafeBufferPointer(result))
                continue
            } else {
                let partials = UnsafeBufferPointer(rebasing: doublePartials[0..<(plan.chunkCount * width)])
                let result = UnsafeMutableBufferPointer(rebasing: doubleResult[0..<width])
                round.reduce(partials, plan: plan, chunks: 0..<plan.chunkCount, width: width, into: result)
                if let m = network.apply(round, doubles: UnsafeBufferPointer(result)) { metrics = m }
                outbox += Message.reducedHeader(step: UInt64(step), round: round, width: UInt32(width), element: element)
                outbox += UnsafeRawBufferPointer(result)
            }
            for peer in workers { try send(raw: outbox, to: peer) }
        }
        network.optimizer.learningRate = config.learningRate(atStep: step)
        network.finishStep()
        return metrics
    }

    /// Collects one round's partials from every worker into the chunk-major buffer.
    private func gather(step: UInt64, round: Round, width: Int, element: WireProtocol.Element) throws {
        var pending = Set(0..<workerCount)
        let deadline = Date().addingTimeInterval(timeouts.roundSeconds)
        while !pending.isEmpty {
            guard try receive(until: deadline) else {
                let missing = pending.sorted().map { "\($0) (\(workers[$0].description))" }.joined(separator: ", ")
                throw ClusterError("step \(step + 1), \(round): no partials from worker(s) \(missing) within \(Int(timeouts.roundSeconds)) s")
            }
            let identity = inbox[0]
            guard let message = decode(inbox[1], from: identity) else { continue }
            guard let rank = workers.firstIndex(where: { $0.identity == identity }) else {
                if case .hello(let peer) = message {
                    logger.warning("refused late worker \(peer): the job already has its \(workerCount) workers")
                    try? send(.reject(reason: "the job already has its \(workerCount) workers"), toIdentity: identity)
                } else {
                    logger.warning("dropped a \(message.kind) message from unknown peer \(hex(identity))")
                }
                continue
            }
            switch message {
            case .partials(let s, let r, let firstChunk, let chunkCount, let w, let e, let payload):
                let expected = config.plan.chunks(forRank: rank, of: workerCount)
                guard s == step, r == round, Int(firstChunk) == expected.lowerBound, Int(chunkCount) == expected.count,
                      Int(w) == width, e == element, pending.contains(rank) else {
                    logger.warning("dropped partials from worker \(rank) for step \(s + 1), \(r), chunks \(firstChunk)+\(chunkCount), width \(w): expected step \(step + 1), \(round), chunks \(expected), width \(width)")
                    continue
                }
                payload.withUnsafeBytes { raw in
                    let byteOffset = expected.lowerBound * width * element.size
                    let base = element == .float32 ? UnsafeMutableRawPointer(floatPartials.baseAddress!) : UnsafeMutableRawPointer(doublePartials.baseAddress!)
                    if raw.count > 0 { (base + byteOffset).copyMemory(from: raw.baseAddress!, byteCount: raw.count) }
                }
                pending.remove(rank)
            case .failure(let reason):
                throw ClusterError("worker \(rank) (\(workers[rank].description)) failed: \(reason)")
            default:
                logger.warning("dropped an unexpected \(message.kind) message from worker \(rank)")
            }
        }
    }

    // MARK: Ending

    /// Tells every worker to exit: cleanly after training, or with `failure` as the reason.
    public func finish(failure: String? = nil) {
        for peer in workers {
            try? send(failure.map { .failure(reason: $0) } ?? .stop, to: peer)
        }
        // Let libzmq flush the goodbyes when the socket closes, for a bounded time.
        try? socket.setOption(ZMQ_LINGER, Int32(2000))
    }

    // MARK: Messages

    private func send(_ message: Message, to peer: Peer) throws { try send(raw: message.encoded(), to: peer) }

    private func send(_ message: Message, toIdentity identity: [UInt8]) throws {
        try socket.send(frames: [identity, message.encoded()])
    }

    private func send(raw bytes: [UInt8], to peer: Peer) throws {
        do {
            try socket.send(peer.identity, more: true)
            try socket.send(bytes)
        } catch let error as ZMQError where error.isHostUnreachable {
            throw ClusterError("worker \(peer.description) is gone (its connection closed)")
        }
    }

    /// Waits for the next message and puts its identity and body in `inbox`; false at the deadline.
    /// Blocks in `zmq_poll`; checks `abortReason` every `pollMilliseconds`.
    private func receive(until deadline: Date) throws -> Bool {
        while true {
            if let reason = abortReason() { throw ClusterError(reason) }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return false }
            let wait = min(ClusterTimeouts.pollMilliseconds, Int(left * 1000) + 1)
            guard try socket.waitReadable(timeoutMilliseconds: wait), let frames = try socket.receive(into: &inbox, dontWait: true) else { continue }
            guard frames == 2 else {
                logger.warning("dropped a message of \(frames - 1) frames from \(hex(inbox[0])): SyncBN messages are one frame")
                continue
            }
            return true
        }
    }

    /// Decodes a frame, answering a peer on another protocol version and logging anything malformed.
    private func decode(_ frame: [UInt8], from identity: [UInt8]) -> Message? {
        do {
            return try Message.decode(frame)
        } catch ProtocolError.versionMismatch(let peerVersion) {
            logger.error("refused a peer speaking protocol version \(peerVersion); this coordinator speaks version \(WireProtocol.version): run the same syncbn release everywhere")
            try? send(.reject(reason: "this coordinator speaks SyncBN protocol version \(WireProtocol.version), the worker speaks \(peerVersion): run the same syncbn release everywhere"), toIdentity: identity)
        } catch {
            logger.warning("dropped a message from \(hex(identity)): \(error)")
        }
        return nil
    }
}

func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

import CZeroMQ

/// Logs each refused CurveZMQ key once (called from the ZAP handler's thread).
final class RefusalLog: @unchecked Sendable {
    private let lock = NSLock()
    private var seen = Set<[UInt8]>()
    private let logger: Logger

    init(logger: Logger) { self.logger = logger }

    func refused(_ key: [UInt8]) {
        let first = lock.withLock { seen.insert(key).inserted }
        if first { logger.warning("refused a worker whose key \(Curve.encode(key)) is not in --authorized-keys") }
    }
}
