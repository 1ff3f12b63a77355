import Foundation
import Logging
import SyncBNCore
import ZeroMQ

/// The coordinator: binds a ROUTER socket, admits workers, and for every step sends each live worker the
/// global batch and the chunks it owns, then runs the step's all-reduce rounds: it gathers every worker's
/// per-chunk partials, reduces them in chunk order, applies the result to its own replica and broadcasts it.
///
/// Its replica takes exactly the steps the workers take, so it holds the model to save, evaluate and hand to
/// a worker that joins later, without asking anyone.
///
/// Failures: a worker that dies (killed, frozen, cut off: noticed through ZMTP heartbeats and a probe) is
/// dropped and the interrupted step is redone by the survivors, sharing out its chunks. Replicas change only
/// when a step completes, and chunks make the result independent of who computes what, so the final model
/// is the same bits as without the failure. Below `minWorkers` the coordinator pauses until workers join.
///
/// The decisions are `CoordinatorMachine`'s; this class is its ZeroMQ driver: the socket, the clock, CurveZMQ
/// and its handshake monitor, and the wait in `zmq_poll`.
public final class Coordinator: StepRunner {
    /// The protocol logic, without sockets or clocks.
    public let machine: CoordinatorMachine
    public var network: Network { machine.network }
    public var config: TrainingConfig { machine.config }
    /// The number of workers to wait for before the first step.
    public var workerCount: Int { machine.workerCount }
    /// Below this many live workers, training pauses until others join.
    public var minWorkers: Int { machine.minWorkers }
    public var nonFinitePolicy: NonFinitePolicy { machine.nonFinitePolicy }
    /// How the gradient round travels: through the coordinator, or among the workers.
    public var gradientExchange: GradientExchangeMode { machine.gradientExchange }
    /// The address workers connect to (the bound address, with the port filled in).
    public let endpoint: String
    /// Checked while waiting: a non-nil reason stops the job (used on signals).
    public var abortReason: () -> String? = { nil }
    /// The step being run, or the next one between steps: what a checkpoint taken now continues from.
    public var nextStep: Int { machine.nextStep }
    /// Steps run again because a worker was lost during them.
    public var redoneSteps: Int { machine.redoneSteps }
    public var clusterStatus: ClusterStatus? { machine.clusterStatus }
    /// This process's wake-ups (messages, context switches, CPU time) during its steps: `runStep` reads the
    /// counters as it begins and ends, so evaluations, checkpoints and logs between steps do not count.
    public private(set) var stepWakeups = StepWakeups()

    private let logger: Logger
    private let context: Context
    private let socket: Socket
    /// Admits authorized CurveZMQ keys (only with keys).
    private var authenticator: ZAPHandler?
    /// With keys: reports connections whose CurveZMQ handshake failed (a worker without keys, or with another
    /// server key), which never reach the authenticator. The first is logged; later ones are counted.
    private var handshakeMonitor: SocketMonitor?
    private var failedHandshakes = 0
    /// Reused message buffers: [identity, body].
    private var inbox: [[UInt8]] = [[], []]


    /// A peer that keeps sending malformed messages is ignored after this many.
    static let malformedLimit = CoordinatorMachine.malformedLimit

