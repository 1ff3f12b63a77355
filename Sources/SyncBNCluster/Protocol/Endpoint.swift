/// A ZeroMQ address as SyncBN accepts it on the command line, checked in one place before anything binds or
/// connects: `tcp://HOST:PORT` (HOST an IPv4 address, a host name, `[IPv6]`, or `*` to bind every interface;
/// PORT 1–65535, or `*` or 0 for any free port when binding) or `ipc:///path` (a Unix socket).
public struct Endpoint: Equatable, Sendable, CustomStringConvertible {
    public enum Scheme: String, Sendable { case tcp, ipc }

    public let scheme: Scheme
    /// The host of a tcp address (as given, `[…]` kept for IPv6), or the path of an ipc one.
    public let host: String
    /// The port of a tcp address; nil for `*` (bind to a free port) and for ipc.
    public let port: Int?

    /// What `--bind`/`--connect` should look like, for error messages.
    public static let expectedForms = "tcp://HOST:PORT (port 1–65535) or ipc:///path/to/socket"

    /// - Parameters:
    ///   - forBinding: allows `*` as host or port, and binds `localhost` as 127.0.0.1 (libzmq would read it
    ///     as a network interface's name).
    /// - Throws: `EndpointError` naming the flag, the problem and the expected forms.
    public init(parsing text: String, flag: String, forBinding: Bool) throws {
        func fail(_ why: String) -> EndpointError { EndpointError("\(flag) \(text): \(why); expected \(Self.expectedForms)") }
        if text.hasPrefix("ipc://") {
            let path = String(text.dropFirst("ipc://".count))
            guard !path.isEmpty, !path.contains("\0") else { throw fail("the socket's path is empty") }
            guard path.utf8.count < 108 else { throw fail("a Unix socket's path must be shorter than 108 bytes") }
            (scheme, host, port) = (.ipc, path, nil)
            return
        }
        guard text.hasPrefix("tcp://") else {
            let scheme = text.range(of: "://").map { String(text[..<$0.lowerBound]) }
            throw fail(scheme.map { "\($0):// is not a transport SyncBN speaks" } ?? "it has no tcp:// or ipc:// scheme")
        }
        let rest = text.dropFirst("tcp://".count)
        guard let colon = rest.lastIndex(of: ":") else { throw fail("it has no :PORT") }
        var hostPart = String(rest[..<colon])
        let portPart = String(rest[rest.index(after: colon)...])
        guard !hostPart.isEmpty else { throw fail("the host is empty") }
        if hostPart.hasPrefix("[") != hostPart.hasSuffix("]") { throw fail("an IPv6 host goes in brackets, [::1]") }
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_[]:*")
        guard hostPart.allSatisfy({ allowed.contains($0) }) else { throw fail("the host \(hostPart) has characters no host name or address has") }
        if hostPart == "*" && !forBinding { throw fail("* binds every interface; to connect, give the coordinator's host") }
        if forBinding && hostPart == "localhost" { hostPart = "127.0.0.1" }
        if portPart == "*" {
            guard forBinding else { throw fail("* binds a free port; to connect, give the coordinator's port") }
            (scheme, host, port) = (.tcp, hostPart, nil)
            return
        }
        guard let number = Int(portPart), (1...65_535).contains(number) || (forBinding && number == 0) else {
            throw fail("the port \(portPart) is not a number from 1 to 65535" + (forBinding ? " (or * or 0 for any free port)" : ""))
        }
        (scheme, host, port) = (.tcp, hostPart, number)
    }

    /// The address to give libzmq.
    public var description: String {
        switch scheme {
        case .ipc: "ipc://\(host)"
        case .tcp: "tcp://\(host):\(port.map(String.init) ?? "*")"
        }
    }

    /// Whether only this machine can reach it: loopback tcp or a Unix socket.
    public var isLocal: Bool {
        scheme == .ipc || host.hasPrefix("127.") || host == "localhost" || host == "[::1]"
    }
}

/// An address that cannot be used, with the form that can.
public struct EndpointError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
