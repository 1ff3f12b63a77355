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
public final class Coordinator: StepRunner {
    public let network: Network
    public let config: TrainingConfig
    /// The number of workers to wait for before the first step.
    public let workerCount: Int
    /// Below this many live workers, training pauses until others join.
    public let minWorkers: Int
    public let nonFinitePolicy: NonFinitePolicy
    /// How the gradient round travels: through the coordinator, or among the workers.
    public let gradientExchange: GradientExchangeMode
    /// The address workers connect to (the bound address, with the port filled in).
    public let endpoint: String
    /// Checked while waiting: a non-nil reason stops the job (used on signals).
    public var abortReason: () -> String? = { nil }
    /// The step being run, or the next one between steps: what a checkpoint taken now continues from.
    public private(set) var nextStep = 0
    /// Steps run again because a worker was lost during them.
    public private(set) var redoneSteps = 0
    public var clusterStatus: ClusterStatus? { ClusterStatus(liveWorkers: members.count, redoneSteps: redoneSteps) }

    private let data: LabeledImages
    private let timeouts: ClusterTimeouts
    private let logger: Logger
    private let context: Context
    private let socket: Socket
    /// Admits authorized CurveZMQ keys (only with keys).
    private var authenticator: ZAPHandler?
    /// With keys: reports connections whose CurveZMQ handshake failed (a worker without keys, or with another
    /// server key), which never reach the authenticator. The first is logged; later ones are counted.
    private var handshakeMonitor: SocketMonitor?
    private var failedHandshakes = 0
    private var members: [Peer] = []
    /// Workers that said hello and are welcomed at the next step boundary.
    private var joining: [Peer] = []
    /// Peers that sent malformed messages, and those cut off for sending too many.
    private var malformedCount: [[UInt8]: Int] = [:]
    private var cutOff: Set<[UInt8]> = []
    /// The table of peers the members hold (`.peers` mode): its epoch and the identities it lists. Epochs
    /// start at random, so that messages left in flight by a previous coordinator (one that was resumed)
    /// never match this one's.
    private var peerEpoch = UInt32.random(in: 0 ..< 1 << 31)
    private var peerTableMembers: [[UInt8]] = []
    private let doublePartials: UnsafeMutableBufferPointer<Double>
    private let floatPartials: UnsafeMutableBufferPointer<Float>
    private let doubleResult: UnsafeMutableBufferPointer<Double>
    private let floatResult: UnsafeMutableBufferPointer<Float>
    /// Reused message buffers: [identity, body] in, one reply out, so steps allocate no large arrays.
    private var inbox: [[UInt8]] = [[], []]
    /// Messages of a later round of this step, [identity, body], received while collecting an earlier one
    /// (with `.peers`, workers finish the gradient round among themselves and send their metrics at once).
    private var early: [[[UInt8]]] = []
    private var outbox: [UInt8] = []
    /// A step whose messages went out at the end of the previous step (`runStep`'s `next`): its number, the
    /// encoded message, and the members it went to, in rank order.
    private var sentAhead: (step: Int, message: [UInt8], members: [[UInt8]])?
    /// The previous step's gradient result waits here for the replica's update until the next step is sent.
    private var gradientsPending = false
    /// With `.peers`: the step whose whole gradient result `floatResult` holds. A worker may still wait for a
    /// shard of it that died with its owner; when a worker is lost, the survivors get this result whole.
    private var rescue: UInt64?

    /// How a worker's hello names its OpenBLAS kernels, compared with the coordinator's at join.
    public static let blasTag = "blas="

    /// A peer that keeps sending malformed messages is ignored after this many.
    static let malformedLimit = 20

    struct Peer {
        let identity: [UInt8]
        let description: String
        /// Where it receives from other workers (empty: it cannot take part in peer exchanges).
        let peerEndpoint: String
        /// When the coordinator last received anything from it.
        var lastHeard: Date
    }

    /// A worker is gone: the step is redone without it.
    struct WorkerLost: Error {
        let rank: Int
        let reason: String
    }

