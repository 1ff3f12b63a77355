import Foundation

/// A body that runs on its own thread in strict hand-off with its caller: `resume()` runs it until it calls
/// `yield()` (or ends), and only then returns. Exactly one of the two threads runs at any time, so a
/// simulation with many of these is as deterministic as one thread.
final class Coroutine {
    private let toBody = DispatchSemaphore(value: 0)
    private let toCaller = DispatchSemaphore(value: 0)
    private(set) var finished = false

    init(_ body: @escaping (Coroutine) -> Void) {
        // The thread holds the coroutine until the body ends (a coroutine dropped before its thread started
        // would otherwise be read after it was freed).
        let thread = Thread { [self] in
            toBody.wait()
            body(self)
            finished = true
            toCaller.signal()
        }
        thread.stackSize = 8 << 20
        thread.start()
    }

    /// Runs the body until it yields or ends.
    func resume() {
        precondition(!finished, "resumed a finished coroutine")
        toBody.signal()
        toCaller.wait()
    }

    /// From the body: hands control back to the caller until the next `resume()`.
    func yield() {
        toCaller.signal()
        toBody.wait()
    }
}
