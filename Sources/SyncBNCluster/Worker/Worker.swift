import Foundation
import Logging
import SyncBNCore
import ZeroMQ

/// A worker process: connects to the coordinator, says hello, receives the job's settings and the current
/// training state, then runs every step it is sent on its chunks, calling the coordinator at each all-reduce
/// round, until told to stop.
///
/// If the coordinator goes away (killed, frozen, restarted with `--resume`), the worker says hello again and
/// waits for a welcome, retrying with capped back-off for `rejoinSeconds`; the new welcome brings the state
/// to continue from.
public final class Worker {
    public struct Summary: Sendable {
        public var rank: Int
        public var steps: Int
        /// Medians per step: time computing, and time waiting for the coordinator's results.
        public var medianComputeSeconds: Double
        public var medianWaitingSeconds: Double
        /// Median CPU time burnt per step while waiting (blocking waits: about none).
        public var medianWaitingCPUSeconds: Double
        /// This process's wake-ups (messages, context switches) from the start of its first step to the end of
        /// the job: the steps' own, and each wait for the next step's message. Divide by `steps`.
        public var wakeups: WakeupCounts
    }

    fileprivate let endpoint: String
    fileprivate let timeouts: ClusterTimeouts
    fileprivate let security: WorkerSecurity?
    /// Where this worker listens for other workers (`--peer-address`: an address, `auto`, or nil).
    fileprivate let peerAddress: String?
    /// Threads that compute this worker's chunks (`Network.threadCount`).
    fileprivate let threads: Int
    private var logger: Logger
    /// Told when this worker joins (or rejoins) and the rank it got (`--status-file`).
    public var status: StatusReporter?

    /// With `security`, the connection is encrypted with CurveZMQ and authenticates this worker's key.
    /// Without `security`, the worker also listens for other workers, for a coordinator that exchanges
    /// gradients among workers: on loopback for a local coordinator; for a remote one only on `peerAddress`
    /// (`auto`: the local address of its route to the coordinator). `threads` compute its chunks.
    public init(endpoint: String, timeouts: ClusterTimeouts = ClusterTimeouts(), security: WorkerSecurity? = nil,
                peerAddress: String? = nil, threads: Int = 1, logger: Logger) {
        self.endpoint = endpoint
        self.threads = threads
        self.peerAddress = peerAddress
        self.timeouts = timeouts
        self.security = security
        self.logger = logger
    }

