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

    @Option(help: "Threads that apply each step to this coordinator's own replica (default: every core of this host); the model's bytes do not depend on it.")
    var threads: Int?

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var options: TrainingOptions
    @OptionGroup var status: StatusOptions

    func validate() throws {
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1") }
        try ThreadCount.check(threads)
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
        let reporter = try status.reporter()
        do {
            try reportingErrors(logger, status: reporter) {
                try train(logger: logger, interrupted: interrupted, status: reporter)
            }
        } catch where interrupted.isSet {
            throw ExitCode(Self.interruptedExitCode)
        }
    }

    /// The exit status after SIGINT or SIGTERM once the checkpoint is saved (EX_TEMPFAIL): stopped on
    /// purpose, to be resumed, not failed.
    static let interruptedExitCode: Int32 = 75

    private func train(logger: Logger, interrupted: InterruptFlag, status: StatusReporter?) throws {
        let security = try secretKey.map { try CoordinatorSecurity(secretKeyFile: $0, authorizedKeysFile: authorizedKeys!) }
        let bind = try parseEndpoint(self.bind, flag: "--bind", forBinding: true).description
        let threads = self.threads ?? ThreadCount.cores
        try runCoordinator(bind: bind, workers: workers, options: options, cluster: cluster, security: security,
                           allowInsecure: insecure, status: status, logger: logger, interrupted: { interrupted.isSet },
                           resumeCommand: { ["syncbn", "coordinator", "--bind", bind, "--workers", "\(workers)", "--resume", $0] + options.dataArguments },
                           prepare: { $0.network.threads = ChunkThreads(threadCount: threads) })
    }
}

/// The coordinator's job (`CoordinatorJob`: bind, resume or initialize, admit, train, checkpoint on failure or
/// interruption) from the command line's options; prints the closing lines.
func runCoordinator(bind: String, workers: Int, options: TrainingOptions, cluster: ClusterOptions,
                    security: CoordinatorSecurity? = nil, allowInsecure: Bool = false, status: StatusReporter?, logger: Logger,
                    interrupted: @escaping () -> Bool, resumeCommand: (String) -> [String], prepare: (Coordinator) throws -> Void = { _ in }) throws {
    let job = CoordinatorJob(start: try options.start(resuming: cluster.resume), bind: bind, workers: workers, minWorkers: cluster.minWorkers,
                             timeouts: cluster.timeouts, nonFinitePolicy: cluster.onNonfinite, gradientExchange: cluster.gradientExchange,
                             batchNormExchange: cluster.bnExchange, security: security, allowInsecure: allowInsecure, checkpointEvery: cluster.checkpointEvery, logger: logger, status: status)
    let summary = try job.run(initialize: options.loadInitialModel(into:), interrupted: interrupted, resumeCommand: resumeCommand, prepare: prepare)
    logger.info("\(summary.report())")
}
