import Foundation
import Logging
import SyncBNCore

/// The rounds of a step: send the step, gather each round's per-chunk partials from every member, reduce
/// them in chunk order, apply the result to the replica and broadcast it; redo the step when a member is lost.
extension CoordinatorMachine {
    /// One try at the current step with the current members (a first try, or a redo after a loss). Below
    /// `minWorkers` it pauses instead, until workers join.
    func startAttempt(now: Double, _ actions: inout [CoordinatorAction]) {
        guard current != nil else { return }
        attempt &+= 1
        proceedWithAttempt(now: now, &actions)
    }

    /// Welcomes joiners first (the try goes on at the next tick, `.welcoming`), then pauses below
    /// `minWorkers` or sends the step and starts its first round.
    func proceedWithAttempt(now: Double, _ actions: inout [CoordinatorAction]) {
        if !joining.isEmpty {
            welcomeJoiners(now: now, &actions)
            phase = .welcoming(at: now)
            return
        }
        if members.count < minWorkers {
            logger.warning("paused before step \(nextStep + 1): \(members.count) live worker(s), --min-workers is \(minWorkers); waiting up to \(Int(timeouts.joinSeconds)) s for workers to join at \(endpoint)")
            phase = .paused(deadline: now + timeouts.joinSeconds)
            return
        }
        phase = .collecting
        early.removeAll()
        gradientsPending = false
        ridingToReduce.removeAll()
        sendPeerTableIfNeeded(&actions)
        // Sent at the end of the previous step to the same members: nothing to send again.
        if !members.elementsEqual(current!.alreadySent, by: { $0.identity == $1 }) {
            sendStepMessages(&current!.message, &actions)
        }
        current!.alreadySent = []
        current!.rounds = network.rounds(computeMetrics: current!.computeMetrics)
        current!.index = 0
        current!.metrics = nil
        current!.observations = []
        beginRound(now: now, &actions)
    }

    var currentRound: Round { current!.rounds[current!.index] }
    var peersRound: Bool { gradientExchange == .peers && currentRound == .gradients }

    /// Starts collecting the current round; messages kept from earlier are looked at first.
    func beginRound(now: Double, _ actions: inout [CoordinatorAction]) {
        let perWorker = peersRound ? 2 : 1
        current!.pending = [Int](repeating: perWorker, count: members.count)
        current!.left = members.count * perWorker
        current!.roundStarted = now
        current!.lastProbe = -.infinity
        probed = []
        if peersRound {
            current!.gotRows = [Bool](repeating: false, count: members.count)
            current!.gotShard = current!.gotRows
            rescue = nil  // the buffer is being overwritten
        }
        let kept = early
        early = []
        let thisAttempt = attempt, thisRound = current!.index
        for (identity, frame) in kept {
            guard phase == .collecting, attempt == thisAttempt, current?.index == thisRound else { break }
            receivedInRound(identity, frame, now: now, &actions)
        }
    }

    /// While collecting: a message from a member is taken if the round awaits it, kept if it belongs to a
    /// later round of this step, and dropped otherwise; a failure or a new hello loses the member.
    func receivedInRound(_ identity: PeerIdentity, _ frame: [UInt8], now: Double, _ actions: inout [CoordinatorAction]) {
        guard let rank = members.firstIndex(where: { $0.identity == identity }) else {
            handleOutOfRound(identity, frame, now: now, &actions)
            return
        }
        members[rank].lastHeard = now
        guard let message = decode(frame, from: identity, &actions) else { return }
        switch message {
        case .partials, .gradientTiles, .gradientShard:
            if current!.pending[rank] > 0 {
                switch peersRound ? acceptPeerGradients(rank: rank, message) : acceptPartials(rank: rank, message) {
                case .accepted:
                    current!.pending[rank] -= 1
                    current!.left -= 1
                    return
                case .nonFinite:
                    nonFinite(rank: rank, &actions)
                    return
                case .rejected:
                    break
                }
            }
            if keepForLater(message) { early.append((identity, frame)) }
        case .failure(let reason):
            lose(rank: rank, reason: "it failed: \(reason)", now: now, &actions)
        case .hello(let description, let peerEndpoint, _, let threads):
            // The same connection says hello again: the worker lost track of us and rejoins.
            joining.append(Peer(identity: identity, description: description, peerEndpoint: peerEndpoint, threads: Int(threads), lastHeard: now))
            lose(rank: rank, reason: "it restarted its session and rejoins", now: now, &actions)
        default:
            noteMalformed(identity, "an unexpected \(message.kind) message from worker \(rank)")
        }
    }

