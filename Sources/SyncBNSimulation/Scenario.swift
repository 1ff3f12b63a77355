import Foundation
import SyncBNCluster
import SyncBNCore

/// The scheduler's draws: the project's SplitMix64 (the same on every platform, so a seed replays exactly)
/// with the ranges a schedule needs.
public struct SimRandom {
    private var generator: SplitMix64
    public init(seed: UInt64) { generator = SplitMix64(seed: seed) }

    public mutating func next() -> UInt64 { generator.next() }

    public mutating func int(_ range: Range<Int>) -> Int { range.lowerBound + Int(next() % UInt64(range.count)) }
    public mutating func int(_ range: ClosedRange<Int>) -> Int { int(range.lowerBound ..< range.upperBound + 1) }
    public mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }
    public mutating func double(_ range: ClosedRange<Double>) -> Double { range.lowerBound + unit() * (range.upperBound - range.lowerBound) }
    public mutating func chance(_ p: Double) -> Bool { unit() < p }
}

/// What a fault does to the run.
public enum FaultKind: String, CaseIterable, Sendable {
    /// A worker dies: its connection resets at once (kill -9).
    case killWorker = "kill-worker"
    /// A worker freezes (SIGSTOP): its connection closes when heartbeats go unanswered.
    case freezeWorker = "freeze-worker"
    /// A worker's connection drops (a reset); the worker reconnects and rejoins.
    case dropConnection = "drop-connection"
    /// A worker is cut off for a while: a short partition only delays its messages (TCP retransmits), a long
    /// one closes its connection at the heartbeat timeout.
    case partition
    /// A worker stops answering for a while (a long compute, swapping) while ZeroMQ's I/O thread keeps its
    /// connection up: only the round timeout can tell.
    case stall
    /// A message a worker sent arrives a second time, from a new connection (a DEALER that reconnected).
    case duplicate
    /// The coordinator dies; it is restarted from its last checkpoint and the workers rejoin.
    case killCoordinator = "kill-coordinator"
    /// The coordinator is interrupted (SIGINT) mid-step: it saves a checkpoint of where it is, leaves the
    /// workers waiting, and is resumed from it.
    case interruptCoordinator = "interrupt-coordinator"
    /// A new worker joins.
    case lateJoin = "late-join"
    /// A stranger sends garbage or out-of-place messages.
    case hostile
}

/// A fault at a message boundary: just before the `atDelivery`-th delivery of the run.
public struct Fault: Sendable, CustomStringConvertible {
    public var kind: FaultKind
    public var atDelivery: Int
    /// The worker it hits (a slot index; ignored for the coordinator and strangers).
    public var worker: Int
    /// Partition length, restart delay, or how a killed worker comes back (seconds; 0: never).
    public var duration: Double

    public init(kind: FaultKind, atDelivery: Int, worker: Int = 0, duration: Double = 0) {
        self.kind = kind
        self.atDelivery = atDelivery
        self.worker = worker
        self.duration = duration
    }

    public var description: String { "\(kind.rawValue)@\(atDelivery) w\(worker)" + (duration > 0 ? String(format: " %.2fs", duration) : "") }
}

/// One simulated job: the cluster's shape and the faults to put in it.
public struct Scenario: Sendable {
    public var workers: Int
    public var minWorkers: Int
    public var steps: Int
    public var checkpointEvery: Int
    public var faults: [Fault]
    /// Largest delay of a message on its link (seconds); per-link order is kept.
    public var maxDelay: Double
    /// Fraction of messages delayed up to 50× longer (reordering across links).
    public var slowFraction: Double
    /// Start the coordinator from this checkpoint (training state, next step) instead of step 0.
    public var resumeFrom: (state: [UInt8], nextStep: Int)?
    /// `.auto`: workers listen for peers, and the BatchNorm rounds of a step with few enough workers run among them.
    public var batchNormExchange: BatchNormExchangeMode = .star
    /// Workers send the coordinator their partials of BatchNorm rounds among workers at once rather than with
    /// the gradient round (as they do once a step has run for over a second).
    public var sendsBatchNormPartialsAsItGoes = false

    public init(workers: Int, minWorkers: Int = 1, steps: Int, checkpointEvery: Int = 5, faults: [Fault] = [],
                maxDelay: Double = 0.002, slowFraction: Double = 0.05) {
        self.workers = workers
        self.minWorkers = minWorkers
        self.steps = steps
        self.checkpointEvery = checkpointEvery
        self.faults = faults
        self.maxDelay = maxDelay
        self.slowFraction = slowFraction
    }

