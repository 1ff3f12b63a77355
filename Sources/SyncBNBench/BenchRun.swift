import Foundation
import SyncBNCluster
import SyncBNCore
import ZeroMQ

/// One run of the benchmark: the chosen sections, each measurement repeated `repeats` times, in the order that
/// keeps the children's peak memory honest (training and memory first), progress on standard error.
public struct BenchRun {
    let repeats: Int
    let quick: Bool
    /// The parts of the benchmark, as `--sections` names them.
    public enum Section: String, CaseIterable { case transport, allreduce, training, memory, compute }
    let sections: Set<Section>
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("syncbn-bench-\(getpid())").path

    /// `quick`: shorter training runs and no 10M-value all-reduce.
    public init(repeats: Int, quick: Bool, sections: Set<Section>) {
        self.repeats = repeats
        self.quick = quick
        self.sections = sections
    }

    /// All-reduce rounds of one step of the preset `model` with --bn sync (no metrics round): its BatchNorm
    /// layers' forward and backward rounds and the gradient round.
    static func roundsPerStep(_ model: String) -> Int? {
        guard let spec = try? ModelSpec.preset(model, input: TensorShape([1, 28, 28]), classes: 10) else { return nil }
        return Network(spec: spec, plan: ChunkPlan(batchSize: 2, chunkSize: 1), optimizer: SGD(learningRate: 0, momentum: 0), seed: 0)
            .rounds(computeMetrics: false).count
    }

