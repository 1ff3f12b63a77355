import ArgumentParser
import SyncBNCluster

/// `--status-file`, shared by the commands that run training: the machine-readable account of a run that
/// scripts read instead of log lines (`RunStatus`).
struct StatusOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Write the run's state as JSON to FILE at each change (replaced atomically), or one JSON line each to standard output with -.",
                               discussion: "States: listening, training (at each logged step), joined (a worker), finished, interrupted, failed; see RunStatus."))
    var statusFile: String?

    /// The reporter, checked before anything runs (a path in a directory that cannot be written is refused).
    func reporter() throws -> StatusReporter? {
        try statusFile.map { try StatusReporter(destination: $0) }
    }
}
