import ArgumentParser
import CSystemShims
import Foundation
import SyncBNCluster
import SyncBNCore

struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run a worker: everything else (model, settings, weights, data) comes from the coordinator.")

    @Option(help: "The coordinator's address, e.g. tcp://10.0.0.1:5555.")
    var connect: String

    @Option(help: "Seconds to wait for the coordinator to answer.")
    var connectTimeout: Double = 30

    @Option(help: "The coordinator's --round-timeout: a worker waits longer for a round's result (this, plus the coordinator's pause for workers to join, up to 120 s, plus the heartbeat timeout) before it concludes the coordinator is stuck.")
    var roundTimeout: Double = 120

    @Option(help: "Seconds to keep trying to rejoin after losing the coordinator (it may be resumed).")
    var rejoinTimeout: Double = 60

    @Option(help: "Seconds without heartbeat answers after which the coordinator is considered gone.")
    var heartbeatTimeout: Double = 2

    @Option(help: "This worker's CurveZMQ secret key (from `syncbn keygen`).")
    var secretKey: String?

    @Option(help: "The coordinator's public key file (its .pub).")
    var serverKey: String?

    @Option(help: "Listen for other workers at this address (or `auto`: this host's address on its route to the coordinator), for rounds among workers (--gradient-exchange peers; the BatchNorm rounds of up to 4 workers). Not with keys; unauthenticated, so off by default unless the coordinator is on this machine (then a Unix socket if the coordinator's is one, else loopback).")
    var peerAddress: String?

    @Option(help: "Threads that compute this worker's chunks (default: every core of this host); the model's bytes do not depend on it.")
    var threads: Int?

    @OptionGroup var status: StatusOptions

    @Flag(help: .hidden)
    var exitWithParent = false

    func validate() throws {
        _ = try parseEndpoint(connect, flag: "--connect", forBinding: false)
        guard connectTimeout > 0, roundTimeout > 0, rejoinTimeout > 0, heartbeatTimeout > 0 else { throw ValidationError("timeouts must be positive numbers of seconds") }
        guard (secretKey == nil) == (serverKey == nil) else {
            throw ValidationError("--secret-key and --server-key go together: give both to use keys, or neither")
        }
        try ThreadCount.check(threads)
    }

    func run() throws {
        let logger = makeLogger("syncbn.worker")
        if exitWithParent {
            _ = syncbn_exit_with_parent(SIGTERM)
            if getppid() == 1 { throw ExitCode.failure }
        }
        BLAS.useSingleThread()
        var timeouts = ClusterTimeouts()
        timeouts.connectSeconds = connectTimeout
        timeouts.roundSeconds = roundTimeout
        timeouts.rejoinSeconds = rejoinTimeout
        timeouts.setHeartbeatTimeout(heartbeatTimeout)
        let reporter = try status.reporter()
        try reportingErrors(logger, status: reporter) {
            let security = try secretKey.map { try WorkerSecurity(secretKeyFile: $0, serverKeyFile: serverKey!) }
            let worker = Worker(endpoint: connect, timeouts: timeouts, security: security, peerAddress: peerAddress,
                                threads: threads ?? ThreadCount.cores, logger: logger)
            worker.status = reporter
            let summary = try worker.run()
            var finished = RunStatus(.finished)
            (finished.rank, finished.step) = (summary.rank, summary.steps)
            (finished.medianComputeSeconds, finished.medianWaitingSeconds, finished.waitingCPUSeconds) =
                (summary.medianComputeSeconds, summary.medianWaitingSeconds, summary.medianWaitingCPUSeconds)
            finished.setWakeups(summary.wakeups, steps: summary.steps)
            reporter?.report(finished)
            logger.info("worker \(summary.rank): \(summary.steps) steps, median compute \(String(format: "%.3f", summary.medianComputeSeconds * 1000)) ms, median waiting \(String(format: "%.3f", summary.medianWaitingSeconds * 1000)) ms per step, CPU while waiting \(String(format: "%.1f", summary.medianWaitingCPUSeconds * 1e6)) us; per step \(summary.wakeups.perStepDescription(steps: summary.steps))")
        }
    }
}
