import SyncBNCore

#if _endian(big)
#error("The wire protocol sends Float32/Float64 payloads in host order and assumes a little-endian host.")
#endif

/// The coordinator–worker protocol: every message is one ZeroMQ frame (after the ROUTER's identity frame)
/// made of a 16-byte header and a body. Integers are little-endian; tensors are little-endian IEEE 754.
/// `WireProtocol.md` beside this file describes it for people.
///
///     header: magic "SYBN" (4) | version u16 | kind u16 | step u64
public enum WireProtocol {
    /// Bumped on any change to a message's layout or meaning.
    public static let version: UInt16 = 6
    public static let magic: [UInt8] = Array("SYBN".utf8)
    public static let headerSize = 16
    /// The largest message a peer may send (libzmq cuts off a peer that exceeds it): a step's gradient
    /// partials for 8 chunks of a 10M-parameter model, with room to spare.
    public static let maximumMessageSize: Int64 = 1 << 30

    public enum Kind: UInt16, CaseIterable, Sendable {
        case hello = 1, welcome = 2, reject = 3, step = 4, partials = 5, reduced = 6, stop = 7, failure = 8, ping = 9
        case peers = 10, gradientTiles = 11, gradientShard = 12, peerPartials = 13
    }

    /// What a table of peers (`Message.peers`) is for: which rounds run among the workers themselves.
    public struct PeerUses: OptionSet, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        /// The gradient round: reduce-scatter and all-gather among the workers (`--gradient-exchange peers`).
        public static let gradients = PeerUses(rawValue: 1)
        /// The BatchNorm rounds of a step of a few workers: each sends every other its partials (`--bn-exchange auto`).
        public static let batchNormRounds = PeerUses(rawValue: 2)
        public static let known: PeerUses = [.gradients, .batchNormRounds]
    }

    /// Element type of a partials or reduced payload.
    public enum Element: UInt8, Sendable {
        case float64 = 0, float32 = 1
        public var size: Int { self == .float64 ? 8 : 4 }
    }
}

