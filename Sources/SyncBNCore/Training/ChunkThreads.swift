import Foundation

/// A fixed team of threads that runs the independent pieces of a step (its chunks, mostly) in parallel.
///
/// Contract:
/// - `run(count) { index, slot in … }` calls the body exactly once for every index in `0..<count` and returns
///   when every call has returned. Calls run concurrently on up to `threadCount` threads; the caller's is one
///   of them (with `threadCount` 1, or `count` ≤ 1, everything runs inline on the caller, in index order).
/// - Which thread runs which index, and in what order, is unspecified: a body's results must depend on its
///   index alone. Bodies write disjoint memory; everything summed over indices is written per index and
///   combined afterwards by the caller in a fixed order — so results are the same bits for every thread count.
/// - `slot` (in `0..<threadCount`) names the thread running the call, the same for one thread throughout:
///   no two concurrent calls share a slot, so per-slot scratch buffers need no locking.
/// - A call whose `work` (about the values it reads and writes; a multiply-add counts 1/32) is below the
///   team's `inlineWork` runs inline on the caller too: waking a thread would cost more than it saves.
/// - Not reentrant: a body must not call `run` on the same team.
/// - Idle threads block on a condition variable: they use no CPU between calls, nor while the caller works
///   alone. The threads end when the team is released.
///
/// OpenBLAS must be single-threaded (`BLAS.useSingleThread()`, process-wide): every product then runs on the
/// thread that asks for it, with the same bits whichever thread that is.
public final class ChunkThreads: @unchecked Sendable {
    /// Threads that share the work, the caller's included.
    public let threadCount: Int

    /// The largest team a process may ask for: past the cores it only costs memory and switches.
    public static let maximumThreads = 256

    /// Below this much work, a call runs inline.
    public let inlineWork: Int

    /// About 0.1 ms of work: waking a thread and waiting for it costs 10–20 µs, and moving a small step's
    /// data between cores costs more than the thread saves (bn-mlp gains nothing). The environment variable
    /// `SYNCBN_INLINE_WORK` overrides it (0: every call of several indices is shared; for tests).
    public static let defaultInlineWork: Int = {
        guard let text = ProcessInfo.processInfo.environment["SYNCBN_INLINE_WORK"], let value = Int(text), value >= 0 else { return 262_144 }
        return value
    }()

    /// The helpers' thread name (Linux: in `top -H` and /proc/PID/task/TID/comm, e.g. for a test that must catch
    /// them computing).
    public static let helperName = "syncbn-chunks"

    /// The team of one: runs everything inline on the caller.
    public static let single = ChunkThreads(threadCount: 1)

    private let shared: Shared
    private var helpers: [pthread_t] = []

    /// A team of `threadCount` threads (1...`maximumThreads`): the caller and `threadCount − 1` helpers.
    public init(threadCount: Int, inlineWork: Int = ChunkThreads.defaultInlineWork) {
        precondition(threadCount >= 1 && threadCount <= Self.maximumThreads, "a team has 1 to \(Self.maximumThreads) threads")
        self.threadCount = threadCount
        self.inlineWork = inlineWork
        shared = Shared(threadCount: threadCount)
        for slot in 1..<threadCount {
            let context = Unmanaged.passRetained(HelperContext(shared: shared, slot: slot)).toOpaque()
            var thread = pthread_t()
            let status = pthread_create(&thread, nil, { raw in
                Thread.current.name = ChunkThreads.helperName
                let context = Unmanaged<HelperContext>.fromOpaque(raw!).takeRetainedValue()
                context.shared.helperLoop(slot: context.slot)
                return nil
            }, context)
            precondition(status == 0, "pthread_create failed (\(status))")
            helpers.append(thread)
        }
    }

    deinit {
        shared.stop()
        for thread in helpers { pthread_join(thread, nil) }
    }

    /// Calls `body(index, slot)` once for every index in `0..<count`, in parallel unless `work` is below
    /// `inlineWork`; returns when all have returned.
    public func run(_ count: Int, work: Int = .max, _ body: (_ index: Int, _ slot: Int) -> Void) {
        guard count > 1 && threadCount > 1 && work >= inlineWork else {
            for index in 0..<max(0, count) { body(index, 0) }
            return
        }
        withoutActuallyEscaping(body) { shared.run(count, helpers: helpers.count, $0) }
    }