    enum Acceptance { case accepted, rejected, nonFinite }

    /// Messages of a later round of this step, received early: a worker does not wait for the answer to a
    /// round that has none (`Round.isAnswered`: the observations), so its next partials may come while slower
    /// workers' are still being collected; with `.peers`, workers finish the gradient round among themselves
    /// and send their metrics at once; with BatchNorm rounds among the workers, each sends all of its step's
    /// partials at once.
    func keepForLater(_ message: Message) -> Bool {
        guard case .partials(let s, _, _, _, _, _, _, _, _) = message, s == UInt64(current!.step) else { return false }
        return peersRound || !currentRound.isAnswered || directRound
    }

    /// Whether the current round runs among the workers: they send the coordinator its partials (all of
    /// the step's, with the gradient round) and wait for no answer.
    var directRound: Bool { batchNormDirect && currentRound.isBatchNormRound }

    /// The gradient segment of the current round: the one riding with a backward-sums round, or the gradient
    /// round's own (the last); nil for other rounds.
    var segmentOfCurrentRound: GradientSegment? {
        switch currentRound {
        case .gradients: network.gradientSegments.last
        case .sums(let layer): network.gradientSegments.first { $0.ridesWith == layer }
        default: nil
        }
    }

    /// Stores one member's partials of the round in the chunk-major buffers, if they are the round's: the round's
    /// own values, and the gradients riding with it in their segment's place.
    func acceptPartials(rank: Int, _ message: Message) -> Acceptance {
        guard case .partials(let s, let r, let firstChunk, let chunkCount, let w, let e, let gw, let epoch, let payload) = message else { return .rejected }
        let round = currentRound, step = UInt64(current!.step)
        let segment = segmentOfCurrentRound
        let width = network.width(of: round)
        let element: WireProtocol.Element = round == .gradients ? .float32 : .float64
        let gradientWidth = round == .gradients ? 0 : segment?.exchange.chunkWidth ?? 0
        let expected = chunks(forRank: rank)
        // With BatchNorm rounds among workers, a try's partials come in a burst after its rounds ran among the
        // workers, so an abandoned try's can come in whole after the redo began: its table's epoch tells them
        // apart (a worker whose chunks stayed the same would otherwise have its old try taken for the new one's,
        // and the step completed while it still runs the new try).
        guard s == step, r == round, Int(firstChunk) == expected.lowerBound, Int(chunkCount) == expected.count,
              Int(w) == width, e == element, Int(gw) == gradientWidth, !batchNormDirect || epoch == peerEpoch,
              payload.count == expected.count * (width * element.size + gradientWidth * 4) else {
            // Left over from an abandoned try of this step, or wrong: either way not this round's.
            logger.debug("dropped partials from worker \(rank) for step \(s + 1), \(r), chunks \(firstChunk)+\(chunkCount), width \(w)+\(gw): expected step \(step + 1), \(round), chunks \(expected), width \(width)+\(gradientWidth)")
            return .rejected
        }
        return payload.withUnsafeBytes { raw -> Acceptance in
            let own = expected.count * width * element.size
            var finite: Bool
            if element == .float32 {
                // The gradient round's own segment.
                let target = floatPartials.baseAddress! + segment!.partialsOffset + expected.lowerBound * width
                finite = store(UnsafeRawBufferPointer(rebasing: raw[0..<own]), into: target)
            } else {
                let target = doublePartials.baseAddress! + expected.lowerBound * width
                if own > 0 { UnsafeMutableRawPointer(target).copyMemory(from: raw.baseAddress!, byteCount: own) }
                finite = allFinite(UnsafeBufferPointer(start: target, count: own / 8))
            }
            if gradientWidth > 0 {
                let target = floatPartials.baseAddress! + segment!.partialsOffset + expected.lowerBound * gradientWidth
                finite = store(UnsafeRawBufferPointer(rebasing: raw[own...]), into: target) && finite
            }
            return finite ? .accepted : .nonFinite
        }
    }

    /// Copies Float32 values from the wire into `target`; whether they are all finite.
    private func store(_ raw: UnsafeRawBufferPointer, into target: UnsafeMutablePointer<Float>) -> Bool {
        if raw.count > 0 { UnsafeMutableRawPointer(target).copyMemory(from: raw.baseAddress!, byteCount: raw.count) }
        return allFinite(UnsafeBufferPointer(start: target, count: raw.count / 4))
    }