/// A decoded message. Payload bytes are kept as they arrived; accessors copy them out.
public enum Message: Equatable {
    /// Worker → coordinator: asks to join. `peer` describes the worker (host, pid) for the logs;
    /// `peerEndpoint` is where it receives from other workers (empty: it does not take part in peer exchanges);
    /// `blasKernel` names its OpenBLAS kernels (`BLAS.kernelName`; empty: unknown), which the coordinator
    /// compares with its own: other kernels, other bits.
    /// `threads` is how many threads compute its chunks: the coordinator gives it a share of the batch in
    /// proportion (`ChunkPlan.chunks(forRank:weights:chunkCount:)`).
    case hello(peer: String, peerEndpoint: String, blasKernel: String = "", threads: UInt16 = 1)
    /// Coordinator → worker: its rank, the job's settings (JSON) and the initial model (safetensors).
    case welcome(rank: UInt32, workerCount: UInt32, config: [UInt8], model: [UInt8])
    /// Coordinator → worker: refused, with the reason.
    case reject(reason: String)
    /// Coordinator → worker: run step `step` on chunks [firstChunk, firstChunk + chunkCount) of the global
    /// batch, all of whose rows are in `batch`.
    case step(step: UInt64, firstChunk: UInt32, chunkCount: UInt32, computeMetrics: Bool, batch: BatchData)
    /// Worker → coordinator: this worker's per-chunk partials for one round: `width` values of `element` per
    /// chunk, then (a backward-sums round only) the parameter gradients riding with it, `gradientWidth` Float32
    /// values per chunk (`RidingGradients`). `payload` holds both parts, in that order. `epoch`: the table of
    /// peers the step ran with (0: none), by which the coordinator tells a try whose BatchNorm rounds ran among
    /// workers from an abandoned one.
    case partials(step: UInt64, round: Round, firstChunk: UInt32, chunkCount: UInt32, width: UInt32, element: WireProtocol.Element,
                  gradientWidth: UInt32 = 0, epoch: UInt32 = 0, payload: ArraySlice<UInt8>)
    /// Coordinator → worker: the reduction of a round over the global batch.
    case reduced(step: UInt64, round: Round, width: UInt32, element: WireProtocol.Element, payload: ArraySlice<UInt8>)
    /// Coordinator → worker: training is over; exit cleanly.
    case stop
    /// Either way: the sender gave up, with the reason.
    case failure(reason: String)
    /// Coordinator → worker: a liveness probe, ignored by the worker (a send to a closed connection fails).
    case ping
    /// Coordinator → worker: from the next step on, run the rounds in `uses` among the workers themselves (none:
    /// every round goes through the coordinator again). `endpoints[i]` is worker i's peer endpoint, `rank` the
    /// receiver's own index; `epoch` changes with every new table (a change of membership, or a redo of a step
    /// whose BatchNorm rounds run among workers) and tags the peer messages of this table.
    case peers(epoch: UInt32, rank: UInt32, uses: WireProtocol.PeerUses, endpoints: [String])
    /// Worker → worker (and → coordinator, without tiles): the sender's pre-summed tree tiles of the
    /// receiver's shard `[shardOffset, shardOffset + shardWidth)` of the summed gradients, and the sender's
    /// factor rows for chunks `[rowsFirstChunk, rowsFirstChunk + rowsChunkCount)`, `rowsWidth` values a chunk.
    /// Payload: `tiles.count × shardWidth` Float32, then `rowsChunkCount × rowsWidth` Float32.
    case gradientTiles(step: UInt64, epoch: UInt32, from: UInt32, shardOffset: UInt32, shardWidth: UInt32, tiles: [Range<UInt32>],
                       rowsFirstChunk: UInt32, rowsChunkCount: UInt32, rowsWidth: UInt32, payload: ArraySlice<UInt8>)
    /// Worker → every other worker and the coordinator: the sum over the global batch of the sender's shard.
    case gradientShard(step: UInt64, epoch: UInt32, from: UInt32, shardOffset: UInt32, shardWidth: UInt32, payload: ArraySlice<UInt8>)
    /// Worker → every other worker of a step whose BatchNorm rounds run among them: the sender's Float64 partials
    /// of such a round, `width` values for each of chunks `[firstChunk, firstChunk + chunkCount)`; each worker
    /// reduces all workers' in chunk order.
    case peerPartials(step: UInt64, epoch: UInt32, from: UInt32, round: Round, firstChunk: UInt32, chunkCount: UInt32, width: UInt32,
                      payload: ArraySlice<UInt8>)

    public var kind: WireProtocol.Kind {
        switch self {
        case .hello: .hello
        case .welcome: .welcome
        case .reject: .reject
        case .step: .step
        case .partials: .partials
        case .reduced: .reduced
        case .stop: .stop
        case .failure: .failure
        case .ping: .ping
        case .peers: .peers
        case .gradientTiles: .gradientTiles
        case .gradientShard: .gradientShard
        case .peerPartials: .peerPartials
        }
    }
}

extension Message {
    /// The step and table epoch of a message between workers; nil for other kinds.
    public var peerTag: (step: UInt64, epoch: UInt32)? {
        switch self {
        case .gradientTiles(let step, let epoch, _, _, _, _, _, _, _, _), .gradientShard(let step, let epoch, _, _, _, _),
             .peerPartials(let step, let epoch, _, _, _, _, _, _): (step, epoch)
        default: nil
        }
    }
}

/// The rows of a global batch: labels and features, as bytes (pixels scaled on arrival) or Float32.
public struct BatchData: Equatable, Sendable {
    public var rows: Int
    public var featureSize: Int
    public var labels: [UInt8]
    public var element: Element
    /// rows × featureSize bytes, or rows × featureSize × 4 bytes of Float32.
    public var features: ArraySlice<UInt8>

    public enum Element: UInt8, Sendable { case unsignedByte = 0, float32 = 1 }

