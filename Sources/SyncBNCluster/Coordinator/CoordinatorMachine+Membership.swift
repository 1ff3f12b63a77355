import Foundation
import Logging
import SyncBNCore

/// Membership: who has joined, who waits to join, who is lost, and what to make of a message from a peer
/// that is not (or no longer) a member.
extension CoordinatorMachine {

    /// While admitting or paused: welcomes whoever waits, and goes on once enough workers are members.
    func continueWaiting(now: Double, _ actions: inout [CoordinatorAction]) {
        welcomeJoiners(now: now, &actions)
        switch phase {
        case .admitting where members.count >= workerCount:
            phase = .idle
            actions.append(.admitted)
        case .paused where members.count >= minWorkers:
            logger.info("resuming at step \(nextStep + 1) with \(members.count) worker(s)")
            phase = .welcoming(at: now)
        default:
            break
        }
    }

    /// Sends each waiting joiner its rank, the job's settings and the replica's current state.
    func welcomeJoiners(now: Double, _ actions: inout [CoordinatorAction]) {
        guard !joining.isEmpty else { return }
        let configJSON = Array((try? JSONEncoder().encode(config)) ?? Data())
        let state = Safetensors.encode(network.trainingState(), metadata: ["syncbn.step": "\(nextStep)"])
        for var peer in joining {
            let rank = members.count
            if gradientExchange == .peers && peer.peerEndpoint.isEmpty {
                logger.warning("refused worker \(peer.description): it has no peer endpoint, and this job exchanges gradients among workers")
                actions.append(.send(to: peer.identity, bytes: Message.reject(reason: "this job exchanges gradients among workers (--gradient-exchange peers) and this worker listens for none: run it without keys and, on another host, with --peer-address auto (or its address)").encoded()))
                continue
            }
            // A send that fails comes back as `.unreachable`: the worker left before it was welcomed.
            actions.append(.send(to: peer.identity, bytes: Message.welcome(rank: UInt32(rank), workerCount: UInt32(max(workerCount, rank + 1)), config: configJSON, model: state).encoded()))
            peer.lastHeard = now
            members.append(peer)
            let listening = gradientExchange == .peers ? ", other workers reach it at \(peer.peerEndpoint)" : ""
            logger.info("worker \(rank) joined at step \(nextStep + 1): \(peer.description) (\(members.count) live)\(listening)")
        }
        joining.removeAll()
    }

    /// A send to `identity` failed: its connection is gone. A member is lost (mid-step: the step is redone).
    func connectionClosed(_ identity: PeerIdentity, now: Double, _ actions: inout [CoordinatorAction]) {
        joining.removeAll { $0.identity == identity }
        guard let rank = members.firstIndex(where: { $0.identity == identity }) else { return }
        let reason = probed.contains(identity)
            ? "its connection closed (reset, or no heartbeat answer within \(Int(timeouts.heartbeatTimeoutSeconds * 1000)) ms)"
            : "its connection is closed"
        if phase == .collecting {
            lose(rank: rank, reason: reason, now: now, &actions)
        } else {
            let peer = members.remove(at: rank)
            logger.warning("worker \(rank) (\(peer.description)) is gone: \(reason) (\(members.count) live)")
        }
    }

    /// A message from a peer that is not a member, or between rounds: a hello is queued to join; anything
    /// else is dropped with its reason.
    func handleOutOfRound(_ identity: PeerIdentity, _ frame: [UInt8], now: Double, _ actions: inout [CoordinatorAction]) {
        guard let message = decode(frame, from: identity, &actions) else { return }
        if let rank = members.firstIndex(where: { $0.identity == identity }) {
            if case .hello(let description, let peerEndpoint, _, let threads) = message {
                members.remove(at: rank)
                joining.append(Peer(identity: identity, description: description, peerEndpoint: peerEndpoint, threads: Int(threads), lastHeard: now))
                logger.warning("worker \(rank) (\(description)) restarted its session; it rejoins with the next step")
            } else {
                logger.debug("dropped a late \(message.kind) message from worker \(rank) between rounds")
            }
            return
        }
        guard case .hello(let description, let peerEndpoint, let blasKernel, let threads) = message else {
            noteMalformed(identity, "a \(message.kind) message from \(hex(identity)), which has not joined")
            return
        }
        guard !joining.contains(where: { $0.identity == identity }) else { return }
        if !blasKernel.isEmpty && blasKernel != BLAS.kernelName {
            logger.warning("worker \(description) uses OpenBLAS kernels \(blasKernel), this coordinator \(BLAS.kernelName): the model will not be bit-identical to a one-process run; set OPENBLAS_CORETYPE=\(BLAS.kernelName) for every process")
        }
        joining.append(Peer(identity: identity, description: description, peerEndpoint: peerEndpoint, threads: Int(threads), lastHeard: now))
        logger.info("worker \(description) (\(threads) thread(s), OpenBLAS \(blasKernel.isEmpty ? "kernels unknown" : blasKernel)) asked to join; it starts with the next step")
    }

    /// Decodes a frame, answering a peer on another protocol version and counting anything malformed.
    func decode(_ frame: [UInt8], from identity: PeerIdentity, _ actions: inout [CoordinatorAction]) -> Message? {
        do {
            return try Message.decode(frame)
        } catch ProtocolError.versionMismatch(let peerVersion) {
            logger.error("refused a peer speaking protocol version \(peerVersion); this coordinator speaks version \(WireProtocol.version): run the same syncbn release everywhere")
            actions.append(.send(to: identity, bytes: Message.reject(reason: "this coordinator speaks SyncBN protocol version \(WireProtocol.version), the worker speaks \(peerVersion): run the same syncbn release everywhere").encoded()))
        } catch {
            noteMalformed(identity, "\(error)")
        }
        return nil
    }

    /// Logs a dropped message with its reason and the peer; cuts the peer off after `malformedLimit`.
    func noteMalformed(_ identity: PeerIdentity, _ reason: String) {
        let count = malformedCount[identity, default: 0] + 1
        malformedCount[identity] = count
        if count <= 3 { logger.warning("dropped a message from peer \(hex(identity)): \(reason)") }
        if count == Self.malformedLimit {
            cutOff.insert(identity)
            logger.warning("cut off peer \(hex(identity)) after \(count) malformed or unexpected messages")
        }
    }
}
