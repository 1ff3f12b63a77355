import Foundation
import SyncBNCore
import ZeroMQ

/// A table of peers as the coordinator sent it (`Message.peers`): what it is for, this worker's index in it,
/// and every worker's endpoint. A step runs with the table it started with: a newer one comes before the redo
/// of the step, and its rounds must not mix the two.
public struct PeerTable: Equatable, Sendable {
    public let epoch: UInt32
    public let uses: WireProtocol.PeerUses
    public let rank: Int
    public let endpoints: [String]

    public init(epoch: UInt32, uses: WireProtocol.PeerUses, rank: Int, endpoints: [String]) {
        (self.epoch, self.uses, self.rank, self.endpoints) = (epoch, uses, rank, endpoints)
    }

    public var workerCount: Int { endpoints.count }

    /// Whether the table runs `round` among the workers (the gradient exchange, or a BatchNorm round).
    public func exchanges(_ round: Round) -> Bool {
        round == .gradients ? uses.contains(.gradients) : round.isBatchNormRound && uses.contains(.batchNormRounds)
    }
}

/// A worker's direct links to the other workers, for the rounds that run among them (the gradient exchange,
/// the BatchNorm rounds of a step of a few workers): one PULL socket bound where the others send to it, and one PUSH
/// socket connected to each of the others. The coordinator's `peers` message says who is in the mesh and what
/// it is for; every new table comes with a new epoch.
///
/// Messages to a worker that died stay queued in its PUSH socket until the next table closes that socket.
public final class PeerMesh {
    public let inbox: Socket
    /// Where the other workers send to this one (the bound address, port filled in).
    public let endpoint: String
    /// The current table (nil: none yet in this session).
    public private(set) var table: PeerTable?
    private var outlets: [String: Socket] = [:]
    private let context: Context

    /// The Unix socket this mesh listens on (ipc), removed when it closes.
    private let socketPath: String?

    /// Binds the PULL socket on `address` (an IP address or host name), on a port the kernel picks; or, for
    /// `PeerMesh.unixSocket`, on a Unix socket of this process in the temporary directory (workers of a
    /// coordinator reached over a Unix socket are on one host, where ipc costs less per message than tcp).
    public init(context: Context, address: String) throws {
        self.context = context
        inbox = try Socket(context, .pull)
        // Bounded: a round brings at most two messages from each other worker (anything beyond waits in the
        // sender's queue), so this only caps what a stray sender can pile up.
        try inbox.setHighWaterMarks(send: 0, receive: 1000)
        try inbox.setMaximumMessageSize(WireProtocol.maximumMessageSize)
        socketPath = address == Self.unixSocket
            ? (NSTemporaryDirectory() as NSString).appendingPathComponent("syncbn-peer-\(getpid())-\(UInt32.random(in: 0 ... .max)).sock") : nil
        do {
            try inbox.bind(socketPath.map { "ipc://\($0)" } ?? "tcp://\(address):*")
        } catch let error as ZMQError {
            throw ClusterError("cannot listen for other workers on \(socketPath ?? address): \(error.message); give the address other workers reach this host at with --peer-address")
        }
        endpoint = try inbox.lastEndpoint
    }

    /// The `address` that makes a mesh listen on a Unix socket.
    public static let unixSocket = "ipc"

    /// Takes a new table: connects to workers new to it and drops the links to workers no longer in it (all of
    /// them for a table used for nothing).
    public func update(_ table: PeerTable) throws {
        let (rank, uses, endpoints) = (table.rank, table.uses, table.endpoints)
        let linked = uses.isEmpty ? [] : endpoints
        for (endpoint, socket) in outlets where !linked.contains(endpoint) {
            socket.close()
            outlets[endpoint] = nil
        }
        for (index, endpoint) in linked.enumerated() where index != rank && outlets[endpoint] == nil {
            let socket = try Socket(context, .push)
            try socket.setHighWaterMarks(send: 0, receive: 0)
            try socket.setReconnectInterval(milliseconds: 100)
            do {
                try socket.connect(endpoint)
            } catch let error as ZMQError {
                throw ClusterError("cannot connect to worker \(index) at \(endpoint): \(error.message)")
            }
            outlets[endpoint] = socket
        }
        self.table = table
    }

    /// The inbox's receive timeout as last set.
    private var receiveTimeout: Int32 = -1

    /// Sets how long a blocking receive on the inbox waits (set only when it changes: one system call fewer).
    func setReceiveTimeout(milliseconds: Int) throws {
        let timeout = Int32(clamping: milliseconds)
        guard timeout != receiveTimeout else { return }
        try inbox.setReceiveTimeout(milliseconds: timeout)
        receiveTimeout = timeout
    }

    /// Forgets the table (a new session with a coordinator begins: its tables follow) and drops every link.
    public func forgetTable() {
        for socket in outlets.values { socket.close() }
        outlets.removeAll()
        table = nil
    }

    /// The socket that sends to worker `index` of `table` (not this worker); nil if a newer table dropped the
    /// link (the step that still runs with `table` is about to be redone).
    func outlet(to index: Int, of table: PeerTable) -> Socket? {
        precondition(index != table.rank, "a worker does not send to itself")
        return outlets[table.endpoints[index]]
    }

    public func close() {
        forgetTable()
        inbox.close()
        if let socketPath { unlink(socketPath) }
    }

    /// Where a worker listens for the others, from its `--peer-address` (`requested`): nil (no listener) for a
    /// remote coordinator unless asked, since the listener is not authenticated; a Unix socket for a coordinator
    /// reached over one (`unixSocket`), loopback for another local one; for `auto`, the local address of the
    /// route to the coordinator's host; else the address given.
    static func listeningAddress(requested: String?, coordinator: String) throws -> String? {
        switch requested {
        case nil where coordinator.hasPrefix("ipc://"): return unixSocket
        case nil: return CoordinatorSecurity.isLocal(coordinator) ? "127.0.0.1" : nil
        case "auto": return try localAddress(towards: coordinator)
        case let address?: return address
        }
    }

    /// The address this host is reached at by whoever reaches `coordinator` (a `tcp://HOST:PORT` or `ipc://`
    /// endpoint): loopback for a local coordinator, otherwise the local address of the route to its host.
    static func localAddress(towards coordinator: String) throws -> String {
        if CoordinatorSecurity.isLocal(coordinator) { return "127.0.0.1" }
        guard coordinator.hasPrefix("tcp://") else { throw ClusterError("cannot tell this worker's address from \(coordinator); give --peer-address") }
        var host = String(coordinator.dropFirst("tcp://".count))
        if let colon = host.lastIndex(of: ":") { host = String(host[..<colon]) }
        host = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        // A UDP "connection" sends nothing; it only makes the kernel choose the route and source address.
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_DGRAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, "9", &hints, &found) == 0, let info = found else {
            throw ClusterError("cannot resolve the coordinator's host \(host) to find this worker's address; give --peer-address")
        }
        defer { freeaddrinfo(found) }
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw ClusterError("cannot open a socket to find this worker's address; give --peer-address") }
        defer { Glibc.close(fd) }
        var local = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 && withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) == 0 }
        }
        guard ok else { throw ClusterError("no route to the coordinator's host \(host) to find this worker's address; give --peer-address") }
        var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
        inet_ntop(AF_INET, &local.sin_addr, &text, socklen_t(text.count))
        return String(cString: text)
    }
}