    public init(rows: Int, featureSize: Int, labels: [UInt8], element: Element, features: ArraySlice<UInt8>) {
        self.rows = rows
        self.featureSize = featureSize
        self.labels = labels
        self.element = element
        self.features = features
    }

    /// The rows of `data` at `indices`, in order.
    public init<C: Collection>(_ data: LabeledImages, indices: C) where C.Element == Int {
        rows = indices.count
        featureSize = data.featureSize
        labels = indices.map { data.labels[$0] }
        var bytes: [UInt8] = []
        switch data.storage {
        case .bytes(let pixels):
            element = .unsignedByte
            bytes.reserveCapacity(rows * featureSize)
            for i in indices { bytes += pixels[(i * featureSize)..<((i + 1) * featureSize)] }
        case .floats(let values):
            element = .float32
            bytes.reserveCapacity(rows * featureSize * 4)
            for i in indices {
                values[(i * featureSize)..<((i + 1) * featureSize)].withUnsafeBytes { bytes += $0 }
            }
        }
        features = bytes[...]
    }

    /// Writes the features as Float32 rows, scaling bytes exactly as `LabeledImages` does.
    public func copyFeatures(into destination: UnsafeMutablePointer<Float>) {
        let count = rows * featureSize
        features.withUnsafeBytes { raw in
            switch element {
            case .unsignedByte:
                for i in 0..<count { destination[i] = LabeledImages.scale(pixel: raw[i]) }
            case .float32:
                UnsafeMutableRawPointer(destination).copyMemory(from: raw.baseAddress!, byteCount: count * 4)
            }
        }
    }
}

/// A message that cannot be used: wrong magic, kind or lengths, or a peer on another protocol version.
public enum ProtocolError: Error, Equatable, CustomStringConvertible {
    case malformed(String)
    case versionMismatch(peer: UInt16)

    public var description: String {
        switch self {
        case .malformed(let why): "malformed message: \(why)"
        case .versionMismatch(let peer):
            "the peer speaks SyncBN protocol version \(peer), this program speaks version \(WireProtocol.version): run the same syncbn release on the coordinator and every worker"
        }
    }
}

// MARK: - Encoding

