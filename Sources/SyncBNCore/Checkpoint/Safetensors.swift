#if _endian(big)
#error("Safetensors files are little-endian; tensors are copied from host memory as they are.")
#endif

import Foundation

/// The safetensors format: an 8-byte little-endian header length, a JSON header mapping each tensor name
/// to its dtype, shape and byte range, then the raw little-endian tensor bytes.
///
/// Writing is deterministic (tensors in the given order, a fixed metadata block, header padded with spaces
/// to a multiple of 8), so equal tensors give equal files byte for byte.
public enum Safetensors {
    public enum DType: String, Sendable {
        case float32 = "F32"
        case int64 = "I64"

        var size: Int { self == .float32 ? 4 : 8 }
    }

    public struct Tensor: Equatable, Sendable {
        public var dtype: DType
        public var shape: [Int]
        /// Little-endian element bytes.
        public var bytes: [UInt8]

        public init(dtype: DType, shape: [Int], bytes: [UInt8]) {
            precondition(bytes.count == shape.reduce(1, *) * dtype.size, "tensor bytes do not match its shape")
            self.dtype = dtype
            self.shape = shape
            self.bytes = bytes
        }

        /// Little-endian Float32, copied as is from the host's memory.
        public init(_ values: UnsafeBufferPointer<Float>, shape: [Int]) {
            self.init(dtype: .float32, shape: shape, bytes: Array(UnsafeRawBufferPointer(values)))
        }

        public init(int64 value: Int64) {
            self.init(dtype: .int64, shape: [], bytes: withUnsafeBytes(of: value.littleEndian, Array.init))
        }

        public var floats: [Float] {
            precondition(dtype == .float32)
            return stride(from: 0, to: bytes.count, by: 4).map { o in
                Float(bitPattern: UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16 | UInt32(bytes[o + 3]) << 24)
            }
        }

        public var int64: Int64 {
            precondition(dtype == .int64 && bytes.count == 8)
            return bytes.reversed().reduce(0) { $0 << 8 | Int64($1) }
        }
    }

    /// Encodes tensors in order; `metadata` joins `"format": "pt"` in the header's `__metadata__`, sorted by key.
    public static func encode(_ tensors: [(name: String, tensor: Tensor)], metadata: [String: String] = [:]) -> [UInt8] {
        var header = "{"
        var offset = 0
        for (name, tensor) in tensors {
            let shape = tensor.shape.map(String.init).joined(separator: ",")
            header += "\"\(name)\":{\"dtype\":\"\(tensor.dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(offset + tensor.bytes.count)]},"
            offset += tensor.bytes.count
        }
        var entries = metadata
        entries["format"] = "pt"
        let metadataJSON = entries.keys.sorted().map { "\(jsonString($0)):\(jsonString(entries[$0]!))" }.joined(separator: ",")
        header += "\"__metadata__\":{\(metadataJSON)}}"
        while header.utf8.count % 8 != 0 { header += " " }
        var out = withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian, Array.init)
        out += Array(header.utf8)
        for (_, tensor) in tensors { out += tensor.bytes }
        return out
    }

    /// A JSON string literal for `text`.
    private static func jsonString(_ text: String) -> String {
        let data = try! JSONSerialization.data(withJSONObject: [text], options: [.withoutEscapingSlashes])
        return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
    }

    /// The header's `__metadata__` entries (string values only).
    public static func metadata(_ bytes: [UInt8], source: String) throws -> [String: String] {
        guard bytes.count >= 8 else { throw CheckpointError("\(source) is not a valid safetensors file: it is shorter than its 8-byte header length") }
        let headerLength = bytes[0..<8].reversed().reduce(0) { $0 << 8 | Int($1) }
        guard headerLength > 0, headerLength <= bytes.count - 8,
              let json = try? JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + headerLength)])) as? [String: Any] else {
            throw CheckpointError("\(source) is not a valid safetensors file: its header is not a JSON object")
        }
        return (json["__metadata__"] as? [String: String]) ?? [:]
    }

    /// Decodes a safetensors file's bytes into tensors by name.
    /// - Throws: `CheckpointError` for a short file, a bad header or offsets outside the data.
    public static func decode(_ bytes: [UInt8], source: String) throws -> [String: Tensor] {
        func fail(_ why: String) -> CheckpointError { CheckpointError("\(source) is not a valid safetensors file: \(why)") }
        guard bytes.count >= 8 else { throw fail("it is shorter than its 8-byte header length") }
        let headerLength = bytes[0..<8].reversed().reduce(0) { $0 << 8 | Int($1) }
        guard headerLength > 0, headerLength <= bytes.count - 8 else { throw fail("its header length \(headerLength) does not fit the file") }
        let data = bytes[(8 + headerLength)...]
        guard let json = try? JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + headerLength)])) as? [String: Any] else {
            throw fail("its header is not a JSON object")
        }
        var tensors: [String: Tensor] = [:]
        for (name, value) in json where name != "__metadata__" {
            guard let entry = value as? [String: Any], let dtypeName = entry["dtype"] as? String,
                  let shape = entry["shape"] as? [Int], let offsets = entry["data_offsets"] as? [Int], offsets.count == 2
            else { throw fail("the entry for \(name) lacks dtype, shape or data_offsets") }
            guard let dtype = DType(rawValue: dtypeName) else { throw fail("\(name) has dtype \(dtypeName); only F32 and I64 are supported") }
            let (start, end) = (offsets[0], offsets[1])
            var byteCount: Int? = dtype.size
            for dimension in shape {
                guard dimension >= 0, let count = byteCount else { byteCount = nil; break }
                let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
                byteCount = overflow ? nil : product
            }
            guard let byteCount else { throw fail("the shape \(shape) of \(name) has a negative dimension or more elements than any file can hold") }
            guard start >= 0, start <= end, end <= data.count, end - start == byteCount else {
                throw fail("the byte range of \(name) does not match its shape \(shape)")
            }
            tensors[name] = Tensor(dtype: dtype, shape: shape, bytes: Array(data[(data.startIndex + start)..<(data.startIndex + end)]))
        }
        return tensors
    }
}

/// A checkpoint that cannot be read or does not fit the model.
public struct CheckpointError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
