import Foundation
import ZeroMQ

/// How often a process woke up, or was woken: the ZeroMQ messages it sent and received, its context
/// switches, and the CPU time all its threads used, counted since it started. The difference of two readings
/// covers what happened between them; divided by the steps in between, it is what `--status-file` reports per
/// step.
///
/// Context switches are `getrusage(RUSAGE_SELF)`'s, the whole process's rather than one thread's
/// (`RUSAGE_THREAD`): besides the thread that sends and receives, they count the compute threads
/// (`ChunkThreads`) and libzmq's I/O thread, which wakes for every message in or out (and for ZMTP
/// heartbeats) — a message costs a wake-up there as well as in the thread that waits for it, and what a round
/// costs is the sum. In `launch` they also count the threads that relay the workers' output.
/// - Voluntary: a thread blocked and gave up its core (a wait on a socket, a condition variable, a file).
/// - Involuntary: the scheduler took a runnable thread off its core (more runnable threads than cores).
///
/// The CPU time (user + system, every thread) says what the wake-ups cost: summed over the processes of a job
/// on one host and divided by its cores, it is the shortest step those cores could run it in.
public struct WakeupCounts: Equatable, Sendable {
    public var messagesSent = 0
    public var messagesReceived = 0
    public var voluntaryContextSwitches = 0
    public var involuntaryContextSwitches = 0
    public var cpuSeconds = 0.0

    public init() {}

    /// The counts so far: one `getrusage` call and two atomic loads.
    public static func now() -> WakeupCounts {
        var usage = rusage()
        #if os(Linux)
        getrusage(RUSAGE_SELF.rawValue, &usage)
        #else
        getrusage(RUSAGE_SELF, &usage)
        #endif
        var counts = WakeupCounts()
        (counts.messagesSent, counts.messagesReceived) = (MessageCounts.sent, MessageCounts.received)
        (counts.voluntaryContextSwitches, counts.involuntaryContextSwitches) = (Int(usage.ru_nvcsw), Int(usage.ru_nivcsw))
        func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
        counts.cpuSeconds = seconds(usage.ru_utime) + seconds(usage.ru_stime)
        return counts
    }

    public static func - (a: WakeupCounts, b: WakeupCounts) -> WakeupCounts {
        var difference = WakeupCounts()
        difference.messagesSent = a.messagesSent - b.messagesSent
        difference.messagesReceived = a.messagesReceived - b.messagesReceived
        difference.voluntaryContextSwitches = a.voluntaryContextSwitches - b.voluntaryContextSwitches
        difference.involuntaryContextSwitches = a.involuntaryContextSwitches - b.involuntaryContextSwitches
        difference.cpuSeconds = a.cpuSeconds - b.cpuSeconds
        return difference
    }

    public static func += (a: inout WakeupCounts, b: WakeupCounts) {
        a.messagesSent += b.messagesSent
        a.messagesReceived += b.messagesReceived
        a.voluntaryContextSwitches += b.voluntaryContextSwitches
        a.involuntaryContextSwitches += b.involuntaryContextSwitches
        a.cpuSeconds += b.cpuSeconds
    }
}

/// A process's wake-ups during its training steps only (not its evaluations, checkpoints or logs): the counts
/// summed over the steps `count` ran.
public struct StepWakeups: Sendable {
    public private(set) var counts = WakeupCounts()
    public private(set) var steps = 0

    public init() {}

    /// Runs one step and adds what happened during it (a step that throws counts too).
    public mutating func count<R>(_ step: () throws -> R) rethrows -> R {
        let before = WakeupCounts.now()
        defer {
            counts += WakeupCounts.now() - before
            steps += 1
        }
        return try step()
    }

    /// "… per step": `WakeupCounts.perStepDescription` of the steps counted.
    public var perStepDescription: String { counts.perStepDescription(steps: steps) }
}

extension WakeupCounts {
    /// "7.0 messages out, 7.0 in, 12.3 voluntary and 0.4 involuntary context switches, 0.512 ms CPU": the means
    /// over `steps`.
    public func perStepDescription(steps: Int) -> String {
        let n = Double(max(steps, 1))
        func f(_ count: Int) -> String { String(format: "%.1f", Double(count) / n) }
        return "\(f(messagesSent)) messages out, \(f(messagesReceived)) in, \(f(voluntaryContextSwitches)) voluntary and \(f(involuntaryContextSwitches)) involuntary context switches, \(String(format: "%.3f", cpuSeconds / n * 1000)) ms CPU"
    }
}

extension RunStatus {
    /// Sets the per-step means of the steps `wakeups` counted.
    public mutating func setWakeups(_ wakeups: StepWakeups) { setWakeups(wakeups.counts, steps: wakeups.steps) }

    /// Sets the per-step means of `counts`, gathered over `steps` steps (nothing for no steps).
    public mutating func setWakeups(_ counts: WakeupCounts, steps: Int) {
        guard steps > 0 else { return }
        let n = Double(steps)
        messagesSentPerStep = Double(counts.messagesSent) / n
        messagesReceivedPerStep = Double(counts.messagesReceived) / n
        voluntaryContextSwitchesPerStep = Double(counts.voluntaryContextSwitches) / n
        involuntaryContextSwitchesPerStep = Double(counts.involuntaryContextSwitches) / n
        cpuSecondsPerStep = counts.cpuSeconds / n
    }
}
