import SyncBNCore

/// What a worker's collective writes and reads for each round, whatever carries the bytes (ZeroMQ in
/// `RemoteCollective`, the simulated network in `SyncBNSimulation`): its partials message, with the gradients
/// riding with a backward round appended, and the gradient round's result spread over every segment's target.
public struct WorkerRoundMessages {
    /// Where the results of the gradients that rode with this step's backward rounds go, in the order they were
    /// sent: the coordinator answers the gradient round with all of them, then the round's own.
    private var ridingResults: [UnsafeMutableBufferPointer<Float>] = []

    public init() {}

    /// Values of the riding results still to come.
    public var ridingResultWidth: Int { ridingResults.reduce(0) { $0 + $1.count } }

    /// Forgets the riding gradients of an earlier try or step.
    public mutating func beginStep() { ridingResults.removeAll(keepingCapacity: true) }

    /// Encodes this worker's partials of `round` (`width` values per chunk of `slice`) into `bytes`, followed
    /// by the gradients `riding` with it, whose result it then expects with the gradient round's; `epoch` is
    /// that of the table of peers the step runs with (0: none).
    public mutating func encodePartials(_ round: Round, step: UInt64, epoch: UInt32, slice: BatchSlice, width: Int, element: WireProtocol.Element,
                                        partials: UnsafeRawBufferPointer, riding: RidingGradients?, into bytes: inout [UInt8]) {
        bytes.removeAll(keepingCapacity: true)
        Message.partials(step: step, round: round, firstChunk: UInt32(slice.chunks.lowerBound), chunkCount: UInt32(slice.chunks.count),
                         width: UInt32(width), element: element, gradientWidth: UInt32(riding?.exchange.chunkWidth ?? 0),
                         epoch: epoch, payload: []).encode(appendingTo: &bytes)
        bytes += partials
        if let riding {
            bytes += UnsafeRawBufferPointer(riding.partials)
            ridingResults.append(riding.result)
        }
    }

    /// Copies the gradient round's result (`payload`, `ridingResultWidth` + `own.count` Float32 values) to the
    /// riding segments' targets, then to `own`.
    /// - Precondition: the payload has that size (the worker's machine checks the result's width).
    public mutating func takeGradientResult(_ payload: UnsafeRawBufferPointer, own: UnsafeMutableBufferPointer<Float>) {
        precondition(payload.count == (ridingResultWidth + own.count) * 4, "a gradient result of \(payload.count) bytes")
        var offset = 0
        func take(_ target: UnsafeMutableBufferPointer<Float>) {
            UnsafeMutableRawBufferPointer(target).copyMemory(from: UnsafeRawBufferPointer(rebasing: payload[offset..<(offset + target.count * 4)]))
            offset += target.count * 4
        }
        for target in ridingResults { take(target) }
        take(own)
        ridingResults.removeAll(keepingCapacity: true)
    }
}
