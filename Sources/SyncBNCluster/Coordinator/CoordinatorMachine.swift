import Foundation
import Logging
import SyncBNCore

/// A peer as the coordinator knows it: the identity its connection has (ZeroMQ's ROUTER gives every
/// connection its own), which changes when the worker reconnects.
public typealias PeerIdentity = [UInt8]

/// What happens to the coordinator: everything it learns from the outside world comes as one of these.
public enum CoordinatorEvent: Sendable {
    /// A one-frame message from the connection `from`.
    case received(from: PeerIdentity, frame: [UInt8])
    /// A message of `frames` frames (SyncBN messages are one frame): dropped and counted as malformed.
    case multipart(from: PeerIdentity, frames: Int)
    /// A send to this connection failed: it is closed (reset, or its heartbeats went unanswered).
    case unreachable(PeerIdentity)
    /// Time passed: the machine's `wakeup` came (or the driver just looks).
    case tick
}

/// What the coordinator wants done. Drivers carry the actions out in order; a `send` that fails is reported
/// back as `.unreachable` once the whole list is done (so that a redo never overtakes the sends before it).
public enum CoordinatorAction: Sendable, Equatable {
    case send(to: PeerIdentity, bytes: [UInt8])
    /// Enough workers joined (`admit`): training can start.
    case admitted
    /// The step's last round is done and the next step (if any) is sent: call `commitStep()`, which applies
    /// the step to the replica and returns its metrics.
    case stepCompleted
    /// The step was dropped (non-finite partials under `--on-nonfinite skip`); nothing to apply.
    case stepSkipped
    /// The job cannot go on.
    case failed(reason: String)
}

/// The coordinator's protocol logic without sockets, clocks or sleeps: admission and membership, the rounds
/// of a step and their reductions, the redo of a step after a loss, the pause below `minWorkers`, and the
/// rescue of a gradient result in peers mode. It takes events (`handle(_:now:)`) and returns actions; the time
/// comes with every call (`now`, seconds on any monotonic clock), and `wakeup` says when it wants a `.tick`.
///
/// `Coordinator` runs it over a ZeroMQ ROUTER socket; `SyncBNSimulation` runs it over a simulated network.
public final class CoordinatorMachine {
    public let network: Network
    public let config: TrainingConfig
    public let workerCount: Int
    public let minWorkers: Int
    public let nonFinitePolicy: NonFinitePolicy
    public let gradientExchange: GradientExchangeMode
    public let batchNormExchange: BatchNormExchangeMode
    let timeouts: ClusterTimeouts
    let logger: Logger
    let data: LabeledImages
    /// How workers reach this coordinator, for messages only.
    let endpoint: String

    /// The step being run, or the next one between steps: what a checkpoint taken now continues from.
    public internal(set) var nextStep = 0
    /// Steps run again because a worker was lost during them.
    public internal(set) var redoneSteps = 0
    /// When the machine wants a `.tick` (nil: only messages move it on).
    public var wakeup: Double? {
        switch phase {
        case .idle, .done: return nil
        case .admitting(let deadline), .paused(let deadline): return deadline
        case .welcoming(let at): return at
        case .collecting:
            guard let s = current else { return nil }
            let deadline = s.roundStarted + timeouts.roundSeconds
            let probeAt = max(s.roundStarted + ClusterTimeouts.probeAfterSeconds, s.lastProbe + Double(ClusterTimeouts.pollMilliseconds) / 1000)
            return min(deadline, probeAt)
        }
    }

    enum Phase: Equatable {
        case idle
        /// Waiting for `workerCount` workers before the first step.
        case admitting(deadline: Double)
        /// Below `minWorkers` in the middle of a step.
        case paused(deadline: Double)
        /// Welcomes went out at the start of a try; the step follows at the next tick (`at`), once the driver
        /// reported the welcomes that could not be sent, so that a joiner already gone never causes a redo.
        case welcoming(at: Double)
        /// Collecting a round of the current step.
        case collecting
        case done
    }
    var phase: Phase = .idle

    // Membership (CoordinatorMachine+Membership.swift).
    struct Peer {
        let identity: PeerIdentity
        let description: String
        /// Where it receives from other workers (empty: it cannot take part in peer exchanges).
        let peerEndpoint: String
        /// How many threads compute its chunks (its hello says): its share of the batch.
        var threads = 1
        /// When the coordinator last received anything from it.
        var lastHeard: Double
    }
    var members: [Peer] = []
    /// Workers that said hello and are welcomed at the next step boundary.
    var joining: [Peer] = []
    /// Peers that sent malformed messages, and those cut off for sending too many.
    var malformedCount: [PeerIdentity: Int] = [:]
    var cutOff: Set<PeerIdentity> = []
    /// Connections pinged by the last probe: a send to one that fails is reported as a probe's finding.
    var probed: Set<PeerIdentity> = []

