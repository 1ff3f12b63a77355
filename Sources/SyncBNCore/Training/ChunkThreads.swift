import Foundation
import Synchronization

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

    /// How many pieces to cut each of `count` indices into, at most `limit`, so that a call of `work` comes in
    /// pieces of about a quarter of `inlineWork` each: 1 when the call would run inline. Pieces let a thread that
    /// is done take over part of a late thread's chunk, so the call ends within a piece of its fair share (a
    /// helper wakes tens of µs after a call is posted; with whole chunks its last chunk ends that much late).
    public func pieces(work: Int, count: Int, limit: Int) -> Int {
        guard threadCount > 1, count > 0, limit > 1, work >= inlineWork else { return 1 }
        return max(1, min(limit, work / (count * max(1, inlineWork / 4))))
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

    /// What the caller and the helpers share: the posted call under one mutex, its unclaimed indices lock-free.
    ///
    /// Each slot owns a block of consecutive indices (slot s: s·count/T ..< (s+1)·count/T) and takes them from the
    /// front; a slot whose block is done takes from the back of the fullest other block. So a call with as many
    /// indices as the previous one gives each thread the same indices as before when none is late — a chunk's
    /// rows stay in the cache of the core that wrote them in the layer before — and a late thread's indices still
    /// get done. A block is one atomic word (front, end) claimed by compare-and-swap: with many small pieces a
    /// call, a mutex per claim would put the two threads to sleep on each other.
    ///
    /// A call ends when every thread that joined it has found nothing left to claim: each leaves under the mutex,
    /// and the last one out wakes the caller. A helper joins only while the call is open, so it never claims from
    /// the next call's blocks with this call's body.
    private final class Shared: @unchecked Sendable {
        private let mutex: UnsafeMutablePointer<pthread_mutex_t> = .allocate(capacity: 1)
        /// Signalled when a call is posted (helpers wait on it) and when the last thread leaves a call (the caller).
        private let posted: UnsafeMutablePointer<pthread_cond_t> = .allocate(capacity: 1)
        private let finished: UnsafeMutablePointer<pthread_cond_t> = .allocate(capacity: 1)
        private var body: ((Int, Int) -> Void)?
        /// Per slot: the unclaimed part of its block, its front in the high 32 bits and its end in the low 32.
        private let blocks: UnsafeMutablePointer<Atomic<UInt64>>
        private let slotCount: Int
        /// Calls posted so far; a helper remembers the last it joined.
        private var generation = 0
        /// Threads in the posted call's claiming loop, the caller's included: above 0 exactly while a call is open
        /// (the caller counts itself from the post until its own claims run out).
        private var participants = 0
        private var stopping = false

        init(threadCount: Int) {
            slotCount = threadCount
            blocks = .allocate(capacity: threadCount)
            for slot in 0..<threadCount { (blocks + slot).initialize(to: Atomic(0)) }
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
            blocks.deinitialize(count: slotCount)
            blocks.deallocate()
        }

        func run(_ count: Int, helpers: Int, _ body: @escaping (Int, Int) -> Void) {
            precondition(count <= Int(UInt32.max), "a call has at most 2³² − 1 indices")
            pthread_mutex_lock(mutex)
            precondition(participants == 0, "ChunkThreads.run is not reentrant")
            self.body = body
            for slot in 0..<slotCount {
                let front = UInt64(slot * count / slotCount), end = UInt64((slot + 1) * count / slotCount)
                blocks[slot].store(front << 32 | end, ordering: .relaxed)
            }
            generation &+= 1
            participants = 1
            // Wake only as many helpers as there are indices besides the caller's first.
            for _ in 0..<min(helpers, count - 1) { pthread_cond_signal(posted) }
            pthread_mutex_unlock(mutex)
            work(slot: 0, body)
            pthread_mutex_lock(mutex)
            participants -= 1
            while participants > 0 { pthread_cond_wait(finished, mutex) }
            self.body = nil
            pthread_mutex_unlock(mutex)
        }

        /// The next index for `slot`: the front of its own block, else the back of the fullest other block.
        private func claim(slot: Int) -> Int? {
            while true {
                let word = blocks[slot].load(ordering: .relaxed)
                guard word >> 32 < word & 0xffff_ffff else { break }
                if blocks[slot].compareExchange(expected: word, desired: word &+ (1 << 32), ordering: .relaxed).exchanged {
                    return Int(word >> 32)
                }
            }
            while true {
                var fullest = -1, most: UInt64 = 0, word: UInt64 = 0
                for other in 0..<slotCount where other != slot {
                    let w = blocks[other].load(ordering: .relaxed), front = w >> 32, end = w & 0xffff_ffff
                    if front < end && end - front > most { (fullest, most, word) = (other, end - front, w) }
                }
                guard fullest >= 0 else { return nil }
                if blocks[fullest].compareExchange(expected: word, desired: word &- 1, ordering: .relaxed).exchanged {
                    return Int(word & 0xffff_ffff) - 1
                }
            }
        }

        /// Claims and runs indices of the posted call until none is left (without the mutex).
        private func work(slot: Int, _ body: (Int, Int) -> Void) {
            while let index = claim(slot: slot) { body(index, slot) }
        }

        func helperLoop(slot: Int) {
            var joined = 0
            pthread_mutex_lock(mutex)
            while true {
                while !stopping && !(participants > 0 && generation != joined) { pthread_cond_wait(posted, mutex) }
                if stopping { break }
                joined = generation
                participants += 1
                let body = self.body!
                pthread_mutex_unlock(mutex)
                work(slot: slot, body)
                pthread_mutex_lock(mutex)
                participants -= 1
                if participants == 0 { pthread_cond_signal(finished) }
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
