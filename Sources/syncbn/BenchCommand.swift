import ArgumentParser
import Foundation
import SyncBNBench

/// `syncbn bench`: raw ZeroMQ baselines, an all-reduce through a coordinator-like star, training step times and
/// peak memory, all measured in the same run, medians over repeats, printed as a table and written as JSON.
/// The command parses the options, runs `BenchRun` (the `SyncBNBench` target) and writes its report; with the
/// hidden `--helper` options it is one of the child processes the benchmark starts (this executable again).
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmark the transport, the all-reduce (star and among workers), training step times and memory, in one run.",
        discussion: """
        Sections: (1) raw ZeroMQ ROUTER/DEALER round trip (64 B) and one-way throughput (4 MiB messages) between two \
        processes, over tcp loopback and ipc, and what a blocking wait costs the waiting thread without ZeroMQ; (2) one all-reduce round of 2, 4 and 8 worker processes, through a star \
        for BatchNorm-sized (200 Float64), gradient-sized (100,000 Float32) and 10M-Float32 payloads, and among the \
        workers (reduce-scatter + all-gather, `--gradient-exchange peers`) for the Float32 ones; (3) `train` and \
        `launch` step times for bn-mlp, wide-mlp and bn-cnn (`train` on one thread and on every core), with the \
        target compute + 1.2 × rounds × raw ipc round trip, and every process's CPU per step over the cores (the \
        shortest step those cores could give that work); (4) peak memory and its growth over a long run. Every number is a median over --repeats. Sections 3 and 4 \
        run first, while this process is small: Linux starts a child's peak RSS from its parent's.
        """)

    @Option(help: "Repeats of every measurement; the medians are reported.")
    var repeats = 5

    @Option(help: "Also write the results as JSON to this file.")
    var json = "runs/bench.json"

    @Flag(help: "Shorter training runs, and no 10M-value all-reduce.")
    var quick = false

    @Option(help: "Comma-separated sections to run: transport, allreduce, training, memory, compute (the all-reduce ratios need transport).")
    var sections = BenchRun.Section.allCases.map(\.rawValue).joined(separator: ",")

    // The child helpers: this executable started again by the benchmark.
    @Option(help: .hidden) var helper: String?
    @Option(help: .hidden) var connect: String?
    @Option(help: .hidden) var size = 0
    @Option(help: .hidden) var rank = 0
    @Option(help: .hidden) var width = 0
    @Option(help: .hidden) var element = "f32"

    func validate() throws {
        guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1") }
        for name in sections.split(separator: ",") where BenchRun.Section(rawValue: String(name)) == nil {
            throw ValidationError("unknown bench section \(name): pick from \(BenchRun.Section.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    func run() throws {
        if let helper {
            do {
                try BenchNetwork.runHelper(role: helper, connect: connect ?? "", size: size, rank: rank, width: width, element: element)
            } catch {
                FileHandle.standardError.write(Data("bench helper (\(helper)): \(error)\n".utf8))
                throw ExitCode.failure
            }
            return
        }
        handleSignals { _ in BenchChildRegistry.shared.interruptAndExit() }
        var bench = BenchRun(repeats: repeats, quick: quick, sections: Set(sections.split(separator: ",").compactMap { BenchRun.Section(rawValue: String($0)) }))
        let report = bench.run()
        // Interrupted: the signal handler is stopping the children and exits with 130.
        while BenchChildRegistry.shared.isInterrupted { sleep(1) }
        print(report.table())
        do {
            let url = URL(fileURLWithPath: json)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(report).write(to: url)
            print("JSON written to \(json)")
        } catch {
            FileHandle.standardError.write(Data("bench: cannot write \(json): \(error)\n".utf8))
            throw ExitCode.failure
        }
        if !report.failures.isEmpty { throw ExitCode.failure }
    }
}
