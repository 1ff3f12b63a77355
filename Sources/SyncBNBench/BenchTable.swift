import Foundation

/// The report as the table `syncbn bench` prints, one block per section that ran.
extension BenchReport {
    /// The table, with a header line naming the machine; failures are listed at the end.
    public func table() -> String {
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
            lines.append("   " + pad("  its CPU time (sending thread)", 40)
                         + lpad(f(raw.roundTripTcpCPUMicroseconds, "%.1f us"), 14) + lpad(f(raw.roundTripIpcCPUMicroseconds, "%.1f us"), 14))
            lines.append("   " + pad("one-way throughput, \(raw.streamMessagesPerRepeat) × 4 MiB", 40)
                         + lpad(f(raw.throughputTcpGBps, "%.2f GB/s"), 14) + lpad(f(raw.throughputIpcGBps, "%.2f GB/s"), 14))
            lines.append("   a blocking wait without ZeroMQ (two threads passing a turn through condition variables, \(raw.bareWaitsPerRepeat) per")
            lines.append("   repeat): the woken thread's CPU per wait \(f(raw.bareWaitCPUMicroseconds, "%.1f us")) — about what any wait for a round costs here")

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
            lines.append("   " + pad("model, batch, steps", 26) + pad("command", 31) + lpad("step", 11) + lpad("compute", 11)
                         + lpad("waiting", 11) + lpad("wait CPU", 10) + lpad("target", 11) + lpad("ratio", 8) + lpad("peak RSS", 11))
            for row in training {
                lines.append("   " + pad("\(row.model), \(row.batchSize), \(row.steps)", 26) + pad(row.command, 31)
                             + lpad(String(format: "%.3f ms", row.medianStepMs), 11)
                             + lpad(row.medianComputeMs.map { String(format: "%.3f ms", $0) } ?? "", 11)
                             + lpad(row.medianWaitingMs.map { String(format: "%.3f ms", $0) } ?? "", 11)
                             + lpad(row.medianWaitingCPUMicroseconds.map { String(format: "%.1f us", $0) } ?? "", 10)
                             + lpad(row.targetMs.map { String(format: "%.3f ms", $0) } ?? "", 11)
                             + lpad(row.ratioToTarget.map { String(format: "%.2fx", $0) } ?? "", 8)
                             + lpad(String(format: "%.1f MiB", row.peakRSSMiB), 11))
            }
            let launches = training.filter { $0.workerWakeups != nil || $0.coordinatorWakeups != nil }
            if !launches.isEmpty {
                lines.append("   wake-ups per step of launch: ZeroMQ messages sent + received, context switches voluntary + involuntary")
                lines.append("   (whole process, libzmq's I/O thread included); means over each run; worker: median over the workers;")
                lines.append("   all switches: the coordinator's and every worker's together")
                lines.append("   all CPU: every process's CPU time per step, all threads; ÷ cores: the shortest step this machine's cores")
                lines.append("   could run that work in, and its ratio to the target (above the ratio's target: unreachable at this CPU)")
                lines.append("   " + pad("model, batch, steps", 26) + pad("command", 31) + lpad("worker msgs", 13) + lpad("worker switches", 17)
                             + lpad("coord msgs", 13) + lpad("coord switches", 17) + lpad("all switches", 14)
                             + lpad("all CPU", 11) + lpad("÷ cores", 11) + lpad("ratio", 8))
                func pair(_ a: Double?, _ b: Double?) -> String { a.flatMap { a in b.map { String(format: "%.1f+%.1f", a, $0) } } ?? "—" }
                for row in launches {
                    let (w, c) = (row.workerWakeups, row.coordinatorWakeups)
                    lines.append("   " + pad("\(row.model), \(row.batchSize), \(row.steps)", 26) + pad(row.command, 31)
                                 + lpad(pair(w?.messagesSentPerStep, w?.messagesReceivedPerStep), 13)
                                 + lpad(pair(w?.voluntaryContextSwitchesPerStep, w?.involuntaryContextSwitchesPerStep), 17)
                                 + lpad(pair(c?.messagesSentPerStep, c?.messagesReceivedPerStep), 13)
                                 + lpad(pair(c?.voluntaryContextSwitchesPerStep, c?.involuntaryContextSwitchesPerStep), 17)
                                 + lpad(f(row.allProcessesContextSwitchesPerStep, "%.1f"), 14)
                                 + lpad(f(row.allProcessesCPUMsPerStep, "%.3f ms"), 11) + lpad(f(row.cpuBoundMs, "%.3f ms"), 11)
                                 + lpad(f(row.cpuBoundRatioToTarget, "%.2fx"), 8))
                }
            }
            if !threadsVersusWorkers.isEmpty {
                lines.append("   two workers of one thread against one worker of two threads, same run (ratio = 2×1 / 1×2, above 1: 1×2 is")
                lines.append("   better; switches: all processes' context switches per step)")
                lines.append("   " + pad("model", 26) + lpad("2×1 step", 11) + lpad("1×2 step", 11) + lpad("ratio", 8)
                             + lpad("2×1 switches", 14) + lpad("1×2 switches", 14) + lpad("ratio", 8))
                for row in threadsVersusWorkers {
                    lines.append("   " + pad(row.model, 26) + lpad(String(format: "%.3f ms", row.twoWorkersOneThreadMs), 11)
                                 + lpad(String(format: "%.3f ms", row.oneWorkerTwoThreadsMs), 11) + lpad(String(format: "%.2fx", row.stepRatio), 8)
                                 + lpad(f(row.twoWorkersOneThreadContextSwitchesPerStep, "%.1f"), 14)
                                 + lpad(f(row.oneWorkerTwoThreadsContextSwitchesPerStep, "%.1f"), 14)
                                 + lpad(f(row.contextSwitchRatio, "%.2fx"), 8))
                }
            }
            if !floors.isEmpty {
                lines.append("   sgemm floor: the step's matrix products, each unchunked (one call over the batch), one OpenBLAS thread, in this")
                lines.append("   process; ratio = train --threads 1 step / floor (target for bn-mlp: ≤ 1.3x)")
                lines.append("   " + pad("model, batch", 26) + lpad("products", 9) + lpad("GFLOP", 9) + lpad("floor", 11) + lpad("train T=1", 11) + lpad("ratio", 8))
                for row in floors {
                    lines.append("   " + pad("\(row.model), \(row.batchSize)", 26) + lpad("\(row.products)", 9)
                                 + lpad(String(format: "%.4f", row.gflopPerStep), 9) + lpad(String(format: "%.3f ms", row.sgemmFloorMs), 11)
                                 + lpad(row.trainOneThreadMs.map { String(format: "%.3f ms", $0) } ?? "—", 11)
                                 + lpad(row.ratio.map { String(format: "%.2fx", $0) } ?? "—", 8))
                }
            }
            lines.append("   (compute, waiting, wait CPU (CPU time burnt per step while waiting): median over workers of each worker's median;")
            if let bare = raw.bareWaitCPUMicroseconds, let rounds = BenchRun.roundsPerStep("bn-mlp") {
                let wait = min(bare, raw.roundTripIpcCPUMicroseconds ?? bare)
                let us = { (sleeps: Double) in String(format: "%g × %.1f = %.0f us", sleeps, wait, sleeps * wait) }
                lines.append("    wait CPU's floor, bn-mlp: a worker that waits for a round sleeps at least once, costing what a bare wait or a")
                lines.append("    whole raw ipc round trip costs its thread, whichever is less (section 1);")
                lines.append("    1 worker: \(us(Double(rounds))) (every round through the coordinator); 2 workers: \(us(Double(rounds - 1) / 2 + 1))")
                lines.append("    on average (each receives right after sending, so in each of the \(rounds - 1) BatchNorm rounds between them at least")
                lines.append("    one of the two sleeps; both wait for the coordinator's gradients);")
            }
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
