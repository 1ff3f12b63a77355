import Foundation
import SyncBNCluster
import FuzzDriver

/// Fuzz target for the wire protocol's decoder: any bytes must decode or throw `ProtocolError`, never
/// crash, and whatever decodes must encode back to the same bytes.
///
/// Built with `-sanitize=fuzzer -D FUZZING` (Scripts/fuzz.sh) it is a libFuzzer target; built normally it
/// replays the files or directories given as arguments (the committed corpus), for the test suite.
/// The in-place decoders of peer frames and of results must agree with `decode`: the same verdict, the same
/// fields, and the payload where `decode` found it.
func checkDecoder(_ bytes: [UInt8]) {
    // The same bytes as a command-line address: parsed or refused with EndpointError, and what parses prints
    // back to an address that parses to the same endpoint.
    let text = String(decoding: bytes, as: UTF8.self)
    for forBinding in [false, true] {
        do {
            let endpoint = try Endpoint(parsing: text, flag: "--bind", forBinding: forBinding)
            if try Endpoint(parsing: endpoint.description, flag: "--bind", forBinding: forBinding) != endpoint { fatalError("\(endpoint) does not read back") }
        } catch is EndpointError {} catch { fatalError("the address parser threw \(type(of: error)): \(error)") }
    }
    let message = try? Message.decode(bytes)
    let inPlace = try? bytes.withUnsafeBytes { try Message.decodePeerFrame($0) }
    let isPeerFrame = message?.peerTag != nil
    if isPeerFrame != (inPlace != nil) {
        fatalError("decode and decodePeerFrame disagree on \(bytes.count) bytes: \(String(describing: message?.kind)) vs \(String(describing: inPlace?.message.kind))")
    }
    if let (fields, offset) = inPlace, let message {
        var withPayload = fields.encoded()
        withPayload += bytes[offset...]
        if withPayload != message.encoded() {
            fatalError("decodePeerFrame read different fields or payload offset than decode: \(message.kind)")
        }
    }
    // The worker's in-place decoder of results agrees with `decode` on every frame: the same verdict, and the
    // same message once its payload is put back.
    let result = try? bytes.withUnsafeBytes { try Message.decodeResultInPlace($0) }
    if (result != nil) != (message != nil) {
        fatalError("decode and decodeResultInPlace disagree on \(bytes.count) bytes: \(String(describing: message?.kind))")
    }
    if let (fields, offset) = result, let message, fields.encoded() + bytes[offset...] != message.encoded() {
        fatalError("decodeResultInPlace read different fields or payload offset than decode: \(message.kind)")
    }
    guard let message else { return }
    let encoded = message.encoded()
    if encoded != bytes {
        fatalError("decode then encode changed \(bytes.count) bytes into \(encoded.count): \(message.kind)")
    }
}

#if FUZZING

@main
struct Fuzz {
    static func main() { runFuzzer(checkDecoder) }
}
#else
/// One message of every kind, the fuzzer's starting points.
func seedMessages() -> [Message] {
    let batch = BatchData(rows: 2, featureSize: 3, labels: [1, 7], element: .unsignedByte, features: [0, 64, 128, 192, 255, 9])
    return [
        .hello(peer: "host pid 1", peerEndpoint: "tcp://127.0.0.1:4000", blasKernel: "Haswell"),
        .welcome(rank: 1, workerCount: 2, config: Array("{\"seed\":1}".utf8), model: [8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32]),
        .reject(reason: "full"),
        .step(step: 5, firstChunk: 1, chunkCount: 2, computeMetrics: true, batch: batch),
        .partials(step: 5, round: .moments(layer: 2), firstChunk: 1, chunkCount: 1, width: 2, element: .float64, payload: ArraySlice([UInt8](repeating: 1, count: 16))),
        .partials(step: 5, round: .gradients, firstChunk: 0, chunkCount: 2, width: 1, element: .float32, payload: ArraySlice([UInt8](repeating: 2, count: 8))),
        .reduced(step: 5, round: .sums(layer: 0), width: 1, element: .float64, payload: ArraySlice([UInt8](repeating: 3, count: 8))),
        .reduced(step: 6, round: .metrics, width: 2, element: .float64, payload: ArraySlice([UInt8](repeating: 4, count: 16))),
        .partials(step: 6, round: .observations, firstChunk: 0, chunkCount: 1, width: 2, element: .float64, payload: ArraySlice([UInt8](repeating: 7, count: 16))),
        .stop, .failure(reason: "gave up"), .ping,
        .peers(epoch: 1, rank: 1, uses: .gradients, endpoints: ["tcp://127.0.0.1:4000", "tcp://127.0.0.1:4001"]),
        .peers(epoch: 2, rank: 0, uses: .batchNormRounds, endpoints: ["tcp://127.0.0.1:4000", "tcp://127.0.0.1:4001"]),
        .peerPartials(step: 5, epoch: 2, from: 1, round: .sums(layer: 1), firstChunk: 2, chunkCount: 2, width: 1,
                      payload: ArraySlice([UInt8](repeating: 9, count: 16))),
        .gradientTiles(step: 5, epoch: 1, from: 1, shardOffset: 2, shardWidth: 1, tiles: [1..<2, 2..<4],
                       rowsFirstChunk: 1, rowsChunkCount: 3, rowsWidth: 1, payload: ArraySlice([UInt8](repeating: 5, count: 20))),
        .gradientShard(step: 5, epoch: 1, from: 0, shardOffset: 0, shardWidth: 2, payload: ArraySlice([UInt8](repeating: 6, count: 8))),
        .partials(step: 7, round: .sums(layer: 0), firstChunk: 0, chunkCount: 2, width: 1, element: .float64, gradientWidth: 2,
                  payload: ArraySlice([UInt8](repeating: 8, count: 32))),
    ]
}

@main
struct ReplayCorpus {
    static func main() throws {
        if CommandLine.arguments.count == 3, CommandLine.arguments[1] == "--write-seeds" {
            let directory = CommandLine.arguments[2]
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for (index, message) in seedMessages().enumerated() {
                let path = (directory as NSString).appendingPathComponent(String(format: "seed-%02d-%@", index, "\(message.kind)"))
                try Data(message.encoded()).write(to: URL(fileURLWithPath: path))
            }
            return
        }
        try replayInputs(CommandLine.arguments.dropFirst(), through: checkDecoder, what: "the wire decoder")
    }
}
#endif
