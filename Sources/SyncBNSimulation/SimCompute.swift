import Foundation
import SyncBNCluster
import SyncBNCore

/// A worker's compute in the simulation: `Network.trainStep` on a coroutine, whose collective sends the
/// partials through the simulated network and yields until the scheduler brings the result — or, for the
/// BatchNorm rounds a table of peers hands to the workers, sends them to the other workers and yields until
/// theirs are in (`PeerBatchNormRound`, as `PeerBatchNormExchange` over ZeroMQ).
final class SimCompute: Collective {
    enum Input {
        case start(Message)
        case result(Message)
        /// Another worker's message arrived at this worker's peer link (`receivePeer`).
        case peerArrived
        case abandon
        case exit
    }

    enum Output {
        case send([UInt8])
        /// To the worker listening at `endpoint`.
        case sendPeer(endpoint: String, bytes: [UInt8])
        case awaiting(step: UInt64, round: Round, resultWidth: Int, element: WireProtocol.Element)
        case finished
        case abandoned
        case failed(String)
        /// A message from another worker was dropped, and why.
        case droppedPeerMessage(String)
    }

    /// The coordinator's current table of peers, when it hands BatchNorm rounds to the workers, and the one the
    /// running step started with (its rounds keep it when a newer one comes before the step's redo).
    var table: PeerTable?
    private var stepTable: PeerTable?
    /// Messages from other workers not yet taken by a round (the PULL socket's queue and the kept early ones).
    private var peerInbox: [[UInt8]] = []
    private var waitingForPeers = false
    /// This step's partials messages for the coordinator, held back while its BatchNorm rounds run among
    /// workers: they go out before the next message to the coordinator — or at once with `sendsAsItGoes`, as a
    /// worker's do in a step slow enough to hold them for over a second (`RemoteCollective.holdBackSeconds`).
    private var heldBack: [[UInt8]] = []
    var sendsAsItGoes = false

    struct Abandoned: Error {}

    private var coroutine: Coroutine!
    private var input: Input?
    private var outputs: [Output] = []
    var network: Network?
    var config: TrainingConfig?
    private var step: UInt64 = 0
    private var slice: BatchSlice?
    private var messages = WorkerRoundMessages()

    init() {
        coroutine = Coroutine { [unowned self] co in self.body(co) }
    }

    /// Queues a message from another worker; runs the compute if it waits for one.
    func receivePeer(_ bytes: [UInt8]) -> [Output] {
        peerInbox.append(bytes)
        return waitingForPeers ? run(.peerArrived) : []
    }

    /// Hands `input` to the compute and runs it until it waits again; returns what it did meanwhile.
    func run(_ input: Input) -> [Output] {
        guard !coroutine.finished else { return [] }
        self.input = input
        coroutine.resume()
        defer { outputs.removeAll() }
        return outputs
    }

    private func body(_ co: Coroutine) {
        while true {
            let next = input
            input = nil
            switch next {
            case .exit:
                return
            case .start(let message):
                do {
                    try runStep(message)
                    outputs.append(.finished)
                } catch is Abandoned {
                    outputs.append(.abandoned)
                    if case .exit = input { return }
                } catch {
                    outputs.append(.failed("\(error)"))
                }
            default:
                break  // a result or an abandon for a step no longer running
            }
            co.yield()
        }
    }

    private func runStep(_ message: Message) throws {
        guard let network, let config, case .step(let step, let firstChunk, let chunkCount, let computeMetrics, let batch) = message else { return }
        let chunks = Int(firstChunk)..<(Int(firstChunk) + Int(chunkCount))
        guard chunks.upperBound <= config.plan.chunkCount else { throw ClusterError("step \(step + 1) assigns chunks \(chunks)") }
        let slice = BatchSlice(plan: config.plan, chunks: chunks)
        guard batch.rows == config.plan.batchSize, batch.featureSize == config.model.inputSize else { throw ClusterError("bad batch") }
        batch.copyFeatures(into: network.batchInput.storage)
        config.pipeline.normalize(network.batchInput.storage, rows: batch.rows, shape: config.model.input.dimensions)
        let rows = slice.globalRows
        network.input.storage.update(from: network.batchInput.row(rows.lowerBound), count: rows.count * config.model.inputSize)
        for (row, label) in batch.labels[rows].enumerated() { network.labels[row] = Int32(label) }
        self.step = step
        self.slice = slice
        messages.beginStep()
        heldBack.removeAll()
        stepTable = table
        network.optimizer.learningRate = config.learningRate(atStep: Int(step))
        try network.trainStep(slice: slice, collective: self, computeMetrics: computeMetrics, step: Int(step))
    }

    // MARK: Collective

    func allReduce(_ round: Round, partials: UnsafeBufferPointer<Double>, into result: UnsafeMutableBufferPointer<Double>,
                   riding: RidingGradients?) throws {
        if let all = try amongWorkers(round, partials: partials, width: result.count, riding: riding) {
            try all.withUnsafeBufferPointer {
                try LocalCollective(plan: config!.plan, valuesPerRow: network!.momentScales).allReduce(round, partials: $0, into: result)
            }
            return
        }
        try roundTrip(round, element: .float64, width: result.count, partials: UnsafeRawBufferPointer(partials), riding: riding,
                      resultWidth: result.count) { payload in payload.withUnsafeBytes { UnsafeMutableRawBufferPointer(result).copyMemory(from: $0) } }
    }

