import Foundation
import SyncBNCore
import ZeroMQ

/// What a gradient round exchanges: per chunk, `sumWidth` values to sum over the batch and `rowsPerChunk`
/// factor rows to gather; the result is the sums, then every chunk's rows in chunk order
/// (`GradientExchange`'s layout).
public struct GradientLayout: Equatable, Sendable {
    public var chunkCount: Int
    public var sumWidth: Int
    public var rowsPerChunk: Int

    public init(chunkCount: Int, sumWidth: Int, rowsPerChunk: Int) {
        self.chunkCount = chunkCount
        self.sumWidth = sumWidth
        self.rowsPerChunk = rowsPerChunk
    }

    public init(_ exchange: GradientExchange) {
        self.init(chunkCount: exchange.chunkCount, sumWidth: exchange.sumWidth, rowsPerChunk: exchange.rowsPerChunk)
    }

    public var chunkWidth: Int { sumWidth + rowsPerChunk }
    public var resultWidth: Int { sumWidth + chunkCount * rowsPerChunk }

    /// Shard `owner` of `workers`: the summed values worker `owner` reduces; the first `sumWidth % workers`
    /// shards are one value longer.
    public func shard(_ owner: Int, of workers: Int) -> Range<Int> {
        let base = sumWidth / workers, extra = sumWidth % workers
        let start = owner * base + min(owner, extra)
        return start..<(start + base + (owner < extra ? 1 : 0))
    }
}

/// The worker's side of a link to whoever coordinates the exchange: where it sends its rows and its shard,
/// and what it does with a message from there while it waits for other workers (a redo of the step abandons
/// the round by throwing).
public protocol ExchangeUpstream: AnyObject {
    var socket: Socket { get }
    /// Sockets to poll besides the mesh, `socket` first.
    var pollSockets: [Socket] { get }
    /// Reads whatever arrived on `pollSockets` and acts on it; throws to abandon the round. Returns the whole
    /// result of `step`'s round if the coordinator sent it (it does when a worker died after the coordinator
    /// had every shard, so that no survivor waits for a shard that died with its owner).
    func handleWhileWaiting(step: UInt64) throws -> ArraySlice<UInt8>?
}

/// The gradient round among the workers themselves (reduce-scatter, then all-gather), so that the traffic
/// through the coordinator does not grow with the number of workers.
///
/// With N workers the summed part is cut into N shards; worker s owns shard s.
/// 1. Each worker pre-sums its chunks' partials into the tree tiles of its run of chunks
///    (`TreeReduction.blocks`) and sends each owner s the tiles' slice of shard s, with its factor rows;
///    it sends its factor rows to the coordinator too.
/// 2. Each owner evaluates the tree over every worker's tiles of its shard — the same additions in the same
///    grouping as a single process, so the same bits — and sends the shard to the other workers and the
///    coordinator.
/// Per round a worker sends (N − 1)/N of the sums and its rows N − 1 times; the coordinator receives every
/// sum and every row exactly once, whatever N.
public final class PeerGradientExchange {
    let layout: GradientLayout
    /// Tiles per run of chunks, at most: 2 per tree level.
    private let maxTiles: Int
    private let ownTiles: UnsafeMutableBufferPointer<Float>
    private var tileStore: UnsafeMutableBufferPointer<Float>
    private let scratch: UnsafeMutableBufferPointer<Float>
    /// Where each of this worker's tiles is: its chunk's partial for a one-chunk tile, else in `ownTiles`.
    private var ownTilePointers: [UnsafePointer<Float>] = []
    /// Reused buffer for the header and fields of an outgoing message.
    private var header: [UInt8] = []
    /// Peer messages of a later step or table, kept for the round they belong to (a few rounds' worth at most).
    private var early: [[UInt8]] = []
    /// Told about every message from another worker that is dropped (it cannot be read, or does not fit the
    /// table): the link is not authenticated, so anyone who reaches it may send anything.
    public var onDrop: (String) -> Void = { _ in }