    /// Runs until the coordinator says stop.
    /// - Throws: `ClusterError` if nobody answers, the coordinator refuses this worker or fails, or a message
    ///   cannot be understood.
    public func run() throws -> Summary {
        let context = try Context()
        let mesh = try makeMesh(context)
        defer { mesh?.close() }
        var compute: [Double] = [], waiting: [Double] = [], waitingCPU: [Double] = []
        var wakeupsAtFirstStep: WakeupCounts?
        var peerDrops = 0
        var rank = 0
        var joinDeadline = Date().addingTimeInterval(timeouts.connectSeconds)
        var rejoining = false
        var failedHandshakes = 0
        // The protocol decisions (welcome, steps, preemption, results, the end) are the machine's; this loop
        // is its ZeroMQ driver, with the compute (`Network.trainStep`) and the connection's errors.
        let machine = WorkerMachine(hello: Message.hello(peer: "\(ProcessInfo.processInfo.hostName) pid \(getpid())",
                                                         peerEndpoint: mesh?.endpoint ?? "", blasKernel: BLAS.kernelName,
                                                         threads: UInt16(clamping: threads)).encoded(),
                                    endpoint: endpoint, timeouts: timeouts)
        func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
        while true {
            let connection = try CoordinatorConnection(context: context, endpoint: endpoint, security: security, timeouts: timeouts)
            defer { connection.close() }
            for case .send(let hello) in machine.handle(.connected, now: now()) { try connection.socket.send(hello) }
            let welcome: (TrainingConfig, Network, Int, Int)
            do {
                // A hello can be lost (say, taken by a coordinator that was just shutting down): without an
                // answer, say it again on a fresh connection every few seconds until the join deadline.
                let attemptDeadline = min(joinDeadline, Date().addingTimeInterval(WorkerMachine.helloRetrySeconds))
                guard let answer = try awaitWelcome(connection, machine: machine, deadline: attemptDeadline, now: now) else {
                    if Date() < joinDeadline { continue }
                    throw noAnswer(connection, rejoining: rejoining)
                }
                welcome = answer
            } catch Interruption.coordinatorLost {
                _ = machine.handle(.connectionLost, now: now())
                continue  // connected, then lost again before the welcome: say hello on a fresh connection
            } catch Interruption.handshakeFailed {
                _ = machine.handle(.connectionLost, now: now())
                // One failed handshake can be a race (a coordinator going away mid-handshake, during a rejoin);
                // several in a row mean the two sides disagree on keys, which retrying cannot fix.
                failedHandshakes += 1
                if failedHandshakes >= Self.failedHandshakesBeforeGivingUp {
                    throw ClusterError(security == nil
                        ? "the coordinator at \(endpoint) requires keys (CurveZMQ): give this worker --secret-key and --server-key (see `syncbn keygen`)"
                        : "the CurveZMQ handshake with the coordinator at \(endpoint) failed: --server-key is not the coordinator's public key, or the coordinator does not use keys")
                }
                continue
            }
            failedHandshakes = 0
            let (config, network, assignedRank, workerCount) = welcome
            rank = assignedRank
            logger[metadataKey: "rank"] = "\(rank)"
            logger.info("\(rejoining ? "rejoined" : "joined") as worker \(rank) of \(workerCount) at \(endpoint), computing on \(threads) thread(s)")
            var joined = RunStatus(.joined)
            (joined.rank, joined.workers, joined.endpoint) = (rank, workerCount, endpoint)
            status?.report(joined)
            // A new session: the coordinator's tables follow (a resumed coordinator may want none).
            mesh?.forgetTable()
            let collective = RemoteCollective(connection: connection, mesh: mesh, machine: machine, slice: .whole(config.plan),
                                              reduction: LocalCollective(plan: config.plan, valuesPerRow: network.momentScales),
                                              timeoutSeconds: timeouts.resultWaitSeconds)
            collective.onPeerDrop = { [logger] reason in
                peerDrops += 1
                if peerDrops <= 3 { logger.warning("dropped a message from another worker's link: \(reason)") }
            }
            do {
                var next = try connection.next(until: Date().addingTimeInterval(timeouts.idleSeconds))
                while true {
                    guard let message = next else {
                        throw ClusterError("no instruction from the coordinator for \(Int(timeouts.idleSeconds)) s: it is stuck")
                    }
                    next = nil
                    for action in machine.handle(.received(message), now: now()) {
                        switch action {
                        case .startStep(let stepMessage):
                            if wakeupsAtFirstStep == nil { wakeupsAtFirstStep = WakeupCounts.now() }
                            let t0 = DispatchTime.now().uptimeNanoseconds
                            do {
                                try runStep(stepMessage, config: config, network: network, collective: collective)
                                _ = machine.handle(.stepFinished, now: now())
                            } catch Interruption.preempted(let newer) {
                                next = newer  // the coordinator redoes this step (a worker was lost) or moved on
                                continue
                            } catch Interruption.nonFiniteGradients {
                                _ = machine.handle(.stepFinished, now: now())  // dropped, as the coordinator drops it
                                logger.warning("the gradients of step \(collective.step + 1) are not finite: step dropped, as the coordinator drops it")
                                continue
                            }
                            let total = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                            let waited = Double(collective.waitingNanoseconds) / 1e9
                            compute.append(total - waited)
                            waiting.append(waited)
                            waitingCPU.append(Double(collective.waitingCPUNanoseconds) / 1e9)
                        case .takePeers(let epoch, let peerRank, let uses, let endpoints):
                            try collective.takePeers(epoch: epoch, rank: peerRank, uses: uses, endpoints: endpoints)
                        case .finish:
                            let wakeups = wakeupsAtFirstStep.map { WakeupCounts.now() - $0 } ?? WakeupCounts()
                            logger.info("training finished; worker \(rank) exits")
                            return Summary(rank: rank, steps: compute.count, medianComputeSeconds: median(compute),
                                           medianWaitingSeconds: median(waiting), medianWaitingCPUSeconds: median(waitingCPU),
                                           wakeups: wakeups)
                        case .fail(let reason):
                            throw ClusterError(reason)
                        case .connect, .send, .join, .deliver, .abandonStep:
                            break  // not asked between steps
                        }
                    }
                    if next == nil {
                        next = try collective.takeDeferred() ?? connection.next(until: Date().addingTimeInterval(timeouts.idleSeconds))
                    }
                }
            } catch Interruption.coordinatorLost, Interruption.handshakeFailed {
                _ = machine.handle(.connectionLost, now: now())
                logger.warning("lost the coordinator at \(endpoint); trying to rejoin for up to \(Int(timeouts.rejoinSeconds)) s")
                rejoining = true
                joinDeadline = Date().addingTimeInterval(timeouts.rejoinSeconds)
            }
        }
    }

    /// The links to other workers: only without keys (peer traffic is not encrypted), and for a remote
    /// coordinator only with --peer-address (the listener is not authenticated, so opening it is the user's
    /// call, like --insecure).
    private func makeMesh(_ context: Context) throws -> PeerMesh? {
        guard security == nil, let address = try PeerMesh.listeningAddress(requested: peerAddress, coordinator: endpoint) else { return nil }
        return try PeerMesh(context: context, address: address)
    }

