import CSystemShims
import SyncBNCore

/// Everything that decides a training run's result. The coordinator sends it to every worker, so that a
/// worker needs nothing but the coordinator's address.
public struct TrainingConfig: Codable, Equatable, Sendable {
    public var model: ModelSpec
    public var plan: ChunkPlan
    public var optimizer: SGD
    public var seed: UInt64
    public var steps: Int
    public var shuffle: Bool
    /// Metrics are all-reduced and logged every `logEvery` steps (and on the last step).
    public var logEvery: Int
    /// The test set is evaluated every `evaluateEvery` steps (and after the last step).
    public var evaluateEvery: Int
    public var schedule: LearningRateSchedule
    /// Augmentation and normalization of the input (nil: neither).
    public var inputPipeline: InputPipeline?
    /// Consecutive samples of the global batch whose statistics each BatchNorm layer uses (nil: the whole
    /// batch, SyncBN). A multiple of the chunk size that divides the batch size.
    public var batchNormGroupSize: Int?

    public var pipeline: InputPipeline { inputPipeline ?? InputPipeline() }

    public init(model: ModelSpec, plan: ChunkPlan, optimizer: SGD, seed: UInt64, steps: Int, shuffle: Bool, logEvery: Int, evaluateEvery: Int,
                schedule: LearningRateSchedule = .constant) {
        self.schedule = schedule
        self.model = model
        self.plan = plan
        self.optimizer = optimizer
        self.seed = seed
        self.steps = steps
        self.shuffle = shuffle
        self.logEvery = logEvery
        self.evaluateEvery = evaluateEvery
    }

    /// The largest global batch and the most steps a job may have: far from any overflow of the sizes
    /// computed from them, and beyond any run this machine could do.
    public static let maximumBatchSize = 1 << 20
    public static let maximumSteps = 1_000_000_000

    /// Checks settings that did not come from the command line's own checks — a checkpoint's, or the ones a
    /// coordinator sent — before anything is sized from them.
    /// - Throws: `TrainingError` naming the first setting out of range.
    public func check() throws {
        func fail(_ what: String) -> TrainingError { TrainingError("the settings have \(what)") }
        guard plan.batchSize <= Self.maximumBatchSize else { throw fail("a batch of \(plan.batchSize) samples (at most \(Self.maximumBatchSize))") }
        guard (1...Self.maximumSteps).contains(steps) else { throw fail("\(steps) steps (1 to \(Self.maximumSteps))") }
        guard logEvery >= 1, evaluateEvery >= 1 else { throw fail("logEvery \(logEvery) and evaluateEvery \(evaluateEvery) (each at least 1)") }
        guard optimizer.learningRate.isFinite, optimizer.learningRate > 0 else { throw fail("learning rate \(optimizer.learningRate) (a positive number)") }
        guard optimizer.momentum.isFinite, optimizer.momentum >= 0, optimizer.momentum < 1 else { throw fail("momentum \(optimizer.momentum) (in [0, 1))") }
        if let size = batchNormGroupSize {
            guard size >= 1, size % plan.chunkSize == 0, plan.batchSize % size == 0 else {
                throw fail("BatchNorm groups of \(size) (a multiple of the chunk size \(plan.chunkSize) that divides the batch \(plan.batchSize))")
            }
        }
    }

    /// The learning rate of step `step` (0-based): the same on the coordinator and every worker.
    public func learningRate(atStep step: Int) -> Float {
        schedule.rate(base: optimizer.learningRate, step: step, of: steps)
    }

    /// A fresh replica: initial weights drawn from `seed`, the same in every process.
    public func makeNetwork() -> Network {
        Network(spec: model, plan: plan, optimizer: optimizer, seed: seed, batchNormGroupSize: batchNormGroupSize)
    }
}

/// One global step to run: its number, its batch (training-set indices, in batch order), and whether its
/// loss and accuracy are wanted.
public struct StepInput: Sendable {
    public let step: Int
    /// The epoch the step belongs to, which draws its augmentation.
    public let epoch: Int
    public let samples: ArraySlice<Int>
    public let computeMetrics: Bool

    public init(step: Int, epoch: Int = 0, samples: ArraySlice<Int>, computeMetrics: Bool) {
        self.step = step
        self.epoch = epoch
        self.samples = samples
        self.computeMetrics = computeMetrics
    }
}

