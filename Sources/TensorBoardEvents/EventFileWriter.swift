// Writes TensorBoard event files: TFRecord-framed `Event` protos.

import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why an event file could not be created or written. `description` is one line naming the path and the fix.
public enum EventFileError: Error, CustomStringConvertible, Equatable {
    /// The file could not be created in `directory` (`reason`: the system's message).
    case cannotCreate(path: String, reason: String)
    /// Writing to the file failed (disk full, file system gone, ...).
    case writeFailed(path: String, reason: String)
    /// A record was added after `close()`.
    case closed(path: String)

    public var description: String {
        switch self {
        case .cannotCreate(let path, let reason):
            let directory = (path as NSString).deletingLastPathComponent
            return "cannot create TensorBoard event file \(path): \(reason) (create the directory first, "
                + "e.g. mkdir -p '\(directory)', and check it is writable)"
        case .writeFailed(let path, let reason):
            return "cannot write TensorBoard event file \(path): \(reason) (check free space and that the file system is still mounted)"
        case .closed(let path):
            return "TensorBoard event file \(path) was already closed (add records before close())"
        }
    }
}

/// Writes one TensorBoard event file.
///
/// Format: a sequence of TFRecords, each `uint64 length` (little-endian), `uint32` masked CRC-32C of those
/// 8 bytes, `length` bytes of data, `uint32` masked CRC-32C of the data (see `CRC32C.mask`). Each record's
/// data is a serialized `tensorflow.Event`: 1 `wall_time` (double, seconds since 1970), 2 `step` (int64),
/// 3 `file_version` (string), 5 `summary` (`Summary`: repeated field 1 `value`, each `Summary.Value` with
/// 1 `tag`, 2 `simple_value` (float) or 5 `histo` (`HistogramProto`, see `Histogram`)), 7 `session_log`
/// (`SessionLog`: 1 `status`, see `addSessionStart`). The first record is
/// `Event { wall_time, file_version: "brain.Event:2" }`, which TensorBoard requires.
///
/// The file is `<directory>/events.out.tfevents.<unix seconds>.<hostname>.<pid>.<n>`, where `n` counts the
/// writers this process created (and skips names that already exist), so several writers into one directory,
/// even within one second, never collide. TensorBoard reads every file whose name contains "tfevents", in
/// name order: a file begun in a later second sorts after the earlier ones (within one second the order of
/// `<pid>.<n>` is lexicographic, not chronological).
///
/// Records are buffered in memory and written when the buffer passes 64 KiB, on `flush()`, `close()` and
/// deinit. The `add` methods do not throw: a write failure during an automatic flush is kept and thrown by
/// the next `flush()` or `close()`. Not thread-safe: use one writer from one thread (or serialize calls).
public final class EventFileWriter {
    /// The event file's full path.
    public let path: String

    private var fd: Int32
    private var buffer: [UInt8] = []
    private var pendingError: EventFileError?
    private static let bufferLimit = 64 * 1024
    private static let counterLock = NSLock()
    private static var counter = 0

