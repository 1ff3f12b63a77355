import Foundation
import SyncBNCore
import ZeroMQ

/// Why a worker stops waiting for a round's result.
enum Interruption: Error {
    /// The coordinator sent a new step (it redoes this one without a lost worker, or skipped it).
    case preempted(Message)
    /// The connection to the coordinator closed: it died, froze or was cut off.
    case coordinatorLost
    /// The connection closed during its handshake: the two sides do not agree on security (keys on one side
    /// only, or a server key that is not the coordinator's).
    case handshakeFailed
    /// The coordinator's authenticator refused this worker's key.
    case notAuthorized
    /// The gradients exchanged among the workers hold NaN or infinity. Every replica, the coordinator's too,
    /// holds the same bits and so decides the same: the step is dropped (or the job stopped, by the
    /// coordinator's --on-nonfinite) and the worker waits for what comes next.
    case nonFiniteGradients
}

/// A worker's collective: each call sends this worker's per-chunk partials to the coordinator and blocks
/// (in `zmq_poll`, spending no CPU) until the reduction over the global batch comes back. Rounds that the
/// coordinator's table of peers hands to the workers run among them instead: the gradient round
/// (`PeerGradientExchange`), or the BatchNorm rounds of a step of a few workers (`PeerBatchNormExchange`), whose
/// partials the coordinator then receives with the gradient round.
final class RemoteCollective: Collective, ExchangeUpstream {
    private let connection: CoordinatorConnection
    /// Decides what each message from the coordinator means while a step runs.
    private let machine: WorkerMachine
    private let timeoutSeconds: Double
    /// The links to the other workers (nil: this worker takes no part in peer exchanges).
    let mesh: PeerMesh?
    /// Told why a message from another worker was dropped.
    var onPeerDrop: (String) -> Void = { _ in }
    private var peerExchange: PeerGradientExchange?
    private var batchNormExchange: PeerBatchNormExchange?
    /// Reduces the BatchNorm rounds exchanged among the workers exactly as the coordinator would.
    private let reduction: LocalCollective
    /// This step's partials messages for the coordinator while its BatchNorm rounds run among the workers:
    /// held back (the first `heldBackCount`, in their reused buffers) and sent together before the gradient round's.
    private var heldBack: [[UInt8]] = []
    private var heldBackCount = 0
    /// When the first of them was held back: once that is over `holdBackSeconds` ago, they go out at the next
    /// BatchNorm round, so that the coordinator hears from this worker within the round timeout however long
    /// the step.
    private var heldBackSince: UInt64 = 0
    static let holdBackSeconds = 1.0
    var step: UInt64 = 0
    var slice: BatchSlice
    /// The table of peers the step started with: its rounds run with it even if a newer one comes (before the
    /// redo that follows it).
    private(set) var stepTable: PeerTable?
    /// The epoch `partials` carry: the step's table's (0: none).
    private var stepEpoch: UInt32 { stepTable?.epoch ?? 0 }
    /// Time spent between sending partials and receiving the result, for the step being run.
    private(set) var waitingNanoseconds: UInt64 = 0
    /// CPU time this thread burnt while waiting for results (blocking waits spend ~none), for the step.
    private(set) var waitingCPUNanoseconds: UInt64 = 0
    /// Reused message buffer, so that rounds allocate no large arrays.
    private var outbox: [UInt8] = []
    /// The next step, received while this one's gradients were still coming from other workers; the worker
    /// runs it next (`takeDeferred()`).
    private var deferred: Message?
    /// This step's partials messages, and where the gradients that rode with backward rounds come back.
    private var messages = WorkerRoundMessages()

    func takeDeferred() -> Message? {
        defer { deferred = nil }
        return deferred
    }

    init(connection: CoordinatorConnection, mesh: PeerMesh?, machine: WorkerMachine, slice: BatchSlice, reduction: LocalCollective,
         timeoutSeconds: Double) {
        self.connection = connection
        self.reduction = reduction
        self.machine = machine
        self.mesh = mesh
        self.slice = slice
        self.timeoutSeconds = timeoutSeconds
    }

    func beginStep(_ step: UInt64, slice: BatchSlice) {
        self.step = step
        self.slice = slice
        waitingNanoseconds = 0
        waitingCPUNanoseconds = 0
        messages.beginStep()
        heldBackCount = 0
        stepTable = mesh?.table
    }