    // The step (CoordinatorMachine+Rounds.swift).
    struct StepState {
        let step: Int
        let computeMetrics: Bool
        let next: StepInput?
        var message: [UInt8]
        /// The members the step message already went to (sent ahead at the end of the previous step).
        var alreadySent: [PeerIdentity]
        var rounds: [Round] = []
        var index = 0
        var pending: [Int] = []
        var left = 0
        var roundStarted = 0.0
        var lastProbe = -Double.infinity
        var metrics: StepMetrics?
        var observations: [InputObservation] = []
        /// Peers mode: which members' rows and shard of the gradients arrived.
        var gotRows: [Bool] = []
        var gotShard: [Bool] = []
        let started: Double
        var lostAt: Double?
    }
    var current: StepState?
    /// Counts tries of steps, so that a loop over kept messages notices when a loss started another.
    var attempt = 0
    /// Messages of a later round of this step, received while collecting an earlier one.
    var early: [(PeerIdentity, [UInt8])] = []
    /// A step whose messages went out at the end of the previous step: its number, the encoded message, and
    /// the members it went to, in rank order.
    var sentAhead: (step: Int, message: [UInt8], members: [PeerIdentity])?
    /// The completed step waiting for `commitStep()`.
    var completed: (step: Int, metrics: StepMetrics?)?
    var gradientsPending = false
    /// Gradient segments that rode with this step's backward rounds and are all in, not yet combined
    /// (`doDeferredWork`).
    var ridingToReduce: [GradientSegment] = []
    /// A round's result message, encoded into the same storage every round (the send actions share it; by the
    /// next round the driver has let go of them, so nothing is copied or allocated).
    var outbox: [UInt8] = []

    // Rounds among workers (CoordinatorMachine+PeerGradients.swift).
    var peerEpoch: UInt32
    var peerTableMembers: [PeerIdentity] = []
    /// What the current members were told to run among themselves (the last table, or none), and the try it
    /// was decided for.
    var peerTableUses: WireProtocol.PeerUses = []
    var peerTableAttempt = 0
    /// Whether the current try's BatchNorm rounds run among its workers (`BatchNormExchangeMode.auto`): their
    /// partials come with the gradient round, and nothing is sent back.
    var batchNormDirect: Bool { peerTableUses.contains(.batchNormRounds) }
    /// The step whose whole gradient result `floatResult` holds; sent to survivors after a loss.
    var rescue: UInt64?

    let doublePartials: UnsafeMutableBufferPointer<Double>
    let floatPartials: UnsafeMutableBufferPointer<Float>
    let doubleResult: UnsafeMutableBufferPointer<Double>
    let floatResult: UnsafeMutableBufferPointer<Float>

    /// A peer that keeps sending malformed messages is ignored after this many.
    static let malformedLimit = 20

    /// `initialPeerEpoch`: where the epochs of peer tables start (the driver draws it at random, so that
    /// messages left in flight by a previous coordinator never match this one's).
    public init(config: TrainingConfig, data: LabeledImages, workerCount: Int, minWorkers: Int = 1, timeouts: ClusterTimeouts = ClusterTimeouts(),
                nonFinitePolicy: NonFinitePolicy = .abort, gradientExchange: GradientExchangeMode = .star,
                batchNormExchange: BatchNormExchangeMode = .star, endpoint: String, initialPeerEpoch: UInt32 = 0, logger: Logger) {
        precondition(workerCount > 0 && minWorkers > 0)
        self.config = config
        self.data = data
        self.workerCount = workerCount
        self.minWorkers = minWorkers
        self.timeouts = timeouts
        self.nonFinitePolicy = nonFinitePolicy
        self.gradientExchange = gradientExchange
        self.batchNormExchange = batchNormExchange
        self.endpoint = endpoint
        self.logger = logger
        peerEpoch = initialPeerEpoch
        network = config.makeNetwork()
        // Among workers the gradient round takes all the gradients; through this coordinator they ride with the
        // backward rounds.
        network.gradientsRideWithBatchNorm = gradientExchange == .star
        let chunks = config.plan.chunkCount
        let widestDouble = Self.widestDouble(network)
        doublePartials = .allocate(capacity: chunks * widestDouble)
        floatPartials = .allocate(capacity: max(1, chunks * network.exchange.chunkWidth))
        doubleResult = .allocate(capacity: widestDouble)
        floatResult = .allocate(capacity: max(1, network.exchange.resultWidth))
    }

    deinit {
        doublePartials.deallocate()
        floatPartials.deallocate()
        doubleResult.deallocate()
        floatResult.deallocate()
    }

    static func widestDouble(_ network: Network) -> Int {
        max(2, network.norms.map { 2 * $0.features }.max() ?? 2, network.width(of: .observations))
    }

    /// The largest message a worker may send: its partials when it owns every chunk.
    public var largestWorkerMessage: Int {
        WireProtocol.headerSize + 64 + config.plan.chunkCount * (network.exchange.chunkWidth * 4 + Self.widestDouble(network) * 8)
    }

    public var liveWorkers: Int { members.count }
    /// The connections of the members, in rank order.
    public var memberIdentities: [PeerIdentity] { members.map(\.identity) }
    public var clusterStatus: ClusterStatus { ClusterStatus(liveWorkers: members.count, redoneSteps: redoneSteps) }