    /// Creates the event file in `directory` (which must exist) and writes its first record.
    /// `now` gives the file name's timestamp and the first record's wall time.
    public init(directory: String, now: Date = Date()) throws {
        let seconds = Int(now.timeIntervalSince1970)
        let host = Self.hostname()
        let pid = ProcessInfo.processInfo.processIdentifier
        var attempt = 0
        while true {
            let n: Int = Self.counterLock.withLock {
                Self.counter += 1
                return Self.counter
            }
            let candidate = (directory as NSString).appendingPathComponent(
                "events.out.tfevents.\(seconds).\(host).\(pid).\(n)")
            let opened = open(candidate, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            if opened >= 0 {
                path = candidate
                fd = opened
                break
            }
            let code = errno
            attempt += 1
            if code != EEXIST || attempt >= 1000 {
                throw EventFileError.cannotCreate(path: candidate, reason: String(cString: strerror(code)))
            }
        }
        var event = ProtobufWriter()
        event.writeDouble(1, now.timeIntervalSince1970)
        event.writeString(3, "brain.Event:2")
        appendRecord(event.bytes)
        try flush()
    }

    deinit {
        if fd >= 0 {
            try? flush()
            closeDescriptor(fd)
        }
    }

    /// Logs one scalar (TensorBoard's Scalars tab; stored as a float32 `simple_value`).
    public func addScalar(_ tag: String, _ value: Double, step: Int, wallTime: Double) {
        addSummary(step: step, wallTime: wallTime, scalars: [(tag, value)], histograms: [])
    }

    /// Logs one histogram (TensorBoard's Histograms and Distributions tabs).
    public func addHistogram(_ tag: String, _ histogram: Histogram, step: Int, wallTime: Double) {
        addSummary(step: step, wallTime: wallTime, scalars: [], histograms: [(tag, histogram)])
    }

    /// Logs scalars and histograms of one step as one `Event` (one record), scalars first.
    public func addSummary(step: Int, wallTime: Double, scalars: [(String, Double)],
                           histograms: [(String, Histogram)] = []) {
        appendEvent(step: step, wallTime: wallTime) { event in event.writeMessage(5) { summary in
            for (tag, value) in scalars {
                summary.writeMessage(1) { v in
                    v.writeString(1, tag)
                    v.writeFloat(2, Float(value))
                }
            }
            for (tag, histogram) in histograms {
                summary.writeMessage(1) { v in
                    v.writeString(1, tag)
                    v.writeMessage(5) { histogram.encode(into: &$0) }
                }
            }
        } }
        if buffer.count >= Self.bufferLimit {
            do { try writeBuffer() } catch let error as EventFileError {
                if pendingError == nil { pendingError = error }
            } catch {}
        }
    }

    /// Logs a session start at `step`: `Event { wall_time, step, session_log (field 7): SessionLog { status
    /// (field 1) = START (1) } }`. TensorBoard's reader, meeting it, discards every event already read with a
    /// step >= `step` (in all tags): write it first in the file of a run resumed at `step`, so that values an
    /// interrupted earlier file logged after its last checkpoint are not shown twice.
    public func addSessionStart(step: Int, wallTime: Double) {
        appendEvent(step: step, wallTime: wallTime) { $0.writeMessage(7) { $0.writeUInt64(1, 1) } }
    }

    /// Frames `Event { wall_time, step, fields written by body }` into the buffer; after `close()`, notes the
    /// misuse for the next `flush()` instead.
    private func appendEvent(step: Int, wallTime: Double, _ body: (inout ProtobufWriter) -> Void) {
        guard fd >= 0 else {
            if pendingError == nil { pendingError = .closed(path: path) }
            return
        }
        var event = ProtobufWriter()
        event.writeDouble(1, wallTime)
        event.writeInt64(2, Int64(step))
        body(&event)
        appendRecord(event.bytes)
    }

    /// Writes the buffered records to the file; throws the first write failure since the last flush.
    /// (The buffer is written even when an earlier failure is being reported.)
    public func flush() throws {
        var failure = pendingError
        pendingError = nil
        if fd >= 0 {
            do { try writeBuffer() } catch { if failure == nil { failure = error as? EventFileError } }
        }
        if let failure { throw failure }
    }

    /// Flushes and closes the file; later `add` calls are refused (reported by `flush()`). Closing twice is
    /// harmless.
    public func close() throws {
        guard fd >= 0 else { return try flush() }
        defer {
            closeDescriptor(fd)
            fd = -1
        }
        try flush()
    }

    // MARK: - Private

    /// Frames `data` as a TFRecord into the buffer.
    private func appendRecord(_ data: [UInt8]) {
        var length = UInt64(data.count).littleEndian
        let header = withUnsafeBytes(of: &length) { Array($0) }
        var headerCRC = CRC32C.maskedChecksum(header).littleEndian
        var dataCRC = CRC32C.maskedChecksum(data).littleEndian
        buffer.append(contentsOf: header)
        withUnsafeBytes(of: &headerCRC) { buffer.append(contentsOf: $0) }
        buffer.append(contentsOf: data)
        withUnsafeBytes(of: &dataCRC) { buffer.append(contentsOf: $0) }
    }

    private func writeBuffer() throws {
        guard !buffer.isEmpty else { return }
        var failure: EventFileError?
        let written: Int = buffer.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = .writeFailed(path: path, reason: String(cString: strerror(errno)))
                    break
                }
                offset += n
            }
            return offset
        }
        buffer.removeFirst(written)
        if let failure { throw failure }
    }

    private static func hostname() -> String {
        var name = [CChar](repeating: 0, count: 256)
        guard gethostname(&name, name.count - 1) == 0 else { return "localhost" }
        let host = String(cString: name)
        // Keep the file name one path component.
        let cleaned = host.replacingOccurrences(of: "/", with: "_")
        return cleaned.isEmpty ? "localhost" : cleaned
    }
}

private func closeDescriptor(_ fd: Int32) {
    #if canImport(Glibc)
    _ = Glibc.close(fd)
    #else
    _ = Darwin.close(fd)
    #endif
}