    func allReduce(_ round: Round, partials: UnsafeBufferPointer<Double>, into result: UnsafeMutableBufferPointer<Double>,
                   riding: RidingGradients?) throws {
        if let all = try exchangeAmongWorkers(round, partials: partials, width: result.count, riding: riding) {
            try reduction.allReduce(round, partials: all, into: result)
            return
        }
        try roundTrip(round, element: .float64, width: result.count, resultWidth: result.count,
                      partials: UnsafeRawBufferPointer(partials), riding: riding, result: UnsafeMutableRawBufferPointer(result))
    }

    func allGather(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int, into result: UnsafeMutableBufferPointer<Double>,
                   riding: RidingGradients?) throws {
        if let all = try exchangeAmongWorkers(round, partials: partials, width: width, riding: riding) {
            try reduction.allGather(round, partials: all, width: width, into: result)
            return
        }
        try roundTrip(round, element: .float64, width: width, resultWidth: result.count,
                      partials: UnsafeRawBufferPointer(partials), riding: riding, result: UnsafeMutableRawBufferPointer(result))
    }

    /// A BatchNorm round that the step's table hands to the workers: holds back this worker's partials message
    /// for the coordinator (with the gradients riding with it), exchanges the partials with the other workers,
    /// and returns all workers' in chunk order. Nil for a round that goes through the coordinator.
    private func exchangeAmongWorkers(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int,
                                         riding: RidingGradients?) throws -> UnsafeBufferPointer<Double>? {
        guard let mesh, let table = stepTable, table.exchanges(round) else { return nil }
        if heldBackCount == heldBack.count { heldBack.append([]) }
        messages.encodePartials(round, step: step, epoch: table.epoch, slice: slice, width: width, element: .float64,
                                partials: UnsafeRawBufferPointer(partials), riding: riding, into: &heldBack[heldBackCount])
        let now = DispatchTime.now().uptimeNanoseconds
        if heldBackCount == 0 { heldBackSince = now }
        heldBackCount += 1
        if Double(now - heldBackSince) / 1e9 > Self.holdBackSeconds { try sendHeldBack() }
        if batchNormExchange == nil {
            batchNormExchange = PeerBatchNormExchange(chunkCount: reduction.plan.chunkCount)
            batchNormExchange!.onDrop = onPeerDrop
        }
        // Timed as `roundTrip` is: all of it as waiting (from `now`), the CPU from the sends on.
        defer { waitingNanoseconds += DispatchTime.now().uptimeNanoseconds - now }
        try batchNormExchange!.send(round, step: step, chunks: slice.chunks, partials: partials, width: width, mesh: mesh, table: table)
        let cpu0 = threadCPUNanoseconds()
        defer { waitingCPUNanoseconds += threadCPUNanoseconds() - cpu0 }
        return try batchNormExchange!.receive(mesh: mesh, deadline: Date().addingTimeInterval(timeoutSeconds)) {
            // A redo, a new table or the end of the job: the machine decides (a result of an earlier try is ignored).
            while let message = try connection.nextIfWaiting() { try handle(message) }
        }
    }

    /// Sends the partials messages held back while BatchNorm rounds ran among the workers, in their order.
    private func sendHeldBack() throws {
        for index in 0..<heldBackCount { try connection.socket.send(heldBack[index]) }
        heldBackCount = 0
    }

    func exchangeGradients(_ partials: UnsafeBufferPointer<Float>, exchange: GradientExchange, into result: UnsafeMutableBufferPointer<Float>) throws {
        if let mesh, let table = stepTable, table.exchanges(.gradients) {
            precondition(messages.ridingResultWidth == 0, "gradients rode with a backward round although the workers exchange them among themselves")
            try timed {
                if peerExchange == nil {
                    peerExchange = PeerGradientExchange(layout: GradientLayout(exchange))
                    peerExchange!.onDrop = onPeerDrop
                }
                try peerExchange!.run(step: step, chunks: slice.chunks, partials: partials, into: result, mesh: mesh, table: table, upstream: self,
                                      deadline: Date().addingTimeInterval(timeoutSeconds))
            }
            guard allFinite(UnsafeBufferPointer(result)) else { throw Interruption.nonFiniteGradients }
            return
        }
        // The coordinator answers with every segment's result: those that rode with the backward rounds, then this one.
        try roundTrip(.gradients, element: .float32, width: exchange.chunkWidth, resultWidth: messages.ridingResultWidth + exchange.resultWidth,
                      partials: UnsafeRawBufferPointer(partials), riding: nil, result: nil) { [self] payload in
            messages.takeGradientResult(payload, own: result)
        }
    }

