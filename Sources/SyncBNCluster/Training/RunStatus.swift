import Foundation

/// What a run tells scripts about itself (`--status-file`), so that they never read log lines: one JSON object
/// per change of state, with snake_case keys that are only ever added to, never renamed.
///
///     {"state":"listening","endpoint":"tcp://10.0.0.1:5555"}                 a coordinator is bound
///     {"state":"training","step":0,"steps":1000,"workers":4}                 started; again at each logged step
///     {"state":"finished","step":1000,"steps":1000,"test_accuracy":0.91,"median_step_seconds":0.034,"model":"…",
///      "messages_sent_per_step":28,"messages_received_per_step":28,"voluntary_context_switches_per_step":41.2,…}  a coordinator
///     {"state":"interrupted","step":420,"checkpoint":"…","resume":["syncbn","train","--resume","…"]}
///     {"state":"failed","error":"…","error_kind":"cannot-bind"}
///     {"state":"joined","rank":0,"workers":4}                                a worker
///     {"state":"finished","rank":0,"step":1000,"median_compute_seconds":…,"median_waiting_seconds":…,"messages_sent_per_step":7,…}
public struct RunStatus: Codable, Equatable, Sendable {
    public enum State: String, Codable, Sendable {
        case listening, training, joined, finished, interrupted, failed
    }

    /// Why a run failed, for scripts that act on it (an unlisted failure has none).
    public enum ErrorKind: String, Codable, Sendable {
        /// The coordinator could not bind its address (in use, or not this host's).
        case cannotBind = "cannot-bind"
    }

    public var state: State
    public var endpoint: String?
    /// Steps done.
    public var step: Int?
    public var steps: Int?
    public var workers: Int?
    public var rank: Int?
    public var testAccuracy: Double?
    public var testLoss: Double?
    public var medianStepSeconds: Double?
    public var medianComputeSeconds: Double?
    public var medianWaitingSeconds: Double?
    public var waitingCPUSeconds: Double?
    /// Wake-ups per step, means over the run (`WakeupCounts`): ZeroMQ messages this process sent and received,
    /// and its context switches (every thread's, libzmq's I/O thread included). A coordinator counts during
    /// its steps (not its evaluations, checkpoints or logs); a worker from the start of its first step to the
    /// end of the job, per step it completed (a step cut short by a lost worker costs, but is not counted).
    public var messagesSentPerStep: Double?
    public var messagesReceivedPerStep: Double?
    public var voluntaryContextSwitchesPerStep: Double?
    public var involuntaryContextSwitchesPerStep: Double?
    /// CPU time of all this process's threads per step (user + system), counted as the wake-ups are.
    public var cpuSecondsPerStep: Double?
    public var model: String?
    public var checkpoint: String?
    /// The command that continues an interrupted or failed run, as words.
    public var resume: [String]?
    public var error: String?
    public var errorKind: ErrorKind?
    /// `launch`: the status each of its worker processes ended with, by process index.
    public var workerStatuses: [RunStatus]?

    public init(_ state: State) { self.state = state }

    enum CodingKeys: String, CodingKey {
        case state, endpoint, step, steps, workers, rank, model, checkpoint, resume, error
        case testAccuracy = "test_accuracy", testLoss = "test_loss", medianStepSeconds = "median_step_seconds"
        case medianComputeSeconds = "median_compute_seconds", medianWaitingSeconds = "median_waiting_seconds"
        case waitingCPUSeconds = "waiting_cpu_seconds", errorKind = "error_kind", workerStatuses = "worker_statuses"
        case messagesSentPerStep = "messages_sent_per_step", messagesReceivedPerStep = "messages_received_per_step"
        case voluntaryContextSwitchesPerStep = "voluntary_context_switches_per_step"
        case involuntaryContextSwitchesPerStep = "involuntary_context_switches_per_step"
        case cpuSecondsPerStep = "cpu_seconds_per_step"
    }

    /// One line of JSON, keys sorted.
    public func encodedLine() -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return ((try? encoder.encode(self)) ?? Data()) + Data("\n".utf8)
    }

    /// The last status in a file written by `StatusReporter` (a file holds one; standard output, many lines).
    public static func read(from path: String) throws -> RunStatus {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TrainingError("cannot read the status file \(path)")
        }
        guard let line = data.split(separator: UInt8(ascii: "\n")).last,
              let status = try? JSONDecoder().decode(RunStatus.self, from: Data(line)) else {
            throw TrainingError("the status file \(path) holds no status")
        }
        return status
    }
}

/// Writes `RunStatus`es where `--status-file` says: `-` for one JSON line each on standard output (what a
/// script reading a remote process's output over SSH wants), or a path, replaced atomically at each change
/// (write beside it, then rename) so that a reader never sees half a status.
public final class StatusReporter: @unchecked Sendable {
    private let destination: String
    private let lock = NSLock()
    /// Kept so that later reports (a worker's rank, a job's totals) can build on earlier ones.
    public private(set) var last: RunStatus?

    /// - Throws: `TrainingError` naming the path when its directory cannot be written (checked now, before
    ///   any training, rather than at the end).
    public init(destination: String) throws {
        self.destination = destination
        guard destination != "-" else { return }
        let directory = (destination as NSString).deletingLastPathComponent
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory.isEmpty ? "." : directory, isDirectory: &isDirectory), isDirectory.boolValue,
              FileManager.default.isWritableFile(atPath: directory.isEmpty ? "." : directory) else {
            throw TrainingError("cannot write the status file \(destination): its directory does not exist or is not writable; give --status-file a path in a writable directory, or - for standard output")
        }
    }

    public func report(_ status: RunStatus) {
        lock.lock()
        defer { lock.unlock() }
        last = status
        let line = status.encodedLine()
        if destination == "-" {
            FileHandle.standardOutput.write(line)
            return
        }
        let temporary = destination + ".tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: temporary, contents: line) else { return }
        _ = rename(temporary, destination)
    }
}
