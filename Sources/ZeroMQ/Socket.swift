import CZeroMQ

/// An owning handle on one libzmq socket. Not thread-safe, like the socket under it.
///
/// Every call checks its C result and throws `ZMQError` carrying `zmq_strerror`. Receives return `nil`
/// for "nothing yet" (EAGAIN with a timeout or `dontWait`), never an error. Calls interrupted by a
/// signal (EINTR) are retried. Every message sent or received is counted in `MessageCounts`.
public final class Socket {
    public enum Kind {
        case router, dealer, pair, req, rep, push, pull

        var rawValue: Int32 {
            switch self {
            case .router: ZMQ_ROUTER
            case .dealer: ZMQ_DEALER
            case .pair: ZMQ_PAIR
            case .req: ZMQ_REQ
            case .rep: ZMQ_REP
            case .push: ZMQ_PUSH
            case .pull: ZMQ_PULL
            }
        }
    }

    let handle: UnsafeMutableRawPointer
    /// Held so that the context, whose termination waits for its sockets, outlives this socket.
    public let context: Context
    private var closed = false

    public init(_ context: Context, _ kind: Kind) throws {
        guard let handle = zmq_socket(context.handle, kind.rawValue) else {
            throw ZMQError.last("zmq_socket")
        }
        self.handle = handle
        self.context = context
        try setOption(ZMQ_LINGER, Int32(0))
    }

    deinit { close() }

    public var isClosed: Bool { closed }

    /// Closes the socket, dropping unsent messages (linger is 0).
    public func close() {
        guard !closed else { return }
        closed = true
        zmq_close(handle)
    }

    // MARK: Options

    public func setOption(_ option: Int32, _ value: Int32) throws {
        var value = value
        try check("zmq_setsockopt") { zmq_setsockopt(handle, option, &value, MemoryLayout<Int32>.size) }
    }

    public func setOption(_ option: Int32, _ value: Int64) throws {
        var value = value
        try check("zmq_setsockopt") { zmq_setsockopt(handle, option, &value, MemoryLayout<Int64>.size) }
    }

    public func setOption(_ option: Int32, bytes: [UInt8]) throws {
        try check("zmq_setsockopt") {
            bytes.withUnsafeBytes { zmq_setsockopt(handle, option, $0.baseAddress, $0.count) }
        }
    }

    /// Receives time out after `milliseconds` (-1: wait forever).
    public func setReceiveTimeout(milliseconds: Int32) throws { try setOption(ZMQ_RCVTIMEO, milliseconds) }
    public func setSendTimeout(milliseconds: Int32) throws { try setOption(ZMQ_SNDTIMEO, milliseconds) }
    /// Peers sending a larger message are disconnected by libzmq.
    public func setMaximumMessageSize(_ bytes: Int64) throws { try setOption(ZMQ_MAXMSGSIZE, bytes) }
    /// Sending to an unknown or full peer fails with EHOSTUNREACH or EAGAIN instead of being dropped.
    public func setRouterMandatory(_ on: Bool) throws { try setOption(ZMQ_ROUTER_MANDATORY, Int32(on ? 1 : 0)) }
    /// ZMTP heartbeats: ping every `interval`, drop the connection after `timeout` without traffic.
    public func setHeartbeat(intervalMilliseconds: Int32, timeoutMilliseconds: Int32) throws {
        try setOption(ZMQ_HEARTBEAT_IVL, intervalMilliseconds)
        try setOption(ZMQ_HEARTBEAT_TIMEOUT, timeoutMilliseconds)
        try setOption(ZMQ_HEARTBEAT_TTL, timeoutMilliseconds)
    }
    /// A lost connection is retried after `milliseconds`, the wait doubling up to `maximumMilliseconds`.
    public func setReconnectInterval(milliseconds: Int32, maximumMilliseconds: Int32? = nil) throws {
        try setOption(ZMQ_RECONNECT_IVL, milliseconds)
        if let maximumMilliseconds { try setOption(ZMQ_RECONNECT_IVL_MAX, maximumMilliseconds) }
    }
    /// On close, unsent messages are kept for at most `milliseconds` (-1: until sent, 0: dropped).
    public func setLinger(milliseconds: Int32) throws { try setOption(ZMQ_LINGER, milliseconds) }
    public func setHighWaterMarks(send: Int32, receive: Int32) throws {
        try setOption(ZMQ_SNDHWM, send)
        try setOption(ZMQ_RCVHWM, receive)
    }

    public func stringOption(_ option: Int32) throws -> String {
        var buffer = [CChar](repeating: 0, count: 1024)
        var size = buffer.count
        try check("zmq_getsockopt") { zmq_getsockopt(handle, option, &buffer, &size) }
        return String(cString: buffer)
    }

    public func intOption(_ option: Int32) throws -> Int32 {
        var value: Int32 = 0
        var size = MemoryLayout<Int32>.size
        try check("zmq_getsockopt") { zmq_getsockopt(handle, option, &value, &size) }
        return value
    }

    /// The address actually bound, e.g. `tcp://127.0.0.1:41234` after binding `tcp://127.0.0.1:*`.
    public var lastEndpoint: String {
        get throws { try stringOption(ZMQ_LAST_ENDPOINT) }
    }

