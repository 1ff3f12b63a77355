#if canImport(Synchronization)
import Synchronization
#endif

/// The messages this process has sent and received through `Socket`, on all its sockets, since it started:
/// what a run reads at its start and end to report messages per step.
///
/// A message counts once however many frames it has, when its last frame is sent or received; a send that
/// would block (EAGAIN) or fails counts nothing. The in-process sockets of a `SocketMonitor` or a
/// `ZAPHandler` count too (they carry nothing between connections). ZMTP's own traffic (handshakes,
/// heartbeats) is libzmq's and counts nothing.
///
/// Cost: one relaxed atomic add per message. Where the atomics are unavailable (macOS before 15) the counts
/// stay 0.
public enum MessageCounts {
    public static var sent: Int {
        if #available(macOS 15, *) { return Counters.sent.load(ordering: .relaxed) }
        return 0
    }

    public static var received: Int {
        if #available(macOS 15, *) { return Counters.received.load(ordering: .relaxed) }
        return 0
    }

    @inline(__always)
    static func noteSent() {
        if #available(macOS 15, *) { Counters.sent.wrappingAdd(1, ordering: .relaxed) }
    }

    @inline(__always)
    static func noteReceived() {
        if #available(macOS 15, *) { Counters.received.wrappingAdd(1, ordering: .relaxed) }
    }

    @available(macOS 15, *)
    private enum Counters {
        static let sent = Atomic<Int>(0)
        static let received = Atomic<Int>(0)
    }
}