    /// Runs the sections; a measurement that fails is recorded in the report's `failures` and the rest go on.
    /// Stops starting measurements once interrupted (see `BenchChildRegistry.interruptAndExit`).
    public mutating func run() -> BenchReport {
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
        // `train` on one thread and on every core (`--threads`); `launch` gives each worker its share of the cores,
        // and then the same two cores as two workers of one thread and as one worker of two threads.
        let cores = ProcessInfo.processInfo.activeProcessorCount
        let trainThreads = cores > 1 ? [1, cores] : [1]
        let twoWorkersOneThread = "launch --workers 2 --threads 1", oneWorkerTwoThreads = "launch --workers 1 --threads 2"
        for model in models where sections.contains(.training) {
            let commands: [(workers: Int?, threads: Int?)] = trainThreads.map { (nil, $0) }
                + (model.name == "bn-cnn" ? [2] : [1, 2, 4]).map { ($0, nil) } + [(2, 1), (1, 2)]
            func name(_ command: (workers: Int?, threads: Int?)) -> String {
                guard let workers = command.workers else { return "train --threads \(command.threads!)" }
                return "launch --workers \(workers)" + (command.threads.map { " --threads \($0)" } ?? "")
            }
            // The repeats take turns: repeat r of every command (and of the sgemm floor) runs before repeat r + 1 of
            // any, so that a slow minute on a shared machine weighs on every row of a ratio alike. A command that
            // fails is not run again.
            var runs = [[BenchTraining.Run]](repeating: [], count: commands.count), failed = Set<Int>(), floorTimes: [Double] = []
            for r in 0..<repeats {
                for (index, command) in commands.enumerated() where !failed.contains(index) {
                    var succeeded = false
                    attempt("\(model.name), \(name(command)), \(model.steps) steps, repeat \(r + 1) of \(repeats)") {
                        runs[index].append(try BenchTraining.run(workers: command.workers,
                                                                 model: model.arguments + (command.threads.map { ["--threads", "\($0)"] } ?? []),
                                                                 steps: model.steps, scratch: scratch, timeoutSeconds: model.timeout))
                        succeeded = true
                    }
                    if !succeeded { failed.insert(index) }
                }
                attempt("\(model.name), sgemm floor (unchunked, one thread), \(model.steps) rounds, repeat \(r + 1) of \(repeats)") {
                    floorTimes.append(try BenchFloor.measure(model: model.name, batchSize: model.batch, rounds: model.steps))
                }
            }
            for (index, (workers, threads)) in commands.enumerated() where !failed.contains(index) {
                let runs = runs[index], command = name((workers, threads))
                let compute = workers == nil ? nil : benchMedian(runs.compactMap { benchMedian($0.workerComputeMs) })
                let waiting = workers == nil ? nil : benchMedian(runs.compactMap { benchMedian($0.workerWaitingMs) })
                let waitingCPU = workers == nil ? nil : benchMedian(runs.compactMap { benchMedian($0.workerWaitingCPUMicroseconds) })
                let step = benchMedian(runs.map(\.medianStepMs))!
                var row = BenchReport.Training(
                    model: model.name, batchSize: model.batch, steps: model.steps, command: command, workers: workers,
                    medianStepMs: step, medianComputeMs: compute, medianWaitingMs: waiting,
                    peakRSSMiB: Double(runs.map(\.maxRSSKiB).max() ?? 0) / 1024)
                row.medianWaitingCPUMicroseconds = waitingCPU
                if let workers {
                    row.rounds = Self.roundsPerStep(model.name)
                    row.threads = threads
                    row.workerWakeups = Self.wakeups(runs.map { $0.workerWakeups.isEmpty ? nil : $0.workerWakeups }) { benchMedian($0) }
                    row.coordinatorWakeups = Self.wakeups(runs.map { $0.coordinatorWakeups.map { [$0] } }) { $0.first }
                    row.allProcessesContextSwitchesPerStep = benchMedian(runs.compactMap { run in
                        guard let coordinator = run.coordinatorWakeups, run.workerWakeups.count == workers else { return nil }
                        return run.workerWakeups.map(\.contextSwitches).reduce(coordinator.contextSwitches, +)
                    })
                    row.allProcessesCPUMsPerStep = benchMedian(runs.compactMap { run in
                        guard let coordinator = run.coordinatorWakeups?.cpuSeconds, run.workerWakeups.count == workers else { return nil }
                        let workersCPU = run.workerWakeups.compactMap(\.cpuSeconds)
                        guard workersCPU.count == workers else { return nil }
                        return workersCPU.reduce(coordinator, +) * 1000
                    })
                    row.cpuBoundMs = row.allProcessesCPUMsPerStep.map { $0 / Double(report.machine.cores) }
                }
                report.training.append(row)
            }
            let rows = (report.training.first { $0.model == model.name && $0.command == twoWorkersOneThread },
                        report.training.first { $0.model == model.name && $0.command == oneWorkerTwoThreads })
            if let two = rows.0, let one = rows.1 {
                let (a, b) = (two.allProcessesContextSwitchesPerStep, one.allProcessesContextSwitchesPerStep)
                report.threadsVersusWorkers.append(.init(
                    model: model.name, twoWorkersOneThreadMs: two.medianStepMs, oneWorkerTwoThreadsMs: one.medianStepMs,
                    stepRatio: two.medianStepMs / one.medianStepMs,
                    twoWorkersOneThreadContextSwitchesPerStep: a, oneWorkerTwoThreadsContextSwitchesPerStep: b,
                    contextSwitchRatio: a.flatMap { a in b.map { a / $0 } }))
            }
            if let floor = benchMedian(floorTimes) {
                attempt("\(model.name), the sgemm floor's products") {
                    let products = try BenchFloor.products(model: model.name, batchSize: model.batch)
                    let train = report.training.first { $0.model == model.name && $0.command == "train --threads 1" }?.medianStepMs
                    report.floors.append(.init(model: model.name, batchSize: model.batch, products: products.count,
                                               gflopPerStep: products.map(\.flops).reduce(0, +) / 1e9, sgemmFloorMs: floor,
                                               trainOneThreadMs: train, ratio: train.map { $0 / floor }))
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
                let (times, cpu) = try BenchNetwork.roundTrip(transport: transport, size: raw.roundTripBytes, count: raw.roundTripsPerRepeat, repeats: repeats)
                if transport == "tcp" {
                    report.raw.roundTripTcpMicroseconds = benchMedian(times)
                    report.raw.roundTripTcpCPUMicroseconds = benchMedian(cpu)
                } else {
                    report.raw.roundTripIpcMicroseconds = benchMedian(times)
                    report.raw.roundTripIpcCPUMicroseconds = benchMedian(cpu)
                }
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

        if sections.contains(.transport) {
            report.raw.bareWaitCPUMicroseconds = benchMedian(BenchWakeup.waitCPUMicroseconds(waits: raw.bareWaitsPerRepeat, repeats: repeats))
        }

        // The targets of section 3 need the raw round trip of section 1.
        // `launch` binds an ipc socket: its rounds are held to the ipc round trip.
        if let rtt = report.raw.roundTripIpcMicroseconds ?? report.raw.roundTripTcpMicroseconds {
            for index in report.training.indices {
                guard let compute = report.training[index].medianComputeMs, let rounds = report.training[index].rounds else { continue }
                let target = compute + 1.2 * Double(rounds) * rtt / 1000
                report.training[index].targetMs = target
                report.training[index].ratioToTarget = report.training[index].medianStepMs / target
                report.training[index].cpuBoundRatioToTarget = report.training[index].cpuBoundMs.map { $0 / target }
            }
        }

        report.wallSeconds = Double(benchNow() - start) / 1e9
        return report
    }

    /// The wake-ups of a row: each field the median over the repeats of `combine` over that repeat's processes
    /// (the workers' median, or the coordinator alone); nil if a repeat has none.
    static func wakeups(_ repeats: [[BenchTraining.Wakeups]?], combine: ([Double]) -> Double?) -> BenchReport.Wakeups? {
        let runs = repeats.compactMap { $0 }
        guard !runs.isEmpty, runs.count == repeats.count else { return nil }
        func field(_ key: KeyPath<BenchTraining.Wakeups, Double>) -> Double {
            benchMedian(runs.compactMap { combine($0.map { $0[keyPath: key] }) }) ?? .nan
        }
        return .init(messagesSentPerStep: field(\.messagesSent), messagesReceivedPerStep: field(\.messagesReceived),
                     voluntaryContextSwitchesPerStep: field(\.voluntaryContextSwitches),
                     involuntaryContextSwitchesPerStep: field(\.involuntaryContextSwitches))
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
