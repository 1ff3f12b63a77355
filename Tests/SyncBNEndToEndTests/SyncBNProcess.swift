// Helpers for the multi-process tests: run the real `syncbn` executable as a child process, capture its
// output, bound it in time, and clean up every process by its id.
//
// The helpers spawn with posix_spawn and reap with waitpid themselves (no Foundation.Process), so that a
// test knows exactly which pids it started and can kill and reap each one in tearDown.

import Foundation
import XCTest

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Where the tests find their inputs.
enum TestEnvironment {
    static let dataDirectory = "/usr/share/datasets/fashion-mnist"

    /// The `syncbn` executable built beside the test bundle (same products directory), or `$SYNCBN_EXECUTABLE`.
    static let executable: String? = {
        if let path = ProcessInfo.processInfo.environment["SYNCBN_EXECUTABLE"], !path.isEmpty { return path }
        var directories = [
            Bundle.main.bundleURL,  // Linux: the products directory, e.g. .build/debug
            Bundle(for: SyncBNProcess.self).bundleURL.deletingLastPathComponent(),  // macOS: beside the .xctest
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent(),
        ]
        if let first = CommandLine.arguments.first, first.hasSuffix(".xctest") {
            directories.append(URL(fileURLWithPath: first).deletingLastPathComponent())
        }
        for directory in directories {
            let candidate = directory.appendingPathComponent("syncbn").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }()

    static var hasDataSet: Bool {
        var isDirectory: ObjCBool = false
        return FileManager.default.fileExists(atPath: dataDirectory, isDirectory: &isDirectory) && isDirectory.boolValue
    }
}

/// How a process ended.
enum Termination: Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    init(waitStatus status: Int32) {
        if status & 0x7f == 0 {
            self = .exited((status >> 8) & 0xff)
        } else {
            self = .signaled(status & 0x7f)
        }
    }

    var isSuccess: Bool { self == .exited(0) }

    var description: String {
        switch self {
        case .exited(let code): "exit status \(code)"
        case .signaled(let signal): "killed by signal \(signal)"
        }
    }
}

/// Bytes read from one pipe, with a way to wait for a given text to appear.
final class OutputBuffer: @unchecked Sendable {
    private let condition = NSCondition()
    private var data = Data()
    private var closed = false

    func append(_ chunk: Data) {
        condition.lock()
        data.append(chunk)
        condition.broadcast()
        condition.unlock()
    }

    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        condition.unlock()
    }

    var text: String {
        condition.lock()
        defer { condition.unlock() }
        return String(decoding: data, as: UTF8.self)
    }

    /// Waits until `predicate` holds for the text so far, the pipe closes, or the deadline passes.
    func wait(until deadline: Date, for predicate: (String) -> Bool) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while true {
            if predicate(String(decoding: data, as: UTF8.self)) { return true }
            if closed { return false }
            if !condition.wait(until: deadline) {
                return predicate(String(decoding: data, as: UTF8.self))
            }
        }
    }

    /// Waits until the writer closed the pipe (every process holding it exited), or the deadline.
    func waitClosed(until deadline: Date) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        while !closed {
            if !condition.wait(until: deadline) { return closed }
        }
        return true
    }
}

/// A `syncbn` child process: its pid, its captured standard output and error, and its termination.
final class SyncBNProcess: @unchecked Sendable {
    let pid: pid_t
    let arguments: [String]
    let started = Date()
    let standardOutput = OutputBuffer()
    let standardError = OutputBuffer()

    private let exitCondition = NSCondition()
    private var termination: Termination?

    struct SpawnError: Error, CustomStringConvertible {
        let description: String
    }

