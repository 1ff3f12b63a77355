import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Every child `syncbn bench` has started and not yet reaped, so that Ctrl-C (or an error) can stop them by id.
public final class BenchChildRegistry: @unchecked Sendable {
    public static let shared = BenchChildRegistry()
    private let lock = NSLock()
    private var pids: Set<pid_t> = []
    private var interrupted = false
    /// Removed on Ctrl-C, which exits without unwinding.
    var scratchDirectory: String?

    /// Set once Ctrl-C or SIGTERM has begun stopping the children.
    public var isInterrupted: Bool { lock.withLock { interrupted } }

    /// Starts a child with `spawn` and registers it, atomically with respect to `stopAll`: once that has begun,
    /// nothing more is started.
    func spawn(_ spawn: () throws -> pid_t) throws -> pid_t {
        try lock.withLock {
            guard !interrupted else { throw BenchError("interrupted") }
            let pid = try spawn()
            pids.insert(pid)
            return pid
        }
    }

    func remove(_ pid: pid_t) { lock.withLock { _ = pids.remove(pid) } }

    /// Ctrl-C / SIGTERM: refuse new children, SIGTERM every live one, wait a little, SIGKILL the rest, reap them all.
    func stopAll() {
        let live = lock.withLock { interrupted = true; return Array(pids) }
        for pid in live { kill(pid, SIGTERM) }
        let deadline = Date().addingTimeInterval(3)
        var remaining = Set(live)
        while !remaining.isEmpty && Date() < deadline {
            for pid in remaining where waitpid(pid, nil, WNOHANG) != 0 { remaining.remove(pid) }
            if !remaining.isEmpty { usleep(20_000) }
        }
        for pid in remaining {
            kill(pid, SIGKILL)
            _ = waitpid(pid, nil, 0)
        }
        lock.withLock { pids.subtract(live) }
    }
}

/// How a child ended.
struct BenchExit {
    var exitCode: Int32?
    var signal: Int32?
    /// Peak resident set of the child and of the children it reaped (Linux wait4: RUSAGE_BOTH), in KiB.
    var maxRSSKiB: Int
    var timedOut: Bool

    var succeeded: Bool { exitCode == 0 && !timedOut }
    var description: String {
        if timedOut { return "timed out" }
        if let signal { return "killed by signal \(signal)" }
        return "exited with status \(exitCode ?? -1)"
    }
}

/// A child started with posix_spawn and reaped with wait4 (not Foundation's Process, which reaps on its own and
/// loses the resource usage). Always reaped: by `wait`, `stop`, or at the latest by `deinit`.
final class BenchChild {
    let pid: pid_t
    private(set) var result: BenchExit?

    /// Starts this executable with `arguments`. Standard output and error go to `logPath` if given (else are
    /// inherited). SIGINT and SIGTERM are reset to their defaults in the child.
    init(arguments: [String], logPath: String? = nil) throws {
        let executable = Bundle.main.executablePath ?? CommandLine.arguments[0]
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if let logPath {
            posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        sigaddset(&defaults, SIGINT)
        sigaddset(&defaults, SIGTERM)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        pid = try BenchChildRegistry.shared.spawn {
            var pid: pid_t = 0
            let status = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
            guard status == 0 else { throw BenchError("cannot start \(executable): \(String(cString: strerror(status)))") }
            return pid
        }
    }

    deinit { stop(graceSeconds: 0) }

    /// Reaps the child if it has exited; true once it has.
    @discardableResult
    private func poll(blocking: Bool = false) -> Bool {
        if result != nil { return true }
        var status: Int32 = 0
        var usage = rusage()
        var reaped: pid_t
        repeat { reaped = wait4(pid, &status, blocking ? 0 : WNOHANG, &usage) } while reaped < 0 && errno == EINTR
        if reaped == 0 { return false }
        if reaped < 0 {
            // Already reaped elsewhere (e.g. by the Ctrl-C handler): nothing more to learn.
            result = BenchExit(exitCode: nil, signal: nil, maxRSSKiB: 0, timedOut: false)
        } else {
            let low = status & 0x7f
            result = BenchExit(exitCode: low == 0 ? (status >> 8) & 0xff : nil, signal: low == 0 ? nil : low,
                               maxRSSKiB: Int(usage.ru_maxrss), timedOut: false)
        }
        BenchChildRegistry.shared.remove(pid)
        return true
    }

    /// Waits up to `timeoutSeconds` for the child to exit by itself; on timeout stops it (SIGTERM, then SIGKILL)
    /// and marks the result timed out.
    @discardableResult
    func wait(timeoutSeconds: Double) -> BenchExit {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while !poll() {
            if Date() >= deadline {
                stop(graceSeconds: 5)
                result?.timedOut = true
                break
            }
            usleep(2_000)
        }
        return result!
    }

    /// Stops the child if it is still running: SIGTERM, up to `graceSeconds` to exit, then SIGKILL. Reaps it.
    @discardableResult
    func stop(graceSeconds: Double) -> BenchExit {
        if poll() { return result! }
        if graceSeconds > 0 {
            kill(pid, SIGTERM)
            let deadline = Date().addingTimeInterval(graceSeconds)
            while !poll() && Date() < deadline { usleep(5_000) }
        }
        if result == nil {
            kill(pid, SIGKILL)
            poll(blocking: true)
        }
        return result!
    }
}

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension BenchChildRegistry {
    /// What Ctrl-C or SIGTERM does during `syncbn bench` (the command's signal handler calls it): stops every
    /// registered child, removes the scratch directory and exits 130.
    public func interruptAndExit() -> Never {
        FileHandle.standardError.write(Data("bench: interrupted, stopping the child processes\n".utf8))
        stopAll()
        if let scratch = scratchDirectory { try? FileManager.default.removeItem(atPath: scratch) }
        _exit(130)  // not exit(): no atexit handlers or destructors racing the other threads
    }
}