    /// Continue from a checkpoint: the replica's state and the step to run next.
    public func resume(from state: [String: Safetensors.Tensor], nextStep: Int, source: String) throws {
        try network.loadTrainingState(state, source: source)
        self.nextStep = nextStep
    }

    // MARK: Driving

    /// Starts admission: waits until `workerCount` workers said hello and welcomes them (ranks follow the
    /// order of arrival). Ends with `.admitted`, or `.failed` at the join timeout.
    public func admit(now: Double) -> [CoordinatorAction] {
        phase = .admitting(deadline: now + timeouts.joinSeconds)
        var actions: [CoordinatorAction] = []
        continueWaiting(now: now, &actions)
        advance(now: now, &actions)
        return actions
    }

    /// Starts step `input` (`next`: the one after it, sent as soon as this one's last round is done). Ends
    /// with `.stepCompleted` (then `commitStep()`), `.stepSkipped`, or `.failed`.
    public func beginStep(_ input: StepInput, next: StepInput?, now: Double) -> [CoordinatorAction] {
        precondition(phase == .idle && completed == nil, "a step begins only between steps")
        nextStep = input.step
        config.pipeline.copyBatch(data, indices: input.samples, seed: config.seed, epoch: input.epoch, into: network.batchInput.storage)
        network.batchInput.rows = config.plan.batchSize
        var message: [UInt8], alreadySent: [PeerIdentity] = []
        if let ahead = sentAhead, ahead.step == input.step {
            (message, alreadySent) = (ahead.message, ahead.members)
        } else {
            message = encodeStep(input)
        }
        sentAhead = nil
        current = StepState(step: input.step, computeMetrics: input.computeMetrics, next: next, message: message, alreadySent: alreadySent, started: now)
        var actions: [CoordinatorAction] = []
        startAttempt(now: now, &actions)
        advance(now: now, &actions)
        return actions
    }

    /// Applies the completed step to the replica and returns its metrics (after `.stepCompleted`).
    public func commitStep() -> StepMetrics? {
        guard let (step, metrics) = completed else { preconditionFailure("no completed step to commit") }
        completed = nil
        finishStep(step)
        nextStep = step + 1
        return metrics
    }

    /// Handles one event.
    public func handle(_ event: CoordinatorEvent, now: Double) -> [CoordinatorAction] {
        var actions: [CoordinatorAction] = []
        switch event {
        case .received(let identity, let frame):
            if cutOff.contains(identity) { return [] }
            switch phase {
            case .collecting:
                receivedInRound(identity, frame, now: now, &actions)
            case .admitting, .paused:
                handleOutOfRound(identity, frame, now: now, &actions)
                continueWaiting(now: now, &actions)
            case .idle, .welcoming:
                handleOutOfRound(identity, frame, now: now, &actions)
            case .done:
                break
            }
        case .multipart(let identity, let frames):
            if cutOff.contains(identity) { return [] }
            noteMalformed(identity, "a message of \(frames - 1) frames (SyncBN messages are one frame)")
        case .unreachable(let identity):
            connectionClosed(identity, now: now, &actions)
        case .tick:
            tick(now: now, &actions)
        }
        advance(now: now, &actions)
        return actions
    }

    /// Tells every worker to exit: cleanly after training, or with `failure` as the reason. With
    /// `releaseWorkers: false` (the coordinator is interrupted and will be resumed) workers are left waiting
    /// to rejoin.
    public func finish(failure: String? = nil, releaseWorkers: Bool = true) -> [CoordinatorAction] {
        phase = .done
        guard releaseWorkers else { return [] }
        let bytes = (failure.map { Message.failure(reason: $0) } ?? .stop).encoded()
        return (members + joining).map { .send(to: $0.identity, bytes: bytes) }
    }

    func tick(now: Double, _ actions: inout [CoordinatorAction]) {
        switch phase {
        case .admitting(let deadline) where now >= deadline:
            fail("only \(members.count + joining.count) of \(workerCount) workers joined within \(Int(timeouts.joinSeconds)) s: start the missing workers with `syncbn worker --connect \(endpoint)`", &actions)
        case .paused(let deadline) where now >= deadline:
            fail("paused at step \(nextStep + 1) with \(members.count) worker(s) for \(Int(timeouts.joinSeconds)) s; --min-workers is \(minWorkers)", &actions)
        case .collecting:
            roundTimers(now: now, &actions)
        case .welcoming(let at) where now >= at:
            proceedWithAttempt(now: now, &actions)
        default:
            break
        }
    }

    func fail(_ reason: String, _ actions: inout [CoordinatorAction]) {
        phase = .done
        actions.append(.failed(reason: reason))
    }
}

func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

// Not generic: an unspecialized generic loop costs a metadata lookup per value in debug builds.
func allFinite(_ values: UnsafeBufferPointer<Float>) -> Bool {
    for v in values where !v.isFinite { return false }
    return true
}

func allFinite(_ values: UnsafeBufferPointer<Double>) -> Bool {
    for v in values where !v.isFinite { return false }
    return true
}
