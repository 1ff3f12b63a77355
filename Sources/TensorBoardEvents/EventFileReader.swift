// Reads TensorBoard event files back: TFRecord framing with CRC checks, and just enough of Event/Summary.

import Foundation

/// Why an event file could not be read. Every malformed input ends in one of these; the reader never traps.
public enum EventFileReadError: Error, CustomStringConvertible, Equatable {
    case cannotRead(path: String, reason: String)
    /// The record starting at `offset` needs `needed` bytes from there but only `available` remain.
    case truncated(offset: Int, needed: UInt64, available: Int)
    /// The masked CRC-32C of the record's 8-byte length at `offset` does not match.
    case lengthChecksumMismatch(offset: Int)
    /// The masked CRC-32C of the record's data at `offset` does not match.
    case dataChecksumMismatch(offset: Int)
    /// The record at `offset` passed its CRCs but is not a well-formed Event.
    case malformedEvent(offset: Int, reason: String)

    public var description: String {
        switch self {
        case .cannotRead(let path, let reason):
            return "cannot read event file \(path): \(reason)"
        case .truncated(let offset, let needed, let available):
            return "event file truncated: the record at byte \(offset) needs \(needed) bytes, \(available) remain"
        case .lengthChecksumMismatch(let offset):
            return "event file corrupt: bad length checksum in the record at byte \(offset)"
        case .dataChecksumMismatch(let offset):
            return "event file corrupt: bad data checksum in the record at byte \(offset)"
        case .malformedEvent(let offset, let reason):
            return "event file corrupt: the record at byte \(offset) is not an Event (\(reason))"
        }
    }
}

/// Reads a whole TensorBoard event file (see `EventFileWriter` for the format) into memory.
///
/// Contract: every record's framing and both masked CRC-32Cs are verified; all lengths are checked against
/// the bytes remaining before use (no overflow, no out-of-bounds access, no allocation driven by a length
/// field); a truncated or corrupt file throws `EventFileReadError` — no partial result. Of each `Event` it
/// decodes `wall_time`, `step`, `file_version`, `session_log.status` and the summary values' `tag`, `simple_value` and `histo`;
/// other fields (images, tensors, graphs, ...) are skipped.
public struct EventFileReader {
    /// One decoded `Event`.
    public struct Event: Equatable {
        public var wallTime: Double = 0
        public var step: Int64 = 0
        public var fileVersion: String?
        /// `session_log.status` if the event has a session log (1: START, see `EventFileWriter.addSessionStart`).
        public var sessionLogStatus: UInt64?
        public var values: [Value] = []
    }

    /// One decoded `Summary.Value`.
    public struct Value: Equatable {
        public var tag: String = ""
        public var simpleValue: Float?
        public var histogram: Histogram?
    }

    /// The file's events, in order.
    public let events: [Event]

    /// Every scalar `(step, tag, value)` in file order.
    public var scalars: [(step: Int64, tag: String, value: Float)] {
        events.flatMap { e in e.values.compactMap { v in v.simpleValue.map { (e.step, v.tag, $0) } } }
    }

    /// Every histogram `(step, tag, histogram)` in file order.
    public var histograms: [(step: Int64, tag: String, histogram: Histogram)] {
        events.flatMap { e in e.values.compactMap { v in v.histogram.map { (e.step, v.tag, $0) } } }
    }

