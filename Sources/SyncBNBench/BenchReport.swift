import Foundation

/// Everything one `syncbn bench` run measured: the machine, the raw ZeroMQ baselines, the all-reduce rounds,
/// the training step times, one process's compute and the memory growth. Written as JSON; `table()` prints it.
public struct BenchReport: Codable {
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
        /// CPU time of the sending thread per round trip (send, block, receive): what a wait for one round costs
        /// at least.
        var roundTripTcpCPUMicroseconds: Double?
        var roundTripIpcCPUMicroseconds: Double?
        /// A blocking wait without ZeroMQ: two threads of this process hand a turn back and forth through a
        /// mutex and a condition variable (what `ChunkThreads` waits on), and this is the CPU time the woken
        /// thread spends per wait, from going to sleep to running again: about what any blocking wait for a
        /// round costs on this machine, whatever the transport (the waiting CPU's floor in the table takes the
        /// lesser of this and a whole raw round trip's CPU).
        var bareWaitCPUMicroseconds: Double?
        var bareWaitsPerRepeat = 20_000
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
        /// launch: each worker's threads (`--threads`), when the row sets them.
        var threads: Int?
        /// launch: wake-ups per step of a worker (median over the workers of each one's mean, median over the
        /// repeats) and of the coordinator (median over the repeats).
        var workerWakeups: Wakeups?
        var coordinatorWakeups: Wakeups?
        /// launch: context switches per step of the coordinator and every worker together (median over the repeats).
        var allProcessesContextSwitchesPerStep: Double?
        /// launch: CPU time per step of the coordinator and every worker together, all threads (median over the
        /// repeats); divided by the machine's cores, the shortest step those cores could give that much work
        /// (`cpuBoundMs`), and that over `targetMs`: above the ratio's target, no scheduling on this machine
        /// meets it without cutting the CPU a step costs.
        var allProcessesCPUMsPerStep: Double?
        var cpuBoundMs: Double?
        var cpuBoundRatioToTarget: Double?
    }

    /// Per step, means over a run (`RunStatus`): ZeroMQ messages a process sent and received, and its context
    /// switches (the whole process's, libzmq's I/O thread included).
    struct Wakeups: Codable {
        var messagesSentPerStep: Double
        var messagesReceivedPerStep: Double
        var voluntaryContextSwitchesPerStep: Double
        var involuntaryContextSwitchesPerStep: Double

        var messagesPerStep: Double { messagesSentPerStep + messagesReceivedPerStep }
        var contextSwitchesPerStep: Double { voluntaryContextSwitchesPerStep + involuntaryContextSwitchesPerStep }
    }

    /// The same cores as two single-threaded workers or as one worker of two threads (`launch --workers 2
    /// --threads 1` against `launch --workers 1 --threads 2`), measured in the same run.
    struct ThreadsVersusWorkers: Codable {
        var model: String
        var twoWorkersOneThreadMs: Double
        var oneWorkerTwoThreadsMs: Double
        /// Two workers' step over one worker's: above 1, the one worker of two threads is faster.
        var stepRatio: Double
        var twoWorkersOneThreadContextSwitchesPerStep: Double?
        var oneWorkerTwoThreadsContextSwitchesPerStep: Double?
        /// Every process's context switches per step, two workers' over one worker's.
        var contextSwitchRatio: Double?
    }

    /// A model's sgemm floor (`BenchFloor`): its step's matrix products, unchunked, on one thread, measured in
    /// this process, and `train --threads 1`'s median step against it.
    struct Floor: Codable {
        var model: String
        var batchSize: Int
        var products: Int
        var gflopPerStep: Double
        var sgemmFloorMs: Double
        var trainOneThreadMs: Double?
        var ratio: Double?
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
    var threadsVersusWorkers: [ThreadsVersusWorkers] = []
    var compute: [Compute] = []
    var floors: [Floor] = []
    var memory: Memory?
    /// The benchmark's own peak RSS when it started the training runs: no child's peak can read lower.
    var spawnFloorMiB: Double = 0
    /// The measurements that failed, each with its error; a non-empty list makes `syncbn bench` exit non-zero.
    public var failures: [String] = []
}
