import Foundation
import Logging

/// Worker processes started on this machine by `syncbn launch`: their output is relayed line by line with
/// a `[process i]` prefix (not the worker's rank: the coordinator gives ranks in order of arrival, and each
/// worker's lines say its own), an unexpected exit of any of them is reported to its `onFailure`, and every
/// one of them is stopped by process id when the launch ends.
public final class ChildProcesses: @unchecked Sendable {
    private let lock = NSLock()
    private var processes: [Process] = []
    private var stopping = false
    private var relays: [Thread] = []
    /// Left by each relay when its child's output is drained (end of file).
    private let relaysDone = DispatchGroup()

    public init() {}

    public var processIdentifiers: [Int32] { lock.withLock { processes.map(\.processIdentifier) } }

    /// Starts `executable arguments` as child `index`; `onFailure` hears of an unexpected exit.
    public func start(executable: String, arguments: [String], index: Int, onFailure: @escaping @Sendable (String) -> Void = { _ in }) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        process.terminationHandler = { [weak self] finished in
            guard let self else { return }
            let reason: String? = self.lock.withLock {
                guard !self.stopping, finished.terminationStatus != 0 else { return nil }
                let how = finished.terminationReason == .uncaughtSignal ? "was killed by signal" : "exited with status"
                return "worker process \(index) (pid \(finished.processIdentifier)) \(how) \(finished.terminationStatus)"
            }
            if let reason { onFailure(reason) }
        }
        do {
            try process.run()
        } catch {
            throw ClusterError("cannot start \(executable): \(error.localizedDescription)")
        }
        relaysDone.enter()
        let relay = Thread { [relaysDone] in
            Self.relay(pipe.fileHandleForReading, prefix: "[process \(index)] ")
            relaysDone.leave()
        }
        relay.start()
        lock.withLock {
            processes.append(process)
            relays.append(relay)
        }
    }

    /// Waits up to `seconds` for every child to exit by itself, then kills the rest (SIGTERM, then SIGKILL).
    /// Returns once every child is gone and its last lines are relayed (a line a child wrote just before
    /// exiting is not lost when launch exits right after).
    public func stopAll(graceSeconds seconds: Double) {
        let children = lock.withLock { stopping = true; return processes }
        let deadline = Date().addingTimeInterval(seconds)
        for child in children {
            while child.isRunning && Date() < deadline { usleep(10_000) }
            if child.isRunning { kill(child.processIdentifier, SIGTERM) }
        }
        let killDeadline = Date().addingTimeInterval(2)
        for child in children {
            while child.isRunning && Date() < killDeadline { usleep(10_000) }
            if child.isRunning { kill(child.processIdentifier, SIGKILL) }
            child.waitUntilExit()
        }
        _ = relaysDone.wait(timeout: .now() + 2)
    }

    /// Sends `signal` to every child at once (Ctrl-C handling), without waiting.
    public func signalAll(_ signal: Int32) {
        let children = lock.withLock { stopping = true; return processes }
        for child in children where child.isRunning { kill(child.processIdentifier, signal) }
    }

    private static func relay(_ handle: FileHandle, prefix: String) {
        var pending = Data()
        while true {
            let chunk = handle.availableData
            if chunk.isEmpty { break }
            pending.append(chunk)
            while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = pending[pending.startIndex...newline]
                FileHandle.standardError.write(Data(prefix.utf8) + line)
                pending.removeSubrange(pending.startIndex...newline)
            }
        }
        if !pending.isEmpty { FileHandle.standardError.write(Data(prefix.utf8) + pending + Data("\n".utf8)) }
    }
}
