import Foundation

/// The directory a run writes its model, metrics and checkpoints to, checked before the first step: created
/// if missing, and written to once, so that a path under a file or a directory that cannot be written is a
/// one-line error now rather than a lost run later.
public enum OutputDirectory {
    /// - Throws: `TrainingError` naming the directory, the reason (strerror) and the fix.
    public static func prepare(_ path: String) throws {
        func fail(_ why: String) -> TrainingError {
            TrainingError("cannot write results to --out \(path): \(why); give a directory you can write")
        }
        // mkdir -p, one level at a time, so that the error names the level that failed.
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: prefix, isDirectory: &isDirectory) {
                guard isDirectory.boolValue else { throw fail("\(prefix) is a file") }
                continue
            }
            guard mkdir(prefix, 0o755) == 0 || errno == EEXIST else { throw fail("cannot create \(prefix): \(String(cString: strerror(errno)))") }
        }
        let probe = (path as NSString).appendingPathComponent(".syncbn-write-test-\(getpid())")
        let fd = open(probe, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw fail(String(cString: strerror(errno))) }
        close(fd)
        unlink(probe)
    }
}
