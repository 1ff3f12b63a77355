import Foundation
import Logging
import SyncBNCluster
import SyncBNCore

/// One coordinator and its workers in one process, on a simulated network and clock, under a seeded
/// scheduler: the real `CoordinatorMachine` and `WorkerMachine` (and the real `Network.trainStep` on every
/// replica), with the faults of a `Scenario` put at message boundaries. The same seed and scenario replay
/// exactly.
public final class Simulation {
    public struct Outcome: CustomStringConvertible {
        public var seed: UInt64
        /// The coordinator trained every step.
        public var completed: Bool
        /// Why the coordinator gave up (nil: it did not).
        public var error: String?
        /// The coordinator's training state at the end, and the checkpoint it saved on failure.
        public var finalState: [UInt8]
        public var checkpoint: (state: [UInt8], nextStep: Int)?
        /// Messages delivered (of which `peerDeliveries` between workers), and the simulated seconds the run took.
        public var deliveries: Int
        public var peerDeliveries: Int
        public var simulatedSeconds: Double
        /// Each fault with the message boundary it hit: "kind @ direction kind round" (up, down, or across between workers).
        public var faultPositions: [String]
        /// Broken invariants (empty: the run is good).
        public var violations: [String]
        public var redoneSteps: Int
        public var trace: [String]

        public var description: String {
            "seed \(seed): " + (completed ? "completed" : "failed: \(error ?? "?")") + ", \(deliveries) deliveries, \(String(format: "%.1f", simulatedSeconds)) s simulated, \(redoneSteps) redone"
                + (violations.isEmpty ? "" : "; VIOLATIONS: " + violations.joined(separator: "; "))
        }
    }

    let scenario: Scenario
    let seed: UInt64
    var rng: SimRandom
    let config: TrainingConfig
    let timeouts: ClusterTimeouts
    var now = 0.0
    let deadline: Double
    var trace: [String] = []
    let keepTrace: Bool

    // The scheduler: events ordered by time, then by the order they were scheduled.
    enum Event {
        case toCoordinator(conn: Int, bytes: [UInt8])
        case toWorker(worker: Int, conn: Int, bytes: [UInt8])
        /// A message from one worker's peer link to another's (the slots' processes).
        case toPeer(from: Int, to: Int, bytes: [UInt8])
        /// A worker's monitor reports its connection closed.
        case connectionLost(worker: Int, conn: Int)
        case coordinatorTick(incarnation: Int)
        case workerTick(worker: Int)
        case startWorker(worker: Int)
        case restartCoordinator
        case partitionHealed(worker: Int)
    }
    var queue: [(time: Double, seq: Int, event: Event)] = []
    var seq = 0

    // The network.
    struct Conn {
        let worker: Int   // -1: a stranger
        /// The coordinator incarnation it is attached to (nil: opened while none was up; held until one is).
        var incarnation: Int?
        /// When the network broke it: messages not delivered by then are lost; sends fail after it.
        var brokenAt = Double.infinity
        /// When its owner closed it: the coordinator's sends fail after it; messages in flight still arrive.
        var closedAt = Double.infinity
        var lastUp = 0.0, lastDown = 0.0
        var held: [[UInt8]] = []
        var lastSent: [UInt8]?
        func closed(at t: Double) -> Bool { t >= brokenAt || t >= closedAt }
    }
    var conns: [Int: Conn] = [:]
    var nextConn = 1
    /// The last arrival on each peer link (from, to): a PUSH/PULL connection keeps its order too.
    var peerLinks: [[Int]: Double] = [:]

    // The coordinator.
    final class CoordinatorProcess {
        let machine: CoordinatorMachine
        let incarnation: Int
        var training = false
        var commits: [Int] = []
        var wake: Double?
        init(machine: CoordinatorMachine, incarnation: Int) {
            self.machine = machine
            self.incarnation = incarnation
        }
    }
    var coordinator: CoordinatorProcess?
    var incarnations = 0
    var checkpoint: (state: [UInt8], nextStep: Int)?
    var result: (completed: Bool, error: String?)?
    var finalState: [UInt8] = []
    var redone = 0

