import Foundation
import SyncBNCluster

/// Runs `syncbn train` / `syncbn launch` as child processes and reads their final status.
enum BenchTraining {
    struct Run {
        var medianStepMs: Double
        /// Per worker (launch only), from each worker's final status.
        var workerComputeMs: [Double]
        var workerWaitingMs: [Double]
        var workerWaitingCPUMicroseconds: [Double]
        /// Per worker (launch only), and the coordinator's: wake-ups per step, from their final statuses.
        var workerWakeups: [Wakeups]
        var coordinatorWakeups: Wakeups?
        var maxRSSKiB: Int
        var wallSeconds: Double
    }

    /// Messages and context switches per step of one process (`RunStatus`'s means over its run).
    struct Wakeups {
        var messagesSent: Double
        var messagesReceived: Double
        var voluntaryContextSwitches: Double
        var involuntaryContextSwitches: Double
        /// CPU time of all the process's threads per step (nil from a process of an older release).
        var cpuSeconds: Double?

        var messages: Double { messagesSent + messagesReceived }
        var contextSwitches: Double { voluntaryContextSwitches + involuntaryContextSwitches }

        /// Nil when the status lacks any of them (a process of an older release, or one that ran no step).
        init?(_ status: RunStatus) {
            guard let sent = status.messagesSentPerStep, let received = status.messagesReceivedPerStep,
                  let voluntary = status.voluntaryContextSwitchesPerStep, let involuntary = status.involuntaryContextSwitchesPerStep else { return nil }
            (messagesSent, messagesReceived, voluntaryContextSwitches, involuntaryContextSwitches) = (sent, received, voluntary, involuntary)
            cpuSeconds = status.cpuSecondsPerStep
        }
    }

    /// Runs this executable with `arguments` plus `--out <scratch>/run-N --status-file …`, its output into a
    /// log file (shown on failure), and reads its final status (`RunStatus`: the median step, and for launch
    /// each worker's compute and waiting times, and everyone's wake-ups). `workers` nil: one process (`train`);
    /// otherwise `launch --workers N`.
    static func run(workers: Int?, model: [String], steps: Int, scratch: String, timeoutSeconds: Double) throws -> Run {
        let name = "run-\(UUID().uuidString.prefix(8))"
        let out = scratch + "/" + name
        let logPath = scratch + "/" + name + ".log", statusPath = scratch + "/" + name + ".status.json"
        var arguments = workers.map { ["launch", "--workers", "\($0)"] } ?? ["train"]
        arguments += model + ["--steps", "\(steps)", "--no-shuffle", "--out", out, "--status-file", statusPath]
        let t0 = benchNow()
        let child = try BenchChild(arguments: arguments, logPath: logPath)
        let exit = child.wait(timeoutSeconds: timeoutSeconds)
        let wall = Double(benchNow() - t0) / 1e9
        defer {
            for path in [out, logPath, statusPath] { try? FileManager.default.removeItem(atPath: path) }
        }
        let command = "syncbn " + arguments.joined(separator: " ")
        guard exit.succeeded else {
            let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
            let tail = log.split(separator: "\n").suffix(3).joined(separator: " | ")
            throw BenchError("\(command) \(exit.description): \(tail)")
        }
        let status = try RunStatus.read(from: statusPath)
        guard status.state == .finished, let step = status.medianStepSeconds else {
            throw BenchError("\(command): its status is \(status.state.rawValue), with no median step time")
        }
        let finishedWorkers = (status.workerStatuses ?? []).filter { $0.state == .finished }
        if let workers, finishedWorkers.count != workers {
            throw BenchError("\(command): \(finishedWorkers.count) of \(workers) workers reported their compute and waiting times")
        }
        return Run(medianStepMs: step * 1000, workerComputeMs: finishedWorkers.map { ($0.medianComputeSeconds ?? .nan) * 1000 },
                   workerWaitingMs: finishedWorkers.map { ($0.medianWaitingSeconds ?? .nan) * 1000 },
                   workerWaitingCPUMicroseconds: finishedWorkers.map { ($0.waitingCPUSeconds ?? .nan) * 1e6 },
                   workerWakeups: finishedWorkers.compactMap(Wakeups.init), coordinatorWakeups: workers == nil ? nil : Wakeups(status),
                   maxRSSKiB: exit.maxRSSKiB, wallSeconds: wall)
    }
}
