import CZeroMQ
import Foundation

/// A ZeroMQ Authentication Protocol (ZAP, RFC 27) handler for CURVE: a thread answering the context's
/// authentication requests at `inproc://zeromq.zap.01`, admitting a client when `authorize` accepts its
/// 32-byte public key.
///
/// Start it before any CURVE server socket of the same context binds; stop it (or let it go) before the
/// context ends.
public final class ZAPHandler: @unchecked Sendable {
    public static let endpoint = "inproc://zeromq.zap.01"

    private let server: Server

    /// - Parameter authorize: called on the handler's thread with each client's public key.
    public init(context: Context, authorize: @escaping @Sendable ([UInt8]) -> Bool) throws {
        let socket = try Socket(context, .rep)
        try socket.bind(Self.endpoint)
        server = Server(socket: socket, authorize: authorize)
        let server = server
        let thread = Thread { server.serve() }
        thread.name = "zap"
        thread.start()
    }

    deinit { stop() }

    /// Stops the thread and closes its socket; returns once it has.
    public func stop() { server.stop() }

    /// What the thread owns; it keeps the server alive until it has finished.
    private final class Server: @unchecked Sendable {
        private let socket: Socket
        private let authorize: @Sendable ([UInt8]) -> Bool
        private let lock = NSLock()
        private var stopping = false
        private let finished = DispatchSemaphore(value: 0)

        init(socket: Socket, authorize: @escaping @Sendable ([UInt8]) -> Bool) {
            self.socket = socket
            self.authorize = authorize
        }

        func stop() {
            let wait: Bool = lock.withLock {
                defer { stopping = true }
                return !stopping
            }
            guard wait else { return }
            finished.wait()
        }

        private var shouldStop: Bool { lock.withLock { stopping } }

        func serve() {
            defer {
                socket.close()
                finished.signal()
            }
            while !shouldStop {
                guard (try? socket.waitReadable(timeoutMilliseconds: 100)) == true,
                      let request = try? socket.receiveFrames(dontWait: true) else { continue }
                // Request: version, request id, domain, address, identity, mechanism, credentials…
                guard request.count >= 6, request[0] == Array("1.0".utf8) else {
                    _ = try? socket.send(frames: [Array("1.0".utf8), request.count > 1 ? request[1] : [], Array("500".utf8), Array("malformed ZAP request".utf8), [], []])
                    continue
                }
                let mechanism = String(decoding: request[5], as: UTF8.self)
                let admitted = mechanism == "CURVE" && request.count >= 7 && request[6].count == Curve.keyLength && authorize(request[6])
                let status = admitted ? "200" : "400"
                let text = admitted ? "OK" : "key not authorized"
                _ = try? socket.send(frames: [Array("1.0".utf8), request[1], Array(status.utf8), Array(text.utf8),
                                              admitted ? Array(Curve.encode(request[6]).utf8) : [], []])
            }
        }
    }
}