    /// A worker sent NaN or infinity.
    struct NonFinitePartials: Error {
        let rank: Int
        let round: Round
    }

    /// Binds `address`. With `security`, all traffic is encrypted with CurveZMQ and only workers whose
    /// public key is authorized can connect. Without it, only addresses this machine alone can reach are
    /// accepted, unless `allowInsecure`.
    /// - Throws: `SecurityError` for an insecure non-local address, `ClusterError` if the address cannot be bound.
    public init(config: TrainingConfig, data: LabeledImages, bind address: String, workerCount: Int, minWorkers: Int = 1,
                timeouts: ClusterTimeouts = ClusterTimeouts(), nonFinitePolicy: NonFinitePolicy = .abort,
                gradientExchange: GradientExchangeMode = .star,
                security: CoordinatorSecurity? = nil, allowInsecure: Bool = false, logger: Logger) throws {
        precondition(workerCount > 0 && minWorkers > 0)
        if security != nil && gradientExchange == .peers {
            throw SecurityError("--gradient-exchange peers sends gradients between workers unencrypted, and this job uses keys: use --gradient-exchange star (the default) with keys")
        }
        self.gradientExchange = gradientExchange
        if security == nil && !allowInsecure && !CoordinatorSecurity.isLocal(address) {
            throw SecurityError("refusing to bind \(address) without keys: anyone who reaches it could join the job or read its data; give --secret-key and --authorized-keys (see `syncbn keygen`), or --insecure on a network you trust")
        }
        self.config = config
        self.data = data
        self.workerCount = workerCount
        self.minWorkers = minWorkers
        self.timeouts = timeouts
        self.nonFinitePolicy = nonFinitePolicy
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
        let chunks = config.plan.chunkCount
        let widestDouble = max(2, network.norms.map { 2 * $0.features }.max() ?? 2, network.width(of: .observations))
        socket = try Socket(context, .router)
        try socket.setRouterMandatory(true)
        // The largest message a worker may send: its partials when it owns every chunk.
        let largest = WireProtocol.headerSize + 64 + chunks * max(network.exchange.chunkWidth * 4, widestDouble * 8)
        try socket.setMaximumMessageSize(Int64(max(largest, 1 << 16)))
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
        doublePartials = .allocate(capacity: chunks * widestDouble)
        floatPartials = .allocate(capacity: max(1, chunks * network.exchange.chunkWidth))
        doubleResult = .allocate(capacity: widestDouble)
        floatResult = .allocate(capacity: max(1, network.exchange.resultWidth))
    }

    deinit {
        handshakeMonitor?.close()
        socket.close()
        authenticator?.stop()
        doublePartials.deallocate()
        floatPartials.deallocate()
        doubleResult.deallocate()
        floatResult.deallocate()
    }

    /// Continue from a checkpoint: the replica's state and the step to run next.
    public func resume(from state: [String: Safetensors.Tensor], nextStep: Int, source: String) throws {
        try network.loadTrainingState(state, source: source)
        self.nextStep = nextStep
    }

    // MARK: Joining

    /// Waits until `workerCount` workers said hello and welcomes them (ranks follow the order of arrival).
    public func admitWorkers() throws {
        logger.info("coordinator listening on \(endpoint), waiting for \(workerCount) worker(s)")
        try waitForJoiners(until: workerCount, deadline: Date().addingTimeInterval(timeouts.joinSeconds)) {
            "only \(self.members.count + self.joining.count) of \(self.workerCount) workers joined within \(Int(self.timeouts.joinSeconds)) s: start the missing workers with `syncbn worker --connect \(self.endpoint)`"
        }
    }

    /// Collects hellos until `count` workers are members, welcoming each; throws `failure()` at the deadline.
    private func waitForJoiners(until count: Int, deadline: Date, failure: () -> String) throws {
        try welcomeJoiners()
        while members.count < count {
            guard try receive(until: deadline) else { throw ClusterError(failure()) }
            try handleOutOfRound()
            try welcomeJoiners()
        }
    }