extension Message {
    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        encode(appendingTo: &bytes)
        return bytes
    }

    /// Appends the message to `bytes` (a reused buffer: nothing is allocated once it is large enough).
    public func encode(appendingTo bytes: inout [UInt8]) {
        var out = ByteWriter(buffer: bytes)
        bytes = []  // the writer holds the only reference: appending does not copy
        defer { bytes = out.buffer }
        out.bytes(WireProtocol.magic)
        out.u16(WireProtocol.version)
        out.u16(kind.rawValue)
        switch self {
        case .step(let step, _, _, _, _), .partials(let step, _, _, _, _, _, _, _, _), .reduced(let step, _, _, _, _),
             .gradientTiles(let step, _, _, _, _, _, _, _, _, _), .gradientShard(let step, _, _, _, _, _),
             .peerPartials(let step, _, _, _, _, _, _, _):
            out.u64(step)
        default:
            out.u64(0)
        }
        switch self {
        case .hello(let peer, let peerEndpoint, let blasKernel, let threads):
            out.u16(UInt16(clamping: peer.utf8.count)); out.bytes(Array(peer.utf8).prefix(Int(UInt16.max)))
            out.u8(UInt8(clamping: blasKernel.utf8.count)); out.bytes(Array(blasKernel.utf8).prefix(Int(UInt8.max)))
            out.u16(threads)
            out.bytes(Array(peerEndpoint.utf8))
        case .welcome(let rank, let workerCount, let config, let model):
            out.u32(rank); out.u32(workerCount); out.u32(UInt32(config.count))
            out.bytes(config); out.bytes(model)
        case .reject(let reason), .failure(let reason):
            out.bytes(Array(reason.utf8))
        case .step(_, let firstChunk, let chunkCount, let computeMetrics, let batch):
            out.u32(firstChunk); out.u32(chunkCount)
            out.u8(computeMetrics ? 1 : 0); out.u8(batch.element.rawValue); out.u16(0)
            out.u32(UInt32(batch.rows)); out.u32(UInt32(batch.featureSize))
            out.bytes(batch.labels); out.bytes(batch.features)
        case .partials(_, let round, let firstChunk, let chunkCount, let width, let element, let gradientWidth, let epoch, let payload):
            out.round(round)
            out.u32(firstChunk); out.u32(chunkCount); out.u32(width)
            out.u8(element.rawValue); out.u8(0); out.u16(0)
            out.u32(gradientWidth); out.u32(epoch)
            out.bytes(payload)
        case .reduced(_, let round, let width, let element, let payload):
            out.round(round)
            out.u32(width)
            out.u8(element.rawValue); out.u8(0); out.u16(0)
            out.bytes(payload)
        case .stop, .ping:
            break
        case .peers(let epoch, let rank, let uses, let endpoints):
            out.u32(epoch); out.u32(rank)
            out.u8(uses.rawValue); out.u8(0); out.u16(0)
            out.u32(UInt32(endpoints.count))
            for endpoint in endpoints {
                out.u16(UInt16(clamping: endpoint.utf8.count)); out.bytes(Array(endpoint.utf8).prefix(Int(UInt16.max)))
            }
        case .gradientTiles(_, let epoch, let from, let shardOffset, let shardWidth, let tiles, let rowsFirstChunk, let rowsChunkCount, let rowsWidth, let payload):
            out.u32(epoch); out.u32(from); out.u32(shardOffset); out.u32(shardWidth); out.u32(UInt32(tiles.count))
            out.u32(rowsFirstChunk); out.u32(rowsChunkCount); out.u32(rowsWidth)
            for tile in tiles { out.u32(tile.lowerBound); out.u32(tile.upperBound) }
            out.bytes(payload)
        case .gradientShard(_, let epoch, let from, let shardOffset, let shardWidth, let payload):
            out.u32(epoch); out.u32(from); out.u32(shardOffset); out.u32(shardWidth)
            out.bytes(payload)
        case .peerPartials(_, let epoch, let from, let round, let firstChunk, let chunkCount, let width, let payload):
            out.u32(epoch); out.u32(from)
            out.round(round)
            out.u32(firstChunk); out.u32(chunkCount); out.u32(width)
            out.bytes(payload)
        }
    }

    /// Sets the chunk assignment of an encoded `step` message in place, so that the batch it carries is
    /// encoded once per step and sent to every worker with only these 8 bytes changed.
    public static func setStepAssignment(_ bytes: inout [UInt8], firstChunk: UInt32, chunkCount: UInt32) {
        precondition(bytes.count >= WireProtocol.headerSize + 8 && bytes[6] == UInt8(WireProtocol.Kind.step.rawValue), "not an encoded step message")
        withUnsafeBytes(of: firstChunk.littleEndian) { bytes.replaceSubrange(16..<20, with: $0) }
        withUnsafeBytes(of: chunkCount.littleEndian) { bytes.replaceSubrange(20..<24, with: $0) }
    }

    /// Header and fixed fields of a partials message, for senders that append the payload themselves
    /// (straight from a tensor buffer, without an intermediate array).
    public static func partialsHeader(step: UInt64, round: Round, firstChunk: UInt32, chunkCount: UInt32, width: UInt32, element: WireProtocol.Element,
                                      gradientWidth: UInt32 = 0, epoch: UInt32 = 0) -> [UInt8] {
        Message.partials(step: step, round: round, firstChunk: firstChunk, chunkCount: chunkCount, width: width, element: element,
                         gradientWidth: gradientWidth, epoch: epoch, payload: []).encoded()
    }

    public static func reducedHeader(step: UInt64, round: Round, width: UInt32, element: WireProtocol.Element) -> [UInt8] {
        Message.reduced(step: step, round: round, width: width, element: element, payload: []).encoded()
    }
}

// MARK: - Decoding