    public init(layout: GradientLayout) {
        self.layout = layout
        maxTiles = 2 * TreeReduction.scratchCount(chunkCount: layout.chunkCount)
        ownTiles = .allocate(capacity: max(1, maxTiles * layout.sumWidth))
        tileStore = .allocate(capacity: 1)
        scratch = .allocate(capacity: max(1, TreeReduction.scratchCount(chunkCount: layout.chunkCount) * layout.sumWidth))
    }

    deinit {
        ownTiles.deallocate()
        tileStore.deallocate()
        scratch.deallocate()
    }

    /// Runs one gradient round of `step` for this worker's `chunks` (those `ChunkPlan` assigns to its rank
    /// in `table`, the one the step started with). `partials` holds its chunks' partials, chunk-major (`layout.chunkWidth` each);
    /// `result` receives the whole result (`layout.resultWidth`).
    /// - Throws: whatever `upstream.handleWhileWaiting()` throws (the round is abandoned), or `ClusterError`
    ///   at `deadline`. Messages that cannot be read or do not fit the table are dropped (`onDrop`).
    public func run(step: UInt64, chunks: Range<Int>, partials: UnsafeBufferPointer<Float>, into result: UnsafeMutableBufferPointer<Float>,
             mesh: PeerMesh, table: PeerTable, upstream: ExchangeUpstream, deadline: Date) throws {
        let epoch = table.epoch, n = table.workerCount, me = table.rank, c = layout.chunkCount
        let sumWidth = layout.sumWidth, rowsWidth = layout.rowsPerChunk, chunkWidth = layout.chunkWidth
        precondition(partials.count == chunks.count * chunkWidth && result.count == layout.resultWidth)
        let myShard = layout.shard(me, of: n)
        let needed = n * maxTiles * max(1, myShard.count)
        if tileStore.count < needed {
            tileStore.deallocate()
            tileStore = .allocate(capacity: needed)
        }

        // 1. This worker's tiles and rows.
        let myTiles = TreeReduction.blocks(covering: chunks, chunkCount: c)
        let p = partials.baseAddress!, out = result.baseAddress!
        ownTilePointers.removeAll(keepingCapacity: true)
        for (t, tile) in myTiles.enumerated() {
            let first = UnsafePointer(p + (tile.lowerBound - chunks.lowerBound) * chunkWidth)
            if tile.count == 1 || sumWidth == 0 {
                ownTilePointers.append(first)  // nothing to add up
                continue
            }
            TreeReduction.evaluate(tile, chunkCount: c, width: sumWidth,
                                   value: { $0.count == 1 ? UnsafePointer(p + ($0.lowerBound - chunks.lowerBound) * chunkWidth) : nil },
                                   into: ownTiles.baseAddress! + t * sumWidth, scratch: scratch.baseAddress!)
            ownTilePointers.append(UnsafePointer(ownTiles.baseAddress! + t * sumWidth))
        }
        for chunk in chunks where rowsWidth > 0 {
            (out + sumWidth + chunk * rowsWidth).update(from: p + (chunk - chunks.lowerBound) * chunkWidth + sumWidth, count: rowsWidth)
        }
        let allTiles = myTiles.map { UInt32($0.lowerBound)..<UInt32($0.upperBound) }
        /// Sends the tiles' slices of `shard` (none to the coordinator) and this worker's rows.
        func sendTiles(shard: Range<Int>, to socket: Socket) throws {
            let wireTiles = shard.isEmpty ? [] : allTiles
            let rowBytes = chunks.count * rowsWidth * 4
            let fields = Message.gradientTiles(step: step, epoch: epoch, from: UInt32(me), shardOffset: UInt32(shard.lowerBound),
                                               shardWidth: UInt32(shard.count), tiles: wireTiles, rowsFirstChunk: UInt32(chunks.lowerBound),
                                               rowsChunkCount: UInt32(chunks.count), rowsWidth: UInt32(rowsWidth), payload: [])
            try send(fields, payloadBytes: wireTiles.count * shard.count * 4 + rowBytes, to: socket) { at in
                var at = at
                for t in wireTiles.indices {
                    at.copyMemory(from: ownTilePointers[t] + shard.lowerBound, byteCount: shard.count * 4)
                    at += shard.count * 4
                }
                if rowBytes > 0 { at.copyMemory(from: out + sumWidth + chunks.lowerBound * rowsWidth, byteCount: rowBytes) }
            }
        }
        for owner in 0..<n where owner != me {
            if let outlet = mesh.outlet(to: owner, of: table) { try sendTiles(shard: layout.shard(owner, of: n), to: outlet) }
        }
        try sendTiles(shard: 0..<0, to: upstream.socket)

        // 2. Gather the others' tiles of this shard and their rows, reduce, and gather every shard.
        var tilesFrom = [[Range<Int>]?](repeating: nil, count: n)
        tilesFrom[me] = myTiles
        var shardFrom = [Bool](repeating: false, count: n)
        var tilesMissing = n - 1, shardsMissing = n

        /// Takes one message from another worker, read in place in libzmq's buffer.
        func handle(_ frame: UnsafeRawBufferPointer) throws {
            let message: Message, payloadOffset: Int
            do {
                (message, payloadOffset) = try Message.decodePeerFrame(frame)
            } catch {
                return onDrop("\(error)")
            }
            let payload = UnsafeRawBufferPointer(rebasing: frame[payloadOffset...])
            guard let (s, e) = message.peerTag else { return onDrop("a \(message.kind) message where gradient tiles or a shard belong") }
            if s < step || (s == step && e < epoch) { return }  // from an abandoned try
            if s > step || e > epoch {  // a redo or the next step, seen before its table
                if early.count >= 4 * max(n, 2) { early.removeFirst() }
                early.append(Array(frame))
                return
            }
            switch message {
            case .gradientTiles(_, _, let from, let shardOffset, let shardWidth, let tiles, let rowsFirst, let rowsCount, let rowsW, _):
                let r = Int(from)
                let theirChunks = r < n ? ChunkPlan.chunks(forRank: r, of: n, chunkCount: c) : 0..<0
                // Tiles travel only with a non-empty shard (so never to the coordinator).
                let expectedTiles = myShard.isEmpty ? [] : TreeReduction.blocks(covering: theirChunks, chunkCount: c)
                guard r < n, r != me, tilesFrom[r] == nil, Int(shardOffset) == myShard.lowerBound, Int(shardWidth) == myShard.count,
                      tiles.map({ Int($0.lowerBound)..<Int($0.upperBound) }) == expectedTiles, Int(rowsFirst) == theirChunks.lowerBound,
                      Int(rowsCount) == theirChunks.count, Int(rowsW) == rowsWidth else {
                    return onDrop("gradient tiles from worker \(from) that do not fit table \(epoch) (shard \(shardOffset)+\(shardWidth), \(tiles.count) tiles, rows \(rowsFirst)+\(rowsCount))")
                }
                let tileBytes = tiles.count * myShard.count * 4
                if tileBytes > 0 {
                    UnsafeMutableRawPointer(tileStore.baseAddress! + r * maxTiles * myShard.count).copyMemory(from: payload.baseAddress!, byteCount: tileBytes)
                }
                if payload.count > tileBytes {
                    UnsafeMutableRawPointer(out + sumWidth + theirChunks.lowerBound * rowsWidth).copyMemory(from: payload.baseAddress! + tileBytes, byteCount: payload.count - tileBytes)
                }
                tilesFrom[r] = expectedTiles
                tilesMissing -= 1
            case .gradientShard(_, _, let from, let shardOffset, let shardWidth, _):
                let r = Int(from)
                guard r < n, r != me, !shardFrom[r], layout.shard(r, of: n) == Int(shardOffset)..<Int(shardOffset + shardWidth) else {
                    return onDrop("a gradient shard from worker \(from) that does not fit table \(epoch) (\(shardOffset)+\(shardWidth))")
                }
                if payload.count > 0 { UnsafeMutableRawPointer(out + Int(shardOffset)).copyMemory(from: payload.baseAddress!, byteCount: payload.count) }
                shardFrom[r] = true
                shardsMissing -= 1
            default:
                break
            }
        }

        let earlier = early
        early.removeAll(keepingCapacity: true)
        for frame in earlier { try frame.withUnsafeBytes { try handle($0) } }
        let sockets = [mesh.inbox] + upstream.pollSockets
        while shardsMissing > 0 {
            if tilesMissing == 0 && !shardFrom[me] {
                reduceOwnShard(myShard, tilesFrom: tilesFrom, me: me, into: out)
                let fields = Message.gradientShard(step: step, epoch: epoch, from: UInt32(me), shardOffset: UInt32(myShard.lowerBound),
                                                   shardWidth: UInt32(myShard.count), payload: [])
                func sendShard(to socket: Socket) throws {
                    try send(fields, payloadBytes: myShard.count * 4, to: socket) { at in
                        if !myShard.isEmpty { at.copyMemory(from: out + myShard.lowerBound, byteCount: myShard.count * 4) }
                    }
                }
                for owner in 0..<n where owner != me {
                    if let outlet = mesh.outlet(to: owner, of: table) { try sendShard(to: outlet) }
                }
                try sendShard(to: upstream.socket)
                shardFrom[me] = true
                shardsMissing -= 1
                continue
            }
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else {
                let waitingFor = (0..<n).filter { tilesFrom[$0] == nil || !shardFrom[$0] }.map(String.init).joined(separator: ", ")
                throw ClusterError("step \(step + 1), parameter gradients: nothing from worker(s) \(waitingFor) within the round timeout")
            }
            guard let ready = try waitForFirstReadable(sockets, timeoutMilliseconds: min(Int(left * 1000) + 1, ClusterTimeouts.pollMilliseconds)) else { continue }
            if ready > 0 {
                if let whole = try upstream.handleWhileWaiting(step: step) {
                    guard whole.count == result.count * 4 else { throw ClusterError("the coordinator sent \(whole.count) bytes of gradients for \(result.count) values") }
                    whole.withUnsafeBytes { UnsafeMutableRawPointer(out).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
                    return
                }
                continue
            }
            while let (_, frames) = try mesh.inbox.receiveInPlace(dontWait: true, handle) {
                if frames != 1 { onDrop("a message of \(frames) frames (its first frame was read; SyncBN messages are one frame)") }
            }
        }
    }

    /// Sends `fields` (a message whose payload is left empty) followed by `payloadBytes` that `writePayload`
    /// writes, as one frame: every byte is copied once, straight into libzmq's message.
    private func send(_ fields: Message, payloadBytes: Int, to socket: Socket, writePayload: (UnsafeMutableRawPointer) -> Void) throws {
        header.removeAll(keepingCapacity: true)
        fields.encode(appendingTo: &header)
        _ = try header.withUnsafeBytes { head in
            try socket.send(size: head.count + payloadBytes) { buffer in
                buffer.baseAddress!.copyMemory(from: head.baseAddress!, byteCount: head.count)
                writePayload(buffer.baseAddress! + head.count)
            }
        }
    }

    /// Evaluates the tree over every worker's tiles of this worker's shard, into `out[shard]`.
    private func reduceOwnShard(_ shard: Range<Int>, tilesFrom: [[Range<Int>]?], me: Int, into out: UnsafeMutablePointer<Float>) {
        guard !shard.isEmpty else { return }
        let width = shard.count
        TreeReduction.evaluate(0..<layout.chunkCount, chunkCount: layout.chunkCount, width: width, value: { node in
            for (r, tiles) in tilesFrom.enumerated() {
                guard let t = tiles?.firstIndex(of: node) else { continue }
                return r == me
                    ? ownTilePointers[t] + shard.lowerBound
                    : UnsafePointer(tileStore.baseAddress! + (r * maxTiles + t) * width)
            }
            return nil
        }, into: out + shard.lowerBound, scratch: scratch.baseAddress!)
    }
}