    /// Sends each waiting joiner its rank, the job's settings and the replica's current state.
    private func welcomeJoiners() throws {
        guard !joining.isEmpty else { return }
        let configJSON = Array(try JSONEncoder().encode(config))
        let state = Safetensors.encode(network.trainingState(), metadata: ["syncbn.step": "\(nextStep)"])
        for var peer in joining {
            let rank = members.count
            if gradientExchange == .peers && peer.peerEndpoint.isEmpty {
                logger.warning("refused worker \(peer.description): it has no peer endpoint, and this job exchanges gradients among workers")
                try? send(.reject(reason: "this job exchanges gradients among workers (--gradient-exchange peers) and this worker listens for none: run it without keys and, on another host, with --peer-address auto (or its address)"), to: peer)
                continue
            }
            do {
                try send(.welcome(rank: UInt32(rank), workerCount: UInt32(max(workerCount, rank + 1)), config: configJSON, model: state), to: peer)
            } catch {
                logger.warning("worker \(peer.description) left before it was welcomed")
                continue
            }
            peer.lastHeard = Date()
            members.append(peer)
            let listening = gradientExchange == .peers ? ", other workers reach it at \(peer.peerEndpoint)" : ""
            logger.info("worker \(rank) joined at step \(nextStep + 1): \(peer.description) (\(members.count) live)\(listening)")
        }
        joining.removeAll()
    }

    // MARK: Steps

    public func runStep(_ input: StepInput, next: StepInput?) throws -> StepMetrics? {
        let (step, computeMetrics) = (input.step, input.computeMetrics)
        nextStep = step
        config.pipeline.copyBatch(data, indices: input.samples, seed: config.seed, epoch: input.epoch, into: network.batchInput.storage)
        network.batchInput.rows = config.plan.batchSize
        // Encoded once; each worker's copy differs only in its chunk assignment.
        var stepMessage: [UInt8]
        var alreadySent: [[UInt8]] = []
        if let ahead = sentAhead, ahead.step == step {
            (stepMessage, alreadySent) = (ahead.message, ahead.members)
        } else {
            stepMessage = encodeStep(input)
        }
        sentAhead = nil
        let stepStarted = Date()
        var lostAt: Date?
        while true {
            try welcomeJoiners()
            if members.count < minWorkers { try pauseForWorkers(step: step) }
            do {
                // Sent at the end of the previous step to the same members: nothing to send again.
                let sendStep = !members.elementsEqual(alreadySent, by: { $0.identity == $1 })
                alreadySent = []
                let metrics = try attemptStep(step, message: &stepMessage, sendStep: sendStep, computeMetrics: computeMetrics)
                if let next {
                    // Workers start the next step while this replica updates: the update is off their path.
                    var message = encodeStep(next)
                    if (try? sendStepMessages(&message)) != nil {
                        sentAhead = (next.step, message, members.map(\.identity))
                    }
                }
                finishStep(step)
                if let lostAt {
                    redoneSteps += 1
                    logger.info("step \(step + 1) redone by \(members.count) worker(s) in \(milliseconds(since: lostAt)) ms after the loss (\(milliseconds(since: stepStarted)) ms in all)")
                }
                nextStep = step + 1
                return metrics
            } catch let lost as WorkerLost {
                let peer = members.remove(at: lost.rank)
                // If it is still connected (stuck rather than dead), tell it it is out — unless it is
                // rejoining, in which case it is welcomed again with the next try.
                if !joining.contains(where: { $0.identity == peer.identity }) {
                    try? send(.reject(reason: "declared dead at step \(step + 1): \(lost.reason)"), to: peer)
                }
                lostAt = lostAt ?? Date()
                if let rescue { sendRescue(step: rescue) }
                logger.warning("worker \(lost.rank) (\(peer.description)) declared dead at step \(step + 1): \(lost.reason); last heard \(milliseconds(since: peer.lastHeard)) ms ago; redoing the step with \(members.count) worker(s)")
            } catch let bad as NonFinitePartials {
                let reason = "worker \(bad.rank) (\(members[bad.rank].description)) sent non-finite values in the \(bad.round) at step \(step + 1)"
                switch nonFinitePolicy {
                case .abort:
                    throw ClusterError(reason + ": stopping (--on-nonfinite abort); lower --lr or check the data")
                case .skip:
                    logger.error("\(reason): step skipped (--on-nonfinite skip)")
                    nextStep = step + 1
                    return nil
                }
            }
        }
    }

