import CZlib
import Foundation

/// A file in the IDX format of the MNIST family: a 4-byte magic (0, 0, element type, rank), `rank`
/// big-endian UInt32 dimensions, then the elements, big-endian. Read plain or gzip-compressed.
public struct IDXFile: Equatable {
    public enum Elements: Equatable {
        case unsignedBytes([UInt8])
        case float32([Float])
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

    public static func parse(_ bytes: [UInt8], path: String) throws -> IDXFile {
        func fail(_ why: String) -> DataError { DataError("\(path) is not a valid IDX file: \(why)") }
        guard bytes.count >= 4, bytes[0] == 0, bytes[1] == 0 else { throw fail("it does not start with the IDX magic 00 00") }
        let type = bytes[2], rank = Int(bytes[3])
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
        let body = bytes[(4 + 4 * rank)...]
        switch type {
        case 0x08:
            guard body.count == count else { throw fail("expected \(count) bytes of data for shape \(shape), found \(body.count)") }
            return IDXFile(shape: shape, elements: .unsignedBytes(Array(body)))
        case 0x0D:
            guard body.count == 4 * count else { throw fail("expected \(4 * count) bytes of data for shape \(shape), found \(body.count)") }
            var values = [Float](repeating: 0, count: count)
            var o = body.startIndex
            for i in 0..<count {
                let bits = UInt32(body[o]) << 24 | UInt32(body[o + 1]) << 16 | UInt32(body[o + 2]) << 8 | UInt32(body[o + 3])
                values[i] = Float(bitPattern: bits)
                o += 4
            }
            return IDXFile(shape: shape, elements: .float32(values))
        default:
            throw fail("element type 0x\(String(type, radix: 16)) is not supported (only 0x08 unsigned byte and 0x0D float32)")
        }
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
