import ArgumentParser
import Foundation
import SyncBNCluster
import SyncBNCore

struct LaunchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch",
        abstract: "Train with a coordinator and N worker processes on this machine.",
        discussion: "Relays the workers' output and stops them all when training ends or on Ctrl-C. A worker that dies is dropped and its step redone by the others.")

    @Option(help: "Number of worker processes.")
    var workers: Int

    @Option(help: "Address the coordinator binds (loopback or ipc only; default: an ipc socket in /tmp, cheaper per message than tcp loopback).")
    var bind: String?

    @Option(help: "Threads of each worker (default: the cores ÷ --workers, at least 1); the model's bytes do not depend on it.")
    var threads: Int?

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var options: TrainingOptions
    @OptionGroup var status: StatusOptions

    func validate() throws {
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1") }
        try ThreadCount.check(threads)
        guard let bind else { return }
        guard try parseEndpoint(bind, flag: "--bind", forBinding: true).isLocal else {
            throw ValidationError("launch runs everything on this machine: --bind must be a loopback tcp:// or an ipc:// address")
        }
    }

    /// How long after Ctrl-C the coordinator may take to reach a step boundary and save its checkpoint.
    static let interruptGraceSeconds = 30.0

    /// The coordinator's socket when no --bind is given: a Unix socket of this process.
    static var defaultSocketPath: String { "/tmp/syncbn-launch-\(getpid()).sock" }

    func run() throws {
        let logger = makeLogger("syncbn.launch")
        BLAS.useSingleThread()
        let children = ChildProcesses()
        let executable = Bundle.main.executablePath ?? CommandLine.arguments[0]

        // Ctrl-C or SIGTERM: mark the run interrupted; the coordinator stops at the next step boundary (or
        // round), saves a checkpoint and says how to continue, then the workers are stopped by their ids and
        // launch exits 75. Should the coordinator not get there within `interruptGraceSeconds` (a second
        // signal, or a wedged run), the workers are stopped and launch exits 130 at once.
        let bind = try self.bind.map { try parseEndpoint($0, flag: "--bind", forBinding: true).description } ?? "ipc://\(Self.defaultSocketPath)"
        defer { if self.bind == nil { unlink(Self.defaultSocketPath) } }
        let interrupted = InterruptFlag()
        let reporter = try status.reporter()
        // Each worker's own status, gathered into launch's final one (`worker_statuses`).
        let workerStatusDirectory = NSTemporaryDirectory() + "syncbn-launch-\(getpid())-status"
        try FileManager.default.createDirectory(atPath: workerStatusDirectory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: workerStatusDirectory) }
        func workerStatusPath(_ index: Int) -> String { workerStatusDirectory + "/worker-\(index).json" }
        let forceStop: @Sendable () -> Void = {
            children.signalAll(SIGTERM)
            children.stopAll(graceSeconds: 2)
            if self.bind == nil { unlink(Self.defaultSocketPath) }
            _exit(130)  // not exit(): no atexit handlers or destructors racing the other threads
        }
        handleSignals { _ in
            guard interrupted.set() else {
                logger.warning("interrupted again: stopping the workers without a checkpoint")
                forceStop()
                return
            }
            logger.warning("interrupted: saving a checkpoint at the next step boundary, then stopping the workers")
            DispatchQueue.global().asyncAfter(deadline: .now() + Self.interruptGraceSeconds) {
                logger.error("no checkpoint within \(Int(Self.interruptGraceSeconds)) s of the interrupt: stopping the workers")
                forceStop()
            }
        }

        do {
            try runCoordinator(bind: bind, workers: workers, options: options, cluster: cluster, status: reporter, logger: logger,
                               interrupted: { interrupted.isSet },
                               resumeCommand: { ["syncbn", "launch", "--workers", "\(workers)", "--resume", $0] + options.dataArguments }) { coordinator in
                for index in 0..<workers {
                    try children.start(executable: executable,
                                       arguments: ["worker", "--connect", coordinator.endpoint, "--exit-with-parent",
                                                   "--heartbeat-timeout", "\(cluster.heartbeatTimeout)",
                                                   "--threads", "\(threads ?? ThreadCount.share(workers: workers))",
                                                   "--status-file", workerStatusPath(index)],
                                       index: index) { failure in logger.warning("\(failure); the others carry on") }
                }
                logger.info("started \(workers) worker process(es): pids \(children.processIdentifiers.map(String.init).joined(separator: " "))")
            }
        } catch {
            children.signalAll(SIGTERM)
            children.stopAll(graceSeconds: 2)
            logger.error("\(error)")
            if let reporter, ![.failed, .interrupted].contains(reporter.last?.state) {
                var failed = RunStatus(.failed)
                failed.error = "\(error)"
                reporter.report(failed)
            }
            throw interrupted.isSet ? ExitCode(CoordinatorCommand.interruptedExitCode) : ExitCode.failure
        }
        children.stopAll(graceSeconds: 10)
        if let reporter, var finished = reporter.last {
            finished.workerStatuses = (0..<workers).map { (try? RunStatus.read(from: workerStatusPath($0))) ?? RunStatus(.failed) }
            reporter.report(finished)
        }
    }
}