    /// Fewer than `minWorkers` are left: wait for workers to join, up to the join timeout.
    private func pauseForWorkers(step: Int) throws {
        logger.warning("paused before step \(step + 1): \(members.count) live worker(s), --min-workers is \(minWorkers); waiting up to \(Int(timeouts.joinSeconds)) s for workers to join at \(endpoint)")
        try waitForJoiners(until: minWorkers, deadline: Date().addingTimeInterval(timeouts.joinSeconds)) {
            "paused at step \(step + 1) with \(self.members.count) worker(s) for \(Int(self.timeouts.joinSeconds)) s; --min-workers is \(self.minWorkers)"
        }
        logger.info("resuming at step \(step + 1) with \(members.count) worker(s)")
    }

    /// The step message for `input`, with the batch augmented as `train` augments it (workers only normalize).
    func encodeStep(_ input: StepInput) -> [UInt8] {
        let batch = config.pipeline.augmentation == nil ? BatchData(data, indices: input.samples)
            : BatchData(config.pipeline.batch(data, indices: input.samples, seed: config.seed, epoch: input.epoch), indices: 0..<input.samples.count)
        return Message.step(step: UInt64(input.step), firstChunk: 0, chunkCount: 0, computeMetrics: input.computeMetrics, batch: batch).encoded()
    }

    /// Sends each member `message` with its chunk assignment.
    private func sendStepMessages(_ message: inout [UInt8]) throws {
        for (rank, peer) in members.enumerated() {
            let chunks = config.plan.chunks(forRank: rank, of: members.count)
            Message.setStepAssignment(&message, firstChunk: UInt32(chunks.lowerBound), chunkCount: UInt32(chunks.count))
            do {
                try send(raw: message, to: peer)
            } catch {
                throw WorkerLost(rank: rank, reason: "its connection is closed")
            }
        }
    }

    /// Applies a completed step to this replica: the gradients (left for after the next step is sent), the
    /// optimizer and the running statistics.
    private func finishStep(_ step: Int) {
        if gradientsPending {
            network.apply(gradients: UnsafeBufferPointer(rebasing: floatResult[0..<network.exchange.resultWidth]))
            gradientsPending = false
        }
        network.optimizer.learningRate = config.learningRate(atStep: step)
        network.finishStep()
    }

