import Foundation

/// The pipe the signal handler writes to; read by the handling thread.
nonisolated(unsafe) private var signalPipeWriteEnd: Int32 = -1

/// Calls `handler` for SIGINT and SIGTERM, on a thread of its own, instead of letting them end the process.
///
/// The C handler only writes the signal's number to a pipe (async-signal-safe), so the signal is caught
/// whichever thread it lands on — OpenBLAS and ZeroMQ start threads of their own — and the handling
/// thread blocks reading the pipe.
func handleSignals(_ handler: @escaping @Sendable (Int32) -> Void) {
    var ends: [Int32] = [0, 0]
    guard pipe(&ends) == 0 else { return }
    signalPipeWriteEnd = ends[1]
    var action = sigaction()
    action.__sigaction_handler.sa_handler = { number in
        var byte = UInt8(truncatingIfNeeded: number)
        _ = write(signalPipeWriteEnd, &byte, 1)
    }
    action.sa_flags = SA_RESTART
    sigemptyset(&action.sa_mask)
    sigaction(SIGINT, &action, nil)
    sigaction(SIGTERM, &action, nil)
    let readEnd = ends[0]
    let thread = Thread {
        while true {
            var byte: UInt8 = 0
            let count = read(readEnd, &byte, 1)
            if count == 1 { handler(Int32(byte)) } else if count < 0 && errno == EINTR { continue } else { return }
        }
    }
    thread.name = "signals"
    thread.start()
}

/// A flag set once, from any thread.
final class InterruptFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false

    var isSet: Bool { lock.withLock { value } }

    /// Sets the flag; true if this call set it (false if it was already set).
    func set() -> Bool { lock.withLock { defer { value = true }; return !value } }
}
