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

    @OptionGroup var cluster: ClusterOptions
    @OptionGroup var options: TrainingOptions

    func validate() throws {
        guard workers >= 1 else { throw ValidationError("--workers must be at least 1") }
        guard let bind else { return }
        guard bind.hasPrefix("ipc://") || bind.hasPrefix("tcp://127.") || bind.hasPrefix("tcp://localhost:") else {
            throw ValidationError("launch runs everything on this machine: --bind must be a loopback tcp:// or an ipc:// address")
        }
    }

    /// The coordinator's socket when no --bind is given: a Unix socket of this process.
    static var defaultSocketPath: String { "/tmp/syncbn-launch-\(getpid()).sock" }

    func run() throws {
        let logger = makeLogger("syncbn.launch")
        BLAS.useSingleThread()
        let children = ChildProcesses()
        let executable = Bundle.main.executablePath ?? CommandLine.arguments[0]

        // Ctrl-C or SIGTERM: mark the run interrupted (so that the workers' deaths that follow are not
        // reported as failures), stop every child by its id, then exit 130.
        let bind = self.bind ?? "ipc://\(Self.defaultSocketPath)"
        defer { if self.bind == nil { unlink(Self.defaultSocketPath) } }
        let interrupted = InterruptFlag()
        handleSignals { _ in
            guard interrupted.set() else { return }
            logger.warning("interrupted: stopping the workers")
            children.signalAll(SIGTERM)
            children.stopAll(graceSeconds: 2)
            if self.bind == nil { unlink(Self.defaultSocketPath) }
            _exit(130)  // not exit(): no atexit handlers or destructors racing the other threads
        }

        do {
            try runCoordinator(bind: bind, workers: workers, options: options, cluster: cluster, logger: logger,
                               interrupted: { interrupted.isSet }) { coordinator in
                for index in 0..<workers {
                    try children.start(executable: executable,
                                       arguments: ["worker", "--connect", coordinator.endpoint, "--exit-with-parent",
                                                   "--heartbeat-timeout", "\(cluster.heartbeatTimeout)"],
                                       index: index) { failure in logger.warning("\(failure); the others carry on") }
                }
                logger.info("started \(workers) worker process(es): pids \(children.processIdentifiers.map(String.init).joined(separator: " "))")
            }
        } catch {
            if interrupted.isSet {
                // The signal handler is stopping the children and exits with 130.
                while true { pause() }
            }
            children.stopAll(graceSeconds: 2)
            logger.error("\(error)")
            throw ExitCode.failure
        }
        children.stopAll(graceSeconds: 10)
    }
}

