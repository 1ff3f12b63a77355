import CSystemShims
import Foundation
import SyncBNCluster
import SyncBNCore
import ZeroMQ

/// The ZeroMQ halves of `syncbn bench`: the child helpers (echo, stream sender, all-reduce worker) and the
/// parent's measurements against them. The parent is always the ROUTER, the children DEALERs.
public enum BenchNetwork {
    static let timeoutMilliseconds = 30_000

    // MARK: Children

    /// Runs one helper role in a child process. Dies with its parent; gives up after 30 s without news.
    /// `syncbn bench --helper ROLE` calls it: the children are this executable started again by the parent.
    public static func runHelper(role: String, connect endpoint: String, size: Int, rank: Int, width: Int, element: String) throws {
        _ = syncbn_exit_with_parent(SIGKILL)
        let context = try Context()
        let dealer = try Socket(context, .dealer)
        defer { dealer.close() }
        try dealer.setHighWaterMarks(send: 0, receive: 0)
        try dealer.setReceiveTimeout(milliseconds: Int32(timeoutMilliseconds))
        try dealer.connect(endpoint)
        switch role {
        case "echo":
            // Bounce every message back until told to stop (an empty message) or the parent goes quiet.
            try dealer.send([0])
            while let frames = try dealer.receiveFrames() {
                if frames.count == 1 && frames[0].isEmpty { return }
                try dealer.send(frames: frames)
            }
            throw BenchError("echo helper: the parent went quiet")
        case "stream":
            // On [1, count (u32 LE)]: send `count` messages of `size` bytes. On an empty message: exit.
            try dealer.setHighWaterMarks(send: 4, receive: 0)  // keeps the queue (and memory) small; the pipe stays full
            try dealer.send([0])
            let payload = [UInt8](repeating: 0x5a, count: size)
            while let frames = try dealer.receiveFrames() {
                guard let command = frames.first, command.count == 5, command[0] == 1 else { return }
                let count = Int(command[1]) | Int(command[2]) << 8 | Int(command[3]) << 16 | Int(command[4]) << 24
                for _ in 0..<count { try dealer.send(payload) }
            }
            throw BenchError("stream helper: the parent went quiet")
        case "allreduce":
            // Loop { send partials of `width` values as chunk `rank`; wait for the reduced result } until stop.
            let kind: WireProtocol.Element = element == "f64" ? .float64 : .float32
            let round: Round = kind == .float64 ? .moments(layer: 0) : .gradients
            var frame = Message.partialsHeader(step: 0, round: round, firstChunk: UInt32(rank), chunkCount: 1, width: UInt32(width), element: kind)
            if kind == .float64 {
                [Double](repeating: Double(rank + 1), count: width).withUnsafeBytes { frame += $0 }
            } else {
                [Float](repeating: Float(rank + 1), count: width).withUnsafeBytes { frame += $0 }
            }
            var buffers: [[UInt8]] = [[]]
            while true {
                try dealer.send(frame)
                guard let count = try dealer.receive(into: &buffers) else { throw BenchError("all-reduce helper \(rank): the parent went quiet") }
                guard count == 1 else { throw BenchError("all-reduce helper \(rank): a message of \(count) frames") }
                switch try Message.decode(buffers[0]) {
                case .reduced(_, _, let w, let e, _) where w == UInt32(width) && e == kind: continue
                case .stop: return
                case let other: throw BenchError("all-reduce helper \(rank): unexpected \(other.kind)")
                }
            }
        case "peerallreduce":
            try PeerAllReduceHelper(dealer: dealer, rank: rank, width: width).run()
        default:
            throw BenchError("unknown helper role \(role)")
        }
    }

    private static func spawnHelper(_ arguments: [String]) throws -> BenchChild {
        try BenchChild(arguments: ["bench"] + arguments)
    }

