import CZlib
import Foundation

/// A file in the IDX format of the MNIST family: a 4-byte magic (0, 0, element type, rank), `rank`
/// big-endian UInt32 dimensions, then the elements, big-endian, row-major. Read plain or gzip-compressed.
///
/// Element types (the format's whole list): 0x08 unsigned byte, 0x09 signed byte, 0x0B Int16, 0x0C Int32,
/// 0x0D Float32, 0x0E Float64. The three signed integer types are read into `.signedIntegers` (sign-extended
/// to Int32); the others keep their own type.
public struct IDXFile: Equatable {
    public enum Elements: Equatable {
        /// Type 0x08.
        case unsignedBytes([UInt8])
        /// Types 0x09 (Int8), 0x0B (Int16) and 0x0C (Int32), sign-extended.
        case signedIntegers([Int32])
        /// Type 0x0D.
        case float32([Float])
        /// Type 0x0E.
        case float64([Double])
    }

    public let shape: [Int]
    public let elements: Elements

    public init(shape: [Int], elements: Elements) {
        self.shape = shape
        self.elements = elements
    }

    public var count: Int { shape.reduce(1, *) }

    /// Reads `path`, decompressing it if it is gzip (zlib reads plain files unchanged).
    /// - Throws: `DataError` naming the file and what is wrong with it.
    public static func read(_ path: String) throws -> IDXFile {
        try parse(readPossiblyCompressed(path), path: path)
    }

    /// Parses the bytes of an IDX file; `path` only names it in errors. Any bytes either parse or throw
    /// `DataError` (the dimensions' product is checked for overflow and against the data's length).
    public static func parse(_ bytes: [UInt8], path: String) throws -> IDXFile {
        func fail(_ why: String) -> DataError { DataError("\(path) is not a valid IDX file: \(why)") }
        guard bytes.count >= 4, bytes[0] == 0, bytes[1] == 0 else { throw fail("it does not start with the IDX magic 00 00") }
        let type = bytes[2], rank = Int(bytes[3])
        let size: Int
        switch type {
        case 0x08, 0x09: size = 1
        case 0x0B: size = 2
        case 0x0C, 0x0D: size = 4
        case 0x0E: size = 8
        default:
            throw fail("element type 0x\(String(type, radix: 16)) is not supported (the format defines 0x08 unsigned byte, 0x09 signed byte, 0x0b int16, 0x0c int32, 0x0d float32, 0x0e float64)")
        }
        guard rank >= 1, bytes.count >= 4 + 4 * rank else { throw fail("its header is cut short") }
        var shape: [Int] = []
        for d in 0..<rank {
            let o = 4 + 4 * d
            shape.append(Int(bytes[o]) << 24 | Int(bytes[o + 1]) << 16 | Int(bytes[o + 2]) << 8 | Int(bytes[o + 3]))
        }
        var count = 1
        for dimension in shape {
            let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
            guard !overflow, product <= bytes.count else { throw fail("its shape \(shape) holds more elements than the file's \(bytes.count) bytes") }
            count = product
        }
        // count ≤ bytes.count, so count × size (size ≤ 8) cannot overflow.
        let body = bytes[(4 + 4 * rank)...]
        guard body.count == size * count else {
            throw fail("expected \(size * count) bytes of data for shape \(shape), found \(body.count)")
        }
        /// The big-endian unsigned integer of `size` bytes that element `i` occupies.
        func element(_ i: Int) -> UInt64 {
            var value: UInt64 = 0
            for o in (body.startIndex + i * size)..<(body.startIndex + (i + 1) * size) { value = value << 8 | UInt64(body[o]) }
            return value
        }
        let elements: Elements
        switch type {
        case 0x08: elements = .unsignedBytes(Array(body))
        case 0x09: elements = .signedIntegers((0..<count).map { Int32(Int8(truncatingIfNeeded: element($0))) })
        case 0x0B: elements = .signedIntegers((0..<count).map { Int32(Int16(truncatingIfNeeded: element($0))) })
        case 0x0C: elements = .signedIntegers((0..<count).map { Int32(truncatingIfNeeded: element($0)) })
        case 0x0D: elements = .float32((0..<count).map { Float(bitPattern: UInt32(truncatingIfNeeded: element($0))) })
        default: elements = .float64((0..<count).map { Double(bitPattern: element($0)) })
        }
        return IDXFile(shape: shape, elements: elements)
    }

    static func readPossiblyCompressed(_ path: String) throws -> [UInt8] {
        guard FileManager.default.fileExists(atPath: path) else { throw DataError("\(path): no such file") }
        guard let file = gzopen(path, "rb") else { throw DataError("\(path): cannot open (\(String(cString: strerror(errno))))") }
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buffer.withUnsafeMutableBytes { gzread(file, $0.baseAddress, UInt32($0.count)) }
            // gzread reports a stream cut short (or a bad trailer) only through gzerror, not its result.
            var code: Int32 = Z_OK
            let message = String(cString: gzerror(file, &code))
            if n < 0 || (code != Z_OK && code != Z_STREAM_END) {
                gzclose(file)
                throw DataError("\(path): cannot decompress (\(message)): the file is damaged; reinstall it")
            }
            if n == 0 { break }
            result.append(contentsOf: buffer[0..<Int(n)])
        }
        guard gzclose(file) == Z_OK else { throw DataError("\(path): the compressed file is damaged (bad checksum or cut short); reinstall it") }
        return result
    }
}

/// A data file that is missing or malformed.
public struct DataError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
