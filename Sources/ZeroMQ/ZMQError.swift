import CZeroMQ

/// A failed libzmq call: the call's name, its errno and `zmq_strerror`'s text.
public struct ZMQError: Error, CustomStringConvertible, Equatable {
    public let call: String
    public let code: Int32

    public init(call: String, code: Int32) {
        self.call = call
        self.code = code
    }

    /// The error of the libzmq call that just failed in this thread.
    static func last(_ call: String) -> ZMQError { ZMQError(call: call, code: zmq_errno()) }

    public var message: String { String(cString: zmq_strerror(code)) }
    public var description: String { "\(call): \(message)" }

    public var isAgain: Bool { code == EAGAIN }
    public var isInterrupted: Bool { code == EINTR }
    public var isHostUnreachable: Bool { code == EHOSTUNREACH }
}
