import CZeroMQ

/// Events libzmq reports about one socket's connections (`zmq_socket_monitor`), read from an inproc PAIR.
public final class SocketMonitor {
    public struct Event: Equatable {
        public let kind: UInt16
        public let value: UInt32
        public let endpoint: String

        public static let connected = UInt16(ZMQ_EVENT_CONNECTED)
        public static let disconnected = UInt16(ZMQ_EVENT_DISCONNECTED)
        public static let handshakeSucceeded = UInt16(ZMQ_EVENT_HANDSHAKE_SUCCEEDED)
        public static let handshakeFailedNoDetail = UInt16(ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        public static let handshakeFailedProtocol = UInt16(ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
        /// The peer's ZAP handler refused us (for CURVE: our public key is not authorized).
        public static let handshakeFailedAuth = UInt16(ZMQ_EVENT_HANDSHAKE_FAILED_AUTH)

        public var isHandshakeFailure: Bool {
            kind == Self.handshakeFailedAuth || kind == Self.handshakeFailedProtocol || kind == Self.handshakeFailedNoDetail
        }
    }

    private static var counter = 0
    public let socket: Socket
    /// The monitored socket: monitoring must be stopped on it before the PAIR closes, or libzmq's I/O thread
    /// blocks forever sending the next event to a PAIR that is gone.
    private let target: Socket
    private var stopped = false

    /// The events of failed handshakes other than a refused key (no keys, another server key, another protocol).
    public static let handshakeFailureEvents = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL

    /// Starts monitoring `target` for `events` (a mask of `ZMQ_EVENT_*`, all by default).
    public init(_ target: Socket, events: Int32 = ZMQ_EVENT_ALL) throws {
        Self.counter += 1
        let endpoint = "inproc://syncbn-monitor-\(Self.counter)-\(UInt(bitPattern: target.handle))"
        guard zmq_socket_monitor(target.handle, endpoint, events) == 0 else { throw ZMQError.last("zmq_socket_monitor") }
        socket = try Socket(target.context, .pair)
        try socket.connect(endpoint)
        self.target = target
    }

    /// The next event if one is waiting (call after `socket.waitReadable`), else nil.
    public func nextEvent() throws -> Event? {
        guard let frames = try socket.receiveFrames(dontWait: true), frames.count == 2, frames[0].count == 6 else { return nil }
        let head = frames[0]
        let kind = UInt16(head[0]) | UInt16(head[1]) << 8
        let value = UInt32(head[2]) | UInt32(head[3]) << 8 | UInt32(head[4]) << 16 | UInt32(head[5]) << 24
        return Event(kind: kind, value: value, endpoint: String(decoding: frames[1], as: UTF8.self))
    }

    /// Stops monitoring the target, then closes the event PAIR. Call before closing the target.
    public func close() {
        guard !stopped else { return }
        stopped = true
        if !target.isClosed { zmq_socket_monitor(target.handle, nil, 0) }
        socket.close()
    }

    deinit { close() }
}

/// Waits for the first of several sockets to become readable; returns the index, or nil at the timeout.
public func waitForFirstReadable(_ sockets: [Socket], timeoutMilliseconds: Int) throws -> Int? {
    var items = sockets.map { zmq_pollitem_t(socket: $0.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0) }
    while true {
        let count = zmq_poll(&items, Int32(items.count), timeoutMilliseconds)
        if count > 0 { return items.firstIndex { $0.revents & Int16(ZMQ_POLLIN) != 0 } }
        if count == 0 { return nil }
        let error = ZMQError.last("zmq_poll")
        if !error.isInterrupted { throw error }
    }
}
