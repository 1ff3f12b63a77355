import Foundation
import SyncBNCore
import ZeroMQ

/// A worker's collective: each call sends this worker's per-chunk partials to the coordinator and blocks
/// (in `zmq_poll`, spending no CPU) until the reduction over the global batch comes back.
final class RemoteCollective: Collective {
    private let socket: Socket
    private let timeoutSeconds: Double
    var step: UInt64 = 0
    var slice: BatchSlice
    /// Time spent between sending partials and receiving the result, for the step being run.
    private(set) var waitingNanoseconds: UInt64 = 0
    /// Reused message buffers, so that rounds allocate no large arrays.
    private var outbox: [UInt8] = []
    private var inbox: [[UInt8]] = [[]]

    init(socket: Socket, slice: BatchSlice, timeoutSeconds: Double) {
        self.socket = socket
        self.slice = slice
        self.timeoutSeconds = timeoutSeconds
    }

    func beginStep(_ step: UInt64, slice: BatchSlice) {
        self.step = step
        self.slice = slice
        waitingNanoseconds = 0
    }

    func allReduce(_ round: Round, partials: UnsafeBufferPointer<Double>, into result: UnsafeMutableBufferPointer<Double>) throws {
        try roundTrip(round, element: .float64, width: result.count, resultWidth: result.count,
                      partials: UnsafeRawBufferPointer(partials), result: UnsafeMutableRawBufferPointer(result))
    }

    func exchangeGradients(_ partials: UnsafeBufferPointer<Float>, exchange: GradientExchange, into result: UnsafeMutableBufferPointer<Float>) throws {
        try roundTrip(.gradients, element: .float32, width: exchange.chunkWidth, resultWidth: exchange.resultWidth,
                      partials: UnsafeRawBufferPointer(partials), result: UnsafeMutableRawBufferPointer(result))
    }

    /// Sends `width` values per chunk and waits for the `resultWidth` values of the reduction.
    private func roundTrip(_ round: Round, element: WireProtocol.Element, width: Int, resultWidth: Int,
                           partials: UnsafeRawBufferPointer, result: UnsafeMutableRawBufferPointer) throws {
        let t0 = DispatchTime.now().uptimeNanoseconds
        defer { waitingNanoseconds += DispatchTime.now().uptimeNanoseconds - t0 }
        outbox.removeAll(keepingCapacity: true)
        outbox += Message.partialsHeader(step: step, round: round, firstChunk: UInt32(slice.chunks.lowerBound),
                                         chunkCount: UInt32(slice.chunks.count), width: UInt32(width), element: element)
        outbox += partials
        try socket.send(outbox)
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while true {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else {
                throw ClusterError("step \(step + 1), \(round): the coordinator sent no result within \(Int(timeoutSeconds)) s; is it still running?")
            }
            guard try socket.waitReadable(timeoutMilliseconds: Int(left * 1000) + 1),
                  let frames = try socket.receive(into: &inbox, dontWait: true) else { continue }
            guard frames == 1 else { throw ClusterError("the coordinator sent a message of \(frames) frames; SyncBN messages are one frame") }
            switch try Message.decode(inbox[0]) {
            case .reduced(let s, let r, let w, let e, let payload):
                guard s == step, r == round, Int(w) == resultWidth, e == element else {
                    throw ClusterError("expected the result of step \(step + 1), \(round) (\(resultWidth) values); the coordinator sent step \(s + 1), \(r) (\(w) values)")
                }
                payload.withUnsafeBytes { result.copyMemory(from: $0) }
                return
            case .failure(let reason):
                throw ClusterError("the coordinator stopped the job: \(reason)")
            case .stop:
                throw ClusterError("the coordinator ended the job in the middle of step \(step + 1)")
            case let other:
                throw ClusterError("expected the result of step \(step + 1), \(round); the coordinator sent a \(other.kind) message")
            }
        }
    }
}
