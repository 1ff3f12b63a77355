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

    @Option(help: "This coordinator's CurveZMQ secret key (from `syncbn keygen`): encrypts all traffic.")
    var secretKey: String?

    @Option(help: "File of the workers' public keys, one per line: only these workers may join.")
    var authorizedKeys: String?

    @Flag(help: "Allow binding a non-loopback address without keys (unauthenticated, unencrypted traffic).")
    var insecure = false

    @OptionGroup var options: TrainingOptions

    func validate() throws {
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1") }
        guard joinTimeout > 0, roundTimeout > 0 else { throw ValidationError("timeouts must be positive numbers of seconds") }
        guard (secretKey == nil) == (authorizedKeys == nil) else {
            throw ValidationError("--secret-key and --authorized-keys go together: give both to require keys, or neither")
        }
    }

    func run() throws {
        let logger = makeLogger("syncbn.coordinator")
        BLAS.useSingleThread()
        var timeouts = ClusterTimeouts()
        timeouts.joinSeconds = joinTimeout
        timeouts.roundSeconds = roundTimeout
        try reportingErrors(logger) {
            let security = try secretKey.map { try CoordinatorSecurity(secretKeyFile: $0, authorizedKeysFile: authorizedKeys!) }
            try runCoordinator(bind: bind, workers: workers, options: options, timeouts: timeouts, security: security,
                               allowInsecure: insecure, logger: logger)
        }
    }
}

/// Binds, admits the workers, trains, and tells the workers to stop (or why the job failed).
/// `prepare` sees the coordinator once it is bound, before any worker joins (`launch` starts its workers there).
func runCoordinator(bind: String, workers: Int, options: TrainingOptions, timeouts: ClusterTimeouts,
                    security: CoordinatorSecurity? = nil, allowInsecure: Bool = false, logger: Logger,
                    prepare: (Coordinator) throws -> Void = { _ in }) throws {
    let (config, dataset) = try options.resolve()
    let coordinator = try Coordinator(config: config, data: dataset.train, bind: bind, workerCount: workers,
                                      timeouts: timeouts, security: security, allowInsecure: allowInsecure, logger: logger)
    if security != nil { logger.info("CurveZMQ on: traffic encrypted, only authorized worker keys admitted") }
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
