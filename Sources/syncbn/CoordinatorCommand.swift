import ArgumentParser
import Foundation
import Logging
import SyncBNCluster
import SyncBNCore

struct CoordinatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Run the coordinator: wait for N workers, then train with them.",
        discussion: """
        Workers that die are dropped and their step is redone by the others; workers may join at any step.
        On SIGINT or SIGTERM the coordinator saves a checkpoint and exits with status 75, leaving its workers
        waiting to rejoin: `syncbn coordinator --resume DIR` continues, bit for bit.
        """)

    @Option(help: "ZeroMQ address to bind, e.g. tcp://0.0.0.0:5555 or ipc:///tmp/syncbn.sock.")
    var bind = "tcp://127.0.0.1:5555"

    @Option(help: "Number of workers to wait for before the first step.")
    var workers: Int

    @Option(help: "This coordinator's CurveZMQ secret key (from `syncbn keygen`): encrypts all traffic.")
    var secretKey: String?

    @Option(help: "File of the workers' public keys, one per line: only these workers may join.")
    var authorizedKeys: String?

    @Flag(help: "Allow binding a non-loopback address without keys (unauthenticated, unencrypted traffic).")
    var insecure = false

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var options: TrainingOptions

    func validate() throws {
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1") }
        _ = try parseEndpoint(bind, flag: "--bind", forBinding: true)
        guard (secretKey == nil) == (authorizedKeys == nil) else {
            throw ValidationError("--secret-key and --authorized-keys go together: give both to require keys, or neither")
        }
    }

    func run() throws {
        let logger = makeLogger("syncbn.coordinator")
        BLAS.useSingleThread()
        let interrupted = InterruptFlag()
        handleSignals { signal in
            if interrupted.set() { logger.warning("signal \(signal): stopping; once training has started, a checkpoint is saved to be continued with --resume") }
        }
        do {
            try reportingErrors(logger) {
                try train(logger: logger, interrupted: interrupted)
            }
        } catch where interrupted.isSet {
            throw ExitCode(Self.interruptedExitCode)
        }
    }

    /// The exit status after SIGINT or SIGTERM once the checkpoint is saved (EX_TEMPFAIL): stopped on
    /// purpose, to be resumed, not failed.
    static let interruptedExitCode: Int32 = 75

    private func train(logger: Logger, interrupted: InterruptFlag) throws {
        let security = try secretKey.map { try CoordinatorSecurity(secretKeyFile: $0, authorizedKeysFile: authorizedKeys!) }
        let bind = try parseEndpoint(self.bind, flag: "--bind", forBinding: true).description
        try runCoordinator(bind: bind, workers: workers, options: options, cluster: cluster, security: security,
                           allowInsecure: insecure, logger: logger, interrupted: { interrupted.isSet },
                           resumeCommand: { ["syncbn", "coordinator", "--bind", bind, "--workers", "\(workers)", "--resume", $0] + options.dataArguments })
    }
}

/// Binds, admits the workers, trains, and tells the workers to stop (or why the job failed). Once training
/// has started, a failure or an interruption saves a checkpoint first and the error names it with the
/// command that continues the run (`resumeCommand(directory)`, as words). `prepare` sees the coordinator once
/// it is bound, before any worker joins (`launch` starts its workers there).
func runCoordinator(bind: String, workers: Int, options: TrainingOptions, cluster: ClusterOptions,
                    security: CoordinatorSecurity? = nil, allowInsecure: Bool = false, logger: Logger, interrupted: @escaping () -> Bool,
                    resumeCommand: (String) -> [String], prepare: (Coordinator) throws -> Void = { _ in }) throws {
    let start = try options.start(resuming: cluster.resume)
    let (config, dataset, output, out) = (start.config, start.dataset, start.output, start.output.path)
    let coordinator = try Coordinator(config: config, data: dataset.train, bind: bind, workerCount: workers,
                                      minWorkers: min(cluster.minWorkers, workers), timeouts: cluster.timeouts,
                                      nonFinitePolicy: cluster.onNonfinite, gradientExchange: cluster.gradientExchange, security: security,
                                      allowInsecure: allowInsecure, logger: logger)
    coordinator.abortReason = { interrupted() ? "interrupted" : nil }
    if security != nil { logger.info("CurveZMQ on: traffic encrypted, only authorized worker keys admitted") }
    var training = false
    do {
        if let checkpoint = start.checkpoint, let path = start.checkpointPath {
            try coordinator.resume(from: checkpoint.state, nextStep: checkpoint.nextStep, source: path)
            logger.info("resuming at step \(checkpoint.nextStep + 1) of \(config.steps) from \(path)")
        } else {
            try options.loadInitialModel(into: coordinator.network)
        }
        try prepare(coordinator)
        try coordinator.admitWorkers()
        logger.info("training \(config.model.name) (--bn \(config.model.batchNorm.rawValue)) for \(config.steps) steps of \(config.plan.batchSize) samples (\(config.plan.chunkCount) chunks) on \(workers) worker(s)")
        training = true
        let run = TrainingRun(config: config, dataset: dataset, runner: coordinator, outputDirectory: out, logger: logger,
                              startStep: coordinator.nextStep, checkpointEvery: cluster.checkpointEvery, lockedOutput: output)
        run.shouldStop = interrupted
        let summary = try run.run()
        coordinator.finish()
        logger.info("\(summary.report())")
    } catch {
        var reason = error is TrainingInterrupted ? "interrupted" : "\(error)"
        if training {
            let path = try TrainingCheckpoint.save(coordinator.network, config: config, nextStep: coordinator.nextStep, directory: out)
            reason += " before step \(coordinator.nextStep + 1) of \(config.steps); checkpoint saved to \(path); continue with: \(shellWords(resumeCommand(out)))"
        }
        // Interrupted: leave the workers waiting to rejoin a resumed coordinator.
        coordinator.finish(failure: reason, releaseWorkers: !interrupted())
        throw ClusterError(reason)
    }
}