    /// One try at a step with the current members. Replicas change only when it completes (`finishStep`).
    private func attemptStep(_ step: Int, message: inout [UInt8], sendStep: Bool, computeMetrics: Bool) throws -> StepMetrics? {
        let plan = config.plan
        early.removeAll()
        gradientsPending = false
        if gradientExchange == .peers { try sendPeerTableIfChanged() }
        if sendStep { try sendStepMessages(&message) }
        var metrics: StepMetrics?
        var observations: [InputObservation] = []
        let rounds = network.rounds(computeMetrics: computeMetrics)
        for (index, round) in rounds.enumerated() {
            let final = index == rounds.count - 1
            let width = network.width(of: round)
            let element: WireProtocol.Element = round == .gradients ? .float32 : .float64
            if round == .gradients && gradientExchange == .peers {
                let result = UnsafeMutableBufferPointer(rebasing: floatResult[0..<network.exchange.resultWidth])
                rescue = nil  // the buffer is being overwritten
                try collectPeerGradients(step: UInt64(step), into: result)
                rescue = UInt64(step)
                gradientsPending = true
                continue
            }
            try gather(step: UInt64(step), round: round, width: width, element: element)
            if round == .observations {
                // For the logs only: workers do not wait for an answer.
                observations = network.observations(gathered: UnsafeBufferPointer(rebasing: doublePartials[0..<(plan.chunkCount * width)]))
                continue
            }
            outbox.removeAll(keepingCapacity: true)
            if element == .float32 {
                let exchange = network.exchange
                let partials = UnsafeBufferPointer(rebasing: floatPartials[0..<(plan.chunkCount * width)])
                let result = UnsafeMutableBufferPointer(rebasing: floatResult[0..<exchange.resultWidth])
                exchange.reduce(partials, into: result)
                Message.reduced(step: UInt64(step), round: round, width: UInt32(exchange.resultWidth), element: element, payload: []).encode(appendingTo: &outbox)
                outbox += UnsafeRawBufferPointer(result)
                try broadcast(final: final)
                gradientsPending = true
            } else {
                let partials = UnsafeBufferPointer(rebasing: doublePartials[0..<(plan.chunkCount * width)])
                var result = UnsafeBufferPointer(rebasing: doubleResult[0..<width])
                if network.gathers(round) {
                    result = partials  // BatchNorm groups: every chunk's partials, each replica merges its group's
                } else {
                    round.reduce(partials, plan: plan, chunks: 0..<plan.chunkCount, width: width, valuesPerRow: network.valuesPerRow(of: round),
                                 into: UnsafeMutableBufferPointer(mutating: result))
                }
                if let m = network.apply(round, doubles: result) { metrics = m }
                Message.reduced(step: UInt64(step), round: round, width: UInt32(result.count), element: element, payload: []).encode(appendingTo: &outbox)
                outbox += UnsafeRawBufferPointer(result)
                try broadcast(final: final)
            }
        }
        metrics?.observations = observations
        return metrics
    }

    /// Sends `outbox` to every member. After the step's final round the step is done for whoever received the
    /// result, so it must not be redone: a member that cannot be reached then is found lost with the next step.
    private func broadcast(final: Bool) throws {
        for (rank, peer) in members.enumerated() {
            do { try send(raw: outbox, to: peer) } catch where !final { throw WorkerLost(rank: rank, reason: "its connection is closed") } catch {}
        }
    }

    /// Collects one round's partials from every member into the chunk-major buffer.
    /// A worker does not wait for an answer to its observations: its metrics partials of the same step may
    /// come while the observations of slower workers are still being collected, and are kept for their round.
    private func gather(step: UInt64, round: Round, width: Int, element: WireProtocol.Element) throws {
        try collect("\(round)", messagesPerWorker: 1, keepForLater: { message in
            guard round == .observations, case .partials(let s, .metrics, _, _, _, _, _) = message else { return false }
            return s == step
        }) { rank, message in
            guard case .partials(let s, let r, let firstChunk, let chunkCount, let w, let e, let payload) = message else { return false }
            let expected = config.plan.chunks(forRank: rank, of: members.count)
            guard s == step, r == round, Int(firstChunk) == expected.lowerBound, Int(chunkCount) == expected.count,
                  Int(w) == width, e == element else {
                // Left over from an abandoned try of this step, or wrong: either way not this round's.
                logger.debug("dropped partials from worker \(rank) for step \(s + 1), \(r), chunks \(firstChunk)+\(chunkCount), width \(w): expected step \(step + 1), \(round), chunks \(expected), width \(width)")
                return false
            }
            let finite = payload.withUnsafeBytes { raw -> Bool in
                let byteOffset = expected.lowerBound * width * element.size
                let base = element == .float32 ? UnsafeMutableRawPointer(floatPartials.baseAddress!) : UnsafeMutableRawPointer(doublePartials.baseAddress!)
                if raw.count > 0 { (base + byteOffset).copyMemory(from: raw.baseAddress!, byteCount: raw.count) }
                return element == .float32
                    ? allFinite(UnsafeBufferPointer(start: floatPartials.baseAddress! + byteOffset / 4, count: raw.count / 4))
                    : allFinite(UnsafeBufferPointer(start: doublePartials.baseAddress! + byteOffset / 8, count: raw.count / 8))
            }
            guard finite else { throw NonFinitePartials(rank: rank, round: round) }
            return true
        }
    }

