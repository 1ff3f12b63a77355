import Foundation

/// The directory a run writes its model, metrics and checkpoints to, checked before the first step: created
/// if missing, written to once, and locked for the run, so that a path under a file, a directory that
/// cannot be written, or a second run writing to the same place is a one-line error now rather than a lost
/// or mixed-up run later.
public final class OutputDirectory {
    public let path: String
    /// The open, flock(2)-ed `.syncbn.lock` that holds this process's id; released when the process exits.
    private let lockDescriptor: Int32

    /// Prepares and locks `path`.
    /// - Throws: `TrainingError` naming the directory, the reason (strerror, or the process that holds the
    ///   lock) and the fix.
    public init(_ path: String) throws {
        self.path = path
        func fail(_ why: String) -> TrainingError {
            TrainingError("cannot write results to --out \(path): \(why)")
        }
        // mkdir -p, one level at a time, so that the error names the level that failed.
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: prefix, isDirectory: &isDirectory) {
                guard isDirectory.boolValue else { throw fail("\(prefix) is a file; give a directory you can write") }
                continue
            }
            guard mkdir(prefix, 0o755) == 0 || errno == EEXIST else {
                throw fail("cannot create \(prefix): \(String(cString: strerror(errno))); give a directory you can write")
            }
        }
        let lockPath = (path as NSString).appendingPathComponent(".syncbn.lock")
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw fail("\(String(cString: strerror(errno))); give a directory you can write") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            var buffer = [UInt8](repeating: 0, count: 32)
            let count = pread(fd, &buffer, 31, 0)
            close(fd)
            let holder = count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "another process"
            throw fail("it is in use by syncbn process \(holder); wait for it to finish or give another --out")
        }
        let pid = Array("\(getpid())\n".utf8)
        guard ftruncate(fd, 0) == 0, pwrite(fd, pid, pid.count, 0) == pid.count else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw fail("\(reason); give a directory you can write")
        }
        lockDescriptor = fd
    }

    deinit { close(lockDescriptor) }
}
