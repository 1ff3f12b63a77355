import Foundation
import SyncBNCore

/// What happens to a worker.
public enum WorkerEvent {
    /// A new connection to the coordinator is open (after `.connect`): the machine says hello on it.
    case connected
    /// A message from the coordinator on the current connection.
    case received(Message)
    /// The current connection closed (the coordinator died, froze, or is cut off).
    case connectionLost
    /// The compute sent a round's partials and waits for its result of `resultWidth` values.
    case awaiting(step: UInt64, round: Round, resultWidth: Int, element: WireProtocol.Element)
    /// The compute finished the step it was given.
    case stepFinished
    /// Time passed (`wakeup` came).
    case tick
}

/// What the worker wants done.
public enum WorkerAction: Equatable {
    /// Close the current connection, if any, and open a new one; report `.connected`.
    case connect
    case send([UInt8])
    /// Build the replica from the welcome (rank, worker count, config JSON, training state).
    case join(rank: Int, workerCount: Int, config: [UInt8], state: [UInt8])
    /// Run this step on the replica (the compute calls back with `.awaiting` and `.stepFinished`).
    case startStep(Message)
    /// The awaited result: the compute goes on with it.
    case deliver(Message)
    /// The compute abandons the step it runs (a new step follows, or the job ends); replicas change only
    /// when a step completes.
    case abandonStep
    /// Take a new table of peers (`Message.peers`).
    case takePeers(epoch: UInt32, rank: UInt32, uses: WireProtocol.PeerUses, endpoints: [String])
    /// Training is over: exit 0.
    case finish
    /// Exit non-zero with this reason.
    case fail(String)
}

/// A worker's protocol logic without sockets or clocks: join, the wait for each round's result, preemption
/// by a redone or later step, rejoin after the coordinator is lost, and the end. The compute (`Network.trainStep`)
/// runs outside it and reports what it waits for.
public final class WorkerMachine {
    public enum State: Equatable {
        case disconnected
        case awaitingWelcome
        /// Joined, between steps.
        case idle
        /// Running a step; `awaiting` is the round whose result the compute waits for (nil: computing).
        case inStep(step: UInt64, awaiting: Awaited?)
        case done
    }

    public struct Awaited: Equatable, Sendable {
        public var round: Round
        /// Values in the result.
        public var width: Int
        public var element: WireProtocol.Element
    }

    public private(set) var state: State = .disconnected
    public private(set) var rejoining = false
    public private(set) var rank = 0
    let timeouts: ClusterTimeouts
    let hello: [UInt8]
    /// The coordinator's address, for messages.
    let endpoint: String
    /// When the current wait gives up (the join deadline, the idle timeout, the round timeout).
    var deadline: Double = .infinity
    /// When to say hello again on a fresh connection.
    var helloRetry: Double = .infinity
    var joinDeadline: Double = .infinity

    /// How long a worker waits for an answer to one hello before it says hello again.
    public static let helloRetrySeconds = 3.0

    public init(hello: [UInt8], endpoint: String, timeouts: ClusterTimeouts) {
        self.hello = hello
        self.endpoint = endpoint
        self.timeouts = timeouts
    }

    public var wakeup: Double? {
        switch state {
        case .done: return nil
        case .awaitingWelcome: return min(helloRetry, joinDeadline)
        // Computing, or waiting for the other workers' partials: the compute keeps its own time, and a redo or a
        // lost connection reaches it through the machine (a tick would find nothing to time out).
        case .inStep(_, awaiting: nil): return nil
        default: return deadline.isFinite ? deadline : nil
        }
    }

    /// Starts: opens the first connection.
    public func start(now: Double) -> [WorkerAction] {
        joinDeadline = now + timeouts.connectSeconds
        return [.connect]
    }