/// Runs one global training step, alone or through workers.
public protocol StepRunner: AnyObject {
    /// The replica whose state is saved and evaluated; up to date whenever `runStep` returns.
    var network: Network { get }
    /// Trains on `input`'s batch. `next` is the step that follows, if any: a coordinator sends it to the
    /// workers as soon as this one's last round is done, before updating its own replica.
    func runStep(_ input: StepInput, next: StepInput?) throws -> StepMetrics?
    /// The workers taking part and the steps redone after losing one, so far; nil for a single process.
    var clusterStatus: ClusterStatus? { get }
}

extension StepRunner {
    public var clusterStatus: ClusterStatus? { nil }
}

/// A coordinator's membership as its logs report it.
public struct ClusterStatus: Sendable, Equatable {
    public var liveWorkers: Int
    /// Steps that had to be run again because a worker was lost during them.
    public var redoneSteps: Int
}

/// The reference: one process computes every chunk of every batch, reducing locally.
public final class LocalStepRunner: StepRunner {
    public let network: Network
    private let data: LabeledImages
    private let collective: LocalCollective
    private let learningRate: (Int) -> Float
    private let config: TrainingConfig
    /// CPU time and context switches of this process's steps, for its `finished` status.
    public private(set) var stepWakeups = StepWakeups()

    public init(network: Network, data: LabeledImages, config: TrainingConfig) {
        self.network = network
        self.config = config
        learningRate = config.learningRate(atStep:)
        self.data = data
        collective = LocalCollective(plan: network.plan, valuesPerRow: network.momentScales)
    }

    public func runStep(_ input: StepInput, next: StepInput?) throws -> StepMetrics? {
        try stepWakeups.count { try train(input, next: next) }
    }

    private func train(_ input: StepInput, next: StepInput?) throws -> StepMetrics? {
        let (step, samples) = (input.step, input.samples)
        let slice = BatchSlice.whole(network.plan)
        network.optimizer.learningRate = learningRate(step)
        config.pipeline.copyBatch(data, indices: samples, seed: config.seed, epoch: input.epoch, into: network.batchInput.storage)
        for (row, index) in samples.enumerated() { network.labels[row] = Int32(data.labels[index]) }
        if let next { Self.prefetch(data, samples: next.samples) }  // the next batch's samples arrive during this step
        var metrics = try network.trainStep(slice: slice, collective: collective, computeMetrics: input.computeMetrics, step: step,
                                            inputFromBatch: true)
        if metrics != nil { metrics?.observations = network.observationsOfWholeBatch() }
        return metrics
    }

    /// Starts bringing the stored features of `samples` into the caches (scattered over the data set, each
    /// would otherwise miss when the next step copies it).
    static func prefetch(_ data: LabeledImages, samples: ArraySlice<Int>) {
        let width = data.featureSize
        switch data.storage {
        case .bytes(let bytes):
            bytes.withUnsafeBytes { all in
                for index in samples where index >= 0 && (index + 1) * width <= all.count {
                    syncbn_prefetch(all.baseAddress! + index * width, UInt(width))
                }
            }
        case .floats(let values):
            values.withUnsafeBytes { all in
                for index in samples where index >= 0 && (index + 1) * width * 4 <= all.count {
                    syncbn_prefetch(all.baseAddress! + index * width * 4, UInt(width * 4))
                }
            }
        }
    }
}

/// How the learning rate changes over a run of S steps, from the base rate lr at step 0.
public enum LearningRateSchedule: String, Codable, Sendable, CaseIterable {
    /// lr throughout.
    case constant
    /// lr · (1 − s/S): down to 0 at the end, which steadies the final model.
    case linear
    /// lr · ½(1 + cos(π·s/S)).
    case cosine

    public func rate(base: Float, step: Int, of steps: Int) -> Float {
        let progress = Double(step) / Double(max(1, steps))
        switch self {
        case .constant: return base
        case .linear: return Float(Double(base) * (1 - progress))
        case .cosine: return Float(Double(base) * 0.5 * (1 + cos(Double.pi * progress)))
        }
    }
}

import CSystemShims
import Foundation
