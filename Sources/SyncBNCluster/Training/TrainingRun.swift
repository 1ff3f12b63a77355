import Foundation
import Logging
import SyncBNCore

/// The outer training loop shared by `syncbn train` and the coordinator: data order, metrics, evaluation,
/// progress and the saved model. The step itself is the runner's.
public final class TrainingRun {
    public struct Summary: Sendable {
        public var steps: Int
        public var test: StepMetrics
        public var medianStepSeconds: Double
        public var modelPath: String?
    }

    let config: TrainingConfig
    let dataset: ImageDataset
    let runner: StepRunner
    let outputDirectory: String?
    let logger: Logger
    let progress: ProgressDisplay
    /// The first step to run: 0, or the step a resumed checkpoint continues from.
    let startStep: Int
    /// A checkpoint is written to the output directory every this many steps (0: never).
    let checkpointEvery: Int
    /// Asked before every step: true stops the run with `TrainingInterrupted` (a signal, say).
    public var shouldStop: () -> Bool = { false }
    /// Told `training` at the start and at every logged step.
    public var status: StatusReporter?
    /// The locked output directory: given by a command that locked it earlier, or locked at the start of `run`.
    var lockedOutput: OutputDirectory?

    public init(config: TrainingConfig, dataset: ImageDataset, runner: StepRunner, outputDirectory: String?, logger: Logger,
                startStep: Int = 0, checkpointEvery: Int = 0, lockedOutput: OutputDirectory? = nil) {
        self.lockedOutput = lockedOutput
        self.config = config
        self.dataset = dataset
        self.runner = runner
        self.outputDirectory = outputDirectory
        self.logger = logger
        self.startStep = startStep
        self.checkpointEvery = checkpointEvery
        progress = ProgressDisplay(logger: logger)
    }

    public func run() throws -> Summary {
        let order = BatchOrder(sampleCount: dataset.train.count, batchSize: config.plan.batchSize, shuffle: config.shuffle, seed: config.seed)
        var log: RunLog?
        if let outputDirectory {
            if lockedOutput?.path != outputDirectory { lockedOutput = try OutputDirectory(outputDirectory) }
            log = try RunLog(directory: outputDirectory, startStep: startStep)
        }
        defer { log?.close() }

        var permutations: [Int: [Int]] = [:]  // this epoch's and the next one's
        /// Whether the test set is evaluated after `step`: every evaluateEvery steps and after the last.
        func evaluates(_ step: Int) -> Bool { step == config.steps - 1 || (step + 1) % config.evaluateEvery == 0 }
        /// What step `step` trains on.
        func input(_ step: Int) -> StepInput {
            let epoch = step / order.stepsPerEpoch
            if permutations[epoch] == nil {
                permutations = permutations.filter { $0.key >= epoch - 1 }
                permutations[epoch] = order.permutation(epoch: epoch)
            }
            return StepInput(step: step, epoch: epoch, samples: order.samples(step: step, permutation: permutations[epoch]!),
                             computeMetrics: evaluates(step) || (step + 1) % config.logEvery == 0)
        }
        var stepSeconds: [Double] = []
        stepSeconds.reserveCapacity(min(config.steps, 1 << 16))
        var lastTest = StepMetrics(loss: .nan, accuracy: .nan)
        let started = Date()
        func reportTraining(step: Int) {
            var training = RunStatus(.training)
            (training.step, training.steps, training.workers) = (step, config.steps, runner.clusterStatus?.liveWorkers)
            status?.report(training)
        }
        reportTraining(step: startStep)
        for step in startStep..<max(startStep, config.steps) {
            if shouldStop() { throw TrainingInterrupted(nextStep: step) }
            let isLast = step == config.steps - 1
            let evaluate = evaluates(step)

            let t0 = DispatchTime.now().uptimeNanoseconds
            let metrics = try runner.runStep(input(step), next: isLast ? nil : input(step + 1))
            stepSeconds.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            if checkpointEvery > 0, (step + 1) % checkpointEvery == 0, step + 1 < config.steps, let outputDirectory {
                try TrainingCheckpoint.save(runner.network, config: config, nextStep: step + 1, directory: outputDirectory)
            }

            guard let metrics else {
                progress.update(step: step + 1, of: config.steps, loss: nil, samplesPerSecond: rate(step + 1 - startStep, started), elapsed: -started.timeIntervalSinceNow)
                continue
            }
            guard metrics.loss.isFinite else {
                throw TrainingError("the loss became \(metrics.loss) at step \(step + 1): lower --lr or check the data")
            }
            if evaluate { lastTest = runner.network.evaluate(dataset.test, normalization: config.pipeline.normalization) }
            if let log {
                let logged = LoggedStep(metrics: metrics, test: evaluate ? lastTest : nil, learningRate: Double(config.learningRate(atStep: step)),
                                        stepSeconds: stepSeconds.last ?? 0, samplesPerSecond: rate(step + 1 - startStep, started),
                                        cluster: runner.clusterStatus, network: runner.network)
                try log.write(step: step + 1, epoch: Double(step + 1) / Double(order.stepsPerEpoch), scalars: logged.scalars, histograms: logged.histograms)
            }
            reportTraining(step: step + 1)
            progress.update(step: step + 1, of: config.steps, loss: metrics.loss, samplesPerSecond: rate(step + 1 - startStep, started), elapsed: -started.timeIntervalSinceNow)
            if evaluate {
                progress.log("step \(step + 1)/\(config.steps): loss \(format(metrics.loss)), test loss \(format(lastTest.loss)), test accuracy \(format(lastTest.accuracy))")
            }
        }
        progress.finish()

        var modelPath: String?
        if let outputDirectory {
            let path = (outputDirectory as NSString).appendingPathComponent("model.safetensors")
            try runner.network.saveModel(to: path, metadata: config.pipeline.normalization.map { [Network.normalizationMetadataKey: $0.description] } ?? [:])
            modelPath = path
        }
        if lastTest.loss.isNaN { lastTest = runner.network.evaluate(dataset.test, normalization: config.pipeline.normalization) }
        let median = stepSeconds.isEmpty ? 0 : stepSeconds.sorted()[stepSeconds.count / 2]
        return Summary(steps: config.steps, test: lastTest, medianStepSeconds: median, modelPath: modelPath)
    }

    private func rate(_ steps: Int, _ started: Date) -> Double {
        Double(steps * config.plan.batchSize) / max(1e-9, -started.timeIntervalSinceNow)
    }
}

func format(_ x: Double) -> String { String(format: "%.4f", x) }

/// A run stopped at a step boundary on request; `nextStep` is the first step not run.
public struct TrainingInterrupted: Error {
    public let nextStep: Int
}

public struct TrainingError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