    /// A member sent NaN or infinity: stop the job, or drop the step (`nonFinitePolicy`).
    func nonFinite(rank: Int, _ actions: inout [CoordinatorAction]) {
        let step = current!.step
        let reason = "worker \(rank) (\(members[rank].description)) sent non-finite values in the \(currentRound) at step \(step + 1)"
        switch nonFinitePolicy {
        case .abort:
            current = nil
            fail(reason + ": stopping (--on-nonfinite abort); lower --lr or check the data", &actions)
        case .skip:
            logger.error("\(reason): step skipped (--on-nonfinite skip)")
            nextStep = step + 1
            current = nil
            phase = .idle
            actions.append(.stepSkipped)
        }
    }

    /// Probes members that are slow to answer (a send to a closed connection fails, which comes back as
    /// `.unreachable`); one that stays silent for the round timeout is lost.
    func roundTimers(now: Double, _ actions: inout [CoordinatorAction]) {
        guard let s = current else { return }
        let waiting = s.pending.indices.filter { s.pending[$0] > 0 }
        if now >= s.roundStarted + timeouts.roundSeconds, let rank = waiting.min() {
            lose(rank: rank, reason: "it sent nothing for the \(currentRound) within \(Int(timeouts.roundSeconds)) s (--round-timeout)", now: now, &actions)
            return
        }
        if now >= s.roundStarted + ClusterTimeouts.probeAfterSeconds, now >= s.lastProbe + Double(ClusterTimeouts.pollMilliseconds) / 1000 {
            current!.lastProbe = now
            let ping = Message.ping.encoded()
            for rank in waiting {
                probed.insert(members[rank].identity)
                actions.append(.send(to: members[rank].identity, bytes: ping))
            }
        }
    }

    /// A member is gone: drop it, tell it if it is still there, and redo the step without it.
    func lose(rank: Int, reason: String, now: Double, _ actions: inout [CoordinatorAction]) {
        let peer = members.remove(at: rank)
        // If it is still connected (stuck rather than dead), tell it it is out — unless it is
        // rejoining, in which case it is welcomed again with the next try.
        if !joining.contains(where: { $0.identity == peer.identity }) {
            actions.append(.send(to: peer.identity, bytes: Message.reject(reason: "declared dead at step \(nextStep + 1): \(reason)").encoded()))
        }
        current!.lostAt = current!.lostAt ?? now
        if let rescue { sendRescue(step: rescue, &actions) }
        logger.warning("worker \(rank) (\(peer.description)) declared dead at step \(nextStep + 1): \(reason); last heard \(Int(((now - peer.lastHeard) * 1000).rounded())) ms ago; redoing the step with \(members.count) worker(s)")
        startAttempt(now: now, &actions)
    }

    /// Moves on while rounds are complete: reduce, apply, broadcast, next round; after the last, the step.
    func advance(now: Double, _ actions: inout [CoordinatorAction]) {
        while phase == .collecting, let s = current, s.left == 0 {
            finishRound(&actions)
            if current!.index == current!.rounds.count - 1 {
                completeStep(now: now, &actions)
                return
            }
            current!.index += 1
            beginRound(now: now, &actions)
        }
    }

    /// The round's partials are all in: reduce them, apply the result to the replica, and broadcast it.
    func finishRound(_ actions: inout [CoordinatorAction]) {
        let plan = config.plan
        let round = currentRound, step = UInt64(current!.step)
        let width = network.width(of: round)
        if peersRound {
            rescue = step
            gradientsPending = true
            return
        }
        if !round.isAnswered {
            // The observations, for the logs only: workers do not wait for an answer.
            current!.observations = network.observations(gathered: UnsafeBufferPointer(rebasing: doublePartials[0..<(plan.chunkCount * width)]))
            return
        }
        outbox.removeAll(keepingCapacity: true)
        if round == .gradients {
            // Every segment's result, those that rode with the backward rounds first.
            ridingToReduce.append(network.gradientSegments.last!)
            doDeferredWork()
            let result = UnsafeBufferPointer(rebasing: floatResult[0..<network.exchange.resultWidth])
            Message.reduced(step: step, round: round, width: UInt32(result.count), element: .float32, payload: []).encode(appendingTo: &outbox)
            outbox += UnsafeRawBufferPointer(result)
            gradientsPending = true
        } else {
            if let segment = segmentOfCurrentRound { ridingToReduce.append(segment) }
            let partials = UnsafeBufferPointer(rebasing: doublePartials[0..<(plan.chunkCount * width)])
            var result = UnsafeBufferPointer(rebasing: doubleResult[0..<width])
            if network.gathers(round) {
                result = partials  // BatchNorm groups: every chunk's partials, each replica merges its group's
            } else {
                round.reduce(partials, plan: plan, chunks: 0..<plan.chunkCount, width: width, valuesPerRow: network.valuesPerRow(of: round),
                             into: UnsafeMutableBufferPointer(mutating: result))
            }
            if let m = network.apply(round, doubles: result) { current!.metrics = m }
            // The workers reduced the same partials themselves.
            if directRound { return }
            Message.reduced(step: step, round: round, width: UInt32(result.count), element: .float64, payload: []).encode(appendingTo: &outbox)
            outbox += UnsafeRawBufferPointer(result)
        }
        // After the step's final round the step is done for whoever received the result, so it is not
        // redone: a member that cannot be reached then is dropped between steps.
        for peer in members { actions.append(.send(to: peer.identity, bytes: outbox)) }
    }