    private final class HelperContext {
        let shared: Shared
        let slot: Int
        init(shared: Shared, slot: Int) {
            self.shared = shared
            self.slot = slot
        }
    }

    /// What the caller and the helpers share, under one mutex: the posted call, its unclaimed indices and how
    /// many of its calls have not returned.
    ///
    /// Each slot owns a block of consecutive indices (slot s: s·count/T ..< (s+1)·count/T) and takes them from the
    /// front; a slot whose block is done takes from the back of another's. So a call with as many indices as the
    /// previous one gives each thread the same indices as before when none is late — a chunk's rows stay in the
    /// cache of the core that wrote them in the layer before — and a late thread's indices still get done.
    private final class Shared: @unchecked Sendable {
        private let mutex: UnsafeMutablePointer<pthread_mutex_t> = .allocate(capacity: 1)
        /// Signalled when a call is posted (helpers wait on it) and when a call's last index returns (the caller).
        private let posted: UnsafeMutablePointer<pthread_cond_t> = .allocate(capacity: 1)
        private let finished: UnsafeMutablePointer<pthread_cond_t> = .allocate(capacity: 1)
        private var body: ((Int, Int) -> Void)?
        /// Per slot: the unclaimed part of its block.
        private var blocks: [Range<Int>]
        private var unclaimed = 0
        private var unfinished = 0
        private var stopping = false
        private var running = false

        init(threadCount: Int) {
            blocks = Array(repeating: 0..<0, count: threadCount)
            pthread_mutex_init(mutex, nil)
            pthread_cond_init(posted, nil)
            pthread_cond_init(finished, nil)
        }

        deinit {
            pthread_cond_destroy(posted)
            pthread_cond_destroy(finished)
            pthread_mutex_destroy(mutex)
            posted.deallocate()
            finished.deallocate()
            mutex.deallocate()
        }

        func run(_ count: Int, helpers: Int, _ body: @escaping (Int, Int) -> Void) {
            pthread_mutex_lock(mutex)
            precondition(!running, "ChunkThreads.run is not reentrant")
            running = true
            self.body = body
            let slots = blocks.count
            for slot in 0..<slots { blocks[slot] = (slot * count / slots)..<((slot + 1) * count / slots) }
            unclaimed = count
            unfinished = count
            // Wake only as many helpers as there are indices besides the caller's first.
            for _ in 0..<min(helpers, count - 1) { pthread_cond_signal(posted) }
            work(slot: 0)
            while unfinished > 0 { pthread_cond_wait(finished, mutex) }
            self.body = nil
            running = false
            pthread_mutex_unlock(mutex)
        }

        /// The next index for `slot`: the front of its own block, else the back of the fullest other block.
        private func claim(slot: Int) -> Int? {
            guard unclaimed > 0 else { return nil }
            unclaimed -= 1
            if !blocks[slot].isEmpty {
                let index = blocks[slot].lowerBound
                blocks[slot] = (index + 1)..<blocks[slot].upperBound
                return index
            }
            var fullest = 0
            for other in 1..<blocks.count where blocks[other].count > blocks[fullest].count { fullest = other }
            let index = blocks[fullest].upperBound - 1
            blocks[fullest] = blocks[fullest].lowerBound..<index
            return index
        }

        /// Claims and runs indices of the posted call until none is left. Called, and returns, with `mutex` held.
        private func work(slot: Int) {
            while let body, let index = claim(slot: slot) {
                pthread_mutex_unlock(mutex)
                body(index, slot)
                pthread_mutex_lock(mutex)
                unfinished -= 1
                if unfinished == 0 { pthread_cond_signal(finished) }
            }
        }

        func helperLoop(slot: Int) {
            pthread_mutex_lock(mutex)
            while true {
                while !stopping && unclaimed == 0 { pthread_cond_wait(posted, mutex) }
                if stopping { break }
                work(slot: slot)
            }
            pthread_mutex_unlock(mutex)
        }

        func stop() {
            pthread_mutex_lock(mutex)
            stopping = true
            pthread_cond_broadcast(posted)
            pthread_mutex_unlock(mutex)
        }
    }
}
