import Foundation
import SyncBNCore
import ZeroMQ

/// The BatchNorm rounds among the few workers of a step (`--bn-exchange auto`) over ZeroMQ: each worker sends
/// every other its chunks' partials over the peer links and waits for theirs (`PeerBatchNormRound` decides what
/// each message is). One hop per round instead of two, and the coordinator wakes for none of it: it receives
/// the same partials with the gradient round, for its replica's running statistics.
public final class PeerBatchNormExchange {
    private let chunkCount: Int
    /// Every worker's partials of the current round, chunk-major over the whole batch.
    private var all: UnsafeMutableBufferPointer<Double>
    /// Reused buffer for the outgoing message.
    private var outbox: [UInt8] = []
    /// Messages of a later step or another table, kept for the round they may belong to.
    private var early: [[UInt8]] = []
    private static let earlyLimit = 16
    /// How long one blocking receive lasts before the coordinator's socket is looked at again: a redo or the
    /// end of the job is noticed within this time.
    public static let upstreamCheckMilliseconds = 50
    public var onDrop: (String) -> Void = { _ in }

    public init(chunkCount: Int) {
        self.chunkCount = chunkCount
        all = .allocate(capacity: 1)
    }

    deinit { all.deallocate() }

    /// The round under way: between `send` and `receive`.
    private var state: PeerBatchNormRound?

    /// Sends this worker's partials of `round` (`width` values for each of its `chunks`, chunk-major) to every
    /// other worker of `table` (the one the step started with); `receive` then waits for theirs.
    public func send(_ round: Round, step: UInt64, chunks: Range<Int>, partials: UnsafeBufferPointer<Double>, width: Int, mesh: PeerMesh,
                     table: PeerTable) throws {
        precondition(partials.count == chunks.count * width)
        let state = PeerBatchNormRound(round, step: step, epoch: table.epoch, rank: table.rank, workerCount: table.workerCount, chunks: chunks,
                                       width: width, chunkCount: chunkCount)
        self.state = state
        let total = chunkCount * width
        if all.count < total {
            all.deallocate()
            all = .allocate(capacity: total)
        }
        outbox.removeAll(keepingCapacity: true)
        state.outgoingFields.encode(appendingTo: &outbox)
        outbox += UnsafeRawBufferPointer(partials)
        for other in 0..<table.workerCount where other != table.rank {
            try mesh.outlet(to: other, of: table)?.send(outbox)
        }
        if !partials.isEmpty { (all.baseAddress! + chunks.lowerBound * width).update(from: partials.baseAddress!, count: partials.count) }
    }

    /// Waits for the other workers' partials of the round `send` began. Returns every chunk's partials in
    /// chunk order (valid until the next round).
    ///
    /// The wait is one blocking receive on the links from the other workers at a time (fewer system calls and
    /// wake-ups than polling several sockets), of at most `upstreamCheckMilliseconds`; at least that often,
    /// and whenever a receive times out, `checkUpstream` looks, without blocking, at what the coordinator sent
    /// (a redo after a loss, a new table, the end of the job) and throws to abandon the round — so a redo is
    /// noticed within that time, and a round whose messages come at once costs no look at all.
    /// - Throws: whatever `checkUpstream` throws, or `ClusterError` at `deadline` or when the workers' chunks do
    ///   not make up the batch.
    public func receive(mesh: PeerMesh, deadline: Date, checkUpstream: () throws -> Void) throws -> UnsafeBufferPointer<Double> {
        guard var state else { preconditionFailure("receive without send") }
        defer { self.state = nil }
        let all = self.all
        func take(_ frame: UnsafeRawBufferPointer) {
            switch state.take(frame, into: all.baseAddress!) {
            case .taken, .stale: break
            case .later:
                if early.count >= Self.earlyLimit { early.removeFirst() }
                early.append(Array(frame))
            case .dropped(let reason): onDrop(reason)
            }
        }
        if !early.isEmpty {
            let kept = early
            early.removeAll(keepingCapacity: true)
            for frame in kept { frame.withUnsafeBytes { take($0) } }
        }
        let checkEvery = UInt64(Self.upstreamCheckMilliseconds) * 1_000_000
        var lastCheck = DispatchTime.now().uptimeNanoseconds
        while !state.isComplete {
            let now = DispatchTime.now().uptimeNanoseconds
            if now - lastCheck >= checkEvery {
                try checkUpstream()
                lastCheck = now
            }
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else {
                throw ClusterError("step \(state.step + 1), \(state.round): nothing from worker(s) \(state.missingWorkers.map(String.init).joined(separator: ", ")) within the round timeout")
            }
            try mesh.setReceiveTimeout(milliseconds: min(Int(left * 1000) + 1, Self.upstreamCheckMilliseconds))
            guard let (_, frames) = try mesh.inbox.receiveInPlace(take) else {
                lastCheck = 0  // timed out: look upstream before waiting again
                continue
            }
            if frames != 1 { onDrop("a message of \(frames) frames (its first frame was read; SyncBN messages are one frame)") }
        }
        if let problem = state.coverageProblem { throw ClusterError("step \(state.step + 1), \(state.round): \(problem)") }
        return UnsafeBufferPointer(rebasing: all[0..<(chunkCount * state.width)])
    }
}