    /// A ROUTER bound on `transport` (tcp loopback or ipc), router-mandatory, without high-water marks.
    /// The caller closes it with `close(_:)`, which also removes an ipc socket file.
    private static func makeRouter(_ context: Context, transport: String) throws -> (Socket, String) {
        let router = try Socket(context, .router)
        try router.setRouterMandatory(true)
        try router.setHighWaterMarks(send: 0, receive: 0)
        if transport == "ipc" { unlink(ipcPath) }
        try router.bind(transport == "ipc" ? "ipc://" + ipcPath : "tcp://127.0.0.1:*")
        return (router, try router.lastEndpoint)
    }

    private static var ipcPath: String { "/tmp/syncbn-bench-\(getpid()).sock" }

    private static func close(_ router: Socket) {
        router.close()
        unlink(ipcPath)
    }

    private static func receive(_ router: Socket, into buffers: inout [[UInt8]], what: String) throws -> Int {
        while true {
            guard try router.waitReadable(timeoutMilliseconds: timeoutMilliseconds) else { throw BenchError("\(what): no message for \(timeoutMilliseconds / 1000) s") }
            if let count = try router.receive(into: &buffers, dontWait: true) { return count }
        }
    }

    /// Starts `workers` helpers of `role` (`--rank 0…`), plus `arguments`; if one fails to start, stops the others.
    private static func spawnHelpers(_ role: String, workers: Int, endpoint: String, arguments: [String]) throws -> [BenchChild] {
        var children: [BenchChild] = []
        do {
            for rank in 0..<workers {
                children.append(try spawnHelper(["--helper", role, "--connect", endpoint, "--rank", "\(rank)"] + arguments))
            }
        } catch {
            for child in children { child.stop(graceSeconds: 2) }
            throw error
        }
        return children
    }

    /// Tells each helper to stop and checks that every one exits cleanly.
    private static func stopHelpers(_ children: [BenchChild], at identities: [[UInt8]], on router: Socket, what: String) throws {
        let stop = Message.stop.encoded()
        for identity in identities { try router.send(frames: [identity, stop]) }
        for child in children {
            let exit = child.wait(timeoutSeconds: 10)
            guard exit.succeeded else { throw BenchError("\(what) \(exit.description)") }
        }
    }

    /// The median of each repeat's `rounds` consecutive times.
    private static func mediansPerRepeat(_ times: [Double], rounds: Int, repeats: Int) -> [Double] {
        (0..<repeats).map { benchMedian(Array(times[($0 * rounds)..<(($0 + 1) * rounds)]))! }
    }

    // MARK: Raw baselines

    /// Median round trip (µs) of `size`-byte messages, one value per repeat (each the median of `count` trips).
    /// Median round trip (µs) per repeat, and the CPU time (µs) this thread spent per round trip — sending,
    /// blocking until the reply and receiving it: the floor of what a worker burns waiting for one round.
    static func roundTrip(transport: String, size: Int = 64, count: Int, warmup: Int = 200, repeats: Int) throws -> (times: [Double], cpu: [Double]) {
        let context = try Context()
        let (router, endpoint) = try makeRouter(context, transport: transport)
        defer { close(router) }
        let child = try spawnHelper(["--helper", "echo", "--connect", endpoint])
        defer { child.stop(graceSeconds: 2) }
        var buffers: [[UInt8]] = [[], []]
        _ = try receive(router, into: &buffers, what: "echo helper hello")
        let identity = buffers[0]
        let payload = [UInt8](repeating: 7, count: size)
        var medians: [Double] = [], cpu: [Double] = []
        for _ in 0..<repeats {
            var times: [Double] = []
            var cpu0: UInt64 = 0
            for i in 0..<(warmup + count) {
                if i == warmup { cpu0 = threadCPUNanoseconds() }
                let t0 = benchNow()
                try router.send(frames: [identity, payload])
                let frames = try receive(router, into: &buffers, what: "echo helper")
                guard frames == 2, buffers[1].count == size else { throw BenchError("echo helper: wrong reply") }
                if i >= warmup { times.append(Double(benchNow() - t0) / 1e3) }
            }
            medians.append(benchMedian(times)!)
            cpu.append(Double(threadCPUNanoseconds() - cpu0) / 1e3 / Double(count))
        }
        try router.send(frames: [identity, []])
        child.wait(timeoutSeconds: 5)
        return (medians, cpu)
    }