extension Message {
    /// Decodes one frame. Checks magic, then version, then kind and every length.
    /// - Throws: `ProtocolError.versionMismatch` for a SyncBN peer on another version (the magic matched),
    ///   `ProtocolError.malformed` for anything else that is wrong.
    public static func decode(_ frame: [UInt8]) throws -> Message {
        try decode(frame, payloadLeftOut: 0)
    }

    /// Decodes a frame from another worker (gradientTiles, gradientShard or peerPartials) in place, without
    /// copying its payload: the message (with an empty payload) and the payload's offset in `frame`. Checks
    /// exactly what `decode` checks.
    public static func decodePeerFrame(_ frame: UnsafeRawBufferPointer) throws -> (message: Message, payloadOffset: Int) {
        func u32(at offset: Int) -> Int? {
            offset + 4 <= frame.count ? Int(frame.loadUnaligned(fromByteOffset: offset, as: UInt32.self).littleEndian) : nil
        }
        // Fields end 32 bytes into a shard, 40 into partials, 48 + 8 per tile into tiles (see `encoded()`); kind at byte 6.
        let kind = frame.count >= 8 ? UInt16(frame[6]) | UInt16(frame[7]) << 8 : 0
        var fieldsEnd = min(frame.count, WireProtocol.headerSize + 16)
        if kind == WireProtocol.Kind.gradientTiles.rawValue, let tiles = u32(at: 32) {
            fieldsEnd = min(frame.count, 48 + 8 * tiles)
        } else if kind == WireProtocol.Kind.peerPartials.rawValue {
            fieldsEnd = min(frame.count, WireProtocol.headerSize + 24)
        }
        let message = try decode(Array(frame[0..<fieldsEnd]), payloadLeftOut: frame.count - fieldsEnd)
        guard message.peerTag != nil else {
            throw ProtocolError.malformed("a \(message.kind) message where a message from another worker belongs")
        }
        return (message, fieldsEnd)
    }

    /// Decodes a frame from the coordinator in place: a `reduced` result without copying its values (the message
    /// has an empty payload, and the values are at `payloadOffset` in `frame`), any other kind as `decode` does
    /// (`payloadOffset` is then the frame's end). Checks exactly what `decode` checks.
    public static func decodeResultInPlace(_ frame: UnsafeRawBufferPointer) throws -> (message: Message, payloadOffset: Int) {
        // A result's fields end 28 bytes in (round u16, layer u16, width u32, element u8, 0 u8, 0 u16); kind at byte 6.
        let kind = frame.count >= 8 ? UInt16(frame[6]) | UInt16(frame[7]) << 8 : 0
        guard kind == WireProtocol.Kind.reduced.rawValue else { return (try decode(Array(frame), payloadLeftOut: 0), frame.count) }
        let fieldsEnd = min(frame.count, WireProtocol.headerSize + 12)
        return (try decode(Array(frame[0..<fieldsEnd]), payloadLeftOut: frame.count - fieldsEnd), fieldsEnd)
    }