    public func handle(_ event: WorkerEvent, now: Double) -> [WorkerAction] {
        switch (event, state) {
        case (_, .done):
            return []
        case (.connected, _):
            state = .awaitingWelcome
            helloRetry = now + Self.helloRetrySeconds
            return [.send(hello)]
        case (.connectionLost, .disconnected):
            return []
        case (.connectionLost, .awaitingWelcome):
            return [.connect]  // connected, then lost again before the welcome: hello on a fresh connection
        case (.connectionLost, let s):
            rejoining = true
            joinDeadline = now + timeouts.rejoinSeconds
            state = .disconnected
            if case .inStep = s { return [.abandonStep, .connect] }
            return [.connect]
        case (.tick, .awaitingWelcome):
            if now >= joinDeadline {
                state = .done
                return [.fail(rejoining ? "no coordinator answered at \(endpoint) within \(Int(timeouts.rejoinSeconds)) s: it did not come back (restart it with `syncbn coordinator --resume DIR`)"
                                        : "no coordinator answered at \(endpoint) within \(Int(timeouts.connectSeconds)) s")]
            }
            if now >= helloRetry { state = .disconnected; return [.connect] }
            return []
        case (.tick, .idle):
            guard now >= deadline else { return [] }
            state = .done
            return [.fail("no instruction from the coordinator for \(Int(timeouts.idleSeconds)) s: it is stuck")]
        case (.tick, .inStep(let step, let awaited)):
            guard now >= deadline, let awaited else { return [] }
            state = .done
            return [.abandonStep, .fail("step \(step + 1), \(awaited.round): the coordinator sent no result within \(Int(timeouts.resultWaitSeconds)) s; is it stuck?")]
        case (.tick, _):
            return []
        case (.awaiting(let step, let round, let width, let element), .inStep(let s, _)) where s == step:
            state = .inStep(step: step, awaiting: Awaited(round: round, width: width, element: element))
            deadline = now + timeouts.resultWaitSeconds
            return []
        case (.stepFinished, .inStep):
            state = .idle
            deadline = now + timeouts.idleSeconds
            return []
        case (.awaiting, _), (.stepFinished, _):
            return []
        case (.received(let message), .awaitingWelcome):
            return welcome(message, now: now)
        case (.received(let message), .idle):
            return betweenSteps(message, now: now)
        case (.received(let message), .inStep(let step, let awaited)):
            return duringStep(message, step: step, awaited: awaited, now: now)
        case (.received, .disconnected):
            return []
        }
    }

    func welcome(_ message: Message, now: Double) -> [WorkerAction] {
        switch message {
        case .ping:
            return []
        case .welcome(let rank, let workerCount, let config, let model):
            self.rank = Int(rank)
            state = .idle
            deadline = now + timeouts.idleSeconds
            return [.join(rank: Int(rank), workerCount: Int(workerCount), config: config, state: model)]
        case .reject(let reason):
            state = .done
            return [.fail("the coordinator at \(endpoint) refused this worker: \(reason)")]
        case .failure(let reason):
            state = .done
            return [.fail("the coordinator at \(endpoint) stopped the job: \(reason)")]
        default:
            state = .done
            return [.fail("expected a welcome from the coordinator, got a \(message.kind) message")]
        }
    }

    func betweenSteps(_ message: Message, now: Double) -> [WorkerAction] {
        switch message {
        case .step(let step, _, _, _, _):
            state = .inStep(step: step, awaiting: nil)
            return [.startStep(message)]
        case .ping, .reduced:
            return []  // a probe, or a result of a step abandoned meanwhile
        case .peers(let epoch, let rank, let uses, let endpoints):
            return [.takePeers(epoch: epoch, rank: rank, uses: uses, endpoints: endpoints)]
        case .stop:
            state = .done
            return [.finish]
        case .failure(let reason):
            state = .done
            return [.fail("the coordinator stopped the job: \(reason)")]
        case .reject(let reason):
            state = .done
            return [.fail("the coordinator dropped this worker: \(reason)")]
        default:
            state = .done
            return [.fail("expected a step from the coordinator, got a \(message.kind) message")]
        }
    }

    func duringStep(_ message: Message, step: UInt64, awaited: Awaited?, now: Double) -> [WorkerAction] {
        switch message {
        case .reduced(let s, let r, let w, let e, _):
            guard let awaited, s == step, r == awaited.round, e == awaited.element, Int(w) == awaited.width else { return [] }
            state = .inStep(step: step, awaiting: nil)
            return [.deliver(message)]
        case .ping:
            return []
        case .peers(let epoch, let rank, let uses, let endpoints):
            return [.takePeers(epoch: epoch, rank: rank, uses: uses, endpoints: endpoints)]
        case .step(let s, _, _, _, _):
            // The coordinator redoes this step (a worker was lost) or moved on.
            state = .inStep(step: s, awaiting: nil)
            return [.abandonStep, .startStep(message)]
        case .failure(let reason):
            state = .done
            return [.abandonStep, .fail("the coordinator stopped the job: \(reason)")]
        case .reject(let reason):
            state = .done
            return [.abandonStep, .fail("the coordinator dropped this worker: \(reason)")]
        case .stop:
            state = .done
            return [.abandonStep, .fail("the coordinator ended the job in the middle of step \(step + 1)")]
        default:
            state = .done
            let what = awaited.map { "the result of step \(step + 1), \($0.round)" } ?? "partials or gradients from the other workers at step \(step + 1)"
            return [.abandonStep, .fail("expected \(what); the coordinator sent a \(message.kind) message")]
        }
    }
}