    /// Starts `syncbn arguments` with standard input from /dev/null and both outputs captured.
    init(_ arguments: [String]) throws {
        guard let executable = TestEnvironment.executable else {
            throw SpawnError(description: "cannot find the syncbn executable beside the test bundle (\(Bundle.main.bundleURL.path)): run `swift build --build-tests` first, or set SYNCBN_EXECUTABLE")
        }
        self.arguments = arguments
        let outPipe = try Self.makePipe(), errPipe = try Self.makePipe()

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe.write, 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe.write, 2)

        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, executable, &actions, nil, argv, environ)
        close(outPipe.write)
        close(errPipe.write)
        guard result == 0 else {
            close(outPipe.read)
            close(errPipe.read)
            throw SpawnError(description: "posix_spawn \(executable): \(String(cString: strerror(result)))")
        }
        let spawned = child
        pid = spawned

        Self.startReader(fd: outPipe.read, into: standardOutput, name: "stdout \(spawned)")
        Self.startReader(fd: errPipe.read, into: standardError, name: "stderr \(spawned)")
        // Reaps the child as soon as it exits; waiting on the result is waiting on an event.
        let reaper = Thread { [self] in
            var status: Int32 = 0
            var reaped: pid_t
            repeat { reaped = waitpid(spawned, &status, 0) } while reaped < 0 && errno == EINTR
            exitCondition.lock()
            termination = reaped == spawned ? Termination(waitStatus: status) : .exited(-1)
            exitCondition.broadcast()
            exitCondition.unlock()
        }
        reaper.name = "reaper \(spawned)"
        reaper.start()
    }

    /// The termination, if the process has exited (and was reaped).
    var exitStatus: Termination? {
        exitCondition.lock()
        defer { exitCondition.unlock() }
        return termination
    }

    var isRunning: Bool { exitStatus == nil }

    /// Waits for the process to exit, at most `seconds`. Returns nil if it is still running.
    @discardableResult
    func waitForExit(seconds: Double) -> Termination? {
        let deadline = Date().addingTimeInterval(seconds)
        exitCondition.lock()
        defer { exitCondition.unlock() }
        while termination == nil {
            if !exitCondition.wait(until: deadline) { break }
        }
        return termination
    }

    /// Waits until standard error (where syncbn logs) contains `text`, at most `seconds`.
    func waitForStandardError(containing text: String, seconds: Double) -> Bool {
        standardError.wait(until: Date().addingTimeInterval(seconds)) { $0.contains(text) }
    }

    /// Sends `signal` to this process, by its pid, if it has not been reaped yet.
    func signal(_ signal: Int32) {
        exitCondition.lock()
        defer { exitCondition.unlock() }
        // Once reaped, the pid may belong to someone else: never signal it then.
        if termination == nil { kill(pid, signal) }
    }

    /// Kills the process with SIGKILL if it still runs, and waits until it is reaped.
    func killAndReap() {
        signal(SIGKILL)
        waitForExit(seconds: 30)
    }

    /// After exit: waits (briefly) until both pipes reached end of file, so the output is complete.
    func drainOutput(seconds: Double = 5) {
        let deadline = Date().addingTimeInterval(seconds)
        _ = standardOutput.waitClosed(until: deadline)
        _ = standardError.waitClosed(until: deadline)
    }

    var stdout: String { standardOutput.text }
    var stderr: String { standardError.text }

    /// A summary for failure messages.
    var transcript: String {
        "$ syncbn \(arguments.joined(separator: " "))  [pid \(pid), \(exitStatus.map(\.description) ?? "still running")]\n--- stdout ---\n\(stdout)--- stderr ---\n\(stderr)"
    }

    private static func makePipe() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw SpawnError(description: "pipe: \(String(cString: strerror(errno)))") }
        // Close-on-exec, so that no other child inherits them and keeps the pipe open.
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        return (fds[0], fds[1])
    }

    private static func startReader(fd: Int32, into buffer: OutputBuffer, name: String) {
        let thread = Thread {
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                buffer.append(Data(chunk[0..<n]))
            }
            close(fd)
            buffer.close()
        }
        thread.name = name
        thread.start()
    }
}

/// The result of a finished `syncbn` run.
struct CompletedRun {
    let termination: Termination
    let stdout: String
    let stderr: String
    let seconds: Double
    let transcript: String

    var succeeded: Bool { termination.isSuccess }
    /// Lines of standard error at level ERROR.
    var errorLines: [String] { stderr.split(separator: "\n").map(String.init).filter { $0.contains(" ERROR ") || $0.hasPrefix("Error: ") } }
}

/// Base class of the multi-process tests: starts processes, keeps their pids, kills and reaps whatever still
/// runs in tearDown, and hands out temporary directories that are removed afterwards.
class SyncBNProcessTestCase: XCTestCase {
    private var processes: [SyncBNProcess] = []
    /// Processes started by a child (e.g. `launch`'s workers): killed by pid in tearDown if still there.
    private var foreignProcessIDs: [pid_t] = []
    private var temporaryDirectories: [URL] = []

    /// Default deadline of one `syncbn` run.
    var defaultTimeout: Double { 120 }

    override func setUpWithError() throws {
        try super.setUpWithError()
        guard TestEnvironment.executable != nil else {
            XCTFail("cannot find the syncbn executable beside the test bundle (\(Bundle.main.bundleURL.path)): run `swift build --build-tests`, or set SYNCBN_EXECUTABLE")
            throw SyncBNProcess.SpawnError(description: "no syncbn executable")
        }
    }

    override func tearDown() {
        for process in processes where process.isRunning {
            process.killAndReap()
        }
        for pid in foreignProcessIDs where Self.isSyncBNProcess(pid) {
            kill(pid, SIGKILL)
        }
        processes.removeAll()
        foreignProcessIDs.removeAll()
        for directory in temporaryDirectories {
            try? FileManager.default.removeItem(at: directory)
        }
        temporaryDirectories.removeAll()
        super.tearDown()
    }