    /// `payloadLeftOut` bytes of a gradient payload or a result are not in `frame` (`decodePeerFrame`,
    /// `decodeResultInPlace`); 0 for every other kind.
    private static func decode(_ frame: [UInt8], payloadLeftOut: Int) throws -> Message {
        var reader = ByteReader(frame[...])
        guard frame.count >= WireProtocol.headerSize else {
            throw ProtocolError.malformed("\(frame.count) bytes is shorter than the \(WireProtocol.headerSize)-byte header")
        }
        guard try reader.bytes(4).elementsEqual(WireProtocol.magic) else { throw ProtocolError.malformed("bad magic (not a SyncBN message)") }
        let version = try reader.u16()
        guard version == WireProtocol.version else { throw ProtocolError.versionMismatch(peer: version) }
        let rawKind = try reader.u16()
        guard let kind = WireProtocol.Kind(rawValue: rawKind) else { throw ProtocolError.malformed("unknown message kind \(rawKind)") }
        guard payloadLeftOut == 0 || [.gradientTiles, .gradientShard, .peerPartials, .reduced].contains(kind) else {
            throw ProtocolError.malformed("a \(kind) message where gradient tiles, a shard, partials or a result belong")
        }
        let step = try reader.u64()
        let carriesStep = [.step, .partials, .reduced, .gradientTiles, .gradientShard, .peerPartials].contains(kind)
        guard carriesStep || step == 0 else { throw ProtocolError.malformed("a \(kind) message carries step \(step)") }
        switch kind {
        case .hello:
            let length = Int(try reader.u16())
            guard let peer = String(validating: try reader.bytes(length), as: UTF8.self) else { throw ProtocolError.malformed("text is not UTF-8") }
            let kernelLength = Int(try reader.u8())
            guard let kernel = String(validating: try reader.bytes(kernelLength), as: UTF8.self) else { throw ProtocolError.malformed("text is not UTF-8") }
            let threads = try reader.u16()
            guard threads >= 1 else { throw ProtocolError.malformed("hello from a worker with 0 threads") }
            return .hello(peer: peer, peerEndpoint: try reader.string(), blasKernel: kernel, threads: threads)
        case .welcome:
            let rank = try reader.u32(), workerCount = try reader.u32(), configLength = try reader.u32()
            guard workerCount > 0, rank < workerCount else { throw ProtocolError.malformed("welcome gives rank \(rank) of \(workerCount) workers") }
            let config = Array(try reader.bytes(Int(configLength)))
            return .welcome(rank: rank, workerCount: workerCount, config: config, model: Array(reader.rest()))
        case .reject:
            return .reject(reason: try reader.string())
        case .failure:
            return .failure(reason: try reader.string())
        case .stop:
            guard reader.remaining == 0 else { throw ProtocolError.malformed("stop carries \(reader.remaining) unexpected bytes") }
            return .stop
        case .ping:
            guard reader.remaining == 0 else { throw ProtocolError.malformed("ping carries \(reader.remaining) unexpected bytes") }
            return .ping
        case .step:
            let firstChunk = try reader.u32(), chunkCount = try reader.u32()
            let metricsFlag = try reader.u8()
            guard metricsFlag <= 1 else { throw ProtocolError.malformed("step has metrics flag \(metricsFlag)") }
            let rawElement = try reader.u8()
            guard let element = BatchData.Element(rawValue: rawElement) else { throw ProtocolError.malformed("step has unknown feature type \(rawElement)") }
            try reader.reserved(2)
            let rows = Int(try reader.u32()), featureSize = Int(try reader.u32())
            let (featureBytes, overflow) = rows.multipliedReportingOverflow(by: featureSize * (element == .float32 ? 4 : 1))
            guard !overflow, reader.remaining >= rows, reader.remaining - rows == featureBytes else {
                throw ProtocolError.malformed("step for \(rows) rows of \(featureSize) features carries \(reader.remaining) bytes")
            }
            let labels = Array(try reader.bytes(rows))
            let features = try reader.bytes(featureBytes)
            return .step(step: step, firstChunk: firstChunk, chunkCount: chunkCount, computeMetrics: metricsFlag == 1,
                         batch: BatchData(rows: rows, featureSize: featureSize, labels: labels, element: element, features: features))
        case .partials:
            let round = try reader.round()
            let firstChunk = try reader.u32(), chunkCount = try reader.u32(), width = try reader.u32()
            let element = try reader.element()
            try reader.reserved(3)
            let gradientWidth = try reader.u32(), epoch = try reader.u32()
            if gradientWidth > 0 && !round.carriesGradients {
                throw ProtocolError.malformed("partials of the \(round) carry riding gradients; only backward sums do")
            }
            // Both widths are below 2³², so a chunk's bytes fit an Int; the count of chunks may not.
            let (expected, overflow) = Int(chunkCount).multipliedReportingOverflow(by: Int(width) * element.size + Int(gradientWidth) * 4)
            guard !overflow, reader.remaining == expected else {
                throw ProtocolError.malformed("partials for \(chunkCount) chunks of \(width) values and \(gradientWidth) gradients carry \(reader.remaining) bytes")
            }
            return .partials(step: step, round: round, firstChunk: firstChunk, chunkCount: chunkCount, width: width, element: element,
                             gradientWidth: gradientWidth, epoch: epoch, payload: reader.rest())
        case .reduced:
            let round = try reader.round()
            let width = try reader.u32()
            let element = try reader.element()
            try reader.reserved(3)
            guard reader.remaining + payloadLeftOut == Int(width) * element.size else {
                throw ProtocolError.malformed("reduced result of \(width) values carries \(reader.remaining + payloadLeftOut) bytes")
            }
            return .reduced(step: step, round: round, width: width, element: element, payload: reader.rest())
        case .peers:
            let epoch = try reader.u32(), rank = try reader.u32()
            let uses = WireProtocol.PeerUses(rawValue: try reader.u8())
            guard WireProtocol.PeerUses.known.isSuperset(of: uses) else { throw ProtocolError.malformed("peers for unknown uses \(uses.rawValue)") }
            try reader.reserved(3)
            let count = try reader.u32()
            guard count > 0, rank < count, Int(count) <= reader.remaining / 2 else {
                throw ProtocolError.malformed("peers gives rank \(rank) of \(count) endpoints in \(reader.remaining) bytes")
            }
            var endpoints: [String] = []
            for _ in 0..<count {
                let length = Int(try reader.u16())
                guard let endpoint = String(validating: try reader.bytes(length), as: UTF8.self) else { throw ProtocolError.malformed("text is not UTF-8") }
                endpoints.append(endpoint)
            }
            guard reader.remaining == 0 else { throw ProtocolError.malformed("peers carries \(reader.remaining) unexpected bytes") }
            return .peers(epoch: epoch, rank: rank, uses: uses, endpoints: endpoints)
        case .gradientTiles:
            let epoch = try reader.u32(), from = try reader.u32(), shardOffset = try reader.u32(), shardWidth = try reader.u32()
            let tileCount = try reader.u32()
            let rowsFirstChunk = try reader.u32(), rowsChunkCount = try reader.u32(), rowsWidth = try reader.u32()
            guard Int(tileCount) <= reader.remaining / 8 else { throw ProtocolError.malformed("\(tileCount) tiles in \(reader.remaining) bytes") }
            var tiles: [Range<UInt32>] = []
            for _ in 0..<tileCount {
                let lo = try reader.u32(), hi = try reader.u32()
                guard lo < hi, lo >= (tiles.last?.upperBound ?? 0) else { throw ProtocolError.malformed("tile \(lo)..<\(hi) is empty or out of order") }
                tiles.append(lo..<hi)
            }
            let (tileValues, o1) = Int(tileCount).multipliedReportingOverflow(by: Int(shardWidth))
            let (rowValues, o2) = Int(rowsChunkCount).multipliedReportingOverflow(by: Int(rowsWidth))
            let (values, o3) = tileValues.addingReportingOverflow(rowValues)
            guard !o1, !o2, !o3, values <= Int.max / 4, reader.remaining + payloadLeftOut == values * 4 else {
                throw ProtocolError.malformed("gradient tiles (\(tileCount) × \(shardWidth) + \(rowsChunkCount) × \(rowsWidth) values) carry \(reader.remaining) bytes")
            }
            return .gradientTiles(step: step, epoch: epoch, from: from, shardOffset: shardOffset, shardWidth: shardWidth, tiles: tiles,
                                  rowsFirstChunk: rowsFirstChunk, rowsChunkCount: rowsChunkCount, rowsWidth: rowsWidth, payload: reader.rest())
        case .gradientShard:
            let epoch = try reader.u32(), from = try reader.u32(), shardOffset = try reader.u32(), shardWidth = try reader.u32()
            guard reader.remaining + payloadLeftOut == Int(shardWidth) * 4 else {
                throw ProtocolError.malformed("gradient shard of \(shardWidth) values carries \(reader.remaining) bytes")
            }
            return .gradientShard(step: step, epoch: epoch, from: from, shardOffset: shardOffset, shardWidth: shardWidth, payload: reader.rest())
        case .peerPartials:
            let epoch = try reader.u32(), from = try reader.u32()
            let round = try reader.round()
            guard round.isBatchNormRound else { throw ProtocolError.malformed("partials of the \(round) between workers; only BatchNorm rounds go there") }
            let firstChunk = try reader.u32(), chunkCount = try reader.u32(), width = try reader.u32()
            let (expected, overflow) = Int(chunkCount).multipliedReportingOverflow(by: Int(width) * 8)
            guard !overflow, reader.remaining + payloadLeftOut == expected else {
                throw ProtocolError.malformed("partials for \(chunkCount) chunks of \(width) values carry \(reader.remaining + payloadLeftOut) bytes")
            }
            return .peerPartials(step: step, epoch: epoch, from: from, round: round, firstChunk: firstChunk, chunkCount: chunkCount, width: width,
                                 payload: reader.rest())
        }
    }
}

