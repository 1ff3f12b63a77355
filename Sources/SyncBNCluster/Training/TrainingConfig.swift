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

    public init(model: ModelSpec, plan: ChunkPlan, optimizer: SGD, seed: UInt64, steps: Int, shuffle: Bool, logEvery: Int, evaluateEvery: Int) {
        self.model = model
        self.plan = plan
        self.optimizer = optimizer
        self.seed = seed
        self.steps = steps
        self.shuffle = shuffle
        self.logEvery = logEvery
        self.evaluateEvery = evaluateEvery
    }

    /// A fresh replica: initial weights drawn from `seed`, the same in every process.
    public func makeNetwork() -> Network {
        Network(spec: model, plan: plan, optimizer: optimizer, seed: seed)
    }
}

/// Runs one global training step, alone or through workers.
public protocol StepRunner: AnyObject {
    /// The replica whose state is saved and evaluated.
    var network: Network { get }
    /// Trains on the global batch made of `samples` (training-set indices, in batch order).
    func runStep(_ step: Int, samples: ArraySlice<Int>, computeMetrics: Bool) throws -> StepMetrics?
}

/// The reference: one process computes every chunk of every batch, reducing locally.
public final class LocalStepRunner: StepRunner {
    public let network: Network
    private let data: LabeledImages
    private let collective: LocalCollective

    public init(network: Network, data: LabeledImages) {
        self.network = network
        self.data = data
        collective = LocalCollective(plan: network.plan)
    }

    public func runStep(_ step: Int, samples: ArraySlice<Int>, computeMetrics: Bool) throws -> StepMetrics? {
        let slice = BatchSlice.whole(network.plan)
        data.copyFeatures(of: Array(samples), into: network.input.storage)
        for (row, index) in samples.enumerated() { network.labels[row] = Int32(data.labels[index]) }
        return try network.trainStep(slice: slice, collective: collective, computeMetrics: computeMetrics)
    }
}