    /// Sends the partials and goes on: the coordinator keeps them for its logs and sends nothing back.
    func report(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int) throws {
        try sendHeldBack()
        messages.encodePartials(round, step: step, epoch: stepEpoch, slice: slice, width: width, element: .float64, partials: UnsafeRawBufferPointer(partials),
                                riding: nil, into: &outbox)
        try connection.socket.send(outbox)
    }

    /// Runs `body`, counting its time and this thread's CPU time as waiting.
    private func timed(_ body: () throws -> Void) throws {
        let t0 = DispatchTime.now().uptimeNanoseconds, cpu0 = threadCPUNanoseconds()
        defer {
            waitingNanoseconds += DispatchTime.now().uptimeNanoseconds - t0
            waitingCPUNanoseconds += threadCPUNanoseconds() - cpu0
        }
        try body()
    }

    /// Sends `width` values per chunk (and the gradients `riding` with them) and waits for the `resultWidth`
    /// values of the reduction, which go into `result` or to `take`.
    private func roundTrip(_ round: Round, element: WireProtocol.Element, width: Int, resultWidth: Int,
                           partials: UnsafeRawBufferPointer, riding: RidingGradients?, result: UnsafeMutableRawBufferPointer?,
                           take: ((UnsafeRawBufferPointer) -> Void)? = nil) throws {
        let t0 = DispatchTime.now().uptimeNanoseconds
        defer { waitingNanoseconds += DispatchTime.now().uptimeNanoseconds - t0 }
        try sendHeldBack()
        messages.encodePartials(round, step: step, epoch: stepEpoch, slice: slice, width: width, element: element, partials: partials, riding: riding, into: &outbox)
        try connection.socket.send(outbox)
        _ = machine.handle(.awaiting(step: step, round: round, resultWidth: resultWidth, element: element), now: now())
        // A step that arrived during this step's peer exchange means the coordinator will send no more results
        // for this one (it skipped it): start that step instead.
        if let next = takeDeferred() { throw Interruption.preempted(next) }
        let cpu0 = threadCPUNanoseconds()
        defer { waitingCPUNanoseconds += threadCPUNanoseconds() - cpu0 }
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while true {
            // The result's values go from libzmq's buffer straight to their place.
            let delivered = try connection.next(until: deadline) { message, payload -> Bool in
                guard case .reduced? = try handle(message) else { return false }
                if let result { result.copyMemory(from: payload) }
                take?(payload)
                return true
            }
            guard let delivered else {
                throw ClusterError("step \(step + 1), \(round): the coordinator sent no result within \(Int(timeoutSeconds)) s; is it stuck?")
            }
            if delivered { return }
        }
    }

    private func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

    /// Acts on a coordinator message during a step, as the machine decides: the awaited result is returned; a
    /// new table of peers is taken (a redo follows), a result of an abandoned try or a probe is ignored; a new
    /// step abandons the round (`Interruption.preempted`); an end of the job throws.
    @discardableResult
    func handle(_ message: Message) throws -> Message? {
        var delivered: Message?
        for action in machine.handle(.received(message), now: now()) {
            switch action {
            case .deliver(let result): delivered = result
            case .takePeers(let epoch, let rank, let uses, let endpoints): try takePeers(epoch: epoch, rank: rank, uses: uses, endpoints: endpoints)
            case .startStep(let newer): throw Interruption.preempted(newer)
            case .fail(let reason): throw ClusterError(reason)
            case .abandonStep, .connect, .send, .join, .finish: break
            }
        }
        return delivered
    }

    /// Takes the coordinator's table of peers.
    func takePeers(epoch: UInt32, rank: UInt32, uses: WireProtocol.PeerUses, endpoints: [String]) throws {
        guard let mesh else {
            if uses.isEmpty { return }  // every round through the coordinator: what a worker without links does anyway
            throw ClusterError("the coordinator asked for a peer exchange, but this worker has no peer endpoint")
        }
        try mesh.update(PeerTable(epoch: epoch, uses: uses, rank: Int(rank), endpoints: endpoints))
    }

    // MARK: ExchangeUpstream

    public var socket: Socket { connection.socket }
    public var pollSockets: [Socket] { [connection.socket, connection.monitor.socket] }

    public func handleWhileWaiting(step: UInt64) throws -> ArraySlice<UInt8>? {
        guard let message = try connection.next(until: Date().addingTimeInterval(0.001)) else { return nil }
        switch message {
        case .step(let s, _, _, _, _) where s > step:
            // The coordinator has every shard of this step and went on; this step's shards are on their way.
            deferred = message
            return nil
        case .reduced(let s, .gradients, _, .float32, let payload) where s == step:
            return payload  // a shard died with its owner: the coordinator sends the whole result
        default:
            try handle(message)
            return nil
        }
    }
}