// MARK: - Bytes

struct ByteWriter {
    var buffer: [UInt8] = []
    mutating func u8(_ v: UInt8) { buffer.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { buffer += $0 } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { buffer += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { buffer += $0 } }
    mutating func bytes<C: Collection>(_ b: C) where C.Element == UInt8 { buffer += b }

    /// A round travels as kind u16 (1 moments, 2 sums, 3 gradients, 4 metrics, 5 observations) and layer u16.
    mutating func round(_ round: Round) {
        switch round {
        case .moments(let layer): u16(1); u16(UInt16(layer))
        case .sums(let layer): u16(2); u16(UInt16(layer))
        case .gradients: u16(3); u16(0)
        case .metrics: u16(4); u16(0)
        case .observations: u16(5); u16(0)
        }
    }
}

struct ByteReader {
    private var data: ArraySlice<UInt8>
    init(_ data: ArraySlice<UInt8>) { self.data = data }

    var remaining: Int { data.count }

    mutating func bytes(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, n <= data.count else { throw ProtocolError.malformed("needs \(n) more bytes, has \(data.count)") }
        let out = data.prefix(n)
        data = data.dropFirst(n)
        return out
    }
    /// Reserved bytes, which must be zero.
    mutating func reserved(_ n: Int) throws {
        guard try bytes(n).allSatisfy({ $0 == 0 }) else { throw ProtocolError.malformed("reserved bytes are not zero") }
    }
    mutating func rest() -> ArraySlice<UInt8> { defer { data = data.suffix(0) }; return data }
    mutating func u8() throws -> UInt8 { try bytes(1).first! }
    mutating func u16() throws -> UInt16 { UInt16(try integer(2)) }
    mutating func u32() throws -> UInt32 { UInt32(try integer(4)) }
    mutating func u64() throws -> UInt64 { try integer(8) }
    /// Little-endian; a plain loop (the reversed-reduce it replaced cost a generic-metadata lookup per byte
    /// in debug builds, where the simulation decodes millions of messages).
    private mutating func integer(_ n: Int) throws -> UInt64 {
        let raw = try bytes(n)
        var value: UInt64 = 0, shift: UInt64 = 0
        for byte in raw {
            value |= UInt64(byte) << shift
            shift += 8
        }
        return value
    }
    mutating func string() throws -> String {
        guard let text = String(validating: rest(), as: UTF8.self) else { throw ProtocolError.malformed("text is not UTF-8") }
        return text
    }
    mutating func element() throws -> WireProtocol.Element {
        let raw = try u8()
        guard let element = WireProtocol.Element(rawValue: raw) else { throw ProtocolError.malformed("unknown element type \(raw)") }
        return element
    }
    mutating func round() throws -> Round {
        let kind = try u16(), layer = Int(try u16())
        switch kind {
        case 1: return .moments(layer: layer)
        case 2: return .sums(layer: layer)
        case 3 where layer == 0: return .gradients
        case 4 where layer == 0: return .metrics
        case 5 where layer == 0: return .observations
        default: throw ProtocolError.malformed("unknown round \(kind)/\(layer)")
        }
    }
}