    func allGather(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int, into result: UnsafeMutableBufferPointer<Double>,
                   riding: RidingGradients?) throws {
        if let all = try amongWorkers(round, partials: partials, width: width, riding: riding) {
            _ = result.update(fromContentsOf: all)
            return
        }
        try roundTrip(round, element: .float64, width: width, partials: UnsafeRawBufferPointer(partials), riding: riding,
                      resultWidth: result.count) { payload in payload.withUnsafeBytes { UnsafeMutableRawBufferPointer(result).copyMemory(from: $0) } }
    }

    func exchangeGradients(_ partials: UnsafeBufferPointer<Float>, exchange: GradientExchange, into result: UnsafeMutableBufferPointer<Float>) throws {
        try roundTrip(.gradients, element: .float32, width: exchange.chunkWidth, partials: UnsafeRawBufferPointer(partials), riding: nil,
                      resultWidth: messages.ridingResultWidth + exchange.resultWidth) { [self] payload in
            payload.withUnsafeBytes { messages.takeGradientResult($0, own: result) }
        }
    }

    func report(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int) throws {
        sendHeldBack()
        outputs.append(.send(encode(round, element: .float64, width: width, partials: UnsafeRawBufferPointer(partials), riding: nil)))
    }

    private func encode(_ round: Round, element: WireProtocol.Element, width: Int, partials: UnsafeRawBufferPointer, riding: RidingGradients?) -> [UInt8] {
        var bytes: [UInt8] = []
        messages.encodePartials(round, step: step, epoch: stepTable?.epoch ?? 0, slice: slice!, width: width, element: element, partials: partials, riding: riding, into: &bytes)
        return bytes
    }

    private func sendHeldBack() {
        outputs += heldBack.map { .send($0) }
        heldBack.removeAll()
    }

    /// A BatchNorm round the table hands to the workers: holds back the coordinator's message, sends the
    /// partials to every other worker, and yields until theirs are in; all workers' partials in chunk order.
    /// Nil for a round that goes through the coordinator.
    private func amongWorkers(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int, riding: RidingGradients?) throws -> [Double]? {
        guard let table = stepTable, table.exchanges(round), let slice, let config else { return nil }
        heldBack.append(encode(round, element: .float64, width: width, partials: UnsafeRawBufferPointer(partials), riding: riding))
        if sendsAsItGoes { sendHeldBack() }
        let chunkCount = config.plan.chunkCount
        var state = PeerBatchNormRound(round, step: step, epoch: table.epoch, rank: table.rank, workerCount: table.workerCount,
                                       chunks: slice.chunks, width: width, chunkCount: chunkCount)
        let bytes = state.outgoingFields.encoded() + UnsafeRawBufferPointer(partials)
        for (rank, endpoint) in table.endpoints.enumerated() where rank != table.rank { outputs.append(.sendPeer(endpoint: endpoint, bytes: bytes)) }
        var all = [Double](repeating: 0, count: chunkCount * width)
        all.withUnsafeMutableBufferPointer { _ = UnsafeMutableBufferPointer(rebasing: $0[(slice.chunks.lowerBound * width)...]).update(fromContentsOf: partials) }
        while true {
            var kept: [[UInt8]] = []
            for frame in peerInbox {
                let verdict = all.withUnsafeMutableBufferPointer { buffer in frame.withUnsafeBytes { state.take($0, into: buffer.baseAddress!) } }
                switch verdict {
                case .taken, .stale: break
                case .later: kept.append(frame)
                case .dropped(let reason): outputs.append(.droppedPeerMessage(reason))
                }
            }
            peerInbox = kept
            if state.isComplete { break }
            waitingForPeers = true
            coroutine.yield()
            waitingForPeers = false
            switch input {
            case .peerArrived, .result:
                input = nil  // a result of an earlier try: ignored, as the worker's machine does
            case .abandon, .exit, .start, nil:
                throw Abandoned()
            }
        }
        if let problem = state.coverageProblem { throw ClusterError("step \(step + 1), \(round): \(problem)") }
        return all
    }

    private func roundTrip(_ round: Round, element: WireProtocol.Element, width: Int, partials: UnsafeRawBufferPointer, riding: RidingGradients?,
                           resultWidth: Int, take: (ArraySlice<UInt8>) -> Void) throws {
        sendHeldBack()
        outputs.append(.send(encode(round, element: element, width: width, partials: partials, riding: riding)))
        outputs.append(.awaiting(step: step, round: round, resultWidth: resultWidth, element: element))
        while true {
            coroutine.yield()
            switch input {
            case .result(let message):
                input = nil
                guard case .reduced(_, _, _, _, let payload) = message, payload.count == resultWidth * element.size else { continue }
                take(payload)
                return
            case .peerArrived:
                input = nil  // kept in the inbox for the round it belongs to
            case .abandon, .exit, .start, nil:
                throw Abandoned()
            }
        }
    }
}
