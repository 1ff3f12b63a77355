import Foundation

/// Runs `syncbn train` / `syncbn launch` as child processes and reads their logs.
enum BenchTraining {
    struct Run {
        var medianStepMs: Double
        /// Per worker (launch only), from each worker's closing line.
        var workerComputeMs: [Double]
        var workerWaitingMs: [Double]
        var workerWaitingCPUMicroseconds: [Double]
        var maxRSSKiB: Int
        var wallSeconds: Double
    }

    /// Runs this executable with `arguments` plus `--out <scratch>/run-N`, its output into a log file, and parses it.
    /// `workers` nil: one process (`train`); otherwise `launch --workers N`.
    static func run(workers: Int?, model: [String], steps: Int, scratch: String, timeoutSeconds: Double) throws -> Run {
        let name = "run-\(UUID().uuidString.prefix(8))"
        let out = scratch + "/" + name
        let logPath = scratch + "/" + name + ".log"
        var arguments = workers.map { ["launch", "--workers", "\($0)"] } ?? ["train"]
        arguments += model + ["--steps", "\(steps)", "--no-shuffle", "--out", out]
        let t0 = benchNow()
        let child = try BenchChild(arguments: arguments, logPath: logPath)
        let exit = child.wait(timeoutSeconds: timeoutSeconds)
        let wall = Double(benchNow() - t0) / 1e9
        let log = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        defer {
            try? FileManager.default.removeItem(atPath: out)
            try? FileManager.default.removeItem(atPath: logPath)
        }
        let command = "syncbn " + arguments.joined(separator: " ")
        guard exit.succeeded else {
            let tail = log.split(separator: "\n").suffix(3).joined(separator: " | ")
            throw BenchError("\(command) \(exit.description): \(tail)")
        }
        let lines = log.split(separator: "\n")
        guard let finished = lines.last(where: { $0.contains("finished") && $0.contains("median step ") }),
              let step = number(after: "median step ", in: finished) else {
            throw BenchError("\(command): no \"finished … median step X ms\" line in its log")
        }
        var compute: [Double] = [], waiting: [Double] = [], waitingCPU: [Double] = []
        for line in lines where line.contains("median compute ") {
            if let c = number(after: "median compute ", in: line), let w = number(after: "median waiting ", in: line) {
                compute.append(c)
                waiting.append(w)
                if let cpu = number(after: "CPU while waiting ", in: line) { waitingCPU.append(cpu) }
            }
        }
        if let workers, compute.count != workers {
            throw BenchError("\(command): \(compute.count) of \(workers) workers reported their compute and waiting times")
        }
        return Run(medianStepMs: step, workerComputeMs: compute, workerWaitingMs: waiting, workerWaitingCPUMicroseconds: waitingCPU,
                   maxRSSKiB: exit.maxRSSKiB, wallSeconds: wall)
    }

    /// The decimal number right after `prefix` in `line`.
    static func number(after prefix: String, in line: Substring) -> Double? {
        guard let range = line.range(of: prefix) else { return nil }
        let digits = line[range.upperBound...].prefix { $0.isNumber || $0 == "." }
        return Double(digits)
    }
}
