import Foundation

/// What one blocking wait costs the waiting thread on this machine, without ZeroMQ or sockets: what lies under
/// "CPU burnt while waiting". Two threads of this process hand a turn back and forth through a mutex and a
/// condition variable each (futexes underneath, as in `ChunkThreads`); the measuring thread reads its own CPU
/// clock just before it goes to sleep and just after it runs again, and the cost of two readings with nothing
/// between them is taken off. What is left is the kernel putting the thread to sleep, waking it and switching
/// back in — on a virtual machine, exits to the hypervisor included.
enum BenchWakeup {
    /// The woken thread's CPU time per wait (µs), one value per repeat (each the mean over `waits` waits).
    static func waitCPUMicroseconds(waits: Int, repeats: Int) -> [Double] {
        let turns = Turns()
        let partner = Thread { turns.answer() }
        partner.start()
        defer { turns.stop() }
        var results: [Double] = []
        for _ in 0..<repeats {
            var readings: UInt64 = 0
            for _ in 0..<waits {
                let a = threadCPUNanoseconds(), b = threadCPUNanoseconds()
                readings += b - a
            }
            var waited: UInt64 = 0
            for _ in 0..<waits { waited += turns.handOverAndWait() }
            results.append(max(0, Double(waited) - Double(readings)) / 1e3 / Double(waits))
        }
        return results
    }

    /// A turn that two threads pass back and forth: even, the measuring thread's; odd, its partner's.
    private final class Turns: @unchecked Sendable {
        private let mutex: UnsafeMutablePointer<pthread_mutex_t> = .allocate(capacity: 1)
        private let mine: UnsafeMutablePointer<pthread_cond_t> = .allocate(capacity: 1)
        private let partners: UnsafeMutablePointer<pthread_cond_t> = .allocate(capacity: 1)
        private var turn = 0
        private var stopping = false
        private let answered = DispatchSemaphore(value: 0)

        init() {
            pthread_mutex_init(mutex, nil)
            pthread_cond_init(mine, nil)
            pthread_cond_init(partners, nil)
        }

        deinit {
            pthread_cond_destroy(mine)
            pthread_cond_destroy(partners)
            pthread_mutex_destroy(mutex)
            for pointer in [mine, partners] { pointer.deallocate() }
            mutex.deallocate()
        }

        /// Gives the partner its turn and sleeps until it gives it back (it cannot before this thread sleeps: it
        /// needs the mutex); returns this thread's CPU time (ns) from just before the sleep to just after it.
        func handOverAndWait() -> UInt64 {
            pthread_mutex_lock(mutex)
            defer { pthread_mutex_unlock(mutex) }
            turn += 1
            pthread_cond_signal(partners)
            let before = threadCPUNanoseconds()
            while turn % 2 == 1 { pthread_cond_wait(mine, mutex) }
            return threadCPUNanoseconds() - before
        }

        /// The partner: waits for its turn and gives it straight back, until `stop`.
        func answer() {
            pthread_mutex_lock(mutex)
            while true {
                while turn % 2 == 0 && !stopping { pthread_cond_wait(partners, mutex) }
                if stopping { break }
                turn += 1
                pthread_cond_signal(mine)
            }
            pthread_mutex_unlock(mutex)
            answered.signal()
        }

        /// Ends the partner's loop and waits until it has left it.
        func stop() {
            pthread_mutex_lock(mutex)
            stopping = true
            pthread_cond_signal(partners)
            pthread_mutex_unlock(mutex)
            answered.wait()
        }
    }
}

/// CPU time consumed by the calling thread, in nanoseconds.
func threadCPUNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}