    public init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw EventFileReadError.cannotRead(path: path, reason: "no such file or not readable")
        }
        try self.init(bytes: [UInt8](data))
    }

    public init(bytes: [UInt8]) throws {
        events = try Self.records(in: bytes).map { record in
            do {
                var reader = WireReader(bytes, record.data)
                return try Self.decodeEvent(&reader)
            } catch let error as WireReader.Malformed {
                throw EventFileReadError.malformedEvent(offset: record.offset, reason: error.reason)
            }
        }
    }

    /// The TFRecord framing of `bytes`: each record's offset and the range of its data.
    public static func records(in bytes: [UInt8]) throws -> [(offset: Int, data: Range<Int>)] {
        var result: [(offset: Int, data: Range<Int>)] = []
        var pos = bytes.startIndex
        let end = bytes.endIndex
        while pos < end {
            let available = end - pos
            guard available >= 12 else {
                throw EventFileReadError.truncated(offset: pos, needed: 12, available: available)
            }
            var length: UInt64 = 0
            for k in 0..<8 { length |= UInt64(bytes[pos + k]) << (8 * UInt64(k)) }
            let headerCRC = bytes.withUnsafeBytes { CRC32C.maskedChecksum(UnsafeRawBufferPointer(rebasing: $0[pos..<(pos + 8)])) }
            guard headerCRC == readUInt32(bytes, pos + 8) else {
                throw EventFileReadError.lengthChecksumMismatch(offset: pos)
            }
            // 12 header bytes + length + 4 CRC bytes must fit in what remains; compare without overflow.
            guard length <= UInt64(available - 12), UInt64(available - 12) - length >= 4 else {
                let (needed, overflow) = length.addingReportingOverflow(16)
                throw EventFileReadError.truncated(offset: pos, needed: overflow ? .max : needed, available: available)
            }
            let dataStart = pos + 12
            let dataEnd = dataStart + Int(length)
            let dataCRC = bytes.withUnsafeBytes { CRC32C.maskedChecksum(UnsafeRawBufferPointer(rebasing: $0[dataStart..<dataEnd])) }
            guard dataCRC == readUInt32(bytes, dataEnd) else {
                throw EventFileReadError.dataChecksumMismatch(offset: pos)
            }
            result.append((pos, dataStart..<dataEnd))
            pos = dataEnd + 4
        }
        return result
    }

    private static func readUInt32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }

    // MARK: - Event, Summary, Summary.Value, HistogramProto

    private static func decodeEvent(_ r: inout WireReader) throws -> Event {
        var event = Event()
        while let (field, wire) = try r.nextKey() {
            switch (field, wire) {
            case (1, 1): event.wallTime = Double(bitPattern: try r.fixed64())
            case (2, 0): event.step = Int64(bitPattern: try r.varint())
            case (3, 2): event.fileVersion = r.string(try r.lengthDelimited())
            case (5, 2):
                var summary = r.sub(try r.lengthDelimited())
                while let (f, w) = try summary.nextKey() {
                    if f == 1 && w == 2 {
                        var value = summary.sub(try summary.lengthDelimited())
                        event.values.append(try decodeValue(&value))
                    } else {
                        try summary.skip(field: f, wireType: w)
                    }
                }
            case (7, 2):
                var log = r.sub(try r.lengthDelimited())
                event.sessionLogStatus = 0
                while let (f, w) = try log.nextKey() {
                    if f == 1 && w == 0 { event.sessionLogStatus = try log.varint() } else { try log.skip(field: f, wireType: w) }
                }
            case (1...3, _), (5, _), (7, _): throw WireReader.Malformed(reason: "field \(field) has wire type \(wire)")
            default: try r.skip(field: field, wireType: wire)
            }
        }
        return event
    }

    private static func decodeValue(_ r: inout WireReader) throws -> Value {
        var value = Value()
        while let (field, wire) = try r.nextKey() {
            switch (field, wire) {
            case (1, 2): value.tag = r.string(try r.lengthDelimited())
            case (2, 5): value.simpleValue = Float(bitPattern: try r.fixed32())
            case (5, 2):
                var h = r.sub(try r.lengthDelimited())
                value.histogram = try decodeHistogram(&h)
            case (1, _), (2, _), (5, _): throw WireReader.Malformed(reason: "Summary.Value field \(field) has wire type \(wire)")
            default: try r.skip(field: field, wireType: wire)
            }
        }
        return value
    }

    private static func decodeHistogram(_ r: inout WireReader) throws -> Histogram {
        var h = Histogram(min: 0, max: 0, count: 0, sum: 0, sumOfSquares: 0, bucketLimits: [], bucketCounts: [])
        while let (field, wire) = try r.nextKey() {
            switch (field, wire) {
            case (1...5, 1):
                let v = Double(bitPattern: try r.fixed64())
                switch field {
                case 1: h.min = v
                case 2: h.max = v
                case 3: h.count = v
                case 4: h.sum = v
                default: h.sumOfSquares = v
                }
            case (6, 1): h.bucketLimits.append(Double(bitPattern: try r.fixed64()))
            case (7, 1): h.bucketCounts.append(Double(bitPattern: try r.fixed64()))
            case (6, 2): h.bucketLimits += try r.packedDoubles(try r.lengthDelimited())
            case (7, 2): h.bucketCounts += try r.packedDoubles(try r.lengthDelimited())
            case (1...7, _): throw WireReader.Malformed(reason: "HistogramProto field \(field) has wire type \(wire)")
            default: try r.skip(field: field, wireType: wire)
            }
        }
        guard h.bucketLimits.count == h.bucketCounts.count else {
            throw WireReader.Malformed(reason: "histogram has \(h.bucketLimits.count) limits but \(h.bucketCounts.count) counts")
        }
        return h
    }
}