    /// The gradient round among workers (`.peers`): collects every member's factor rows and the shard of the
    /// sums it reduced, straight into `result` — the sums once and every row once, whatever the worker count.
    private func collectPeerGradients(step: UInt64, into result: UnsafeMutableBufferPointer<Float>) throws {
        let layout = GradientLayout(network.exchange)
        let n = members.count
        var gotRows = [Bool](repeating: false, count: n), gotShard = gotRows
        try collect("parameter gradients", messagesPerWorker: 2, keepForLater: { message in
            if case .partials(let s, _, _, _, _, _, _) = message { return s == step }
            return false
        }) { rank, message in
            guard message.peerTag.map({ $0.step == step && $0.epoch == peerEpoch }) == true else { return false }
            let range: Range<Int>, payload: ArraySlice<UInt8>
            switch message {
            case .gradientTiles(_, _, let from, _, let shardWidth, let tiles, let rowsFirst, let rowsCount, let rowsWidth, let bytes):
                let chunks = config.plan.chunks(forRank: rank, of: n)
                guard Int(from) == rank, !gotRows[rank], shardWidth == 0, tiles.isEmpty, Int(rowsFirst) == chunks.lowerBound,
                      Int(rowsCount) == chunks.count, Int(rowsWidth) == layout.rowsPerChunk else { return false }
                gotRows[rank] = true
                (range, payload) = ((layout.sumWidth + chunks.lowerBound * layout.rowsPerChunk)..<(layout.sumWidth + chunks.upperBound * layout.rowsPerChunk), bytes)
            case .gradientShard(_, _, let from, let offset, let width, let bytes):
                let shard = layout.shard(rank, of: n)
                guard Int(from) == rank, !gotShard[rank], Int(offset)..<Int(offset + width) == shard else { return false }
                gotShard[rank] = true
                (range, payload) = (shard, bytes)
            default:
                return false
            }
            let values = UnsafeMutableBufferPointer(rebasing: result[range])
            payload.withUnsafeBytes { raw in
                if raw.count > 0 { UnsafeMutableRawPointer(values.baseAddress!).copyMemory(from: raw.baseAddress!, byteCount: raw.count) }
            }
            guard allFinite(UnsafeBufferPointer(values)) else { throw NonFinitePartials(rank: rank, round: .gradients) }
            return true
        }
    }