/// CPU time consumed by the calling thread.
func threadCPUNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

/// A worker's DEALER socket to the coordinator, with ZMTP heartbeats and a monitor that reports when the
/// connection closes (the coordinator died, froze, or is cut off).
final class CoordinatorConnection {
    let socket: Socket
    let monitor: SocketMonitor
    /// Set when the monitor reported a closed connection or a failed handshake.
    private(set) var lastHandshakeFailure: SocketMonitor.Event?

    init(context: Context, endpoint: String, security: WorkerSecurity?, timeouts: ClusterTimeouts) throws {
        socket = try Socket(context, .dealer)
        try socket.setMaximumMessageSize(WireProtocol.maximumMessageSize)
        try socket.setHighWaterMarks(send: 0, receive: 0)
        try socket.setHeartbeat(intervalMilliseconds: Int32(timeouts.heartbeatIntervalSeconds * 1000),
                                timeoutMilliseconds: Int32(timeouts.heartbeatTimeoutSeconds * 1000))
        try socket.setReconnectInterval(milliseconds: 100, maximumMilliseconds: 2000)
        if let security {
            try socket.makeCurveClient(serverKey: security.serverKey, publicKey: security.key.publicKey, secretKey: security.key.secret)
        }
        monitor = try SocketMonitor(socket)
        try socket.connect(endpoint)
    }

    func close() {
        monitor.close()
        socket.close()
    }

    /// How long one blocking receive lasts before the connection's monitor is looked at again: a closed
    /// connection is noticed within this time. One blocking receive costs fewer system calls and wake-ups per
    /// message than polling the socket and its monitor together.
    static let monitorCheckMilliseconds = 50
    /// The socket's receive timeout as last set.
    private var receiveTimeout: Int32 = -1

    /// The next message from the coordinator, or nil at the deadline.
    /// - Throws: `Interruption.coordinatorLost` when the connection closes, `.handshakeFailed` when it closes
    ///   after a failed handshake, `.notAuthorized` for a refused key; `ProtocolError` for an undecodable message.
    func next(until deadline: Date) throws -> Message? {
        try receive(until: deadline) { try Message.decode(Array($0)) }
    }

    /// The next message from the coordinator if one is already here (nil: none); throws as `next(until:)`.
    func nextIfWaiting() throws -> Message? {
        try checkMonitor()
        do {
            return try socket.receiveSingleFrameInPlace(dontWait: true) { try Message.decode(Array($0)) }
        } catch let multipart as MultipartMessage {
            throw ClusterError("the coordinator sent a message of \(multipart.frames) frames; SyncBN messages are one frame")
        }
    }

    /// The next message from the coordinator, handed to `body` while libzmq still holds it: a result's values are
    /// not copied out (`Message.decodeResultInPlace`: the message has an empty payload and `payload` the values,
    /// valid only during the call; for other kinds `payload` is empty). Nil at the deadline; throws as `next(until:)`.
    func next<R>(until deadline: Date, _ body: (_ message: Message, _ payload: UnsafeRawBufferPointer) throws -> R) throws -> R? {
        try receive(until: deadline) { frame in
            let (message, offset) = try Message.decodeResultInPlace(frame)
            return try body(message, UnsafeRawBufferPointer(rebasing: frame[offset...]))
        }
    }

    /// Waits for the next frame until `deadline` and hands it to `body` in libzmq's buffer.
    private func receive<R>(until deadline: Date, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R? {
        while true {
            try checkMonitor()
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return nil }
            let timeout = Int32(min(Int(left * 1000) + 1, Self.monitorCheckMilliseconds))
            if timeout != receiveTimeout {
                try socket.setReceiveTimeout(milliseconds: timeout)
                receiveTimeout = timeout
            }
            do {
                guard let result = try socket.receiveSingleFrameInPlace(body) else { continue }
                return result
            } catch let multipart as MultipartMessage {
                throw ClusterError("the coordinator sent a message of \(multipart.frames) frames; SyncBN messages are one frame")
            }
        }
    }

    /// Acts on what the monitor reported since the last look (it never blocks).
    private func checkMonitor() throws {
        while let event = try monitor.nextEvent() {
            if event.kind == SocketMonitor.Event.handshakeFailedAuth { throw Interruption.notAuthorized }
            if event.isHandshakeFailure { lastHandshakeFailure = event }
            if event.kind == SocketMonitor.Event.disconnected {
                throw lastHandshakeFailure != nil ? Interruption.handshakeFailed : Interruption.coordinatorLost
            }
        }
    }
}