    /// Binds `address`. With `security`, all traffic is encrypted with CurveZMQ and only workers whose
    /// public key is authorized can connect. Without it, only addresses this machine alone can reach are
    /// accepted, unless `allowInsecure`.
    /// - Throws: `SecurityError` for an insecure non-local address, `ClusterError` if the address cannot be bound.
    public init(config: TrainingConfig, data: LabeledImages, bind address: String, workerCount: Int, minWorkers: Int = 1,
                timeouts: ClusterTimeouts = ClusterTimeouts(), nonFinitePolicy: NonFinitePolicy = .abort,
                gradientExchange: GradientExchangeMode = .star, batchNormExchange: BatchNormExchangeMode = .star,
                security: CoordinatorSecurity? = nil, allowInsecure: Bool = false, logger: Logger) throws {
        precondition(workerCount > 0 && minWorkers > 0)
        if security != nil && gradientExchange == .peers {
            throw SecurityError("--gradient-exchange peers sends gradients between workers unencrypted, and this job uses keys: use --gradient-exchange star (the default) with keys")
        }
        if security == nil && !allowInsecure && !CoordinatorSecurity.isLocal(address) {
            throw SecurityError("refusing to bind \(address) without keys: anyone who reaches it could join the job or read its data; give --secret-key and --authorized-keys (see `syncbn keygen`), or --insecure on a network you trust")
        }
        self.logger = logger
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
        try socket.setHighWaterMarks(send: 0, receive: 0)
        try socket.setHeartbeat(intervalMilliseconds: Int32(timeouts.heartbeatIntervalSeconds * 1000),
                                timeoutMilliseconds: Int32(timeouts.heartbeatTimeoutSeconds * 1000))
        if let security {
            try socket.makeCurveServer(secretKey: security.key.secret, domain: "syncbn")
            handshakeMonitor = try SocketMonitor(socket, events: SocketMonitor.handshakeFailureEvents)
        }
        do {
            try socket.bind(address)
        } catch let error as ZMQError {
            throw CannotBind(description: "cannot bind \(address): \(error.message)" + (error.code == EADDRINUSE ? ": another program uses that port; pick another with --bind" : ""))
        }
        endpoint = try socket.lastEndpoint
        machine = CoordinatorMachine(config: config, data: data, workerCount: workerCount, minWorkers: minWorkers, timeouts: timeouts,
                                     nonFinitePolicy: nonFinitePolicy, gradientExchange: gradientExchange,
                                     batchNormExchange: batchNormExchange, endpoint: endpoint,
                                     initialPeerEpoch: UInt32.random(in: 0 ..< 1 << 31), logger: logger)
        // The largest message a worker may send: its partials when it owns every chunk.
        try socket.setMaximumMessageSize(Int64(max(machine.largestWorkerMessage, 1 << 16)))
    }

    deinit {
        handshakeMonitor?.close()
        socket.close()
        authenticator?.stop()
    }

    /// Continue from a checkpoint: the replica's state and the step to run next.
    public func resume(from state: [String: Safetensors.Tensor], nextStep: Int, source: String) throws {
        try machine.resume(from: state, nextStep: nextStep, source: source)
    }

    /// Waits until `workerCount` workers said hello and welcomes them (ranks follow the order of arrival).
    public func admitWorkers() throws {
        logger.info("coordinator listening on \(endpoint), waiting for \(workerCount) worker(s)")
        _ = try drive(machine.admit(now: now()))
    }

    public func runStep(_ input: StepInput, next: StepInput?) throws -> StepMetrics? {
        try stepWakeups.count {
            switch try drive(machine.beginStep(input, next: next, now: now())) {
            case .stepCompleted: return machine.commitStep()
            default: return nil
            }
        }
    }

    /// Tells every worker to exit: cleanly after training, or with `failure` as the reason. With
    /// `releaseWorkers: false` (the coordinator is interrupted and will be resumed) workers are left waiting
    /// to rejoin.
    public func finish(failure: String? = nil, releaseWorkers: Bool = true) {
        for action in machine.finish(failure: failure, releaseWorkers: releaseWorkers) {
            if case .send(let identity, let bytes) = action { try? send(bytes, to: identity) }
        }
        // Let libzmq flush the goodbyes when the socket closes, for a bounded time.
        try? socket.setLinger(milliseconds: 2000)
    }

    // MARK: Driving the machine