    /// A random scenario from `seed`: 3–5 workers, one to three faults at random message boundaries of the
    /// first `deliveries` deliveries; BatchNorm rounds through the coordinator or, for half the seeds, among
    /// the workers when few enough are live.
    public static func random(seed: UInt64, steps: Int = 20, deliveries: Int = 1200) -> Scenario {
        var rng = SimRandom(seed: seed ^ 0x5EED_5EED_5EED_5EED)
        let workers = rng.int(3...5)
        var s = Scenario(workers: workers, minWorkers: rng.chance(0.3) ? workers - 1 : 1, steps: steps,
                         checkpointEvery: rng.int(3...7), maxDelay: rng.double(0.0001...0.005), slowFraction: rng.double(0...0.2))
        // The kinds of the first version, drawn from the seed's stream; kinds added later are drawn from a stream
        // of their own, so that a seed keeps its schedule (regression seeds stay what they were).
        let drawn: [FaultKind] = [.killWorker, .freezeWorker, .dropConnection, .partition, .stall, .duplicate, .killCoordinator, .lateJoin, .hostile]
        var later = SimRandom(seed: seed ^ 0x1A7E_4B1D_0000_0002)
        for _ in 0..<rng.int(1...3) {
            var kind = drawn[rng.int(0..<drawn.count)]
            if kind == .killCoordinator, later.chance(0.5) { kind = .interruptCoordinator }
            var duration = 0.0
            switch kind {
            case .partition: duration = rng.chance(0.5) ? rng.double(0.05...1.5) : rng.double(2.5...20)
            case .stall: duration = rng.chance(0.5) ? rng.double(0.05...5) : rng.double(25...45)
            case .killCoordinator, .interruptCoordinator: duration = rng.double(0.1...15)
            case .killWorker, .freezeWorker: duration = rng.chance(0.5) ? rng.double(0.5...30) : 0
            default: break
            }
            s.faults.append(Fault(kind: kind, atDelivery: rng.int(0..<deliveries), worker: rng.int(0..<workers), duration: duration))
        }
        s.faults.sort { $0.atDelivery < $1.atDelivery }
        // From a stream of its own too, so that the draws above are those of the seed's first version.
        var exchange = SimRandom(seed: seed ^ 0xB4_0000_0003)
        s.batchNormExchange = exchange.chance(0.5) ? .auto : .star
        s.sendsBatchNormPartialsAsItGoes = exchange.chance(0.3)
        return s
    }

    /// `random(seed:)`'s faults on a job of two workers whose BatchNorm rounds run between them: every round
    /// of a fault-free step goes worker to worker, and a loss hands them back to the coordinator.
    public static func randomPair(seed: UInt64) -> Scenario {
        var s = random(seed: seed)
        s.workers = 2
        s.minWorkers = 1
        s.faults = s.faults.map { var fault = $0; fault.worker %= 2; return fault }
        s.batchNormExchange = .auto
        return s
    }
}

/// The job every simulation trains: bn-mlp's architecture (3 × (Linear, BatchNorm, sigmoid), Linear, synchronized
/// BatchNorm: 7 rounds a step, 9 on logged steps) narrowed to 16 features so that thousands of runs fit in a
/// debug build's minutes, on a small slice of synthetic 4×4 images: a batch of 16 in 8 chunks of 2, metrics
/// and observations every 10 steps.
public enum SimulationJob {
    public static let features = 16

    public static func config(steps: Int) -> TrainingConfig {
        let model = try! ModelSpec(name: "bn-mlp-16", input: TensorShape([features]),
                                   layers: ModelSpec.mlp(inputs: features, hidden: [16, 16, 16], classes: 10))
        var config = TrainingConfig(model: model, plan: ChunkPlan(batchSize: 16, chunkSize: 2), optimizer: SGD(learningRate: 0.1, momentum: 0.9),
                                    seed: 7, steps: steps, shuffle: true, logEvery: 10, evaluateEvery: 1 << 30)
        config.schedule = .constant
        return config
    }

    public static let data: LabeledImages = {
        var rng = SimRandom(seed: 42)
        let count = 64
        let labels = (0..<count).map { _ in UInt8(rng.int(0..<10)) }
        let pixels = (0..<(count * features)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        return LabeledImages(count: count, featureSize: features, labels: labels, storage: .bytes(pixels))
    }()

    /// What step `step` of a run of `config` trains on (as `TrainingRun` decides it).
    static func input(_ step: Int, config: TrainingConfig) -> StepInput {
        let order = BatchOrder(sampleCount: data.count, batchSize: config.plan.batchSize, shuffle: config.shuffle, seed: config.seed)
        let epoch = step / order.stepsPerEpoch
        return StepInput(step: step, epoch: epoch, samples: order.samples(step: step, permutation: order.permutation(epoch: epoch)),
                         computeMetrics: step == config.steps - 1 || (step + 1) % config.logEvery == 0)
    }

    private static let lock = NSLock()
    nonisolated(unsafe) private static var references: [Int: [UInt8]] = [:]

    /// The training state after `steps` steps in one process (`LocalStepRunner`): the bits every run must end with.
    public static func reference(steps: Int) -> [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        if let state = references[steps] { return state }
        let config = config(steps: steps)
        let runner = LocalStepRunner(network: config.makeNetwork(), data: data, config: config)
        for step in 0..<steps { _ = try! runner.runStep(input(step, config: config), next: nil) }
        let state = Safetensors.encode(runner.network.trainingState())
        references[steps] = state
        return state
    }
}