    // The workers.
    final class WorkerProcess {
        let machine: WorkerMachine
        let compute = SimCompute()
        var alive = true
        var conn: Int?
        var ended: String?  // "finished", or why it failed
        var wake: Double?
        var partitionedUntil = 0.0
        var stalledUntil = 0.0
        var heldUntil: Double { max(partitionedUntil, stalledUntil) }
        var appliedSteps: [UInt64] = []
        var running: UInt64?
        init(machine: WorkerMachine) { self.machine = machine }
    }
    var workers: [WorkerProcess?] = []

    // Faults.
    var pendingFaults: [Fault]
    var deliveries = 0
    var peerDeliveries = 0
    var faultPositions: [String] = []
    var violations: [String] = []
    var nextDeliveryDescription = ""

    public init(scenario: Scenario, seed: UInt64, keepTrace: Bool = false) {
        self.scenario = scenario
        self.seed = seed
        self.keepTrace = keepTrace
        rng = SimRandom(seed: seed)
        config = SimulationJob.config(steps: scenario.steps)
        var timeouts = ClusterTimeouts()
        timeouts.joinSeconds = 30
        timeouts.roundSeconds = 30
        timeouts.rejoinSeconds = 60
        timeouts.connectSeconds = 30
        self.timeouts = timeouts
        deadline = 3600
        pendingFaults = scenario.faults.sorted { $0.atDelivery < $1.atDelivery }
    }

    func log(_ line: @autoclosure () -> String) {
        if keepTrace { trace.append(String(format: "%9.4f ", now) + line()) }
    }

    // MARK: Running

    public func run() -> Outcome {
        startCoordinator()
        for w in 0..<scenario.workers { startWorker(w) }
        var events = 0
        while let (time, _, event) = popEvent() {
            if time > deadline {
                violations.append("hang: no end after \(Int(deadline)) simulated seconds (at \(coordinator?.machine.nextStep ?? -1) steps)")
                break
            }
            now = max(now, time)
            events += 1
            if events > 2_000_000 { violations.append("hang: over 2,000,000 events"); break }
            dispatch(event)
            if result != nil, queueIsQuiet() { break }
        }
        if result == nil, violations.isEmpty { violations.append("hang: the run stopped with nothing left to do (no outcome)") }
        checkInvariants()
        for w in workers.compactMap({ $0 }) {
            _ = w.compute.run(.exit)
            w.compute.network = nil  // the network's step context holds its collective: break the cycle
        }
        return Outcome(seed: seed, completed: result?.completed ?? false, error: result?.error, finalState: finalState, checkpoint: checkpoint,
                       deliveries: deliveries, peerDeliveries: peerDeliveries, simulatedSeconds: now, faultPositions: faultPositions, violations: violations,
                       redoneSteps: redone, trace: trace)
    }

    /// After the coordinator's outcome: stop once only late timers are left.
    func queueIsQuiet() -> Bool {
        !queue.contains { entry in
            switch entry.event {
            case .toWorker, .toCoordinator, .toPeer, .connectionLost: return true
            default: return false
            }
        }
    }