    // MARK: Connections

    public func bind(_ endpoint: String) throws {
        try check("zmq_bind(\(endpoint))") { zmq_bind(handle, endpoint) }
    }

    public func connect(_ endpoint: String) throws {
        try check("zmq_connect(\(endpoint))") { zmq_connect(handle, endpoint) }
    }

    // MARK: Sending

    /// Sends one frame; `more` marks it as part of a multipart message. Returns false if the send would
    /// block (EAGAIN, with `dontWait` or a send timeout).
    @discardableResult
    public func send(_ bytes: UnsafeRawBufferPointer, more: Bool = false, dontWait: Bool = false) throws -> Bool {
        var flags: Int32 = 0
        if more { flags |= ZMQ_SNDMORE }
        if dontWait { flags |= ZMQ_DONTWAIT }
        while true {
            if zmq_send(handle, bytes.baseAddress, bytes.count, flags) >= 0 {
                if !more { MessageCounts.noteSent() }
                return true
            }
            let error = ZMQError.last("zmq_send")
            if error.isInterrupted { continue }
            if error.isAgain { return false }
            throw error
        }
    }

    @discardableResult
    public func send(_ bytes: [UInt8], more: Bool = false, dontWait: Bool = false) throws -> Bool {
        try bytes.withUnsafeBytes { try send($0, more: more, dontWait: dontWait) }
    }

    /// Sends one frame of `size` bytes that `fill` writes straight into libzmq's message: the caller's
    /// pieces (a header, slices of tensors) are copied once, with no intermediate array.
    @discardableResult
    public func send(size: Int, more: Bool = false, dontWait: Bool = false, fill: (UnsafeMutableRawBufferPointer) -> Void) throws -> Bool {
        var message = zmq_msg_t()
        guard zmq_msg_init_size(&message, size) == 0 else { throw ZMQError.last("zmq_msg_init_size") }
        fill(UnsafeMutableRawBufferPointer(start: zmq_msg_data(&message), count: size))
        return try send(message: &message, more: more, dontWait: dontWait)
    }

    /// Sends `shared`'s bytes as one frame without copying them: libzmq counts the references to the one buffer
    /// (`zmq_msg_copy`), so that a message broadcast to N peers is copied once, not N times.
    @discardableResult
    public func send(_ shared: SharedMessage, more: Bool = false) throws -> Bool {
        var message = zmq_msg_t()
        zmq_msg_init(&message)
        guard zmq_msg_copy(&message, &shared.message) == 0 else { throw ZMQError.last("zmq_msg_copy") }
        return try send(message: &message, more: more, dontWait: false)
    }

    /// Hands `message` to libzmq, which owns it once sent; closes it if the send fails.
    private func send(message: inout zmq_msg_t, more: Bool, dontWait: Bool) throws -> Bool {
        var flags: Int32 = 0
        if more { flags |= ZMQ_SNDMORE }
        if dontWait { flags |= ZMQ_DONTWAIT }
        while true {
            if zmq_msg_send(&message, handle, flags) >= 0 {
                if !more { MessageCounts.noteSent() }
                return true
            }
            let error = ZMQError.last("zmq_msg_send")
            if error.isInterrupted { continue }
            zmq_msg_close(&message)
            if error.isAgain { return false }
            throw error
        }
    }

    /// Sends all frames as one multipart message.
    @discardableResult
    public func send(frames: [[UInt8]], dontWait: Bool = false) throws -> Bool {
        for (index, frame) in frames.enumerated() {
            let sent = try send(frame, more: index < frames.count - 1, dontWait: dontWait)
            if !sent {
                precondition(index == 0, "libzmq accepts the rest of a multipart message once its first frame is queued")
                return false
            }
        }
        return true
    }

    // MARK: Receiving

    /// Receives every frame of one message, or `nil` if none arrives before the receive timeout
    /// (or at once, with `dontWait`).
    public func receiveFrames(dontWait: Bool = false) throws -> [[UInt8]]? {
        var frames: [[UInt8]] = []
        var message = zmq_msg_t()
        zmq_msg_init(&message)
        defer { zmq_msg_close(&message) }
        repeat {
            let flags: Int32 = (frames.isEmpty && dontWait) ? ZMQ_DONTWAIT : 0
            while zmq_msg_recv(&message, handle, flags) < 0 {
                let error = ZMQError.last("zmq_msg_recv")
                if error.isInterrupted { continue }
                if error.isAgain && frames.isEmpty { return nil }
                throw error
            }
            let size = zmq_msg_size(&message)
            let data = zmq_msg_data(&message)!
            frames.append([UInt8](UnsafeRawBufferPointer(start: data, count: size)))
        } while zmq_msg_more(&message) != 0
        MessageCounts.noteReceived()
        return frames
    }