    /// Combines the gradient segments that rode with backward rounds and are all in. Work that need not delay
    /// the sends just returned: a driver calls it once they are out, while workers go on with the backward pass
    /// (otherwise the gradient round does it).
    public func doDeferredWork() {
        let plan = config.plan
        for segment in ridingToReduce {
            let exchange = segment.exchange
            let partials = UnsafeBufferPointer(rebasing: floatPartials[segment.partialsOffset..<(segment.partialsOffset + plan.chunkCount * exchange.chunkWidth)])
            exchange.reduce(partials, into: UnsafeMutableBufferPointer(rebasing: floatResult[segment.resultOffset..<(segment.resultOffset + exchange.resultWidth)]))
        }
        ridingToReduce.removeAll(keepingCapacity: true)
    }

    /// The step's last round is done: send the next step at once (workers start it while this replica
    /// updates), and wait for `commitStep()`.
    func completeStep(now: Double, _ actions: inout [CoordinatorAction]) {
        let s = current!
        if let next = s.next {
            var message = encodeStep(next)
            sendStepMessages(&message, &actions)
            sentAhead = (next.step, message, members.map(\.identity))
        }
        if let lostAt = s.lostAt {
            redoneSteps += 1
            logger.info("step \(s.step + 1) redone by \(members.count) worker(s) in \(Int(((now - lostAt) * 1000).rounded())) ms after the loss (\(Int(((now - s.started) * 1000).rounded())) ms in all)")
        }
        var metrics = s.metrics
        metrics?.observations = s.observations
        completed = (s.step, metrics)
        current = nil
        phase = .idle
        actions.append(.stepCompleted)
    }

    /// Applies a completed step to this replica: the gradients, the optimizer and the running statistics.
    func finishStep(_ step: Int) {
        if gradientsPending {
            network.apply(gradients: UnsafeBufferPointer(rebasing: floatResult[0..<network.exchange.resultWidth]))
            gradientsPending = false
        }
        network.optimizer.learningRate = config.learningRate(atStep: step)
        network.finishStep()
    }

    /// The step message for `input`, with the batch augmented as `train` augments it (workers only normalize).
    func encodeStep(_ input: StepInput) -> [UInt8] {
        let batch = config.pipeline.augmentation == nil ? BatchData(data, indices: input.samples)
            : BatchData(config.pipeline.batch(data, indices: input.samples, seed: config.seed, epoch: input.epoch), indices: 0..<input.samples.count)
        return Message.step(step: UInt64(input.step), firstChunk: 0, chunkCount: 0, computeMetrics: input.computeMetrics, batch: batch).encoded()
    }

    /// The chunks member `rank` computes: a share of the batch in proportion to its threads (equal shares
    /// when they are all alike, or when the workers exchange gradients among themselves, which work out each
    /// other's chunks from their ranks). Whoever computes a chunk, its partials are the same bits.
    func chunks(forRank rank: Int) -> Range<Int> {
        let threads = members.lazy.map(\.threads)  // no array: this runs for every message of a round
        if gradientExchange == .peers || threads.allSatisfy({ $0 == threads.first }) {
            return config.plan.chunks(forRank: rank, of: members.count)
        }
        return ChunkPlan.chunks(forRank: rank, weights: threads, chunkCount: config.plan.chunkCount)
    }

    /// Sends each member `message` with its chunk assignment.
    func sendStepMessages(_ message: inout [UInt8], _ actions: inout [CoordinatorAction]) {
        for (rank, peer) in members.enumerated() {
            let chunks = chunks(forRank: rank)
            Message.setStepAssignment(&message, firstChunk: UInt32(chunks.lowerBound), chunkCount: UInt32(chunks.count))
            actions.append(.send(to: peer.identity, bytes: message))
        }
    }
}