    func schedule(_ event: Event, at time: Double) {
        seq += 1
        // A binary min-heap on (time, seq).
        queue.append((time, seq, event))
        var i = queue.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard before(queue[i], queue[parent]) else { break }
            queue.swapAt(i, parent)
            i = parent
        }
    }

    private func before(_ a: (time: Double, seq: Int, event: Event), _ b: (time: Double, seq: Int, event: Event)) -> Bool {
        a.time < b.time || (a.time == b.time && a.seq < b.seq)
    }

    func popEvent() -> (Double, Int, Event)? {
        guard !queue.isEmpty else { return nil }
        queue.swapAt(0, queue.count - 1)
        let top = queue.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < queue.count, before(queue[l], queue[m]) { m = l }
            if r < queue.count, before(queue[r], queue[m]) { m = r }
            if m == i { break }
            queue.swapAt(i, m)
            i = m
        }
        return top
    }

    func dispatch(_ event: Event) {
        switch event {
        case .toCoordinator(let id, let bytes):
            guard let conn = conns[id], let c = coordinator, conn.incarnation == c.incarnation, now < conn.brokenAt else { return }
            if conn.worker >= 0, let w = workers[conn.worker], w.heldUntil > now {
                schedule(event, at: w.heldUntil)  // in flight when the partition or stall began
                return
            }
            beforeDelivery("up \(position(bytes))")
            guard let c2 = coordinator, c2 === c else { return }  // a fault at this boundary killed it
            if let conn = conns[id], now >= conn.brokenAt { return }
            log("C <- \(id): \(describe(bytes))")
            coordinatorHandle(.received(from: identity(id), frame: bytes))
        case .toWorker(let w, let id, let bytes):
            guard let worker = workers[w], worker.alive, worker.conn == id, let conn = conns[id], now < conn.brokenAt else { return }
            if worker.heldUntil > now {
                schedule(event, at: worker.heldUntil)
                return
            }
            beforeDelivery("down \(position(bytes))")
            guard worker.alive, worker.conn == id, let conn2 = conns[id], now < conn2.brokenAt else { return }
            log("w\(w) <- \(describe(bytes))")
            guard let message = try? Message.decode(bytes) else {
                violations.append("worker \(w) received bytes it cannot decode")
                return
            }
            workerHandle(w, .received(message))
        case .toPeer(let from, let to, let bytes):
            guard let worker = workers[to], worker.alive else { return }
            if worker.heldUntil > now {
                schedule(event, at: worker.heldUntil)
                return
            }
            beforeDelivery("across \(position(bytes))")
            guard worker.alive else { return }
            log("w\(to) <- w\(from): \(describe(bytes))")
            peerDeliveries += 1
            computeOutputs(to, worker.compute.receivePeer(bytes))
        case .connectionLost(let w, let id):
            guard let worker = workers[w], worker.alive, worker.conn == id else { return }
            if worker.stalledUntil > now { schedule(event, at: worker.stalledUntil); return }
            log("w\(w): connection \(id) lost")
            workerHandle(w, .connectionLost)
        case .coordinatorTick(let incarnation):
            guard let c = coordinator, c.incarnation == incarnation else { return }
            if c.wake == now { c.wake = nil }  // this is the tick that was scheduled
            if let wake = c.machine.wakeup, now >= wake { coordinatorHandle(.tick) } else { scheduleCoordinatorWake() }
        case .workerTick(let w):
            guard let worker = workers[w], worker.alive else { return }
            if worker.stalledUntil > now { schedule(event, at: worker.stalledUntil); return }
            if worker.wake == now { worker.wake = nil }
            if let wake = worker.machine.wakeup, now >= wake { workerHandle(w, .tick) } else { scheduleWorkerWake(w) }
        case .startWorker(let w):
            startWorker(w)
        case .restartCoordinator:
            startCoordinator()
        case .partitionHealed:
            break
        }
    }

    func describe(_ bytes: [UInt8]) -> String {
        guard let m = try? Message.decode(bytes) else { return "garbage(\(bytes.count))" }
        switch m {
        case .partials(let s, let r, _, _, _, _, _, _, _): return "partials s\(s) \(short(r))"
        case .reduced(let s, let r, _, _, _): return "reduced s\(s) \(short(r))"
        case .peerPartials(let s, let e, _, let r, _, _, _, _): return "peer partials s\(s) e\(e) \(short(r))"
        case .peers(let e, let rank, let uses, _): return "peers e\(e) rank \(rank) uses \(uses.rawValue)"
        case .step(let s, let f, let n, _, _): return "step s\(s) [\(f)+\(n)]"
        case .reject(let why): return "reject (\(why.prefix(40)))"
        default: return "\(m.kind)"
        }
    }

    /// A message boundary as coverage counts it: the kind of message (and its round), not its step.
    func position(_ bytes: [UInt8]) -> String {
        guard let m = try? Message.decode(bytes) else { return "garbage" }
        switch m {
        case .partials(_, let r, _, _, _, _, _, _, _): return "partials \(short(r))"
        case .reduced(_, let r, _, _, _): return "reduced \(short(r))"
        case .peerPartials(_, _, _, let r, _, _, _, _): return "peer partials \(short(r))"
        default: return "\(m.kind)"
        }
    }

    func short(_ r: Round) -> String {
        switch r {
        case .moments(let l): return "m\(l)"
        case .sums(let l): return "s\(l)"
        case .gradients: return "g"
        case .metrics: return "metrics"
        case .observations: return "obs"
        }
    }

    func identity(_ id: Int) -> PeerIdentity { withUnsafeBytes(of: UInt32(id).littleEndian) { Array($0) } }
    func connID(_ identity: PeerIdentity) -> Int? {
        guard identity.count == 4 else { return nil }
        return Int(identity.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }.littleEndian)
    }

    // MARK: The network

    /// When a message sent now on `conn` arrives: after a random delay, never before the previous one on the
    /// same link (ZeroMQ keeps per-connection order), and not during a partition.
    func arrival(_ id: Int, up: Bool, worker: Int) -> Double {
        var delay = rng.double(0...scenario.maxDelay)
        if rng.chance(scenario.slowFraction) { delay *= 50 }
        var t = now + delay
        if worker >= 0, let w = workers[worker], w.heldUntil > now { t = max(t, w.heldUntil + delay) }
        if up { t = max(t, conns[id]!.lastUp); conns[id]!.lastUp = t } else { t = max(t, conns[id]!.lastDown); conns[id]!.lastDown = t }
        return t
    }

    func workerSend(_ w: Int, _ bytes: [UInt8]) {
        guard let id = workers[w]?.conn, var conn = conns[id], !conn.closed(at: now) else { return }
        conn.lastSent = bytes
        conns[id] = conn
        if conn.incarnation == nil {
            conns[id]!.held.append(bytes)
            return
        }
        schedule(.toCoordinator(conn: id, bytes: bytes), at: arrival(id, up: true, worker: w))
    }

    /// Sends `bytes` from worker `w` to the worker listening at `endpoint` (`sim://wN`: slot N), after a random
    /// delay, in order on the link, and not while the sender is held.
    func peerSend(_ w: Int, to endpoint: String, _ bytes: [UInt8]) {
        guard endpoint.hasPrefix("sim://w"), let to = Int(endpoint.dropFirst("sim://w".count)) else {
            violations.append("worker \(w) sent to another worker at \(endpoint), not a simulated worker's endpoint")
            return
        }
        var delay = rng.double(0...scenario.maxDelay)
        if rng.chance(scenario.slowFraction) { delay *= 50 }
        var t = now + delay
        if let sender = workers[w], sender.heldUntil > now { t = max(t, sender.heldUntil + delay) }
        t = max(t, peerLinks[[w, to]] ?? 0)
        peerLinks[[w, to]] = t
        schedule(.toPeer(from: w, to: to, bytes: bytes), at: t)
    }

    // MARK: The coordinator

    func startCoordinator() {
        incarnations += 1
        let machine = CoordinatorMachine(config: config, data: SimulationJob.data, workerCount: scenario.workers, minWorkers: scenario.minWorkers,
                                         timeouts: timeouts, batchNormExchange: scenario.batchNormExchange, endpoint: "sim://coordinator", initialPeerEpoch: UInt32(truncatingIfNeeded: rng.next() >> 33),
                                         logger: Logger(label: "sim", factory: { _ in SwiftLogNoOpLogHandler() }))
        if let checkpoint = checkpoint ?? scenario.resumeFrom {
            try! machine.resume(from: Safetensors.decode(checkpoint.state, source: "checkpoint"), nextStep: checkpoint.nextStep, source: "checkpoint")
        }
        let c = CoordinatorProcess(machine: machine, incarnation: incarnations)
        coordinator = c
        log("coordinator \(incarnations) up at step \(machine.nextStep)")
        // Connections opened while no coordinator was up reach this one now.
        for id in conns.keys.sorted() where conns[id]!.incarnation == nil && !conns[id]!.closed(at: now) {
            conns[id]!.incarnation = c.incarnation
            let held = conns[id]!.held
            conns[id]!.held = []
            for bytes in held { schedule(.toCoordinator(conn: id, bytes: bytes), at: arrival(id, up: true, worker: conns[id]!.worker)) }
        }
        execute(machine.admit(now: now))
    }

    func coordinatorHandle(_ event: CoordinatorEvent) {
        guard let c = coordinator else { return }
        execute(c.machine.handle(event, now: now))
    }

    /// Carries the actions out like the ZeroMQ driver: in order; failed sends are reported afterwards.
    func execute(_ initial: [CoordinatorAction]) {
        guard let c = coordinator else { return }
        var actions = initial
        var outcomes: [CoordinatorAction] = []
        while !actions.isEmpty {
            var closed: [PeerIdentity] = []
            for action in actions {
                switch action {
                case .send(let to, let bytes):
                    guard let id = connID(to), let conn = conns[id], conn.incarnation == c.incarnation, !conn.closed(at: now) else {
                        if !closed.contains(to) { closed.append(to) }
                        continue
                    }
                    log("C -> \(id): \(describe(bytes))")
                    if conn.worker >= 0 { schedule(.toWorker(worker: conn.worker, conn: id, bytes: bytes), at: arrival(id, up: false, worker: conn.worker)) }
                default:
                    outcomes.append(action)
                }
            }
            actions = closed.flatMap { c.machine.handle(.unreachable($0), now: now) }
        }
        for outcome in outcomes {
            guard coordinator === c else { return }
            switch outcome {
            case .admitted:
                c.training = true
                beginStep(c)
            case .stepCompleted:
                let step = c.machine.nextStep
                _ = c.machine.commitStep()
                if let last = c.commits.last, step != last + 1 { violations.append("coordinator committed step \(step + 1) after step \(last + 1)") }
                c.commits.append(step)
                log("C committed step \(step)")
                if scenario.checkpointEvery > 0, (step + 1) % scenario.checkpointEvery == 0, step + 1 < config.steps {
                    checkpoint = (Safetensors.encode(c.machine.network.trainingState()), step + 1)
                }
                beginStep(c)
            case .stepSkipped:
                violations.append("step \(c.machine.nextStep) skipped for non-finite values")
                beginStep(c)
            case .failed(let reason):
                log("C failed: \(reason)")
                checkpoint = (Safetensors.encode(c.machine.network.trainingState()), c.machine.nextStep)
                finalState = checkpoint!.state
                redone += c.machine.redoneSteps
                result = (false, reason)
                execute(c.machine.finish(failure: reason))
                return
            default:
                break
            }
        }
        scheduleCoordinatorWake()
    }

    func beginStep(_ c: CoordinatorProcess) {
        let step = c.machine.nextStep
        if step >= config.steps {
            finalState = Safetensors.encode(c.machine.network.trainingState())
            redone += c.machine.redoneSteps
            result = (true, nil)
            log("C finished")
            execute(c.machine.finish())
            return
        }
        let next = step + 1 < config.steps ? SimulationJob.input(step + 1, config: config) : nil
        execute(c.machine.beginStep(SimulationJob.input(step, config: config), next: next, now: now))
    }

    func scheduleCoordinatorWake() {
        guard let c = coordinator, let wake = c.machine.wakeup, c.wake != wake else { return }
        c.wake = wake
        schedule(.coordinatorTick(incarnation: c.incarnation), at: max(now, wake))
    }

    func killCoordinator(restartAfter delay: Double) {
        guard let c = coordinator else { return }
        log("fault: coordinator \(c.incarnation) killed")
        redone += c.machine.redoneSteps
        coordinator = nil
        let closeDelay = rng.chance(0.5) ? 0.001 : timeouts.heartbeatTimeoutSeconds
        for id in conns.keys.sorted() where conns[id]!.incarnation == c.incarnation && !conns[id]!.closed(at: now) {
            conns[id]!.brokenAt = now
            let w = conns[id]!.worker
            if w >= 0 { schedule(.connectionLost(worker: w, conn: id), at: now + closeDelay) }
        }
        schedule(.restartCoordinator, at: now + max(0.01, delay))
    }

    // MARK: Workers

    func startWorker(_ w: Int) {
        while workers.count <= w { workers.append(nil) }
        // Workers say they have 1, 2 or 3 threads, so that the coordinator hands out unequal shares of the batch.
        let endpoint = scenario.batchNormExchange == .auto ? "sim://w\(w)" : ""
        let hello = Message.hello(peer: "sim worker \(w)", peerEndpoint: endpoint, blasKernel: BLAS.kernelName, threads: UInt16(1 + w % 3)).encoded()
        let worker = WorkerProcess(machine: WorkerMachine(hello: hello, endpoint: "sim://coordinator", timeouts: timeouts))
        worker.compute.sendsAsItGoes = scenario.sendsBatchNormPartialsAsItGoes
        workers[w] = worker
        log("w\(w) starts")
        executeWorker(w, worker.machine.start(now: now))
    }

    func workerHandle(_ w: Int, _ event: WorkerEvent) {
        guard let worker = workers[w], worker.alive else { return }
        executeWorker(w, worker.machine.handle(event, now: now))
    }

    func executeWorker(_ w: Int, _ actions: [WorkerAction]) {
        guard let worker = workers[w] else { return }
        for action in actions {
            guard worker.alive else { return }
            switch action {
            case .connect:
                if let old = worker.conn { conns[old]!.closedAt = min(conns[old]!.closedAt, now) }
                let id = nextConn
                nextConn += 1
                conns[id] = Conn(worker: w, incarnation: coordinator?.incarnation)
                worker.conn = id
                log("w\(w) connects as \(id)")
                executeWorker(w, worker.machine.handle(.connected, now: now))
            case .send(let bytes):
                workerSend(w, bytes)
            case .join(_, _, let configJSON, let state):
                do {
                    let config = try JSONDecoder().decode(TrainingConfig.self, from: Data(configJSON))
                    let network = config.makeNetwork()
                    try network.loadTrainingState(Safetensors.decode(state, source: "welcome"), source: "welcome")
                    worker.compute.network = network
                    worker.compute.config = config
                    worker.compute.table = nil  // a new session: its tables follow
                    worker.appliedSteps = []  // the welcome's state replaces the replica
                } catch {
                    violations.append("worker \(w) cannot read its welcome: \(error)")
                }
            case .startStep(let message):
                if case .step(let s, _, _, _, _) = message { worker.running = s }
                computeOutputs(w, worker.compute.run(.start(message)))
            case .deliver(let message):
                computeOutputs(w, worker.compute.run(.result(message)))
            case .abandonStep:
                worker.running = nil
                computeOutputs(w, worker.compute.run(.abandon))
            case .takePeers(let epoch, let rank, let uses, let endpoints):
                if uses.contains(.gradients) { violations.append("worker \(w) got a table for the gradient round, which is not simulated") }
                worker.compute.table = uses.isEmpty ? nil : PeerTable(epoch: epoch, uses: uses, rank: Int(rank), endpoints: endpoints)
            case .finish:
                worker.ended = "finished"
                log("w\(w) finished")
                endWorker(w)
            case .fail(let reason):
                // A member (not declared dead) must never give up on a coordinator that is up and not stuck.
                if reason.contains("stuck"), let c = coordinator, let id = worker.conn, c.machine.memberIdentities.contains(identity(id)) {
                    violations.append("worker \(w), a member, gave up on a coordinator that was not stuck: \(reason)")
                }
                worker.ended = reason
                log("w\(w) failed: \(reason)")
                endWorker(w)
            }
        }
        scheduleWorkerWake(w)
    }

    func computeOutputs(_ w: Int, _ outputs: [SimCompute.Output]) {
        guard let worker = workers[w] else { return }
        for output in outputs {
            switch output {
            case .send(let bytes):
                workerSend(w, bytes)
            case .sendPeer(let endpoint, let bytes):
                peerSend(w, to: endpoint, bytes)
            case .droppedPeerMessage(let reason):
                // Not a violation: a hello duplicated by a reconnecting DEALER makes a ghost member with the same
                // endpoint, so a worker can get its own partials; the ghost's loss redoes the step.
                log("w\(w) dropped a message from another worker: \(reason)")
            case .awaiting(let step, let round, let width, let element):
                executeWorker(w, worker.machine.handle(.awaiting(step: step, round: round, resultWidth: width, element: element), now: now))
            case .finished:
                if let s = worker.running {
                    if let last = worker.appliedSteps.last, s <= last { violations.append("worker \(w) applied step \(s + 1) after step \(last + 1)") }
                    worker.appliedSteps.append(s)
                }
                worker.running = nil
                executeWorker(w, worker.machine.handle(.stepFinished, now: now))
            case .abandoned:
                break
            case .failed(let reason):
                violations.append("worker \(w)'s compute failed: \(reason)")
            }
        }
    }

    func endWorker(_ w: Int) {
        guard let worker = workers[w] else { return }
        worker.alive = false
        if let id = worker.conn { conns[id]!.closedAt = min(conns[id]!.closedAt, now) }
        _ = worker.compute.run(.exit)
    }

    func scheduleWorkerWake(_ w: Int) {
        guard let worker = workers[w], worker.alive, let wake = worker.machine.wakeup, worker.wake != wake else { return }
        worker.wake = wake
        schedule(.workerTick(worker: w), at: max(now, wake))
    }

    // MARK: Faults

    /// Called just before each delivery: puts the faults of this message boundary in.
    func beforeDelivery(_ what: @autoclosure () -> String) {
        defer { deliveries += 1 }
        while let fault = pendingFaults.first, fault.atDelivery <= deliveries {
            pendingFaults.removeFirst()
            faultPositions.append("\(fault.kind.rawValue) @ \(what())")
            inject(fault)
        }
    }

    func inject(_ fault: Fault) {
        let w = fault.worker
        let target = w < workers.count ? workers[w] : nil
        log("fault: \(fault)")
        switch fault.kind {
        case .killWorker, .freezeWorker:
            guard let worker = target, worker.alive else { return }
            worker.alive = false
            worker.ended = "killed"
            _ = worker.compute.run(.exit)
            if let id = worker.conn {
                let closeDelay = fault.kind == .killWorker ? 0.001 : timeouts.heartbeatTimeoutSeconds
                conns[id]!.closedAt = min(conns[id]!.closedAt, now + closeDelay)
            }
            if fault.duration > 0 {
                // A new worker process later, in a slot of its own (two restarts must not share one).
                let slot = workers.count
                workers.append(nil)
                schedule(.startWorker(worker: slot), at: now + fault.duration)
            }
        case .dropConnection:
            guard let worker = target, worker.alive, let id = worker.conn else { return }
            conns[id]!.brokenAt = min(conns[id]!.brokenAt, now)
            schedule(.connectionLost(worker: w, conn: id), at: now + rng.double(0.0005...0.05))
        case .partition:
            guard let worker = target, worker.alive else { return }
            worker.partitionedUntil = now + fault.duration
            if fault.duration > timeouts.heartbeatTimeoutSeconds, let id = worker.conn {
                conns[id]!.brokenAt = min(conns[id]!.brokenAt, now + timeouts.heartbeatTimeoutSeconds)
                schedule(.connectionLost(worker: w, conn: id), at: now + timeouts.heartbeatTimeoutSeconds)
            }
        case .stall:
            guard let worker = target, worker.alive else { return }
            worker.stalledUntil = now + fault.duration
        case .duplicate:
            guard let worker = target, let id = worker.conn, let bytes = conns[id]?.lastSent, let c = coordinator else { return }
            // The abandoned socket's connection closes soon after it delivered.
            let ghost = nextConn
            nextConn += 1
            conns[ghost] = Conn(worker: -1, incarnation: c.incarnation)
            let t = arrival(ghost, up: true, worker: -1)
            conns[ghost]!.closedAt = t + rng.double(0.001...0.5)
            schedule(.toCoordinator(conn: ghost, bytes: bytes), at: t)
        case .killCoordinator:
            killCoordinator(restartAfter: fault.duration)
        case .interruptCoordinator:
            // As `syncbn coordinator` does on SIGINT: a checkpoint of the step it is at, workers left to rejoin.
            guard let c = coordinator else { return }
            checkpoint = (Safetensors.encode(c.machine.network.trainingState()), c.machine.nextStep)
            _ = c.machine.finish(failure: "interrupted", releaseWorkers: false)
            killCoordinator(restartAfter: fault.duration)
        case .lateJoin:
            startWorker(workers.count)
        case .hostile:
            guard let c = coordinator else { return }
            let stranger = nextConn
            nextConn += 1
            conns[stranger] = Conn(worker: -1, incarnation: c.incarnation)
            for _ in 0..<rng.int(1...25) {
                schedule(.toCoordinator(conn: stranger, bytes: hostileFrame()), at: arrival(stranger, up: true, worker: -1))
            }
        }
    }

    /// Garbage, a truncated or bit-flipped real message, or a well-formed message out of place.
    func hostileFrame() -> [UInt8] {
        let samples: [Message] = [
            .partials(step: UInt64(coordinator?.machine.nextStep ?? 0), round: .moments(layer: 0), firstChunk: 0, chunkCount: 1, width: 200, element: .float64,
                      payload: ArraySlice(repeating: 0, count: 1600)),
            .reduced(step: 0, round: .gradients, width: 1, element: .float32, payload: [0, 0, 0, 0]),
            .stop, .ping, .failure(reason: "hostile"), .gradientShard(step: 0, epoch: 1, from: 0, shardOffset: 0, shardWidth: 1, payload: [0, 0, 128, 127]),
        ]
        var bytes = samples[rng.int(0..<samples.count)].encoded()
        switch rng.int(0..<4) {
        case 0: return (0..<rng.int(0...64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        case 1: bytes = Array(bytes.prefix(rng.int(0...bytes.count)))
        case 2: if !bytes.isEmpty { bytes[rng.int(0..<bytes.count)] ^= UInt8(1 << rng.int(0..<8)) }
        default: break
        }
        return bytes
    }

    // MARK: Invariants

    func checkInvariants() {
        guard let result else { return }
        let reference = SimulationJob.reference(steps: config.steps)
        if result.completed {
            if finalState != reference { violations.append("the final model differs from the undisturbed reference") }
            // Every worker still a member at the end took every step: its replica is the coordinator's.
            for (w, worker) in workers.enumerated() {
                guard let worker, worker.ended == "finished", let net = worker.compute.network else { continue }
                if Safetensors.encode(net.trainingState()) != finalState { violations.append("worker \(w)'s replica differs from the coordinator's at the end") }
            }
        }
        if !result.completed {
            let reason = result.error ?? ""
            if !(reason.contains("workers joined within") || reason.contains("--min-workers")) {
                violations.append("the coordinator failed for a reason other than too few workers: \(reason)")
            }
        }
    }

    /// Runs `scenario` with `seed` and, when the coordinator gave up for lack of workers, resumes its
    /// checkpoint without faults: the resumed run must end with the reference bits.
    public static func check(_ scenario: Scenario, seed: UInt64, keepTrace: Bool = false) -> Outcome {
        var outcome = Simulation(scenario: scenario, seed: seed, keepTrace: keepTrace).run()
        if !outcome.completed, outcome.violations.isEmpty, let checkpoint = outcome.checkpoint {
            var resumed = Scenario(workers: scenario.workers, steps: scenario.steps, checkpointEvery: 0)
            resumed.resumeFrom = checkpoint
            resumed.batchNormExchange = scenario.batchNormExchange
            resumed.sendsBatchNormPartialsAsItGoes = scenario.sendsBatchNormPartialsAsItGoes
            let second = Simulation(scenario: resumed, seed: seed &+ 1).run()
            if !second.completed { outcome.violations.append("the checkpoint saved on failure did not resume: \(second)") }
            outcome.violations += second.violations.map { "after resuming: " + $0 }
        }
        return outcome
    }

    /// `check` of `scenario(seed)` (`Scenario.random(seed:)`) for every seed, on every core; outcomes in seed order.
    public static func checkMany(seeds: Range<UInt64>, threads: Int = ProcessInfo.processInfo.activeProcessorCount,
                                 scenario: @escaping @Sendable (UInt64) -> Scenario = { Scenario.random(seed: $0) }) -> [(UInt64, Outcome)] {
        let lock = NSLock()
        var outcomes: [(UInt64, Outcome)] = []
        let lanes = max(1, min(threads, seeds.count))
        DispatchQueue.concurrentPerform(iterations: lanes) { lane in
            var seed = seeds.lowerBound + UInt64(lane)
            while seed < seeds.upperBound {
                let outcome = check(scenario(seed), seed: seed)
                lock.lock()
                outcomes.append((seed, outcome))
                lock.unlock()
                seed += UInt64(lanes)
            }
        }
        return outcomes.sorted { $0.0 < $1.0 }
    }
}