    /// Skips the test when Fashion-MNIST is not installed.
    func requireDataSet() throws {
        guard TestEnvironment.hasDataSet else {
            throw XCTSkip("Fashion-MNIST is not installed at \(TestEnvironment.dataDirectory): `apt-get install dataset-fashion-mnist` to run this test")
        }
    }

    /// A fresh empty directory, removed in tearDown.
    func makeTemporaryDirectory(_ name: String = "run") throws -> URL {
        let url = FileManager.default.temporaryDirectory
            .appendingPathComponent("syncbn-e2e-\(name)-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        temporaryDirectories.append(url)
        return url
    }

    /// Starts `syncbn arguments` and registers it for cleanup.
    func start(_ arguments: [String]) throws -> SyncBNProcess {
        let process = try SyncBNProcess(arguments)
        processes.append(process)
        return process
    }

    /// Registers pids started by one of our children, to be killed in tearDown if still alive.
    func registerForeignProcesses(_ pids: [pid_t]) { foreignProcessIDs += pids }

    /// Waits for `process` to exit within `seconds`; on timeout kills it, fails the test and throws.
    @discardableResult
    func finish(_ process: SyncBNProcess, seconds: Double? = nil, file: StaticString = #filePath, line: UInt = #line) throws -> CompletedRun {
        let limit = seconds ?? defaultTimeout
        guard let termination = process.waitForExit(seconds: limit) else {
            process.killAndReap()
            process.drainOutput(seconds: 2)
            XCTFail("timed out after \(limit) s; killed\n\(process.transcript)", file: file, line: line)
            throw SyncBNProcess.SpawnError(description: "syncbn \(process.arguments.joined(separator: " ")) timed out")
        }
        process.drainOutput()
        return CompletedRun(termination: termination, stdout: process.stdout, stderr: process.stderr,
                            seconds: Date().timeIntervalSince(process.started), transcript: process.transcript)
    }

    /// Runs `syncbn arguments` to completion, within `seconds`.
    @discardableResult
    func run(_ arguments: [String], seconds: Double? = nil, file: StaticString = #filePath, line: UInt = #line) throws -> CompletedRun {
        try finish(try start(arguments), seconds: seconds, file: file, line: line)
    }

    /// Runs `syncbn arguments`, asserting it exits 0.
    @discardableResult
    func runSuccessfully(_ arguments: [String], seconds: Double? = nil, file: StaticString = #filePath, line: UInt = #line) throws -> CompletedRun {
        let result = try run(arguments, seconds: seconds, file: file, line: line)
        guard result.succeeded else {
            XCTFail("expected exit status 0\n\(result.transcript)", file: file, line: line)
            throw SyncBNProcess.SpawnError(description: "syncbn \(arguments.first ?? "") failed: \(result.termination)")
        }
        return result
    }

    /// Reads `directory/model.safetensors`, failing the test if it is missing or empty.
    func model(in directory: URL, file: StaticString = #filePath, line: UInt = #line) throws -> Data {
        let url = directory.appendingPathComponent("model.safetensors")
        let data = try XCTUnwrap(FileManager.default.contents(atPath: url.path), "no model at \(url.path)", file: file, line: line)
        XCTAssertGreaterThan(data.count, 8, "model file is empty", file: file, line: line)
        return data
    }

    /// True if `pid` names a live (not zombie) process whose command line mentions syncbn.
    static func isSyncBNProcess(_ pid: pid_t) -> Bool {
        guard isAlive(pid), let cmdline = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        return String(decoding: cmdline, as: UTF8.self).contains("syncbn")
    }

    /// True if `pid` exists and is not a zombie.
    static func isAlive(_ pid: pid_t) -> Bool {
        if kill(pid, 0) != 0 && errno == ESRCH { return false }
        if let stat = FileManager.default.contents(atPath: "/proc/\(pid)/stat") {
            // "pid (comm) S ...": the state follows the last ')'.
            let text = String(decoding: stat, as: UTF8.self)
            if let close = text.lastIndex(of: ")") {
                let state = text[text.index(after: close)...].trimmingCharacters(in: .whitespaces).first
                return state != "Z" && state != "X"
            }
        }
        return true
    }

    /// A TCP port on 127.0.0.1 that nothing listened on a moment ago (the kernel picked it).
    static func freeLoopbackPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SyncBNProcess.SpawnError(description: "socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw SyncBNProcess.SpawnError(description: "bind: \(String(cString: strerror(errno)))") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// Writes a test's input file; a fixture that cannot be written stops the test run here, with its path, rather
/// than as a missing file in a command's error later.
func writeFixture(_ contents: Data, to path: String) {
    precondition(FileManager.default.createFile(atPath: path, contents: contents), "could not write the test fixture \(path)")
}
