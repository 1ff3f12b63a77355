import ArgumentParser
import Foundation
import SyncBNCluster
import SyncBNCore
import ZeroMQ

/// `syncbn bench`: raw ZeroMQ baselines, an all-reduce through a coordinator-like star, training step times and
/// peak memory, all measured in the same run, medians over repeats, printed as a table and written as JSON.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmark the transport, the all-reduce (star and among workers), training step times and memory, in one run.",
        discussion: """
        Sections: (1) raw ZeroMQ ROUTER/DEALER round trip (64 B) and one-way throughput (4 MiB messages) between two \
        processes, over tcp loopback and ipc; (2) one all-reduce round of 2, 4 and 8 worker processes, through a star \
        for BatchNorm-sized (200 Float64), gradient-sized (100,000 Float32) and 10M-Float32 payloads, and among the \
        workers (reduce-scatter + all-gather, `--gradient-exchange peers`) for the Float32 ones; (3) `train` and \
        `launch` step times for bn-mlp, wide-mlp and bn-cnn (`train` on one thread and on every core), with the \
        target compute + 1.2 × rounds × raw ipc round trip; (4) peak memory and its growth over a long run. Every number is a median over --repeats. Sections 3 and 4 \
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
        installBenchSignalHandlers()
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

// MARK: - The report

struct BenchReport: Codable {
    struct Machine: Codable {
        var arch: String
        var cores: Int
        var openblasCoretype: String?
        var libzmq: String
    }

    struct Raw: Codable {
        var roundTripBytes = 64
        var roundTripsPerRepeat = 2000
        var roundTripTcpMicroseconds: Double?
        var roundTripIpcMicroseconds: Double?
        var streamMessageBytes = 4 << 20
        var streamMessagesPerRepeat = 200
        var throughputTcpGBps: Double?
        var throughputIpcGBps: Double?
    }

    struct AllReduce: Codable {
        /// "star" (through the coordinator) or "peers" (reduce-scatter + all-gather among the workers).
        var algorithm: String
        var payload: String
        var valuesPerWorker: Int
        var element: String
        var workers: Int
        var roundsPerRepeat: Int
        /// Bytes into and out of the coordinator per round, headers included: star, every worker's partials in
        /// and a result out to each; peers, each shard in once (plus the small start and done messages).
        var bytesThroughParentPerRound: Int
        var medianRoundMicroseconds: Double
        /// BatchNorm-sized payload: the round over the raw 64-byte tcp round trip.
        var ratioToRawRoundTrip: Double?
        /// Bytes through the coordinator per second.
        var throughputGBps: Double
        /// Bytes over every link (worker–coordinator and worker–worker) per round, over the round time: on one
        /// host all links share its cores, so this is what compares with one raw stream's throughput.
        var allLinksGBps: Double
        var allLinksRatioToRawThroughput: Double?
        /// Bus bandwidth (NCCL's convention): tensor bytes / round time × 2(N − 1)/N, what each worker's link
        /// must carry per second with an optimal algorithm; comparable with one link's raw throughput.
        var busBandwidthGBps: Double
        /// Large payloads: bus bandwidth over the raw tcp throughput.
        var ratioToRawThroughput: Double?
    }

    struct Training: Codable {
        var model: String
        var batchSize: Int
        var steps: Int
        var command: String
        var workers: Int?
        var medianStepMs: Double
        var medianComputeMs: Double?
        var medianWaitingMs: Double?
        /// CPU time a worker's thread burnt per step while waiting (should be ~0: waits block).
        var medianWaitingCPUMicroseconds: Double?
        var rounds: Int?
        /// compute + 1.2 × rounds × raw ipc round trip (launch's transport).
        var targetMs: Double?
        var ratioToTarget: Double?
        /// Peak resident set over the repeats; for launch, the largest of the coordinator and its workers.
        var peakRSSMiB: Double
    }

    /// One process, one thread, in this process: a step of the model and its matrix products' share.
    struct Compute: Codable {
        var model: String
        var batchSize: Int
        var steps: Int
        var medianStepMs: Double
        var medianGemmMs: Double
        var gemmShare: Double
        /// A reference measured elsewhere (PyTorch CPU, one thread, same net and batch), not in this run.
        var referenceMs: Double?
        var referenceName: String?
    }

    struct Memory: Codable {
        var model = "bn-mlp"
        var shortSteps: Int
        var longSteps: Int
        var shortPeakRSSMiB: Double
        var longPeakRSSMiB: Double
        var growthMiB: Double
        var growthPercent: Double
    }

    var machine: Machine
    var repeats: Int
    var quick: Bool
    var startedAt: String
    /// The sections that ran (`--sections`); the table shows only those.
    var sections: [String] = []
    var wallSeconds: Double = 0
    var raw = Raw()
    var allReduce: [AllReduce] = []
    var training: [Training] = []
    var compute: [Compute] = []
    var memory: Memory?
    /// The benchmark's own peak RSS when it started the training runs: no child's peak can read lower.
    var spawnFloorMiB: Double = 0
    var failures: [String] = []
}

// MARK: - Running the sections

struct BenchRun {
    let repeats: Int
    let quick: Bool
    enum Section: String, CaseIterable { case transport, allreduce, training, memory, compute }
    let sections: Set<Section>
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("syncbn-bench-\(getpid())").path

    /// All-reduce rounds of one step of the preset `model` with --bn sync (no metrics round): its BatchNorm
    /// layers' forward and backward rounds and the gradient round.
    static func roundsPerStep(_ model: String) -> Int? {
        guard let spec = try? ModelSpec.preset(model, input: TensorShape([1, 28, 28]), classes: 10) else { return nil }
        return Network(spec: spec, plan: ChunkPlan(batchSize: 2, chunkSize: 1), optimizer: SGD(learningRate: 0, momentum: 0), seed: 0)
            .rounds(computeMetrics: false).count
    }

    mutating func run() -> BenchReport {
        let start = benchNow()
        var report = BenchReport(machine: Self.machine(), repeats: repeats, quick: quick,
                                 startedAt: ISO8601DateFormatter().string(from: Date()))
        report.sections = Section.allCases.filter(sections.contains).map(\.rawValue)
        try? FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        BenchChildRegistry.shared.scratchDirectory = scratch
        defer { try? FileManager.default.removeItem(atPath: scratch) }

        func attempt(_ what: String, _ body: () throws -> Void) {
            guard !BenchChildRegistry.shared.isInterrupted else { return }
            progress(what)
            do { try body() } catch {
                guard !BenchChildRegistry.shared.isInterrupted else { return }
                progress("FAILED: \(what): \(error)")
                report.failures.append("\(what): \(error)")
            }
        }

        // Training and memory first: a child's ru_maxrss starts from this process's own peak RSS at the spawn
        // (Linux carries the parent's high-water mark across fork/vfork + exec), so spawn them while this process
        // is still small, before the all-reduce buffers. `spawnFloorMiB` records that floor.
        report.spawnFloorMiB = Self.ownPeakRSSMiB()
        // 3. Training step times.
        let models: [(name: String, arguments: [String], batch: Int, steps: Int, timeout: Double)] = [
            ("bn-mlp", ["--model", "bn-mlp"], 60, quick ? 500 : 2000, 600),
            ("wide-mlp", ["--model", "wide-mlp", "--batch-size", "512"], 512, quick ? 10 : 30, 900),
            ("bn-cnn", ["--model", "bn-cnn"], 60, quick ? 30 : 100, 900),
        ]
        // `train` on one thread and on every core (`--threads`); `launch` gives each worker its share of the cores.
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let trainThreads = cores > 1 ? [1, cores] : [1]
        for model in models where sections.contains(.training) {
            let commands: [(workers: Int?, threads: Int?)] = trainThreads.map { (nil, $0) }
                + (model.name == "bn-cnn" ? [2] : [1, 2, 4]).map { ($0, nil) }
            for (workers, threads) in commands {
                let command = workers.map { "launch --workers \($0)" } ?? "train --threads \(threads!)"
                attempt("\(model.name), \(command), \(model.steps) steps × \(repeats)") {
                    var runs: [BenchTraining.Run] = []
                    for _ in 0..<repeats {
                        runs.append(try BenchTraining.run(workers: workers, model: model.arguments + (threads.map { ["--threads", "\($0)"] } ?? []),
                                                          steps: model.steps, scratch: scratch, timeoutSeconds: model.timeout))
                    }
                    let compute = workers == nil ? nil : benchMedian(runs.compactMap { benchMedian($0.workerComputeMs) })
                    let waiting = workers == nil ? nil : benchMedian(runs.compactMap { benchMedian($0.workerWaitingMs) })
                    let waitingCPU = workers == nil ? nil : benchMedian(runs.compactMap { benchMedian($0.workerWaitingCPUMicroseconds) })
                    let step = benchMedian(runs.map(\.medianStepMs))!
                    var row = BenchReport.Training(
                        model: model.name, batchSize: model.batch, steps: model.steps, command: command, workers: workers,
                        medianStepMs: step, medianComputeMs: compute, medianWaitingMs: waiting,
                        peakRSSMiB: Double(runs.map(\.maxRSSKiB).max() ?? 0) / 1024)
                    row.medianWaitingCPUMicroseconds = waitingCPU
                    if workers != nil { row.rounds = Self.roundsPerStep(model.name) }
                    report.training.append(row)
                }
            }
        }

        // 5. One process's step and its matrix products, in this process.
        for (model, reference) in [("bn-mlp", 0.87), ("bn-cnn", 43.0)] where sections.contains(.compute) {
            let steps = model == "bn-cnn" ? (quick ? 20 : 60) : (quick ? 300 : 1000)
            attempt("\(model), one process, one thread, \(steps) steps × \(repeats)") {
                var profiles: [BenchCompute.Profile] = []
                for _ in 0..<repeats { profiles.append(try BenchCompute.profile(model: model, batchSize: 60, chunkSize: 15, steps: steps)) }
                let step = benchMedian(profiles.map(\.medianStepMs))!, gemm = benchMedian(profiles.map(\.medianGemmMs))!
                report.compute.append(.init(model: model, batchSize: 60, steps: steps, medianStepMs: step, medianGemmMs: gemm,
                                            gemmShare: step > 0 ? gemm / step : 0, referenceMs: reference,
                                            referenceName: "PyTorch 2.15 CPU, one thread (measured on an AVX-512 machine of this kind, not in this run)"))
            }
        }

        // 4. Memory growth: the peak of a long run against a short one.
        let longSteps = quick ? 3000 : 10_000
        if sections.contains(.memory) { attempt("memory growth, train 1000 vs \(longSteps) steps") {
            let short = try BenchTraining.run(workers: nil, model: ["--model", "bn-mlp"], steps: 1000, scratch: scratch, timeoutSeconds: 600)
            let long = try BenchTraining.run(workers: nil, model: ["--model", "bn-mlp"], steps: longSteps, scratch: scratch, timeoutSeconds: 1800)
            let a = Double(short.maxRSSKiB) / 1024, b = Double(long.maxRSSKiB) / 1024
            report.memory = .init(shortSteps: 1000, longSteps: longSteps, shortPeakRSSMiB: a, longPeakRSSMiB: b,
                                  growthMiB: b - a, growthPercent: a > 0 ? (b - a) / a * 100 : 0)
        } }

        // 1. Raw baselines.
        let raw = report.raw
        for transport in ["tcp", "ipc"] where sections.contains(.transport) {
            attempt("raw round trip, \(transport)") {
                let value = benchMedian(try BenchNetwork.roundTrip(transport: transport, size: raw.roundTripBytes, count: raw.roundTripsPerRepeat, repeats: repeats))
                if transport == "tcp" { report.raw.roundTripTcpMicroseconds = value } else { report.raw.roundTripIpcMicroseconds = value }
            }
            attempt("raw throughput, \(transport)") {
                let value = benchMedian(try BenchNetwork.throughput(transport: transport, size: raw.streamMessageBytes, messages: raw.streamMessagesPerRepeat, repeats: repeats))
                if transport == "tcp" { report.raw.throughputTcpGBps = value } else { report.raw.throughputIpcGBps = value }
            }
        }

        // 2. All-reduce through a star.
        var payloads: [(name: String, width: Int, element: WireProtocol.Element, rounds: Int, warmup: Int)] = [
            ("BN (200 Float64)", 200, .float64, 500, 100),
            ("gradient (100k Float32)", 100_000, .float32, 100, 10),
        ]
        if !quick { payloads.append(("10M Float32", 10_000_000, .float32, 3, 1)) }
        for payload in payloads where sections.contains(.allreduce) {
            for workers in [2, 4, 8] {
                attempt("all-reduce, \(payload.name), \(workers) workers") {
                    let times = try BenchNetwork.allReduce(workers: workers, width: payload.width, element: payload.element,
                                                           rounds: payload.rounds, warmup: payload.warmup, repeats: repeats)
                    let seconds = benchMedian(times)!
                    let valueBytes = payload.width * (payload.element == .float64 ? 8 : 4)
                    let round: Round = payload.element == .float64 ? .moments(layer: 0) : .gradients
                    let inBytes = Message.partialsHeader(step: 0, round: round, firstChunk: 0, chunkCount: 1, width: 1, element: payload.element).count + valueBytes
                    let outBytes = Message.reducedHeader(step: 0, round: round, width: 1, element: payload.element).count + valueBytes
                    let bytes = workers * (inBytes + outBytes)
                    let rate = Double(bytes) / seconds / 1e9
                    let small = payload.element == .float64
                    let bus = Self.busBandwidth(valueBytes, workers: workers, seconds: seconds)
                    report.allReduce.append(.init(
                        algorithm: "star", payload: payload.name, valuesPerWorker: payload.width, element: payload.element == .float64 ? "Float64" : "Float32",
                        workers: workers, roundsPerRepeat: payload.rounds, bytesThroughParentPerRound: bytes,
                        medianRoundMicroseconds: seconds * 1e6,
                        ratioToRawRoundTrip: small ? report.raw.roundTripTcpMicroseconds.map { seconds * 1e6 / $0 } : nil,
                        throughputGBps: rate,
                        allLinksGBps: rate, allLinksRatioToRawThroughput: small ? nil : report.raw.throughputTcpGBps.map { rate / $0 },
                        busBandwidthGBps: bus,
                        ratioToRawThroughput: small ? nil : report.raw.throughputTcpGBps.map { bus / $0 }))
                }
            }
        }

        // 2b. The gradient payloads among the workers.
        for payload in payloads where payload.element == .float32 && sections.contains(.allreduce) {
            for workers in [2, 4, 8] {
                attempt("peer all-reduce, \(payload.name), \(workers) workers") {
                    let times = try BenchNetwork.peerAllReduce(workers: workers, width: payload.width, rounds: payload.rounds,
                                                               warmup: payload.warmup, repeats: repeats)
                    let seconds = benchMedian(times)!
                    let valueBytes = payload.width * 4
                    let header = Message.gradientShard(step: 0, epoch: 0, from: 0, shardOffset: 0, shardWidth: 0, payload: []).encoded().count
                    let rows = Message.gradientTiles(step: 0, epoch: 0, from: 0, shardOffset: 0, shardWidth: 0, tiles: [],
                                                     rowsFirstChunk: 0, rowsChunkCount: 0, rowsWidth: 0, payload: []).encoded().count
                    let bytes = valueBytes + workers * (header + rows + 2 * WireProtocol.headerSize)
                    // Tiles: each worker sends its slice of every other shard; shards: each owner to the N − 1 others
                    // and the parent. (2N − 1) tensors in all.
                    let allLinks = Double((2 * workers - 1) * valueBytes) / seconds / 1e9
                    report.allReduce.append(.init(
                        algorithm: "peers", payload: payload.name, valuesPerWorker: payload.width, element: "Float32",
                        workers: workers, roundsPerRepeat: payload.rounds, bytesThroughParentPerRound: bytes,
                        medianRoundMicroseconds: seconds * 1e6, ratioToRawRoundTrip: nil,
                        throughputGBps: Double(bytes) / seconds / 1e9,
                        allLinksGBps: allLinks, allLinksRatioToRawThroughput: report.raw.throughputTcpGBps.map { allLinks / $0 },
                        busBandwidthGBps: Self.busBandwidth(valueBytes, workers: workers, seconds: seconds),
                        ratioToRawThroughput: report.raw.throughputTcpGBps.map { Self.busBandwidth(valueBytes, workers: workers, seconds: seconds) / $0 }))
                }
            }
        }

        // The targets of section 3 need the raw round trip of section 1.
        // `launch` binds an ipc socket: its rounds are held to the ipc round trip.
        if let rtt = report.raw.roundTripIpcMicroseconds ?? report.raw.roundTripTcpMicroseconds {
            for index in report.training.indices {
                guard let compute = report.training[index].medianComputeMs, let rounds = report.training[index].rounds else { continue }
                let target = compute + 1.2 * Double(rounds) * rtt / 1000
                report.training[index].targetMs = target
                report.training[index].ratioToTarget = report.training[index].medianStepMs / target
            }
        }

        report.wallSeconds = Double(benchNow() - start) / 1e9
        return report
    }

    /// NCCL's bus bandwidth of an all-reduce of `bytes` among `workers` in `seconds`, GB/s.
    static func busBandwidth(_ bytes: Int, workers: Int, seconds: Double) -> Double {
        Double(bytes) / seconds / 1e9 * 2 * Double(workers - 1) / Double(workers)
    }

    private func progress(_ text: String) {
        FileHandle.standardError.write(Data("bench: \(text)\n".utf8))
    }

    /// This process's peak resident set so far, in MiB.
    static func ownPeakRSSMiB() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return Double(usage.ru_maxrss) / 1024
    }

    static func machine() -> BenchReport.Machine {
        var names = utsname()
        uname(&names)
        let arch = withUnsafeBytes(of: &names.machine) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        let zmq = Context.libraryVersion
        return .init(arch: arch, cores: ProcessInfo.processInfo.activeProcessorCount,
                     openblasCoretype: ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"],
                     libzmq: "\(zmq.major).\(zmq.minor).\(zmq.patch)")
    }
}

// MARK: - The table

extension BenchReport {
    func table() -> String {
        func f(_ value: Double?, _ format: String) -> String { value.map { String(format: format, $0) } ?? "—" }
        func pad(_ text: String, _ width: Int) -> String {
            text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
        }
        func lpad(_ text: String, _ width: Int) -> String {
            text.count >= width ? text : String(repeating: " ", count: width - text.count) + text
        }
        var lines: [String] = []
        lines.append("")
        lines.append("syncbn bench: \(machine.arch), \(machine.cores) cores, OPENBLAS_CORETYPE=\(machine.openblasCoretype ?? "(unset)"), libzmq \(machine.libzmq); medians of \(repeats) repeats\(quick ? " (--quick)" : ""); wall \(String(format: "%.1f", wallSeconds)) s")

        /// Whether a section ran (reports written before `sections` existed show every section).
        func ran(_ section: String) -> Bool { sections.isEmpty || sections.contains(section) }
        if ran("transport") {
            lines.append("")
            lines.append("1. Raw ZeroMQ, ROUTER/DEALER between two processes")
            lines.append("   " + pad("measure", 40) + lpad("tcp", 14) + lpad("ipc", 14))
            lines.append("   " + pad("round trip, \(raw.roundTripBytes) B (\(raw.roundTripsPerRepeat) per repeat)", 40)
                         + lpad(f(raw.roundTripTcpMicroseconds, "%.1f us"), 14) + lpad(f(raw.roundTripIpcMicroseconds, "%.1f us"), 14))
            lines.append("   " + pad("one-way throughput, \(raw.streamMessagesPerRepeat) × 4 MiB", 40)
                         + lpad(f(raw.throughputTcpGBps, "%.2f GB/s"), 14) + lpad(f(raw.throughputIpcGBps, "%.2f GB/s"), 14))

        }
        if ran("allreduce") {
            lines.append("")
            lines.append("2. All-reduce round, tcp loopback: star (the parent sums, as the coordinator) and peers (reduce-scatter +")
            lines.append("   all-gather among the workers, the parent receives each shard once)")
            lines.append("   (parent = bytes in and out of the parent per round / round time; all links = bytes over every connection per")
            lines.append("    round / round time; bus bw = tensor bytes / round time × 2(N−1)/N, NCCL's per-link measure; ratios to raw tcp)")
            lines.append("   " + pad("payload per worker", 24) + pad("algorithm", 10) + lpad("workers", 7) + lpad("round", 11) + lpad("vs RTT", 8)
                         + lpad("parent", 12) + lpad("all links", 12) + lpad("ratio", 7) + lpad("bus bw", 12) + lpad("ratio", 7))
            for row in allReduce {
                let large = row.element == "Float32"
                lines.append("   " + pad(row.payload, 24) + pad(row.algorithm, 10) + lpad("\(row.workers)", 7)
                             + lpad(row.medianRoundMicroseconds >= 10_000 ? String(format: "%.1f ms", row.medianRoundMicroseconds / 1000) : String(format: "%.1f us", row.medianRoundMicroseconds), 11)
                             + lpad(row.ratioToRawRoundTrip.map { String(format: "%.2fx", $0) } ?? "", 8)
                             + lpad(String(format: "%.3f GB/s", row.throughputGBps), 12)
                             + lpad(large ? String(format: "%.2f GB/s", row.allLinksGBps) : "", 12)
                             + lpad(row.allLinksRatioToRawThroughput.map { String(format: "%.2fx", $0) } ?? "", 7)
                             + lpad(large ? String(format: "%.2f GB/s", row.busBandwidthGBps) : "", 12)
                             + lpad(row.ratioToRawThroughput.map { String(format: "%.2fx", $0) } ?? "", 7))
            }

        }
        if ran("training") {
            lines.append("")
            lines.append("3. Training step times (--no-shuffle; target = compute + 1.2 × rounds × raw ipc RTT, the transport launch uses;")
            lines.append("   rounds per step: bn-mlp, wide-mlp \(BenchRun.roundsPerStep("bn-mlp") ?? 0), bn-cnn \(BenchRun.roundsPerStep("bn-cnn") ?? 0))")
            lines.append("   " + pad("model, batch, steps", 26) + pad("command", 18) + lpad("step", 11) + lpad("compute", 11)
                         + lpad("waiting", 11) + lpad("wait CPU", 10) + lpad("target", 11) + lpad("ratio", 8) + lpad("peak RSS", 11))
            for row in training {
                lines.append("   " + pad("\(row.model), \(row.batchSize), \(row.steps)", 26) + pad(row.command, 18)
                             + lpad(String(format: "%.3f ms", row.medianStepMs), 11)
                             + lpad(row.medianComputeMs.map { String(format: "%.3f ms", $0) } ?? "", 11)
                             + lpad(row.medianWaitingMs.map { String(format: "%.3f ms", $0) } ?? "", 11)
                             + lpad(row.medianWaitingCPUMicroseconds.map { String(format: "%.1f us", $0) } ?? "", 10)
                             + lpad(row.targetMs.map { String(format: "%.3f ms", $0) } ?? "", 11)
                             + lpad(row.ratioToTarget.map { String(format: "%.2fx", $0) } ?? "", 8)
                             + lpad(String(format: "%.1f MiB", row.peakRSSMiB), 11))
            }
            lines.append("   (compute, waiting, wait CPU (CPU time burnt per step while waiting): median over workers of each worker's median;")
            lines.append("    peak RSS: wait4 ru_maxrss, max over repeats;")
            lines.append("    for launch, the largest of coordinator and workers; no reading can be below this process's own peak at spawn, \(String(format: "%.1f", spawnFloorMiB)) MiB)")

        }
        if ran("memory") {
            lines.append("")
            lines.append("4. Memory growth (train bn-mlp, peak RSS)")
            if let memory {
                lines.append("   \(memory.shortSteps) steps: \(String(format: "%.1f", memory.shortPeakRSSMiB)) MiB; \(memory.longSteps) steps: \(String(format: "%.1f", memory.longPeakRSSMiB)) MiB; growth \(String(format: "%+.1f", memory.growthMiB)) MiB (\(String(format: "%+.1f", memory.growthPercent))%)")
            } else {
                lines.append("   —")
            }

        }
        if ran("compute") {
            lines.append("")
            lines.append("5. One process, one thread, batch 60 in chunks of 15, in this process (sgemm: OpenBLAS's matrix products)")
            lines.append("   " + pad("model", 10) + lpad("step", 11) + lpad("sgemm", 11) + lpad("share", 8) + lpad("reference", 12) + lpad("ratio", 8))
            for row in compute {
                lines.append("   " + pad(row.model, 10) + lpad(String(format: "%.3f ms", row.medianStepMs), 11)
                             + lpad(String(format: "%.3f ms", row.medianGemmMs), 11) + lpad(String(format: "%.0f%%", row.gemmShare * 100), 8)
                             + lpad(row.referenceMs.map { String(format: "%.2f ms", $0) } ?? "", 12)
                             + lpad(row.referenceMs.map { String(format: "%.2fx", $0 / row.medianStepMs) } ?? "", 8))
            }
            lines.append("   (reference: PyTorch 2.15 CPU, one thread, the same net and batch, quoted from an AVX-512 machine of this kind,")
            lines.append("    not measured in this run; ratio = reference / step, above 1 is faster)")

        }
        if !failures.isEmpty {
            lines.append("")
            lines.append("FAILED:")
            for failure in failures { lines.append("   \(failure)") }
        }
        return lines.joined(separator: "\n")
    }
}