    /// One-way throughput (GB/s, 1e9 bytes) of `messages` messages of `size` bytes, DEALER → ROUTER, one value per
    /// repeat. Timed at the receiver, from asking for the stream to receiving its last message.
    static func throughput(transport: String, size: Int, messages: Int, repeats: Int) throws -> [Double] {
        let context = try Context()
        let (router, endpoint) = try makeRouter(context, transport: transport)
        defer { close(router) }
        let child = try spawnHelper(["--helper", "stream", "--connect", endpoint, "--size", "\(size)"])
        defer { child.stop(graceSeconds: 2) }
        var buffers: [[UInt8]] = [[], []]
        _ = try receive(router, into: &buffers, what: "stream helper hello")
        let identity = buffers[0]
        func stream(_ count: Int) throws -> Double {
            let command: [UInt8] = [1, UInt8(count & 0xff), UInt8(count >> 8 & 0xff), UInt8(count >> 16 & 0xff), UInt8(count >> 24 & 0xff)]
            let t0 = benchNow()
            try router.send(frames: [identity, command])
            for _ in 0..<count {
                let frames = try receive(router, into: &buffers, what: "stream helper")
                guard frames == 2, buffers[1].count == size else { throw BenchError("stream helper: wrong message") }
            }
            return Double(benchNow() - t0) / 1e9
        }
        _ = try stream(max(4, messages / 10))  // warm up
        var rates: [Double] = []
        for _ in 0..<repeats {
            let seconds = try stream(messages)
            rates.append(Double(messages * size) / seconds / 1e9)
        }
        try router.send(frames: [identity, []])
        child.wait(timeoutSeconds: 5)
        return rates
    }

    // MARK: All-reduce star

    /// Round times (seconds) of an all-reduce through a coordinator-like star over tcp loopback: `workers` child
    /// processes each send partials of `width` values; the parent sums them in worker order with OrderedReduction
    /// and sends the reduced result back to each. One median per repeat of `rounds` rounds, after `warmup` rounds.
    /// A round is timed from the end of the previous one (the last reduced sent) to the end of this one.
    static func allReduce(workers: Int, width: Int, element: WireProtocol.Element, rounds: Int, warmup: Int, repeats: Int) throws -> [Double] {
        let context = try Context()
        let (router, endpoint) = try makeRouter(context, transport: "tcp")
        defer { close(router) }
        let children = try spawnHelpers("allreduce", workers: workers, endpoint: endpoint,
                                        arguments: ["--width", "\(width)", "--element", element == .float64 ? "f64" : "f32"])
        defer { for child in children { child.stop(graceSeconds: 2) } }
        let valueSize = element == .float64 ? 8 : 4
        let rowBytes = width * valueSize
        var chunks = [UInt8](repeating: 0, count: workers * rowBytes)
        var result = [UInt8](repeating: 0, count: rowBytes)
        var buffers: [[UInt8]] = [[], []]
        var identities = [[UInt8]](repeating: [], count: workers)
        var times: [Double] = []
        var previousEnd = benchNow()
        let round: Round = element == .float64 ? .moments(layer: 0) : .gradients
        var received = [Bool](repeating: false, count: workers)
        for index in 0..<(warmup + rounds * repeats) {
            for i in received.indices { received[i] = false }
            var gathered = 0
            while gathered < workers {
                let frames = try receive(router, into: &buffers, what: "all-reduce (\(gathered) of \(workers) partials)")
                guard frames == 2 else { throw BenchError("all-reduce: a message of \(frames) frames") }
                guard case .partials(_, _, let first, let count, let w, let e, _, _, let payload) = try Message.decode(buffers[1]),
                      count == 1, w == UInt32(width), e == element, Int(first) < workers, !received[Int(first)] else {
                    throw BenchError("all-reduce: unexpected message")
                }
                let rank = Int(first)
                received[rank] = true
                if identities[rank] != buffers[0] { identities[rank] = buffers[0] }
                chunks.withUnsafeMutableBytes { destination in
                    payload.withUnsafeBytes { source in
                        (destination.baseAddress! + rank * rowBytes).copyMemory(from: source.baseAddress!, byteCount: rowBytes)
                    }
                }
                gathered += 1
            }
            chunks.withUnsafeBytes { source in
                result.withUnsafeMutableBytes { destination in
                    if element == .float64 {
                        OrderedReduction.sum(source.bindMemory(to: Double.self), width: width, into: destination.bindMemory(to: Double.self))
                    } else {
                        OrderedReduction.sum(source.bindMemory(to: Float.self), width: width, into: destination.bindMemory(to: Float.self))
                    }
                }
            }
            // Worker r sends r + 1 everywhere: the sum is n(n + 1)/2, exactly, in either precision.
            let first = result.withUnsafeBytes { element == .float64 ? $0.load(as: Double.self) : Double($0.load(as: Float.self)) }
            guard first == Double(workers * (workers + 1) / 2) else { throw BenchError("all-reduce: wrong sum \(first)") }
            let reply = Message.reducedHeader(step: UInt64(index), round: round, width: UInt32(width), element: element) + result
            for identity in identities { try router.send(frames: [identity, reply]) }
            let end = benchNow()
            if index >= warmup { times.append(Double(end - previousEnd) / 1e9) }
            previousEnd = end
        }
        try stopHelpers(children, at: identities, on: router, what: "an all-reduce helper")
        return mediansPerRepeat(times, rounds: rounds, repeats: repeats)
    }