    /// Sends every member the whole gradient result of `step` (peers mode, after a loss): a worker still waiting
    /// for a shard that died with its owner completes the step from it; the others ignore it.
    private func sendRescue(step: UInt64) {
        let layout = GradientLayout(network.exchange)
        outbox.removeAll(keepingCapacity: true)
        Message.reduced(step: step, round: .gradients, width: UInt32(layout.resultWidth), element: .float32, payload: []).encode(appendingTo: &outbox)
        outbox += UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: floatResult[0..<layout.resultWidth]))
        for peer in members { try? send(raw: outbox, to: peer) }
    }

    /// After a change of membership, sends every member the new table of peers (a new epoch).
    private func sendPeerTableIfChanged() throws {
        guard !members.elementsEqual(peerTableMembers, by: { $0.identity == $1 }) else { return }
        peerEpoch += 1
        let endpoints = members.map(\.peerEndpoint)
        for (rank, peer) in members.enumerated() {
            do {
                try send(.peers(epoch: peerEpoch, rank: UInt32(rank), endpoints: endpoints), to: peer)
            } catch {
                throw WorkerLost(rank: rank, reason: "its connection is closed")
            }
        }
        peerTableMembers = members.map(\.identity)
    }

    /// Collects `messagesPerWorker` accepted messages of a round from every member; `accept` stores one and
    /// says whether it was the round's (false: dropped). Probes members that are slow to answer; one whose
    /// connection is gone, or that stays silent for the round timeout, is lost.
    /// Messages that `keepForLater` picks are kept for the next round instead of being dropped.
    private func collect(_ what: @autoclosure () -> String, messagesPerWorker: Int, keepForLater: (Message) -> Bool = { _ in false },
                         accept: (_ rank: Int, _ message: Message) throws -> Bool) throws {
        var kept = early[...]
        early = []
        var pending = [Int](repeating: messagesPerWorker, count: members.count)
        var left = members.count * messagesPerWorker
        let started = Date()
        let deadline = started.addingTimeInterval(timeouts.roundSeconds)
        while left > 0 {
            let arrived: Bool
            if let next = kept.popFirst() {
                inbox = next
                arrived = true
            } else {
                arrived = try receive(until: min(deadline, Date().addingTimeInterval(Double(ClusterTimeouts.pollMilliseconds) / 1000)))
            }
            if !arrived {
                let waiting = Set(pending.indices.filter { pending[$0] > 0 })
                if Date() >= deadline, let rank = waiting.min() {
                    throw WorkerLost(rank: rank, reason: "it sent nothing for the \(what()) within \(Int(timeouts.roundSeconds)) s (--round-timeout)")
                }
                if -started.timeIntervalSinceNow > ClusterTimeouts.probeAfterSeconds { try probe(waiting) }
                continue
            }
            let identity = inbox[0]
            guard let rank = members.firstIndex(where: { $0.identity == identity }) else {
                try handleOutOfRound()
                continue
            }
            members[rank].lastHeard = Date()
            guard let message = decode(inbox[1], from: identity) else { continue }
            switch message {
            case .partials, .gradientTiles, .gradientShard:
                if pending[rank] > 0, try accept(rank, message) {
                    pending[rank] -= 1
                    left -= 1
                } else if keepForLater(message) {
                    early.append(inbox)
                }
            case .failure(let reason):
                throw WorkerLost(rank: rank, reason: "it failed: \(reason)")
            case .hello(let description, let peerEndpoint):
                // The same connection says hello again: the worker lost track of us and rejoins.
                joining.append(Peer(identity: identity, description: description, peerEndpoint: peerEndpoint, lastHeard: Date()))
                throw WorkerLost(rank: rank, reason: "it restarted its session and rejoins")
            default:
                noteMalformed(identity, "an unexpected \(message.kind) message from worker \(rank)")
            }
        }
    }

    /// Sends a ping to each of `ranks`; with `ZMQ_ROUTER_MANDATORY` a send to a peer whose connection
    /// libzmq closed (reset, or heartbeats unanswered) fails at once.
    private func probe(_ ranks: Set<Int>) throws {
        for rank in ranks.sorted() {
            do {
                try send(.ping, to: members[rank])
            } catch {
                let silence = Int(timeouts.heartbeatTimeoutSeconds * 1000)
                throw WorkerLost(rank: rank, reason: "its connection closed (reset, or no heartbeat answer within \(silence) ms)")
            }
        }
    }

    /// A message from a peer that is not a member, or between rounds: a hello is queued to join; anything
    /// else is dropped with its reason.
    private func handleOutOfRound() throws {
        let identity = inbox[0]
        guard let message = decode(inbox[1], from: identity) else { return }
        if let rank = members.firstIndex(where: { $0.identity == identity }) {
            if case .hello(let description, let peerEndpoint) = message {
                members.remove(at: rank)
                joining.append(Peer(identity: identity, description: description, peerEndpoint: peerEndpoint, lastHeard: Date()))
                logger.warning("worker \(rank) (\(description)) restarted its session; it rejoins with the next step")
            } else {
                logger.debug("dropped a late \(message.kind) message from worker \(rank) between rounds")
            }
            return
        }
        guard case .hello(let description, let peerEndpoint) = message else {
            noteMalformed(identity, "a \(message.kind) message from \(hex(identity)), which has not joined")
            return
        }
        guard !joining.contains(where: { $0.identity == identity }) else { return }
        if let tag = description.range(of: Self.blasTag) {
            let kernels = String(description[tag.upperBound...].prefix { !$0.isWhitespace })
            if kernels != BLAS.kernelName {
                logger.warning("worker \(description) uses OpenBLAS kernels \(kernels), this coordinator \(BLAS.kernelName): the model will not be bit-identical to a one-process run; set OPENBLAS_CORETYPE=\(BLAS.kernelName) for every process")
            }
        }
        joining.append(Peer(identity: identity, description: description, peerEndpoint: peerEndpoint, lastHeard: Date()))
        logger.info("worker \(description) asked to join; it starts with the next step")
    }

    // MARK: Ending

    /// Tells every worker to exit: cleanly after training, or with `failure` as the reason. With
    /// `releaseWorkers: false` (the coordinator is interrupted and will be resumed) workers are left waiting
    /// to rejoin.
    public func finish(failure: String? = nil, releaseWorkers: Bool = true) {
        if releaseWorkers {
            for peer in members + joining {
                try? send(failure.map { .failure(reason: $0) } ?? .stop, to: peer)
            }
        }
        // Let libzmq flush the goodbyes when the socket closes, for a bounded time.
        try? socket.setLinger(milliseconds: 2000)
    }

    // MARK: Messages

    private func send(_ message: Message, to peer: Peer) throws { try send(raw: message.encoded(), to: peer) }

    private func send(raw bytes: [UInt8], to peer: Peer) throws {
        do {
            try socket.send(peer.identity, more: true)
            try socket.send(bytes)
        } catch let error as ZMQError where error.isHostUnreachable {
            throw ClusterError("worker \(peer.description) is gone (its connection closed)")
        }
    }

    /// Waits for the next message from a peer not cut off and puts its identity and body in `inbox`; false
    /// at the deadline. Blocks in `zmq_poll`; checks `abortReason` every `pollMilliseconds`.
    private func receive(until deadline: Date) throws -> Bool {
        while true {
            if let reason = abortReason() { throw ClusterError(reason) }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return false }
            let wait = min(ClusterTimeouts.pollMilliseconds, Int(left * 1000) + 1)
            if let monitor = handshakeMonitor {
                guard let ready = try waitForFirstReadable([socket, monitor.socket], timeoutMilliseconds: wait) else { continue }
                if ready == 1 { noteFailedHandshakes(monitor); continue }
            } else {
                guard try socket.waitReadable(timeoutMilliseconds: wait) else { continue }
            }
            guard let frames = try socket.receive(into: &inbox, dontWait: true) else { continue }
            if cutOff.contains(inbox[0]) { continue }
            guard frames == 2 else {
                noteMalformed(inbox[0], "a message of \(frames - 1) frames (SyncBN messages are one frame)")
                continue
            }
            return true
        }
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

    /// Decodes a frame, answering a peer on another protocol version and counting anything malformed.
    private func decode(_ frame: [UInt8], from identity: [UInt8]) -> Message? {
        do {
            return try Message.decode(frame)
        } catch ProtocolError.versionMismatch(let peerVersion) {
            logger.error("refused a peer speaking protocol version \(peerVersion); this coordinator speaks version \(WireProtocol.version): run the same syncbn release everywhere")
            _ = try? socket.send(frames: [identity, Message.reject(reason: "this coordinator speaks SyncBN protocol version \(WireProtocol.version), the worker speaks \(peerVersion): run the same syncbn release everywhere").encoded()])
        } catch {
            noteMalformed(identity, "\(error)")
        }
        return nil
    }

    /// Logs a dropped message with its reason and the peer; cuts the peer off after `malformedLimit`.
    private func noteMalformed(_ identity: [UInt8], _ reason: String) {
        let count = malformedCount[identity, default: 0] + 1
        malformedCount[identity] = count
        if count <= 3 { logger.warning("dropped a message from peer \(hex(identity)): \(reason)") }
        if count == Self.malformedLimit {
            cutOff.insert(identity)
            logger.warning("cut off peer \(hex(identity)) after \(count) malformed or unexpected messages")
        }
    }
}

func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

func milliseconds(since date: Date) -> Int { Int((-date.timeIntervalSinceNow * 1000).rounded()) }

func allFinite<T: BinaryFloatingPoint>(_ values: UnsafeBufferPointer<T>) -> Bool {
    var ok = true
    for v in values where !v.isFinite { ok = false; break }
    return ok
}

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

