import Foundation
import Logging
import SyncBNCore

/// Where a run starts from: its settings and data (a checkpoint's settings when resuming), that checkpoint,
/// and the locked output directory — all checked before anything is built.
public struct RunStart {
    public let config: TrainingConfig
    public let dataset: ImageDataset
    public let checkpoint: TrainingCheckpoint?
    public let checkpointPath: String?
    public let output: OutputDirectory

    public init(config: TrainingConfig, dataset: ImageDataset, checkpoint: TrainingCheckpoint?, checkpointPath: String?, output: OutputDirectory) {
        self.config = config
        self.dataset = dataset
        self.checkpoint = checkpoint
        self.checkpointPath = checkpointPath
        self.output = output
    }
}

/// A coordinator's whole job, and the policy every front end (`coordinator`, `launch`, a Swift program)
/// shares: bind; continue from the checkpoint if there is one, else start from `initialize`'s weights; admit
/// the workers; train; tell the workers to stop. Once training has begun, a failure or an interruption saves
/// a checkpoint first, and the error names it with the command that continues the run. An interrupted job
/// leaves its workers waiting to rejoin a resumed coordinator; a failed one releases them.
///
/// Reports its states through `status` (listening, training at each logged step, finished, interrupted or
/// failed), which is what scripts read.
public struct CoordinatorJob {
    public let start: RunStart
    public let bind: String
    public let workers: Int
    public let minWorkers: Int
    public let timeouts: ClusterTimeouts
    public let nonFinitePolicy: NonFinitePolicy
    public let gradientExchange: GradientExchangeMode
    public let batchNormExchange: BatchNormExchangeMode
    public let security: CoordinatorSecurity?
    public let allowInsecure: Bool
    public let checkpointEvery: Int
    public let logger: Logger
    public var status: StatusReporter?

    public init(start: RunStart, bind: String, workers: Int, minWorkers: Int, timeouts: ClusterTimeouts, nonFinitePolicy: NonFinitePolicy,
                gradientExchange: GradientExchangeMode, batchNormExchange: BatchNormExchangeMode, security: CoordinatorSecurity?, allowInsecure: Bool, checkpointEvery: Int,
                logger: Logger, status: StatusReporter? = nil) {
        self.start = start
        self.bind = bind
        self.workers = workers
        self.minWorkers = min(minWorkers, workers)
        self.timeouts = timeouts
        self.nonFinitePolicy = nonFinitePolicy
        self.gradientExchange = gradientExchange
        self.batchNormExchange = batchNormExchange
        self.security = security
        self.allowInsecure = allowInsecure
        self.checkpointEvery = checkpointEvery
        self.logger = logger
        self.status = status
    }

    /// Runs the job.
    /// - Parameters:
    ///   - initialize: sets the starting weights of a run that does not resume (e.g. `--init`).
    ///   - interrupted: asked between steps (and while waiting): true stops the job with a checkpoint.
    ///   - resumeCommand: the command that continues the job from a checkpoint in the given directory.
    ///   - prepare: sees the coordinator once it is bound, before any worker joins (`launch` starts its workers).
    /// - Throws: `CannotBind`, a setup error, or `ClusterError` naming the checkpoint and the command to continue.
    public func run(initialize: (Network) throws -> Void, interrupted: @escaping () -> Bool, resumeCommand: (String) -> [String],
                    prepare: (Coordinator) throws -> Void = { _ in }) throws -> TrainingRun.Summary {
        let (config, out) = (start.config, start.output.path)
        let coordinator: Coordinator
        do {
            coordinator = try Coordinator(config: config, data: start.dataset.train, bind: bind, workerCount: workers, minWorkers: minWorkers,
                                          timeouts: timeouts, nonFinitePolicy: nonFinitePolicy, gradientExchange: gradientExchange,
                                          batchNormExchange: batchNormExchange, security: security, allowInsecure: allowInsecure, logger: logger)
        } catch let error as CannotBind {
            var failed = RunStatus(.failed)
            (failed.error, failed.errorKind) = (error.description, .cannotBind)
            status?.report(failed)
            throw error
        }
        coordinator.abortReason = { interrupted() ? "interrupted" : nil }
        if security != nil { logger.info("CurveZMQ on: traffic encrypted, only authorized worker keys admitted") }
        var listening = RunStatus(.listening)
        listening.endpoint = coordinator.endpoint
        status?.report(listening)
        var training = false
        do {
            if let checkpoint = start.checkpoint, let path = start.checkpointPath {
                try coordinator.resume(from: checkpoint.state, nextStep: checkpoint.nextStep, source: path)
                logger.info("resuming at step \(checkpoint.nextStep + 1) of \(config.steps) from \(path)")
            } else {
                try initialize(coordinator.network)
            }
            try prepare(coordinator)
            try coordinator.admitWorkers()
            logger.info("training \(config.model.name) (--bn \(config.model.batchNorm.rawValue)) for \(config.steps) steps of \(config.plan.batchSize) samples (\(config.plan.chunkCount) chunks) on \(workers) worker(s)")
            training = true
            let run = TrainingRun(config: config, dataset: start.dataset, runner: coordinator, outputDirectory: out, logger: logger,
                                  startStep: coordinator.nextStep, checkpointEvery: checkpointEvery, lockedOutput: start.output)
            run.shouldStop = interrupted
            run.status = status
            let summary = try run.run()
            coordinator.finish()
            var finished = summary.status(workers: workers)
            finished.setWakeups(coordinator.stepWakeups)
            logger.info("coordinator, per step: \(coordinator.stepWakeups.perStepDescription)")
            status?.report(finished)
            return summary
        } catch {
            let wasInterrupted = error is TrainingInterrupted || interrupted()
            var reason = error is TrainingInterrupted ? "interrupted" : "\(error)"
            var ended = RunStatus(wasInterrupted ? .interrupted : .failed)
            ended.step = coordinator.nextStep
            ended.steps = config.steps
            if training {
                let path = try TrainingCheckpoint.save(coordinator.network, config: config, nextStep: coordinator.nextStep, directory: out)
                reason += " before step \(coordinator.nextStep + 1) of \(config.steps); checkpoint saved to \(path); continue with: \(shellWords(resumeCommand(out)))"
                (ended.checkpoint, ended.resume) = (path, resumeCommand(out))
            }
            ended.error = reason
            status?.report(ended)
            // Interrupted: leave the workers waiting to rejoin a resumed coordinator.
            coordinator.finish(failure: reason, releaseWorkers: !interrupted())
            throw ClusterError(reason)
        }
    }
}

extension TrainingRun.Summary {
    /// The `finished` status of a run that ended normally.
    public func status(workers: Int? = nil) -> RunStatus {
        var status = RunStatus(.finished)
        status.step = steps
        status.steps = steps
        status.workers = workers
        status.testAccuracy = test.accuracy
        status.testLoss = test.loss
        status.medianStepSeconds = medianStepSeconds
        status.model = modelPath
        return status
    }
}

/// Words joined into a command line a POSIX shell reads back as the same words.
public func shellWords(_ words: [String]) -> String {
    words.map { word in
        word.allSatisfy({ $0.isLetter || $0.isNumber || "-_./:=,@+".contains($0) }) && !word.isEmpty ? word : "'" + word.replacingOccurrences(of: "'", with: "'\\''") + "'"
    }.joined(separator: " ")
}
