import Foundation
import SyncBNCluster
import SyncBNCore

/// A worker's compute in the simulation: `Network.trainStep` on a coroutine, whose collective sends the
/// partials through the simulated network and yields until the scheduler brings the result.
final class SimCompute: Collective {
    enum Input {
        case start(Message)
        case result(Message)
        case abandon
        case exit
    }

    enum Output {
        case send([UInt8])
        case awaiting(step: UInt64, round: Round, resultWidth: Int, element: WireProtocol.Element)
        case finished
        case abandoned
        case failed(String)
    }

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
        network.optimizer.learningRate = config.learningRate(atStep: Int(step))
        try network.trainStep(slice: slice, collective: self, computeMetrics: computeMetrics, step: Int(step))
    }

    // MARK: Collective

    func allReduce(_ round: Round, partials: UnsafeBufferPointer<Double>, into result: UnsafeMutableBufferPointer<Double>,
                   riding: RidingGradients?) throws {
        try roundTrip(round, element: .float64, width: result.count, partials: UnsafeRawBufferPointer(partials), riding: riding,
                      resultWidth: result.count) { payload in payload.withUnsafeBytes { UnsafeMutableRawBufferPointer(result).copyMemory(from: $0) } }
    }

    func allGather(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int, into result: UnsafeMutableBufferPointer<Double>,
                   riding: RidingGradients?) throws {
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
        outputs.append(.send(encode(round, element: .float64, width: width, partials: UnsafeRawBufferPointer(partials), riding: nil)))
    }

    private func encode(_ round: Round, element: WireProtocol.Element, width: Int, partials: UnsafeRawBufferPointer, riding: RidingGradients?) -> [UInt8] {
        var bytes: [UInt8] = []
        messages.encodePartials(round, step: step, slice: slice!, width: width, element: element, partials: partials, riding: riding, into: &bytes)
        return bytes
    }

    private func roundTrip(_ round: Round, element: WireProtocol.Element, width: Int, partials: UnsafeRawBufferPointer, riding: RidingGradients?,
                           resultWidth: Int, take: (ArraySlice<UInt8>) -> Void) throws {
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
            case .abandon, .exit:
                throw Abandoned()
            case .start, nil:
                throw Abandoned()
            }
        }
    }
}
