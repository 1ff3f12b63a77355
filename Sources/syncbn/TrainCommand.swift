import ArgumentParser
import Foundation
import Logging
import SyncBNCluster
import SyncBNCore

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train in one process: the reference every distributed run must match bit for bit.",
        discussion: """
        On SIGINT or SIGTERM the run stops at the next step boundary, saves a checkpoint and prints the command
        that continues it (`syncbn train --resume DIR`), bit for bit; it exits with status 75.
        """)

    @OptionGroup var options: TrainingOptions
    @OptionGroup var checkpoints: CheckpointOptions
    @OptionGroup var status: StatusOptions

    @Option(help: "Threads that compute the batch's chunks (default: every core); the model's bytes do not depend on it.")
    var threads: Int?

    func validate() throws { try ThreadCount.check(threads) }

    func run() throws {
        let logger = makeLogger("syncbn.train")
        BLAS.useSingleThread()
        let interrupted = InterruptFlag()
        handleSignals { signal in
            if interrupted.set() { logger.warning("signal \(signal): stopping after the step under way, with a checkpoint") }
        }
        let reporter = try status.reporter()
        do {
            try reportingErrors(logger, status: reporter) { try train(logger: logger, interrupted: interrupted, status: reporter) }
        } catch where interrupted.isSet {
            throw ExitCode(CoordinatorCommand.interruptedExitCode)
        }
    }

    private func train(logger: Logger, interrupted: InterruptFlag, status: StatusReporter?) throws {
        let start = try options.start(resuming: checkpoints.resume)
        let (config, dataset, output, out) = (start.config, start.dataset, start.output, start.output.path)
        let network = config.makeNetwork()
        network.threads = ChunkThreads(threadCount: threads ?? ThreadCount.cores)
        if let checkpoint = start.checkpoint, let path = start.checkpointPath {
            try network.loadTrainingState(checkpoint.state, source: path)
            logger.info("resuming at step \(checkpoint.nextStep + 1) of \(config.steps) from \(path)")
        } else {
            try options.loadInitialModel(into: network)
        }
        let runner = LocalStepRunner(network: network, data: dataset.train, config: config)
        logger.info("training \(config.model.name) (--bn \(config.model.batchNorm.rawValue)) for \(config.steps) steps of \(config.plan.batchSize) samples in one process on \(network.threads.threadCount) thread(s)")
        let run = TrainingRun(config: config, dataset: dataset, runner: runner, outputDirectory: out, logger: logger,
                              startStep: start.checkpoint?.nextStep ?? 0, checkpointEvery: checkpoints.checkpointEvery, lockedOutput: output)
        run.shouldStop = { interrupted.isSet }
        run.status = status
        do {
            let summary = try run.run()
            var finished = summary.status()
            finished.setWakeups(runner.stepWakeups)
            status?.report(finished)
            logger.info("\(summary.report())")
        } catch let stop as TrainingInterrupted {
            let path = try TrainingCheckpoint.save(network, config: config, nextStep: stop.nextStep, directory: out)
            var ended = RunStatus(.interrupted)
            (ended.step, ended.steps, ended.checkpoint) = (stop.nextStep, config.steps, path)
            ended.resume = ["syncbn", "train", "--resume", out] + options.dataArguments
            status?.report(ended)
            throw TrainingError("interrupted before step \(stop.nextStep + 1) of \(config.steps); checkpoint saved to \(path); continue with: \(shellWords(["syncbn", "train", "--resume", out] + options.dataArguments))")
        }
    }
}
