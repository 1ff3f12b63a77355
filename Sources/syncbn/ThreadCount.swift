import ArgumentParser
import Foundation
import SyncBNCore

/// `--threads T` of `train`, `worker` and `launch`: the threads that compute a process's chunks. The model's
/// bytes do not depend on it; the defaults fill the cores.
enum ThreadCount {
    /// The cores this process may run on.
    static var cores: Int { ProcessInfo.processInfo.activeProcessorCount }

    /// Each of `workers` processes' share of the cores: cores ÷ workers, at least 1.
    static func share(workers: Int) -> Int { max(1, cores / max(1, workers)) }

    /// Refuses a `--threads` below 1 or above `ChunkThreads.maximumThreads`, in one line that says what to give.
    static func check(_ threads: Int?) throws {
        guard let threads else { return }
        guard threads >= 1, threads <= ChunkThreads.maximumThreads else {
            throw ValidationError("--threads \(threads) is not from 1 to \(ChunkThreads.maximumThreads): give about the number of cores (\(cores) here), or leave it out to use them all")
        }
    }
}