    private func runStep(_ message: Message, config: TrainingConfig, network: Network, collective: RemoteCollective) throws {
        guard case .step(let step, let firstChunk, let chunkCount, let computeMetrics, let batch) = message else { return }
        let chunks = Int(firstChunk)..<(Int(firstChunk) + Int(chunkCount))
        guard chunks.upperBound <= config.plan.chunkCount else {
            throw ClusterError("step \(step + 1) assigns chunks \(chunks), but the batch has \(config.plan.chunkCount)")
        }
        let slice = BatchSlice(plan: config.plan, chunks: chunks)
        guard batch.rows == config.plan.batchSize, batch.featureSize == config.model.inputSize else {
            throw ClusterError("step \(step + 1) carries \(batch.rows) rows of \(batch.featureSize) features for a batch of \(config.plan.batchSize) rows of \(config.model.inputSize)")
        }
        batch.copyFeatures(into: network.batchInput.storage)
        config.pipeline.normalize(network.batchInput.storage, rows: batch.rows, shape: config.model.input.dimensions)
        let rows = slice.globalRows
        network.input.storage.update(from: network.batchInput.row(rows.lowerBound), count: rows.count * config.model.inputSize)
        for (row, label) in batch.labels[rows].enumerated() {
            guard Int(label) < config.model.classes else { throw ClusterError("step \(step + 1) has label \(label) for a model of \(config.model.classes) classes") }
            network.labels[row] = Int32(label)
        }
        collective.beginStep(step, slice: slice)
        // Among workers the gradient round takes all the gradients; through the coordinator they ride with the
        // backward rounds (same bits either way).
        network.gradientsRideWithBatchNorm = collective.stepTable?.exchanges(.gradients) != true
        network.optimizer.learningRate = config.learningRate(atStep: Int(step))
        try network.trainStep(slice: slice, collective: collective, computeMetrics: computeMetrics, step: Int(step))
    }

    /// Failed handshakes in a row (each on a fresh connection) after which a worker stops trying.
    static let failedHandshakesBeforeGivingUp = 5

    /// Waits for the coordinator's welcome and builds the replica from it; nil at the deadline. A refused key,
    /// a refusal or a failed job is reported at once rather than as a timeout.
    private func awaitWelcome(_ connection: CoordinatorConnection, machine: WorkerMachine, deadline: Date, now: () -> Double) throws -> (TrainingConfig, Network, Int, Int)? {
        var joined: (rank: Int, workerCount: Int, config: [UInt8], state: [UInt8])?
        while joined == nil {
            let message: Message
            do {
                guard let next = try connection.next(until: deadline) else { return nil }
                message = next
            } catch let error as ProtocolError {
                throw ClusterError("refused by the coordinator at \(endpoint): \(error)")
            } catch Interruption.notAuthorized {
                let key = security?.key.publicKey ?? "(none)"
                throw ClusterError("the coordinator at \(endpoint) did not authorize this worker: add its public key \(key) to the coordinator's --authorized-keys file")
            }
            for action in machine.handle(.received(message), now: now()) {
                if case .join(let rank, let workerCount, let config, let state) = action { joined = (rank, workerCount, config, state) }
                if case .fail(let reason) = action { throw ClusterError(reason) }
            }
        }
        let (rank, workerCount, configJSON, state) = joined!
        let config: TrainingConfig
        do {
            config = try JSONDecoder().decode(TrainingConfig.self, from: Data(configJSON))
            try config.check()
        } catch {
            throw ClusterError("the coordinator's settings cannot be read (\(error)): run the same syncbn release everywhere")
        }
        let network = config.makeNetwork()
        network.threads = ChunkThreads(threadCount: threads)
        let source = "the coordinator's training state"
        try network.loadTrainingState(Safetensors.decode(state, source: source), source: source)
        return (config, network, rank, workerCount)
    }
}

extension Worker {
    /// The error for a coordinator that never answered, with the likeliest reason.
    fileprivate func noAnswer(_ connection: CoordinatorConnection, rejoining: Bool) -> ClusterError {
        var hint = "check the address and that `syncbn coordinator` is running there"
        if connection.lastHandshakeFailure != nil {
            hint = security == nil
                ? "the connection's handshake failed: if the coordinator uses keys, give --secret-key and --server-key"
                : "the CurveZMQ handshake failed: check that --server-key is the coordinator's .pub"
        }
        let seconds = Int(rejoining ? timeouts.rejoinSeconds : timeouts.connectSeconds)
        if rejoining { hint = "it did not come back (restart it with `syncbn coordinator --resume DIR`)" }
        return ClusterError("no coordinator answered at \(endpoint) within \(seconds) s: \(hint)")
    }
}

func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return 0 }
    return values.sorted()[values.count / 2]
}
