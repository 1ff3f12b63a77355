// A minimal Protocol Buffers wire-format encoder: just what Event, Summary and HistogramProto need.

/// Appends protobuf wire-format fields to a byte buffer.
///
/// Contract (protobuf encoding, proto2/proto3 alike): every field is a key `(fieldNumber << 3) | wireType`
/// as a varint, then the payload — wire type 0 varint (int64 as two's complement, so a negative value
/// takes 10 bytes), 1 fixed64 (double, little-endian IEEE 754), 2 length-delimited (varint length, then
/// bytes: strings in UTF-8, embedded messages, packed repeated scalars), 5 fixed32 (float). Fields are
/// written in the order the calls are made; nothing is omitted for default values, which every reader
/// accepts. No schema, no reflection: callers know their field numbers.
public struct ProtobufWriter {
    /// Wire types used here.
    public enum WireType: UInt8 {
        case varint = 0
        case fixed64 = 1
        case lengthDelimited = 2
        case fixed32 = 5
    }

    /// The encoded message so far.
    public private(set) var bytes: [UInt8] = []

    public init() {}

    /// A raw varint (7 bits per byte, least significant group first, high bit = more follows).
    public mutating func writeVarint(_ value: UInt64) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    /// A field key.
    public mutating func writeKey(_ field: Int, _ wireType: WireType) {
        precondition(field > 0 && field < (1 << 29), "protobuf field numbers are 1 ... 2^29 - 1")
        writeVarint(UInt64(field) << 3 | UInt64(wireType.rawValue))
    }

    /// `uint64` field (varint).
    public mutating func writeUInt64(_ field: Int, _ value: UInt64) {
        writeKey(field, .varint)
        writeVarint(value)
    }

    /// `int64` field (varint of the two's complement; negative values take 10 bytes).
    public mutating func writeInt64(_ field: Int, _ value: Int64) {
        writeUInt64(field, UInt64(bitPattern: value))
    }

    /// `double` field (fixed64, little-endian).
    public mutating func writeDouble(_ field: Int, _ value: Double) {
        writeKey(field, .fixed64)
        appendLittleEndian(value.bitPattern)
    }

    /// `float` field (fixed32, little-endian).
    public mutating func writeFloat(_ field: Int, _ value: Float) {
        writeKey(field, .fixed32)
        appendLittleEndian(value.bitPattern)
    }

    /// `bytes` field (length-delimited).
    public mutating func writeBytes<Bytes: Collection>(_ field: Int, _ value: Bytes) where Bytes.Element == UInt8 {
        writeKey(field, .lengthDelimited)
        writeVarint(UInt64(value.count))
        bytes.append(contentsOf: value)
    }

    /// `string` field (length-delimited UTF-8).
    public mutating func writeString(_ field: Int, _ value: String) {
        writeBytes(field, Array(value.utf8))
    }

    /// Embedded message field: `build` writes the submessage's fields into a fresh writer.
    public mutating func writeMessage(_ field: Int, _ build: (inout ProtobufWriter) -> Void) {
        var sub = ProtobufWriter()
        build(&sub)
        writeBytes(field, sub.bytes)
    }

    /// Packed `repeated double` field: one length-delimited field holding the fixed64 values back to back.
    /// An empty array writes nothing (the packed encoding of no elements).
    public mutating func writePackedDoubles(_ field: Int, _ values: [Double]) {
        guard !values.isEmpty else { return }
        writeKey(field, .lengthDelimited)
        writeVarint(UInt64(values.count) * 8)
        bytes.reserveCapacity(bytes.count + values.count * 8)
        for v in values { appendLittleEndian(v.bitPattern) }
    }

    private mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        var v = value.littleEndian
        withUnsafeBytes(of: &v) { bytes.append(contentsOf: $0) }
    }
}
