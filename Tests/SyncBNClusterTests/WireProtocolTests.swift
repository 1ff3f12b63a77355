// Oracle: Sources/SyncBNCluster/Protocol/WireProtocol.md, the protocol as written for people. Every kind
// survives encode → decode unchanged; the header and fixed fields sit at the byte offsets the document
// gives; and `Message.decode` refuses every malformed frame with `ProtocolError.malformed` (checking magic,
// then version, then kind, then lengths), and a SyncBN frame of another version with `.versionMismatch`.

import SyncBNCluster
import SyncBNCore
import XCTest

final class WireProtocolTests: XCTestCase {
    // MARK: Round trips

    /// One or more sample messages of `kind`; the switch is exhaustive, so a new kind must be added here.
    static func samples(of kind: WireProtocol.Kind) -> [Message] {
        switch kind {
        case .hello:
            return [.hello(peer: "host-a pid 42", peerEndpoint: "tcp://10.0.0.2:40001", blasKernel: "Haswell", threads: 32), .hello(peer: "", peerEndpoint: ""),
                    .hello(peer: "ünïcødé ✓", peerEndpoint: "ipc:///tmp/p")]
        case .welcome:
            return [.welcome(rank: 0, workerCount: 1, config: [], model: []),
                    .welcome(rank: 2, workerCount: 3, config: Array(#"{"steps":30}"#.utf8), model: [8, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3])]
        case .reject:
            return [.reject(reason: "the job already has its 2 workers"), .reject(reason: "")]
        case .step:
            let bytes = BatchData(rows: 3, featureSize: 2, labels: [1, 9, 0], element: .unsignedByte, features: [0, 255, 1, 2, 3, 4])
            let floats: [Float] = [0.5, -1, 1e-7, 3]
            let float32 = BatchData(rows: 2, featureSize: 2, labels: [4, 5], element: .float32,
                                    features: floats.withUnsafeBytes { Array($0) }[...])
            let empty = BatchData(rows: 0, featureSize: 784, labels: [], element: .unsignedByte, features: [])
            return [.step(step: 0, firstChunk: 0, chunkCount: 4, computeMetrics: true, batch: bytes),
                    .step(step: UInt64.max, firstChunk: 3, chunkCount: 1, computeMetrics: false, batch: float32),
                    .step(step: 17, firstChunk: 7, chunkCount: 0, computeMetrics: false, batch: empty)]
        case .partials:
            let doubles: [Double] = [1.5, -2.25, 0, .pi]
            return [.partials(step: 5, round: .moments(layer: 0), firstChunk: 1, chunkCount: 2, width: 2, element: .float64,
                              payload: doubles.withUnsafeBytes { Array($0) }[...]),
                    .partials(step: 6, round: .sums(layer: 2), firstChunk: 0, chunkCount: 1, width: 4, element: .float64,
                              payload: doubles.withUnsafeBytes { Array($0) }[...]),
                    .partials(step: 7, round: .gradients, firstChunk: 2, chunkCount: 2, width: 3, element: .float32,
                              payload: ArraySlice(repeating: 0x3f, count: 2 * 3 * 4)),
                    .partials(step: 8, round: .metrics, firstChunk: 4, chunkCount: 0, width: 2, element: .float64, payload: []),
                    // Backward sums with the gradients riding with them: 2 chunks × (1 Float64 + 2 Float32).
                    .partials(step: 9, round: .sums(layer: 0), firstChunk: 1, chunkCount: 2, width: 1, element: .float64, gradientWidth: 2,
                              payload: ArraySlice(repeating: 0x3e, count: 2 * (8 + 2 * 4)))]
        case .reduced:
            return [.reduced(step: 1, round: .moments(layer: 1), width: 2, element: .float64, payload: ArraySlice(repeating: 7, count: 16)),
                    .reduced(step: 2, round: .sums(layer: 0), width: 1, element: .float64, payload: ArraySlice(repeating: 1, count: 8)),
                    .reduced(step: 3, round: .gradients, width: 5, element: .float32, payload: ArraySlice(repeating: 2, count: 20)),
                    .reduced(step: 4, round: .metrics, width: 2, element: .float64, payload: ArraySlice(repeating: 3, count: 16))]
        case .stop:
            return [.stop]
        case .ping:
            return [.ping]
        case .failure:
            return [.failure(reason: "worker 1 failed: out of memory"), .failure(reason: "")]
        case .peers:
            return [.peers(epoch: 3, rank: 1, uses: .gradients, endpoints: ["tcp://127.0.0.1:5000", "tcp://127.0.0.1:5001"]),
                    .peers(epoch: 4, rank: 0, uses: .batchNormRounds, endpoints: ["ipc:///tmp/a.sock", "ipc:///tmp/b.sock"]),
                    .peers(epoch: 0, rank: 0, uses: [], endpoints: [""])]
        case .gradientTiles:
            return [.gradientTiles(step: 4, epoch: 2, from: 1, shardOffset: 10, shardWidth: 2, tiles: [2..<4, 4..<5],
                                   rowsFirstChunk: 2, rowsChunkCount: 3, rowsWidth: 1, payload: ArraySlice(repeating: 1, count: (2 * 2 + 3) * 4)),
                    .gradientTiles(step: 5, epoch: 0, from: 0, shardOffset: 0, shardWidth: 0, tiles: [],
                                   rowsFirstChunk: 0, rowsChunkCount: 0, rowsWidth: 7, payload: [])]
        case .gradientShard:
            return [.gradientShard(step: 4, epoch: 2, from: 3, shardOffset: 6, shardWidth: 2, payload: ArraySlice(repeating: 9, count: 8))]
        case .peerPartials:
            return [.peerPartials(step: 6, epoch: 5, from: 1, round: .moments(layer: 2), firstChunk: 3, chunkCount: 2, width: 4,
                                  payload: ArraySlice(repeating: 0x3f, count: 2 * 4 * 8)),
                    .peerPartials(step: 6, epoch: 5, from: 0, round: .sums(layer: 0), firstChunk: 0, chunkCount: 0, width: 4, payload: [])]
        }
    }

    func testEveryKindSurvivesEncodeAndDecode() throws {
        for kind in WireProtocol.Kind.allCases {
            let messages = Self.samples(of: kind)
            XCTAssertFalse(messages.isEmpty)
            for message in messages {
                XCTAssertEqual(message.kind, kind)
                let bytes = message.encoded()
                XCTAssertEqual(try Message.decode(bytes), message, "\(kind) did not survive a round trip")
                XCTAssertEqual(Array(bytes[0..<4]), Array("SYBN".utf8))
                XCTAssertEqual(UInt16(bytes[4]) | UInt16(bytes[5]) << 8, WireProtocol.version)
                XCTAssertEqual(UInt16(bytes[6]) | UInt16(bytes[7]) << 8, kind.rawValue)
            }
        }
    }

    /// Only a backward-sums round carries riding gradients, and their bytes count in the payload's length.
    func testRidingGradientsAreChecked() throws {
        let header = { (round: Round) in
            Message.partialsHeader(step: 1, round: round, firstChunk: 0, chunkCount: 2, width: 1, element: round == .gradients ? .float32 : .float64,
                                   gradientWidth: 3)
        }
        XCTAssertNoThrow(try Message.decode(header(.sums(layer: 0)) + [UInt8](repeating: 0, count: 2 * (8 + 12))))
        for wrongLength in [2 * 8, 2 * (8 + 12) - 4, 2 * (8 + 12) + 4] {
            XCTAssertThrowsError(try Message.decode(header(.sums(layer: 0)) + [UInt8](repeating: 0, count: wrongLength)), "\(wrongLength) bytes")
        }
        for round in [Round.moments(layer: 0), .gradients, .metrics, .observations] {
            let size = round == .gradients ? 4 : 8
            // The length is right for riding gradients: what is wrong is that this round carries any.
            XCTAssertThrowsError(try Message.decode(header(round) + [UInt8](repeating: 0, count: 2 * (size + 12))), "\(round)")
        }
    }

    func testPartialsAndReducedHeadersPlusPayloadDecodeLikeTheWholeMessage() throws {
        let payload: [UInt8] = (0..<24).map { UInt8($0) }
        let partials = Message.partialsHeader(step: 9, round: .sums(layer: 1), firstChunk: 2, chunkCount: 3, width: 1, element: .float64) + payload
        XCTAssertEqual(try Message.decode(partials),
                       .partials(step: 9, round: .sums(layer: 1), firstChunk: 2, chunkCount: 3, width: 1, element: .float64, payload: payload[...]))
        let reduced = Message.reducedHeader(step: 9, round: .gradients, width: 6, element: .float32) + payload
        XCTAssertEqual(try Message.decode(reduced),
                       .reduced(step: 9, round: .gradients, width: 6, element: .float32, payload: payload[...]))
    }

    /// A worker reads results in libzmq's buffer: every kind decodes in place as it does whole, a result's
    /// payload is where `decode` found it, and a result one byte too long or short is as malformed in place.
    func testResultsDecodeInPlaceLikeTheWholeMessage() throws {
        for kind in WireProtocol.Kind.allCases {
            for message in Self.samples(of: kind) {
                let bytes = message.encoded()
                let (fields, offset) = try bytes.withUnsafeBytes { try Message.decodeResultInPlace($0) }
                XCTAssertEqual(fields.encoded() + bytes[offset...], bytes, "\(kind)")
                if kind == .reduced {
                    XCTAssertEqual(offset, 28)
                    for wrong in [bytes + [0], Array(bytes.dropLast())] {
                        XCTAssertThrowsError(try wrong.withUnsafeBytes { try Message.decodeResultInPlace($0) }, "a result of \(wrong.count) bytes")
                    }
                }
            }
        }
    }

    func testPeerFramesDecodeInPlaceLikeTheWholeMessage() throws {
        for message in Self.samples(of: .gradientTiles) + Self.samples(of: .gradientShard) + Self.samples(of: .peerPartials) {
            let bytes = message.encoded()
            let (fields, offset) = try bytes.withUnsafeBytes { try Message.decodePeerFrame($0) }
            XCTAssertEqual(fields.kind, message.kind)
            XCTAssertEqual(fields.peerTag?.step, message.peerTag?.step)
            let payload: ArraySlice<UInt8>
            switch message {
            case .gradientTiles(_, _, _, _, _, _, _, _, _, let p), .gradientShard(_, _, _, _, _, let p), .peerPartials(_, _, _, _, _, _, _, let p): payload = p
            default: payload = []
            }
            XCTAssertEqual(Array(bytes[offset...]), Array(payload), "\(message.kind): the payload starts at byte \(offset)")
            // One byte more or less is as malformed in place as it is whole.
            for wrong in [bytes + [0], Array(bytes.dropLast())] {
                XCTAssertThrowsError(try wrong.withUnsafeBytes { try Message.decodePeerFrame($0) }, "\(message.kind) of \(wrong.count) bytes")
            }
        }
        XCTAssertThrowsError(try Message.stop.encoded().withUnsafeBytes { try Message.decodePeerFrame($0) }, "a stop is not a peer frame")
        XCTAssertThrowsError(try Message.reducedHeader(step: 1, round: .gradients, width: 0, element: .float32).withUnsafeBytes { try Message.decodePeerFrame($0) })
    }

    // MARK: Layout (WireProtocol.md)

    func testHeaderAndFieldsSitWhereTheProtocolDocumentSays() {
        XCTAssertEqual(WireProtocol.headerSize, 16)
        // hello: description length u16, description, BLAS kernel length u8, kernel, threads u16, peer endpoint (the rest).
        XCTAssertEqual(Message.hello(peer: "w", peerEndpoint: "e", blasKernel: "K", threads: 0x0102).encoded(),
                       Array("SYBN".utf8) + [6, 0, 1, 0] + [0, 0, 0, 0, 0, 0, 0, 0] + [1, 0] + Array("w".utf8) + [1] + Array("K".utf8) + [2, 1]
                       + Array("e".utf8))
        XCTAssertEqual(Message.stop.encoded(), Array("SYBN".utf8) + [6, 0, 7, 0] + [UInt8](repeating: 0, count: 8))

        // partials: round kind u16, layer u16, first chunk u32, chunk count u32, width u32, element u8, 0 u8, 0 u16,
        // riding gradient width u32, epoch u32.
        let partials = Message.partialsHeader(step: 0x0102_0304_0506_0708, round: .sums(layer: 2), firstChunk: 3, chunkCount: 4,
                                              width: 0x0102, element: .float32, gradientWidth: 0x0304, epoch: 0x0506_0708)
        XCTAssertEqual(partials, Array("SYBN".utf8) + [6, 0, 5, 0] + [8, 7, 6, 5, 4, 3, 2, 1]
                       + [2, 0, 2, 0] + [3, 0, 0, 0] + [4, 0, 0, 0] + [2, 1, 0, 0] + [1, 0, 0, 0] + [4, 3, 0, 0] + [8, 7, 6, 5])
        // reduced: round kind u16, layer u16, width u32, element u8, 0 u8, 0 u16. Round kinds 1–5.
        for (round, code) in [(Round.moments(layer: 5), [1, 0, 5, 0]), (.sums(layer: 0), [2, 0, 0, 0]), (.gradients, [3, 0, 0, 0]), (.metrics, [4, 0, 0, 0]),
                              (.observations, [5, 0, 0, 0])] as [(Round, [UInt8])] {
            XCTAssertEqual(Message.reducedHeader(step: 1, round: round, width: 2, element: .float64),
                           Array("SYBN".utf8) + [6, 0, 6, 0] + [1, 0, 0, 0, 0, 0, 0, 0] + code + [2, 0, 0, 0] + [0, 0, 0, 0], "\(round)")
        }
        // welcome: rank u32, worker count u32, config length u32, config, model.
        XCTAssertEqual(Message.welcome(rank: 1, workerCount: 2, config: [9, 9], model: [5]).encoded(),
                       Array("SYBN".utf8) + [6, 0, 2, 0] + [UInt8](repeating: 0, count: 8) + [1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 9, 9, 5])
        // step: first chunk u32, chunk count u32, metrics u8, feature type u8, 0 u16, rows u32, features u32, labels, features.
        let slice = BatchData(rows: 1, featureSize: 2, labels: [6], element: .unsignedByte, features: [10, 20])
        XCTAssertEqual(Message.step(step: 2, firstChunk: 1, chunkCount: 1, computeMetrics: true, batch: slice).encoded(),
                       Array("SYBN".utf8) + [6, 0, 4, 0] + [2, 0, 0, 0, 0, 0, 0, 0]
                       + [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 6, 10, 20])
        // peers: epoch u32, rank u32, uses u8, 0 u8, 0 u16, count u32, then length u16 + endpoint per worker.
        XCTAssertEqual(Message.peers(epoch: 3, rank: 1, uses: .batchNormRounds, endpoints: ["a", "bc"]).encoded(),
                       Array("SYBN".utf8) + [6, 0, 10, 0] + [UInt8](repeating: 0, count: 8)
                       + [3, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0] + [1, 0] + Array("a".utf8) + [2, 0] + Array("bc".utf8))
        // peerPartials: epoch u32, from u32, round kind u16, layer u16, first chunk u32, chunk count u32, width u32, f64 values.
        XCTAssertEqual(Message.peerPartials(step: 2, epoch: 7, from: 1, round: .sums(layer: 3), firstChunk: 4, chunkCount: 1, width: 1,
                                            payload: ArraySlice(repeating: 0xaa, count: 8)).encoded(),
                       Array("SYBN".utf8) + [6, 0, 13, 0] + [2, 0, 0, 0, 0, 0, 0, 0]
                       + [7, 0, 0, 0, 1, 0, 0, 0, 2, 0, 3, 0, 4, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0] + [UInt8](repeating: 0xaa, count: 8))
    }

    // MARK: Refusals

    /// A 16-byte header with the given fields, then `body`.
    static func frame(magic: [UInt8] = Array("SYBN".utf8), version: UInt16 = WireProtocol.version, kind: UInt16, step: UInt64 = 0, body: [UInt8] = []) -> [UInt8] {
        var bytes = magic
        withUnsafeBytes(of: version.littleEndian) { bytes += $0 }
        withUnsafeBytes(of: kind.littleEndian) { bytes += $0 }
        withUnsafeBytes(of: step.littleEndian) { bytes += $0 }
        return bytes + body
    }

    func assertMalformed(_ frame: [UInt8], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try Message.decode(frame), what, file: file, line: line) { error in
            guard case ProtocolError.malformed(let why)? = error as? ProtocolError else {
                return XCTFail("\(what): expected ProtocolError.malformed, got \(error)", file: file, line: line)
            }
            XCTAssertFalse(why.isEmpty, file: file, line: line)
            XCTAssertTrue("\(error)".hasPrefix("malformed message: "), "\(error)", file: file, line: line)
        }
    }

    func testShortFramesAreMalformed() {
        assertMalformed([], "empty frame")
        assertMalformed(Array("SYBN".utf8), "magic only")
        assertMalformed(Array(Message.stop.encoded().prefix(15)), "one byte short of a header")
        // Length is checked before the version: a short frame that claims version 99 is still malformed.
        assertMalformed(Array(Self.frame(version: 99, kind: 1).prefix(10)), "short frame of another version")
    }

    func testBadMagicIsMalformed() {
        assertMalformed(Self.frame(magic: Array("SYBX".utf8), kind: 7), "magic SYBX")
        assertMalformed(Self.frame(magic: Array("sybn".utf8), kind: 7), "lower-case magic")
        assertMalformed(Self.frame(magic: [0, 0, 0, 0], version: 99, kind: 1), "bad magic wins over a bad version")
    }

    func testUnknownKindsAreMalformed() {
        for kind: UInt16 in [0, 14, 42, .max] {
            assertMalformed(Self.frame(kind: kind), "kind \(kind)")
        }
    }

    func testBodiesWhoseLengthDisagreesWithTheirFieldsAreMalformed() {
        for message in Self.samples(of: .partials) + Self.samples(of: .reduced) + Self.samples(of: .step)
            + Self.samples(of: .peers) + Self.samples(of: .gradientTiles) + Self.samples(of: .gradientShard) + Self.samples(of: .peerPartials) {
            let bytes = message.encoded()
            assertMalformed(bytes + [0], "\(message.kind) with one extra byte")
            assertMalformed(Array(bytes.dropLast()), "\(message.kind) one byte short")
        }
        assertMalformed(Message.stop.encoded() + [0], "stop with a body")
        // Fixed fields cut short.
        assertMalformed(Array(Message.reducedHeader(step: 0, round: .gradients, width: 0, element: .float32).prefix(20)), "reduced without its fields")
        assertMalformed(Self.frame(kind: 2, body: [0, 0, 0, 0, 1, 0, 0, 0]), "welcome without a config length")
        // welcome whose config length runs past the end of the frame.
        assertMalformed(Self.frame(kind: 2, body: [0, 0, 0, 0, 1, 0, 0, 0, 100, 0, 0, 0, 1, 2, 3]), "welcome config longer than the frame")
        // Sizes whose product overflows must be refused, not trap.
        assertMalformed(Self.frame(kind: 4, body: [0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0] + [0xff, 0xff, 0xff, 0xff] + [0xff, 0xff, 0xff, 0xff]), "step of 2^32 rows × 2^32 float features")
        assertMalformed(Self.frame(kind: 5, body: [3, 0, 0, 0] + [0, 0, 0, 0] + [0xff, 0xff, 0xff, 0xff] + [0xff, 0xff, 0xff, 0xff] + [0, 0, 0, 0]), "partials of 2^32 chunks × 2^32 values")
    }

    func testInvalidFieldValuesAreMalformed() {
        var welcome = Message.welcome(rank: 0, workerCount: 2, config: [], model: []).encoded()
        welcome[16] = 2  // rank 2 of 2 workers
        assertMalformed(welcome, "welcome with rank = worker count")
        assertMalformed(Self.frame(kind: 2, body: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "welcome for 0 workers")

        let slice = BatchData(rows: 1, featureSize: 1, labels: [0], element: .unsignedByte, features: [1])
        var step = Message.step(step: 0, firstChunk: 0, chunkCount: 1, computeMetrics: false, batch: slice).encoded()
        step[24] = 2  // metrics flag
        assertMalformed(step, "step with metrics flag 2")
        step[24] = 0; step[25] = 9  // feature type
        assertMalformed(step, "step with feature type 9")

        var partials = Message.partialsHeader(step: 0, round: .gradients, firstChunk: 0, chunkCount: 0, width: 1, element: .float32)
        partials[32] = 7  // element type
        assertMalformed(partials, "partials with element type 7")
        partials[32] = 1; partials[16] = 9  // round kind
        assertMalformed(partials, "partials of round kind 9")
        partials[16] = 3; partials[18] = 1  // gradients of "layer 1"
        assertMalformed(partials, "gradients round with a layer")

        assertMalformed(Self.frame(kind: 1, body: [3, 0, 0xff, 0xfe, 0xc0]), "hello that is not UTF-8")
        assertMalformed(Self.frame(kind: 1, body: [9, 0, 0x41]), "hello whose description runs past the frame")
        let peers = Message.peers(epoch: 1, rank: 0, uses: .batchNormRounds, endpoints: ["a"]).encoded()
        assertMalformed(peers.enumerated().map { $0.offset == 20 ? 1 : $0.element }, "peers with rank = endpoint count")
        assertMalformed(peers.enumerated().map { $0.offset == 24 ? 4 : $0.element }, "peers for an unknown use")
        assertMalformed(peers.enumerated().map { $0.offset == 25 ? 1 : $0.element }, "peers with reserved bytes set")
        // Only BatchNorm rounds travel between workers as partials.
        var peerPartials = Message.peerPartials(step: 1, epoch: 1, from: 0, round: .moments(layer: 0), firstChunk: 0, chunkCount: 0, width: 2, payload: []).encoded()
        peerPartials[24] = 3  // round kind: gradients
        assertMalformed(peerPartials, "peer partials of the gradient round")
        // chunk count × width overflowing Int must be refused, not trap.
        assertMalformed(Self.frame(kind: 13, step: 1, body: [0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0] + [0xff, 0xff, 0xff, 0xff] + [0xff, 0xff, 0xff, 0xff]),
                        "peer partials of 2^32 chunks × 2^32 values")
        let tiles = Message.gradientTiles(step: 1, epoch: 1, from: 0, shardOffset: 0, shardWidth: 1, tiles: [3..<4, 1..<2],
                                          rowsFirstChunk: 0, rowsChunkCount: 0, rowsWidth: 0, payload: ArraySlice(repeating: 0, count: 8))
        assertMalformed(tiles.encoded(), "gradient tiles out of order")
        // tile count × shard width overflowing Int must be refused, not trap.
        assertMalformed(Self.frame(kind: 11, step: 1, body: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] + [0xff, 0xff, 0xff, 0xff] + [1, 0, 0, 0]
                                   + [0, 0, 0, 0] + [0xff, 0xff, 0xff, 0xff] + [0xff, 0xff, 0xff, 0xff] + [0, 0, 0, 0, 1, 0, 0, 0]),
                        "gradient tiles of 2^32 rows × 2^32 values")
        assertMalformed(Self.frame(kind: 3, body: [0xc3]), "reject that is not UTF-8")
    }

    func testAnotherVersionIsAVersionMismatchWhateverFollows() {
        for version: UInt16 in [0, 1, 2, 3, 4, 5, 7, 99, .max] {  // 5: the previous release
            for (kind, body) in [(UInt16(1), Array("hello".utf8)), (2, []), (42, [1, 2, 3])] {
                let frame = Self.frame(version: version, kind: kind, body: body)
                XCTAssertThrowsError(try Message.decode(frame)) { error in
                    XCTAssertEqual(error as? ProtocolError, .versionMismatch(peer: version), "version \(version), kind \(kind)")
                }
            }
        }
        let text = "\(ProtocolError.versionMismatch(peer: 99))"
        XCTAssertTrue(text.contains("version 99") && text.contains("version \(WireProtocol.version)"), text)
    }
}
