import Foundation
import SyncBNCore

/// Rounds among workers: the table of peers; for the gradient round among workers (`--gradient-exchange
/// peers`), the rows and shards the coordinator receives, and the rescue of survivors after a loss.
extension CoordinatorMachine {
    /// Stores one of a member's two gradient messages of the round: its factor rows, or the shard of the sums
    /// it reduced — the sums once and every row once, whatever the worker count.
    func acceptPeerGradients(rank: Int, _ message: Message) -> Acceptance {
        let step = UInt64(current!.step)
        guard message.peerTag.map({ $0.step == step && $0.epoch == peerEpoch }) == true else { return .rejected }
        let layout = GradientLayout(network.exchange)
        let n = members.count
        let range: Range<Int>, payload: ArraySlice<UInt8>
        switch message {
        case .gradientTiles(_, _, let from, _, let shardWidth, let tiles, let rowsFirst, let rowsCount, let rowsWidth, let bytes):
            let chunks = chunks(forRank: rank)
            guard Int(from) == rank, !current!.gotRows[rank], shardWidth == 0, tiles.isEmpty, Int(rowsFirst) == chunks.lowerBound,
                  Int(rowsCount) == chunks.count, Int(rowsWidth) == layout.rowsPerChunk else { return .rejected }
            range = (layout.sumWidth + chunks.lowerBound * layout.rowsPerChunk)..<(layout.sumWidth + chunks.upperBound * layout.rowsPerChunk)
            payload = bytes
            guard payload.count == range.count * 4 else { return .rejected }
            current!.gotRows[rank] = true
        case .gradientShard(_, _, let from, let offset, let width, let bytes):
            let shard = layout.shard(rank, of: n)
            guard Int(from) == rank, !current!.gotShard[rank], Int(offset)..<Int(offset + width) == shard, bytes.count == shard.count * 4 else { return .rejected }
            current!.gotShard[rank] = true
            (range, payload) = (shard, bytes)
        default:
            return .rejected
        }
        let values = UnsafeMutableBufferPointer(rebasing: floatResult[range])
        payload.withUnsafeBytes { raw in
            if raw.count > 0 { UnsafeMutableRawPointer(values.baseAddress!).copyMemory(from: raw.baseAddress!, byteCount: raw.count) }
        }
        return allFinite(UnsafeBufferPointer(values)) ? .accepted : .nonFinite
    }

    /// Sends every member the whole gradient result of `step` (after a loss): a worker still waiting for a
    /// shard that died with its owner completes the step from it; the others ignore it.
    func sendRescue(step: UInt64, _ actions: inout [CoordinatorAction]) {
        let layout = GradientLayout(network.exchange)
        outbox.removeAll(keepingCapacity: true)
        Message.reduced(step: step, round: .gradients, width: UInt32(layout.resultWidth), element: .float32, payload: []).encode(appendingTo: &outbox)
        outbox += UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: floatResult[0..<layout.resultWidth]))
        for peer in members { actions.append(.send(to: peer.identity, bytes: outbox)) }
    }

    /// What the current members run among themselves: the gradient round with `--gradient-exchange peers`;
    /// with `--bn-exchange auto`, the BatchNorm rounds of a step of 2 to `directBatchNormWorkers` workers that
    /// all listen for peers.
    var peerUses: WireProtocol.PeerUses {
        if gradientExchange == .peers { return .gradients }
        let few = (2...Self.directBatchNormWorkers).contains(members.count) && members.allSatisfy { !$0.peerEndpoint.isEmpty }
        return batchNormExchange == .auto && few ? .batchNormRounds : []
    }

    /// The most workers whose BatchNorm rounds run among themselves: each sends every other its partials, N − 1
    /// messages out and in per round, where through the coordinator it is one each way but two hops.
    public static let directBatchNormWorkers = 4

    /// Before a try of a step: sends every member that listens for peers a new table (a new epoch) when the
    /// members or what they run among themselves changed — and, for BatchNorm rounds among workers, on
    /// every redo, so that no partials of an abandoned try (a worker rejoined on its connection: the same
    /// members) are taken for this one's. Workers that never had a table run every round through here.
    func sendPeerTableIfNeeded(_ actions: inout [CoordinatorAction]) {
        let uses = peerUses
        let changed = !members.elementsEqual(peerTableMembers, by: { $0.identity == $1 }) || uses != peerTableUses
        let redo = uses.contains(.batchNormRounds) && current?.lostAt != nil && peerTableAttempt != attempt
        guard changed || redo else { return }
        defer { (peerTableMembers, peerTableUses, peerTableAttempt) = (members.map(\.identity), uses, attempt) }
        guard !uses.isEmpty || !peerTableUses.isEmpty else { return }
        peerEpoch &+= 1
        let endpoints = members.map(\.peerEndpoint)
        for (rank, peer) in members.enumerated() where !peer.peerEndpoint.isEmpty {
            actions.append(.send(to: peer.identity, bytes: Message.peers(epoch: peerEpoch, rank: UInt32(rank), uses: uses, endpoints: endpoints).encoded()))
        }
    }
}
