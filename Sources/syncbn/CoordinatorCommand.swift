import ArgumentParser
import Foundation
import Logging
import SyncBNCluster
import SyncBNCore

struct CoordinatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Run the coordinator: wait for N workers, then train with them.")

    @Option(help: "ZeroMQ address to bind, e.g. tcp://0.0.0.0:5555 or ipc:///tmp/syncbn.sock.")
    var bind = "tcp://127.0.0.1:5555"

    @Option(help: "Number of workers to wait for.")
    var workers: Int

    @Option(help: "Seconds to wait for all workers to join.")
    var joinTimeout: Double = 120

    @Option(help: "Seconds an all-reduce round may wait for the slowest worker.")
    var roundTimeout: Double = 120

    @OptionGroup var options: TrainingOptions

    func validate() throws {
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1") }
        guard joinTimeout > 0, roundTimeout > 0 else { throw ValidationError("timeouts must be positive numbers of seconds") }
    }

    func run() throws {
        let logger = makeLogger("syncbn.coordinator")
        BLAS.useSingleThread()
        var timeouts = ClusterTimeouts()
        timeouts.joinSeconds = joinTimeout
        timeouts.roundSeconds = roundTimeout
        try reportingErrors(logger) {
            try runCoordinator(bind: bind, workers: workers, options: options, timeouts: timeouts, logger: logger)
        }
    }
}

/// Binds, admits the workers, trains, and tells the workers to stop (or why the job failed).
/// `prepare` sees the coordinator once it is bound, before any worker joins (`launch` starts its workers there).
func runCoordinator(bind: String, workers: Int, options: TrainingOptions, timeouts: ClusterTimeouts, logger: Logger,
                    prepare: (Coordinator) throws -> Void = { _ in }) throws {
    let (config, dataset) = try options.resolve()
    let coordinator = try Coordinator(config: config, data: dataset.train, bind: bind, workerCount: workers,
                                      timeouts: timeouts, logger: logger)
    do {
        try options.loadInitialModel(into: coordinator.network)
        try prepare(coordinator)
        try coordinator.admitWorkers()
        logger.info("training \(config.model.name) (--bn \(config.model.batchNorm.rawValue)) for \(config.steps) steps of \(config.plan.batchSize) samples (\(config.plan.chunkCount) chunks) on \(workers) worker(s)")
        let summary = try TrainingRun(config: config, dataset: dataset, runner: coordinator, outputDirectory: options.out, logger: logger).run()
        coordinator.finish()
        logger.info("\(summary.report())")
    } catch {
        coordinator.finish(failure: "\(error)")
        throw error
    }
}