    /// Receives one message of exactly `frames.count` frames into reusable buffers (no allocation once they
    /// have grown to size). Returns the number of frames received, or `nil` if nothing was waiting (with
    /// `dontWait`) or the receive timed out. A message with more frames than buffers is read to its end; the
    /// count tells the caller it was the wrong shape.
    public func receive(into frames: inout [[UInt8]], dontWait: Bool = false) throws -> Int? {
        var message = zmq_msg_t()
        zmq_msg_init(&message)
        defer { zmq_msg_close(&message) }
        var index = 0
        repeat {
            let flags: Int32 = (index == 0 && dontWait) ? ZMQ_DONTWAIT : 0
            while zmq_msg_recv(&message, handle, flags) < 0 {
                let error = ZMQError.last("zmq_msg_recv")
                if error.isInterrupted { continue }
                if error.isAgain && index == 0 { return nil }
                throw error
            }
            if index < frames.count {
                let source = UnsafeRawBufferPointer(start: zmq_msg_data(&message), count: zmq_msg_size(&message))
                frames[index].removeAll(keepingCapacity: true)
                frames[index].append(contentsOf: source)
            }
            index += 1
        } while zmq_msg_more(&message) != 0
        MessageCounts.noteReceived()
        return index
    }

    /// Receives one message and hands its first frame to `body` in libzmq's own buffer, without copying it;
    /// the buffer is valid only during the call. Returns nil if nothing was waiting (with `dontWait`), else
    /// `body`'s result and the message's frame count (frames after the first are read and dropped).
    public func receiveInPlace<R>(dontWait: Bool = false, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> (result: R, frames: Int)? {
        var message = zmq_msg_t()
        zmq_msg_init(&message)
        defer { zmq_msg_close(&message) }
        guard try receiveFirstFrame(&message, dontWait: dontWait) else { return nil }
        let result = try body(UnsafeRawBufferPointer(start: zmq_msg_data(&message), count: zmq_msg_size(&message)))
        return (result, 1 + (try dropRemainingFrames(&message)))
    }

    /// Receives one message; if it is one frame, hands it to `body` in libzmq's own buffer, without copying it
    /// (the buffer is valid only during the call) and returns `body`'s result. A message of several frames is
    /// read to its end and its frame count thrown as `MultipartMessage`. Nil if nothing arrived before the
    /// receive timeout (or at once, with `dontWait`).
    public func receiveSingleFrameInPlace<R>(dontWait: Bool = false, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R? {
        var message = zmq_msg_t()
        zmq_msg_init(&message)
        defer { zmq_msg_close(&message) }
        guard try receiveFirstFrame(&message, dontWait: dontWait) else { return nil }
        if zmq_msg_more(&message) != 0 { throw MultipartMessage(frames: 1 + (try dropRemainingFrames(&message))) }
        return try body(UnsafeRawBufferPointer(start: zmq_msg_data(&message), count: zmq_msg_size(&message)))
    }

    /// Receives a message's first frame into `message` (and counts the message); false if none arrived before
    /// the receive timeout (or at once, with `dontWait`).
    private func receiveFirstFrame(_ message: inout zmq_msg_t, dontWait: Bool) throws -> Bool {
        while zmq_msg_recv(&message, handle, dontWait ? ZMQ_DONTWAIT : 0) < 0 {
            let error = ZMQError.last("zmq_msg_recv")
            if error.isInterrupted { continue }
            if error.isAgain { return false }
            throw error
        }
        MessageCounts.noteReceived()
        return true
    }

    /// Reads and drops the frames that follow the one in `message`; how many there were.
    private func dropRemainingFrames(_ message: inout zmq_msg_t) throws -> Int {
        var frames = 0
        while zmq_msg_more(&message) != 0 {
            while zmq_msg_recv(&message, handle, 0) < 0 {
                let error = ZMQError.last("zmq_msg_recv")
                if !error.isInterrupted { throw error }
            }
            frames += 1
        }
        return frames
    }

    // MARK: Polling

    /// Waits until the socket has a message to read, at most `timeoutMilliseconds` (-1: forever).
    /// Blocks in the kernel: no CPU is spent while waiting.
    public func waitReadable(timeoutMilliseconds: Int) throws -> Bool {
        var item = zmq_pollitem_t(socket: handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
        while true {
            let count = zmq_poll(&item, 1, timeoutMilliseconds)
            if count >= 0 { return count > 0 }
            let error = ZMQError.last("zmq_poll")
            if error.isInterrupted { continue }
            throw error
        }
    }

    private func check(_ call: @autoclosure () -> String, _ body: () -> Int32) throws {
        while body() != 0 {
            let error = ZMQError.last(call())
            if error.isInterrupted { continue }
            throw error
        }
    }
}

/// One message's bytes in a libzmq buffer, sent to several peers without a copy each (`Socket.send(_:more:)`).
/// Its content must not change once made.
public final class SharedMessage {
    fileprivate var message = zmq_msg_t()

    public init(_ bytes: UnsafeRawBufferPointer) throws {
        guard zmq_msg_init_size(&message, bytes.count) == 0 else { throw ZMQError.last("zmq_msg_init_size") }
        if bytes.count > 0 { zmq_msg_data(&message)!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
    }

    deinit { zmq_msg_close(&message) }
}

/// A message of several frames where one was expected (`Socket.receiveSingleFrameInPlace`).
public struct MultipartMessage: Error, Equatable {
    public let frames: Int
}