/// A bounds-checked cursor over protobuf wire format within `bytes[range]`.
private struct WireReader {
    struct Malformed: Error { let reason: String }

    let bytes: [UInt8]
    var pos: Int
    let end: Int

    init(_ bytes: [UInt8], _ range: Range<Int>) {
        self.bytes = bytes
        pos = range.lowerBound
        end = range.upperBound
    }

    func sub(_ range: Range<Int>) -> WireReader { WireReader(bytes, range) }

    /// The next key, or nil at the end of the message.
    mutating func nextKey() throws -> (Int, UInt8)? {
        guard pos < end else { return nil }
        let key = try varint()
        let field = key >> 3
        guard field >= 1, field < (1 << 29) else { throw Malformed(reason: "invalid field number \(field)") }
        return (Int(field), UInt8(key & 7))
    }

    mutating func varint() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard pos < end else { throw Malformed(reason: "truncated varint") }
            let byte = bytes[pos]
            pos += 1
            if shift == 63 && byte > 1 { throw Malformed(reason: "varint longer than 64 bits") }
            result |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return result }
            shift += 7
        }
    }

    mutating func fixed64() throws -> UInt64 {
        guard end - pos >= 8 else { throw Malformed(reason: "truncated fixed64") }
        var v: UInt64 = 0
        for k in 0..<8 { v |= UInt64(bytes[pos + k]) << (8 * UInt64(k)) }
        pos += 8
        return v
    }

    mutating func fixed32() throws -> UInt32 {
        guard end - pos >= 4 else { throw Malformed(reason: "truncated fixed32") }
        var v: UInt32 = 0
        for k in 0..<4 { v |= UInt32(bytes[pos + k]) << (8 * UInt32(k)) }
        pos += 4
        return v
    }

    /// Reads a length and returns the range of that many following bytes (checked against the end).
    mutating func lengthDelimited() throws -> Range<Int> {
        let length = try varint()
        guard length <= UInt64(end - pos) else {
            throw Malformed(reason: "length \(length) exceeds the \(end - pos) bytes left")
        }
        let start = pos
        pos += Int(length)
        return start..<pos
    }

    func string(_ range: Range<Int>) -> String {
        String(decoding: bytes[range], as: UTF8.self)
    }

    func packedDoubles(_ range: Range<Int>) throws -> [Double] {
        guard range.count % 8 == 0 else { throw Malformed(reason: "packed doubles of \(range.count) bytes") }
        var r = sub(range)
        var values: [Double] = []
        values.reserveCapacity(range.count / 8)
        while r.pos < r.end { values.append(Double(bitPattern: try r.fixed64())) }
        return values
    }

    mutating func skip(field: Int, wireType: UInt8) throws {
        switch wireType {
        case 0: _ = try varint()
        case 1: _ = try fixed64()
        case 2: _ = try lengthDelimited()
        case 5: _ = try fixed32()
        default: throw Malformed(reason: "field \(field) has unsupported wire type \(wireType)")
        }
    }
}
