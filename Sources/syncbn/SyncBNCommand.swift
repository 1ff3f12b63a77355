import ArgumentParser
import CSystemShims
import Foundation
import Logging
import SyncBNCluster
import SyncBNCore

@main
struct SyncBNCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "syncbn",
        abstract: "Data-parallel training with synchronized Batch Normalization over ZeroMQ, on CPU hosts.",
        discussion: """
        `train` runs the whole job in one process (the reference); `launch` runs a coordinator and N worker
        processes on this machine; `coordinator` and `worker` start the parts by hand or from scripts.
        For the same settings, all of them save byte-identical models.
        """,
        version: "syncbn \(SyncBNRelease.version) (wire protocol \(WireProtocol.version))",
        subcommands: [TrainCommand.self, LaunchCommand.self, CoordinatorCommand.self, WorkerCommand.self,
                      EvaluateCommand.self, ModelCommand.self, KeygenCommand.self, RoundTripCommand.self, BenchCommand.self])

    /// Checks that this CPU runs what the build targets (Package.swift's `targetCPU`) before any of it runs.
    static func main() {
        #if SYNCBN_NEEDS_X86_64_V3
        guard syncbn_cpu_supports_x86_64_v3() != 0 else {
            FileHandle.standardError.write(Data("""
                syncbn: this build needs an x86-64-v3 CPU (AVX2, FMA, BMI2; Haswell or later), and this CPU lacks them: \
                rebuild for any x86-64 with `SYNCBN_TARGET_CPU=x86-64 swift build -c release`\n
                """.utf8))
            Foundation.exit(1)
        }
        #endif
        main(nil)
    }
}

/// Logs to standard error, one line per event, with the component's name.
func makeLogger(_ label: String, verbose: Bool = false) -> Logger {
    LoggingSystem.bootstrap { LineLogHandler(label: $0) }
    var logger = Logger(label: label)
    logger.logLevel = verbose ? .debug : .info
    return logger
}

/// Runs `body`, turning any error into one line on standard error and a non-zero exit — and into a `failed`
/// status, unless the run already reported how it ended.
func reportingErrors<T>(_ logger: Logger, status: StatusReporter? = nil, _ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as ExitCode {
        throw error
    } catch {
        logger.error("\(error)")
        if let status, ![.failed, .interrupted].contains(status.last?.state) {
            var failed = RunStatus(.failed)
            failed.error = "\(error)"
            status.report(failed)
        }
        throw ExitCode.failure
    }
}