    // MARK: All-reduce among workers

    /// Round times (seconds) of the gradient exchange among `workers` child processes
    /// (`PeerGradientExchange`: reduce-scatter of `width` Float32 values, then all-gather), over tcp loopback.
    /// The parent plays the coordinator: it starts each round with a small message to every worker, receives
    /// every shard once (checking the sums), and ends the round when every worker reports that it holds the
    /// whole result. One median per repeat of `rounds` rounds, after `warmup` rounds.
    static func peerAllReduce(workers: Int, width: Int, rounds: Int, warmup: Int, repeats: Int) throws -> [Double] {
        let context = try Context()
        let (router, endpoint) = try makeRouter(context, transport: "tcp")
        defer { close(router) }
        let children = try spawnHelpers("peerallreduce", workers: workers, endpoint: endpoint, arguments: ["--width", "\(width)"])
        defer { for child in children { child.stop(graceSeconds: 2) } }
        var buffers: [[UInt8]] = [[], []]
        var identities = [[UInt8]](repeating: [], count: workers), endpoints = [String](repeating: "", count: workers)
        for _ in 0..<workers {
            _ = try receive(router, into: &buffers, what: "peer all-reduce helper hello")
            guard case .hello(let peer, let peerEndpoint, _, _) = try Message.decode(buffers[1]), let rank = Int(peer), rank < workers else {
                throw BenchError("peer all-reduce: unexpected hello")
            }
            identities[rank] = buffers[0]
            endpoints[rank] = peerEndpoint
        }
        for rank in 0..<workers {
            try router.send(frames: [identities[rank], Message.peers(epoch: 1, rank: UInt32(rank), uses: .gradients, endpoints: endpoints).encoded()])
        }
        let go = Message.ping.encoded()
        let expected = Float(workers * (workers + 1) / 2)
        var times: [Double] = []
        for index in 0..<(warmup + rounds * repeats) {
            let t0 = benchNow()
            for identity in identities { try router.send(frames: [identity, go]) }
            // Per worker: its (empty) rows, its shard, and "done".
            var left = 3 * workers
            while left > 0 {
                let frames = try receive(router, into: &buffers, what: "peer all-reduce (\(left) messages missing)")
                guard frames == 2 else { throw BenchError("peer all-reduce: a message of \(frames) frames") }
                switch try Message.decode(buffers[1]) {
                case .gradientShard(let step, _, _, _, let w, let payload):
                    guard step == UInt64(index) else { throw BenchError("peer all-reduce: a shard of step \(step) in round \(index)") }
                    if w > 0 {
                        let first = payload.withUnsafeBytes { $0.loadUnaligned(as: Float.self) }
                        guard first == expected else { throw BenchError("peer all-reduce: wrong sum \(first), expected \(expected)") }
                    }
                case .gradientTiles, .ping: break
                case let other: throw BenchError("peer all-reduce: unexpected \(other.kind)")
                }
                left -= 1
            }
            if index >= warmup { times.append(Double(benchNow() - t0) / 1e9) }
        }
        try stopHelpers(children, at: identities, on: router, what: "a peer all-reduce helper")
        return mediansPerRepeat(times, rounds: rounds, repeats: repeats)
    }
}

