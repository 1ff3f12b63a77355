import Foundation
import SyncBNCore
import ZeroMQ

/// A BatchNorm round between the two workers of a step (`--bn-exchange auto`): each sends the other its
/// chunks' partials (`peerPartials`) and lays out both workers' in chunk order, so that each reduces exactly the
/// values the coordinator would, in the same order — the same bits. One hop per round instead of two, and the
/// coordinator wakes for none of it: it receives the same partials with the gradient round, for its replica's
/// running statistics.
///
/// A message of another step or table is kept for its round (a few at most) or left to age out; one of this
/// step and table that is not this round's, or does not fit the table, is dropped (`onDrop`): the link is not
/// authenticated.
public final class PeerBatchNormExchange {
    private let chunkCount: Int
    /// Both workers' partials of the current round, chunk-major over the whole batch.
    private var both: UnsafeMutableBufferPointer<Double>
    /// Reused buffer for the outgoing message.
    private var outbox: [UInt8] = []
    /// Messages of another step or table, kept for the round they may belong to.
    private var early: [[UInt8]] = []
    private static let earlyLimit = 8
    public var onDrop: (String) -> Void = { _ in }

    public init(chunkCount: Int) {
        self.chunkCount = chunkCount
        both = .allocate(capacity: 1)
    }

    deinit { both.deallocate() }

    /// Sends this worker's partials of `round` (`width` values for each of its `chunks`, chunk-major) to the
    /// other worker of `mesh`'s table and waits for theirs. Returns every chunk's partials in chunk order
    /// (valid until the next call).
    /// - Parameters:
    ///   - upstream: sockets that may interrupt the wait (the coordinator's and its monitor); when one is
    ///     readable, `onUpstream` reads it and throws to abandon the round (a redo, the end of the job).
    /// - Throws: whatever `onUpstream` throws, or `ClusterError` at `deadline`.
    public func run(_ round: Round, step: UInt64, chunks: Range<Int>, partials: UnsafeBufferPointer<Double>, width: Int, mesh: PeerMesh,
                    upstream: [Socket], deadline: Date, onUpstream: () throws -> Void) throws -> UnsafeBufferPointer<Double> {
        guard let epoch = mesh.epoch, mesh.workerCount == 2 else { preconditionFailure("a BatchNorm round between workers needs a table of two") }
        precondition(partials.count == chunks.count * width && chunks.upperBound <= chunkCount)
        let me = mesh.rank, other = 1 - mesh.rank
        let total = chunkCount * width
        if both.count < total {
            both.deallocate()
            both = .allocate(capacity: total)
        }
        outbox.removeAll(keepingCapacity: true)
        Message.peerPartials(step: step, epoch: epoch, from: UInt32(me), round: round, firstChunk: UInt32(chunks.lowerBound),
                             chunkCount: UInt32(chunks.count), width: UInt32(width), payload: []).encode(appendingTo: &outbox)
        outbox += UnsafeRawBufferPointer(partials)
        try mesh.outlet(to: other).send(outbox)
        if !partials.isEmpty { (both.baseAddress! + chunks.lowerBound * width).update(from: partials.baseAddress!, count: partials.count) }

        /// Takes the other worker's partials if `frame` holds them; keeps or drops anything else.
        func take(_ frame: UnsafeRawBufferPointer) -> Bool {
            let message: Message, payloadOffset: Int
            do {
                (message, payloadOffset) = try Message.decodePeerFrame(frame)
            } catch {
                onDrop("\(error)")
                return false
            }
            guard case .peerPartials(let s, let e, let from, let r, let first, let count, let w, _) = message else {
                onDrop("a \(message.kind) message where BatchNorm partials belong")
                return false
            }
            if s != step || e != epoch {
                if s >= step {  // a redo or the next step, seen before its table; older ones are from abandoned tries
                    if early.count >= Self.earlyLimit { early.removeFirst() }
                    early.append(Array(frame))
                }
                return false
            }
            let theirs = Int(first)..<(Int(first) + Int(count))
            let complementary = (chunks.lowerBound == 0 && theirs.lowerBound == chunks.upperBound && theirs.upperBound == chunkCount)
                || (theirs.lowerBound == 0 && chunks.lowerBound == theirs.upperBound && chunks.upperBound == chunkCount)
            guard Int(from) == other, r == round, Int(w) == width, complementary else {
                onDrop("BatchNorm partials from worker \(from) that do not fit this round (\(r), chunks \(theirs), width \(w)): expected worker \(other)'s \(round), width \(width), with chunks \(chunks) here")
                return false
            }
            let payload = UnsafeRawBufferPointer(rebasing: frame[payloadOffset...])
            if payload.count > 0 {
                UnsafeMutableRawPointer(both.baseAddress! + theirs.lowerBound * width).copyMemory(from: payload.baseAddress!, byteCount: payload.count)
            }
            return true
        }

        var taken = false
        if !early.isEmpty {
            let kept = early
            early.removeAll(keepingCapacity: true)
            for frame in kept where !taken { taken = frame.withUnsafeBytes { take($0) } }
        }
        let sockets = [mesh.inbox] + upstream
        while !taken {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else {
                throw ClusterError("step \(step + 1), \(round): nothing from worker \(other) within the round timeout")
            }
            guard let ready = try waitForFirstReadable(sockets, timeoutMilliseconds: min(Int(left * 1000) + 1, ClusterTimeouts.pollMilliseconds)) else { continue }
            if ready > 0 {
                try onUpstream()
                continue
            }
            while !taken, let (took, frames) = try mesh.inbox.receiveInPlace(dontWait: true, take) {
                if frames != 1 { onDrop("a message of \(frames) frames (its first frame was read; SyncBN messages are one frame)") }
                taken = took && frames == 1
            }
        }
        return UnsafeBufferPointer(rebasing: both[0..<total])
    }
}
