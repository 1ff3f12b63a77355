import SyncBNCore

/// One BatchNorm round among the few workers of a step (`--bn-exchange auto`), as one worker sees it, without
/// sockets or clocks: the message it sends every other worker, and what to make of each message from them
/// until every worker's partials are in, laid out in chunk order over the whole batch — exactly the values the
/// coordinator would reduce, so every worker reduces them to the same bits. `PeerBatchNormExchange` drives it
/// over ZeroMQ, `SyncBNSimulation` over a simulated network.
public struct PeerBatchNormRound {
    /// What a message from another worker is to this round.
    public enum Verdict: Equatable {
        /// This round's partials from a worker not heard yet: written into place.
        case taken
        /// Of a later round, a later step or another table: the driver keeps it for the round it belongs to.
        case later
        /// Of an earlier step: left over from an abandoned try.
        case stale
        /// Unreadable, from a worker heard already, or with chunks that overlap others': the link is not
        /// authenticated, so anyone who reaches it may send anything.
        case dropped(String)
    }

    public let round: Round
    public let step: UInt64
    public let epoch: UInt32
    public let rank: Int
    public let workerCount: Int
    public let width: Int
    public let chunkCount: Int
    /// Whose chunks are in; disjoint ranges whose counts add up to the batch cover it.
    private var ranges: [Range<Int>?]
    private var chunksIn: Int
    /// Workers not heard yet.
    public private(set) var missing: Int

    /// This worker (`rank` of `workerCount` in the table of `epoch`) computed `chunks` of a batch of `chunkCount`.
    public init(_ round: Round, step: UInt64, epoch: UInt32, rank: Int, workerCount: Int, chunks: Range<Int>, width: Int, chunkCount: Int) {
        precondition(round.isBatchNormRound && rank < workerCount && chunks.upperBound <= chunkCount)
        (self.round, self.step, self.epoch, self.rank, self.workerCount, self.width, self.chunkCount) = (round, step, epoch, rank, workerCount, width, chunkCount)
        ranges = [Range<Int>?](repeating: nil, count: workerCount)
        ranges[rank] = chunks
        chunksIn = chunks.count
        missing = workerCount - 1
    }

    public var isComplete: Bool { missing == 0 }

    /// The fields of the message this worker sends every other (its payload, the partials, follows them).
    public var outgoingFields: Message {
        let chunks = ranges[rank]!
        return .peerPartials(step: step, epoch: epoch, from: UInt32(rank), round: round, firstChunk: UInt32(chunks.lowerBound),
                             chunkCount: UInt32(chunks.count), width: UInt32(width), payload: [])
    }

    /// What `frame` is to this round; this round's partials go to their chunks' place in `all` (chunk-major,
    /// `width` values per chunk, the whole batch).
    public mutating func take(_ frame: UnsafeRawBufferPointer, into all: UnsafeMutablePointer<Double>) -> Verdict {
        let message: Message, payloadOffset: Int
        do {
            (message, payloadOffset) = try Message.decodePeerFrame(frame)
        } catch {
            return .dropped("\(error)")
        }
        guard case .peerPartials(let s, let e, let from, let r, let first, let count, let w, _) = message else {
            return .dropped("a \(message.kind) message where BatchNorm partials belong")
        }
        if s < step { return .stale }
        // A message of a newer table at this step is a redo's, seen before its table reached this worker; one of
        // an older table is not told apart from it here (epochs start anywhere): the driver keeps either, a few at
        // most. Of this table, another round's is a later round's: with three workers or more, one that has every
        // other's partials of this round goes on while this worker still waits for a third's (an earlier round's
        // cannot come: no worker finishes a round without this worker's partials of it).
        if s > step || e != epoch || r != round { return .later }
        let sender = Int(from)
        let (end, overflow) = Int(first).addingReportingOverflow(Int(count))
        let theirs = overflow ? 0..<0 : Int(first)..<end
        guard sender < workerCount, ranges[sender] == nil, Int(w) == width, !overflow, end <= chunkCount,
              !ranges.contains(where: { $0?.overlaps(theirs) == true }) else {
            return .dropped("BatchNorm partials from worker \(from) that do not fit the \(round) (chunks \(first)+\(count), width \(w)): expected width \(width), from one of \(workerCount) workers not heard yet, with chunks no other sent")
        }
        let payload = UnsafeRawBufferPointer(rebasing: frame[payloadOffset...])
        if payload.count > 0 {
            UnsafeMutableRawPointer(all + theirs.lowerBound * width).copyMemory(from: payload.baseAddress!, byteCount: payload.count)
        }
        ranges[sender] = theirs
        missing -= 1
        chunksIn += theirs.count
        return .taken
    }

    /// Once complete: whether the workers' chunks make up the batch (nil), or why not.
    public var coverageProblem: String? {
        chunksIn == chunkCount ? nil
            : "the workers' chunks \(ranges.map { $0.map { "\($0)" } ?? "?" }.joined(separator: ", ")) do not make up the batch of \(chunkCount)"
    }

    /// The workers not heard yet, for messages.
    public var missingWorkers: [Int] { (0..<workerCount).filter { ranges[$0] == nil } }
}