    private func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    /// Carries out `actions` and feeds the machine what happens (messages, closed connections, time) until it
    /// ends what it was asked to do: the action that ends it (`.admitted`, `.stepCompleted`, `.stepSkipped`).
    /// - Throws: `ClusterError` for `.failed`, or when `abortReason` says so.
    private func drive(_ initial: [CoordinatorAction]) throws -> CoordinatorAction {
        var actions = initial
        var outcome: CoordinatorAction?
        while true {
            // Sends that fail are reported once the list is done, so that a redo never overtakes them.
            while !actions.isEmpty {
                var closed: [PeerIdentity] = []
                var broadcast: (bytes: [UInt8], message: SharedMessage)?
                for action in actions {
                    switch action {
                    case .send(let identity, let bytes):
                        do {
                            // A round's result goes to every member as the same storage: into libzmq once.
                            if bytes.count >= Self.sharedMessageBytes {
                                if broadcast.map({ !Self.sameStorage($0.bytes, bytes) }) ?? true {
                                    broadcast = (bytes, try bytes.withUnsafeBytes { try SharedMessage($0) })
                                }
                                try socket.send(identity, more: true)
                                try socket.send(broadcast!.message)
                            } else {
                                try send(bytes, to: identity)
                            }
                        } catch { if !closed.contains(identity) { closed.append(identity) } }
                    case .failed(let reason):
                        throw ClusterError(reason)
                    case .admitted, .stepCompleted, .stepSkipped:
                        outcome = action
                    }
                }
                actions = closed.flatMap { machine.handle(.unreachable($0), now: now()) }
            }
            machine.doDeferredWork()
            if let outcome { return outcome }
            if let frames = try receive(until: machine.wakeup) {
                if frames == 2 {
                    actions = machine.handle(.received(from: inbox[0], frame: inbox[1]), now: now())
                } else {
                    actions = machine.handle(.multipart(from: inbox[0], frames: frames), now: now())
                }
            }
            if let wakeup = machine.wakeup, now() >= wakeup {
                actions += machine.handle(.tick, now: now())
            }
        }
    }

    /// The socket's receive timeout as last set (`receive(until:)`).
    private var receiveTimeout = -1

    /// Messages from this size on are handed to libzmq once however many members they go to.
    static let sharedMessageBytes = 4096

    /// Whether two arrays are the same storage (one message sent to several members), not merely equal.
    private static func sameStorage(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.count == b.count && a.withUnsafeBytes { x in b.withUnsafeBytes { y in x.baseAddress == y.baseAddress } }
    }

    private func send(_ bytes: [UInt8], to identity: PeerIdentity) throws {
        try socket.send(identity, more: true)
        try socket.send(bytes)
    }

    /// Waits for the next message, up to one poll interval and no later than `wakeup`; puts its identity and
    /// body in `inbox` and returns its frame count, or nil. Blocks in the kernel; checks `abortReason`.
    private func receive(until wakeup: Double?) throws -> Int? {
        if let reason = abortReason() { throw ClusterError(reason) }
        var wait = ClusterTimeouts.pollMilliseconds
        if let wakeup { wait = max(0, min(wait, Int(((wakeup - now()) * 1000).rounded(.up)))) }
        if let monitor = handshakeMonitor {
            guard let ready = try waitForFirstReadable([socket, monitor.socket], timeoutMilliseconds: wait) else { return nil }
            if ready == 1 { noteFailedHandshakes(monitor); return nil }
            return try socket.receive(into: &inbox, dontWait: true)
        }
        // Nothing else to watch: one blocking receive, fewer system calls per message than a poll and a receive.
        if wait != receiveTimeout {
            try socket.setReceiveTimeout(milliseconds: Int32(wait))
            receiveTimeout = wait
        }
        return try socket.receive(into: &inbox)
    }

    /// Drains the handshake monitor; logs the first failed handshake of the run.
    private func noteFailedHandshakes(_ monitor: SocketMonitor) {
        while let event = try? monitor.nextEvent() {
            guard event.isHandshakeFailure else { continue }
            failedHandshakes += 1
            if failedHandshakes == 1 {
                logger.warning("a connection failed the CurveZMQ handshake: a worker without keys, or whose --server-key is not this coordinator's public key (further ones are not logged)")
            }
        }
    }
}

func milliseconds(since date: Date) -> Int { Int((-date.timeIntervalSinceNow * 1000).rounded()) }

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