/// A bench child that takes part in `PeerGradientExchange` rounds: worker `rank` holds chunk `rank` of N, all
/// of whose `width` values are rank + 1. The parent starts a round with a ping and ends the job with stop.
private final class PeerAllReduceHelper: ExchangeUpstream {
    let socket: Socket
    var pollSockets: [Socket] { [socket] }
    let rank: Int, width: Int
    private var buffers: [[UInt8]] = [[]]

    init(dealer: Socket, rank: Int, width: Int) {
        socket = dealer
        self.rank = rank
        self.width = width
    }

    func handleWhileWaiting(step: UInt64) throws -> ArraySlice<UInt8>? {
        guard try socket.receive(into: &buffers, dontWait: true) != nil else { return nil }
        throw BenchError("peer all-reduce helper \(rank): the parent spoke in the middle of a round")
    }

    func run() throws {
        let mesh = try PeerMesh(context: socket.context, address: "127.0.0.1")
        defer { mesh.close() }
        try socket.send(Message.hello(peer: "\(rank)", peerEndpoint: mesh.endpoint).encoded())
        guard try socket.receive(into: &buffers) == 1, case .peers(let epoch, let r, _, let endpoints) = try Message.decode(buffers[0]) else {
            throw BenchError("peer all-reduce helper \(rank): expected the table of peers")
        }
        let table = PeerTable(epoch: epoch, uses: .gradients, rank: Int(r), endpoints: endpoints)
        try mesh.update(table)
        let n = endpoints.count
        let exchange = PeerGradientExchange(layout: GradientLayout(chunkCount: n, sumWidth: width, rowsPerChunk: 0))
        let partials = [Float](repeating: Float(rank + 1), count: width)
        var result = [Float](repeating: 0, count: width)
        let done = Message.ping.encoded()
        var step: UInt64 = 0
        while true {
            guard try socket.receive(into: &buffers) != nil else { throw BenchError("peer all-reduce helper \(rank): the parent went quiet") }
            switch try Message.decode(buffers[0]) {
            case .ping:
                try partials.withUnsafeBufferPointer { p in
                    try result.withUnsafeMutableBufferPointer { out in
                        try exchange.run(step: step, chunks: rank..<(rank + 1), partials: p, into: out, mesh: mesh, table: table, upstream: self,
                                         deadline: Date().addingTimeInterval(Double(BenchNetwork.timeoutMilliseconds) / 1000))
                    }
                }
                guard result[width - 1] == Float(n * (n + 1) / 2) else { throw BenchError("peer all-reduce helper \(rank): wrong sum \(result[width - 1])") }
                try socket.send(done)
                step += 1
            case .stop:
                return
            case let other:
                throw BenchError("peer all-reduce helper \(rank): unexpected \(other.kind)")
            }
        }
    }
}
