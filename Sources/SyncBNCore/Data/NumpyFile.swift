import Foundation

/// An array saved by NumPy's `np.save`: the `.npy` format, versions 1.0, 2.0 and 3.0.
///
/// Layout: the magic `\x93NUMPY`, a major and a minor version byte (1.0, 2.0 or 3.0), the header's length
/// (UInt16 little-endian in 1.0, UInt32 little-endian in 2.0 and 3.0), the header — a Python dict literal
/// such as `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 28, 28), }` padded with spaces and a
/// newline — then the elements, row-major, exactly `product(shape) × itemsize` bytes.
///
/// Read here: little-endian (or byte-order-free) unsigned and signed integers of 1, 2, 4 and 8 bytes and
/// floats of 4 and 8 bytes, in C order. Refused with a `DataError`: big-endian data, Fortran order,
/// structured or other dtypes, headers longer than `maximumHeaderLength`, shapes whose byte count overflows
/// Int or differs from the data's length. No input traps.
///
/// Reference: NumPy Enhancement Proposal 1, "A simple file format for NumPy arrays" (numpy.lib.format).
public struct NumpyFile: Equatable {
    /// An element type, as `descr` spells it without its byte order: `u1`, `i8`, `f4`, …
    public struct DType: Equatable, Sendable, CustomStringConvertible {
        public enum Kind: Character, Sendable {
            case unsignedInteger = "u", signedInteger = "i", float = "f"
        }
        public let kind: Kind
        /// Bytes per element: 1, 2, 4 or 8 for integers, 4 or 8 for floats.
        public let size: Int

        public init(kind: Kind, size: Int) {
            precondition(kind == .float ? [4, 8].contains(size) : [1, 2, 4, 8].contains(size), "no dtype \(kind.rawValue)\(size)")
            self.kind = kind
            self.size = size
        }

        public var isInteger: Bool { kind != .float }

        /// The `descr` NumPy writes for it: `|u1`, `|i1`, `<i4`, `<f8`, …
        public var description: String { "\(size == 1 ? "|" : "<")\(kind.rawValue)\(size)" }
    }

    /// The longest header read; NumPy's own reader refuses more than 10,000 bytes by default.
    public static let maximumHeaderLength = 65_536

    public let dtype: DType
    public let shape: [Int]
    /// The elements' bytes as stored: little-endian, row-major.
    public let data: [UInt8]

    public init(dtype: DType, shape: [Int], data: [UInt8]) {
        precondition(shape.reduce(1, *) * dtype.size == data.count, "\(data.count) bytes do not hold shape \(shape) of \(dtype)")
        self.dtype = dtype
        self.shape = shape
        self.data = data
    }

    public var count: Int { data.count / dtype.size }

    /// Element `i` of an integer array, saturated to Int64 (an unsigned 8-byte value above Int64.max gives
    /// Int64.max).
    public func integer(_ i: Int) -> Int64 {
        precondition(dtype.isInteger)
        let bits = littleEndian(i)
        switch (dtype.kind, dtype.size) {
        case (.signedInteger, 1): return Int64(Int8(truncatingIfNeeded: bits))
        case (.signedInteger, 2): return Int64(Int16(truncatingIfNeeded: bits))
        case (.signedInteger, 4): return Int64(Int32(truncatingIfNeeded: bits))
        case (.signedInteger, _): return Int64(bitPattern: bits)
        default: return bits > UInt64(Int64.max) ? .max : Int64(bits)
        }
    }

    /// Element `i` of a float array, rounded to Float32 if it is a Float64.
    public func float(_ i: Int) -> Float {
        precondition(dtype.kind == .float)
        let bits = littleEndian(i)
        return dtype.size == 4 ? Float(bitPattern: UInt32(truncatingIfNeeded: bits)) : Float(Double(bitPattern: bits))
    }

    /// The little-endian unsigned integer of `dtype.size` bytes that element `i` occupies.
    @inline(__always)
    private func littleEndian(_ i: Int) -> UInt64 {
        var value: UInt64 = 0
        let start = i * dtype.size
        for o in stride(from: start + dtype.size - 1, through: start, by: -1) { value = value << 8 | UInt64(data[o]) }
        return value
    }

    /// Reads the `.npy` file at `path` (plain or gzip-compressed).
    /// - Throws: `DataError` naming the file, what is wrong with it and how to write it again.
    public static func read(_ path: String) throws -> NumpyFile {
        try parse(IDXFile.readPossiblyCompressed(path), path: path)
    }

    /// Parses the bytes of a `.npy` file; `path` only names it in errors.
    /// - Throws: `DataError` for anything but a well-formed array of a supported dtype whose data fills
    ///   the rest of the file exactly.
    public static func parse(_ bytes: [UInt8], path: String) throws -> NumpyFile {
        let resave = "save it with np.save(path, array)"
        func fail(_ why: String, _ fix: String = resave) -> DataError {
            DataError("\(path) is not a readable .npy file: \(why); \(fix)")
        }
        let magic: [UInt8] = [0x93, 0x4E, 0x55, 0x4D, 0x50, 0x59]  // \x93NUMPY
        guard bytes.count >= 8, bytes[0..<6].elementsEqual(magic) else { throw fail("it does not start with the magic \\x93NUMPY") }
        let major = bytes[6], minor = bytes[7]
        guard (1...3).contains(major), minor == 0 else { throw fail("format version \(major).\(minor) is not 1.0, 2.0 or 3.0") }
        let lengthBytes = major == 1 ? 2 : 4
        guard bytes.count >= 8 + lengthBytes else { throw fail("its header is cut short") }
        var headerLength = 0
        for o in stride(from: 8 + lengthBytes - 1, through: 8, by: -1) { headerLength = headerLength << 8 | Int(bytes[o]) }
        guard headerLength <= maximumHeaderLength else {
            throw fail("its header claims \(headerLength) bytes, more than the \(maximumHeaderLength) a plain array needs")
        }
        let headerStart = 8 + lengthBytes, dataStart = headerStart + headerLength
        guard bytes.count >= dataStart else { throw fail("its header of \(headerLength) bytes is cut short at \(bytes.count - headerStart)") }

        let header: NumpyHeader
        do {
            header = try NumpyHeader(bytes[headerStart..<dataStart])
        } catch let error as NumpyHeader.Malformed {
            throw fail("its header is not a dict of 'descr', 'fortran_order' and 'shape' (\(error.why))")
        }
        guard !header.fortranOrder else {
            throw DataError("\(path): the array is stored in Fortran order, which SyncBN does not read; save it with np.save(path, np.ascontiguousarray(array))")
        }
        let dtype = try dataType(header.descr, path: path)
        var count = 1
        for dimension in header.shape {
            let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
            guard !overflow else { throw fail("its shape \(header.shape) has more elements than an Int can count") }
            count = product
        }
        let (byteCount, overflow) = count.multipliedReportingOverflow(by: dtype.size)
        guard !overflow else { throw fail("its shape \(header.shape) of \(dtype) needs more bytes than an Int can count") }
        let found = bytes.count - dataStart
        guard byteCount == found else {
            throw DataError("\(path): shape \(header.shape) of \(dtype) needs \(byteCount) bytes of data, the file holds \(found): it is truncated or damaged; \(resave)")
        }
        return NumpyFile(dtype: dtype, shape: header.shape, data: Array(bytes[dataStart...]))
    }

    /// The element type that `descr` names.
    /// - Throws: `DataError` for big-endian data and for dtypes this reader does not know.
    private static func dataType(_ descr: String, path: String) throws -> DType {
        let characters = Array(descr)
        if characters.count >= 3, let order = characters.first, "<>|=".contains(order),
           let kind = DType.Kind(rawValue: characters[1]), let size = Int(String(characters[2...])),
           kind == .float ? [4, 8].contains(size) : [1, 2, 4, 8].contains(size),
           "\(order)\(kind.rawValue)\(size)" == descr {
            // '|' and '=' only occur for single bytes in files NumPy writes; a single byte has no byte order.
            guard size == 1 || order == "<" else {
                throw DataError("\(path): the array is stored \(order == ">" ? "big-endian" : "in native byte order") ('\(descr)'), which SyncBN does not read; save it with np.save(path, array.astype('<\(kind.rawValue)\(size)'))")
            }
            return DType(kind: kind, size: size)
        }
        throw DataError("\(path): dtype '\(descr)' is not supported (only |u1, |i1, <u2…<u8, <i2…<i8, <f4, <f8); save it with np.save(path, array.astype(np.uint8)) or array.astype(np.float32)")
    }
}

/// The header of a `.npy` file: a Python dict literal with the keys 'descr' (a string), 'fortran_order'
/// (True or False) and 'shape' (a tuple of non-negative integers), in any order, and nothing else but
/// whitespace. Strings are quoted with ' or " and hold no escapes; integers may carry Python 2's `L`.
struct NumpyHeader {
    struct Malformed: Error { let why: String }

    let descr: String
    let fortranOrder: Bool
    let shape: [Int]

    init(_ text: ArraySlice<UInt8>) throws {
        var reader = Reader(bytes: text)
        var descr: String?, fortranOrder: Bool?, shape: [Int]?
        try reader.expect(UInt8(ascii: "{"))
        while true {
            reader.skipWhitespace()
            if reader.consume(UInt8(ascii: "}")) { break }
            let key = try reader.string()
            reader.skipWhitespace()
            try reader.expect(UInt8(ascii: ":"))
            reader.skipWhitespace()
            switch key {
            case "descr":
                guard descr == nil else { throw Malformed(why: "'descr' twice") }
                guard reader.peek != UInt8(ascii: "[") else { throw Malformed(why: "structured dtypes are not supported") }
                descr = try reader.string()
            case "fortran_order":
                guard fortranOrder == nil else { throw Malformed(why: "'fortran_order' twice") }
                fortranOrder = try reader.boolean()
            case "shape":
                guard shape == nil else { throw Malformed(why: "'shape' twice") }
                shape = try reader.tuple()
            default:
                throw Malformed(why: "unknown key '\(key)'")
            }
            reader.skipWhitespace()
            if reader.consume(UInt8(ascii: ",")) { continue }
            try reader.expect(UInt8(ascii: "}"))
            break
        }
        reader.skipWhitespace()
        guard reader.atEnd else { throw Malformed(why: "text after the dict") }
        guard let descr, let fortranOrder, let shape else {
            throw Malformed(why: "missing \(descr == nil ? "'descr'" : fortranOrder == nil ? "'fortran_order'" : "'shape'")")
        }
        self.descr = descr
        self.fortranOrder = fortranOrder
        self.shape = shape
    }

    /// A cursor over the header's bytes.
    private struct Reader {
        let bytes: ArraySlice<UInt8>
        var position: Int

        init(bytes: ArraySlice<UInt8>) {
            self.bytes = bytes
            position = bytes.startIndex
        }

        var atEnd: Bool { position >= bytes.endIndex }
        var peek: UInt8? { atEnd ? nil : bytes[position] }

        mutating func skipWhitespace() {
            while let c = peek, c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { position += 1 }
        }

        mutating func consume(_ c: UInt8) -> Bool {
            guard peek == c else { return false }
            position += 1
            return true
        }

        mutating func expect(_ c: UInt8) throws {
            guard consume(c) else {
                throw Malformed(why: atEnd ? "it ends early" : "'\(Character(Unicode.Scalar(c)))' expected at byte \(position - bytes.startIndex)")
            }
        }

        mutating func string() throws -> String {
            guard let quote = peek, quote == UInt8(ascii: "'") || quote == UInt8(ascii: "\"") else {
                throw Malformed(why: "a quoted string expected at byte \(position - bytes.startIndex)")
            }
            position += 1
            let start = position
            while let c = peek, c != quote {
                guard c != UInt8(ascii: "\\"), c != 0x0A else { throw Malformed(why: "a string with an escape or a line break") }
                position += 1
            }
            guard !atEnd else { throw Malformed(why: "an unterminated string") }
            let text = String(decoding: bytes[start..<position], as: UTF8.self)
            position += 1
            return text
        }

        mutating func boolean() throws -> Bool {
            for (word, value) in [("True", true), ("False", false)] where bytes[position...].starts(with: word.utf8) {
                position += word.utf8.count
                return value
            }
            throw Malformed(why: "True or False expected at byte \(position - bytes.startIndex)")
        }

        /// A tuple of non-negative integers: `()`, `(5,)`, `(2, 3)`, `(2, 3,)`.
        mutating func tuple() throws -> [Int] {
            try expect(UInt8(ascii: "("))
            var values: [Int] = []
            while true {
                skipWhitespace()
                if consume(UInt8(ascii: ")")) { return values }
                values.append(try integer())
                skipWhitespace()
                if consume(UInt8(ascii: ",")) { continue }
                try expect(UInt8(ascii: ")"))
                return values
            }
        }

        mutating func integer() throws -> Int {
            var value = 0, digits = 0
            while let c = peek, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(c) {
                let (times10, o1) = value.multipliedReportingOverflow(by: 10)
                let (sum, o2) = times10.addingReportingOverflow(Int(c - UInt8(ascii: "0")))
                guard !o1, !o2 else { throw Malformed(why: "a dimension larger than an Int") }
                value = sum
                digits += 1
                position += 1
            }
            guard digits > 0 else { throw Malformed(why: "a non-negative integer expected at byte \(position - bytes.startIndex)") }
            _ = consume(UInt8(ascii: "L"))
            return value
        }
    }
}

extension LabeledImages {
    /// The `.npy` image and label files of one split, checked against each other.
    /// - Throws: `DataError` naming the file that is missing, malformed or does not match the other.
    public static func load(npyImages images: String, labels: String) throws -> LabeledImages {
        try LabeledImages(npyImages: NumpyFile.read(images), labels: NumpyFile.read(labels), imagesPath: images, labelsPath: labels)
    }

    /// One split from parsed `.npy` arrays: images of shape [N, H, W] or [N, C, H, W] (samples [1, H, W],
    /// [C, H, W]; [N, F] gives samples [F]) of dtype `|u1` (kept as bytes, scaled by `scale(pixel:)` like
    /// IDX bytes), `<f4` (kept) or `<f8` (rounded to Float32); labels of shape [N] of any integer dtype,
    /// each in 0...255.
    public init(npyImages imageFile: NumpyFile, labels labelFile: NumpyFile, imagesPath: String, labelsPath: String) throws {
        let sampleShape = try Self.sampleShape(fileShape: imageFile.shape, path: imagesPath)
        let count = imageFile.shape[0]
        guard labelFile.dtype.isInteger else {
            throw DataError("\(labelsPath): labels of dtype \(labelFile.dtype) are not integers; save them with np.save(path, labels.astype(np.uint8))")
        }
        guard labelFile.shape == [count] else {
            throw DataError("\(labelsPath): expected \(count) labels (shape (\(count),)) to match \(imagesPath), found shape \(labelFile.shape); save them with np.save(path, labels.reshape(-1).astype(np.uint8))")
        }
        let labels = labelFile.dtype.size == 1 && labelFile.dtype.kind == .unsignedInteger
            ? labelFile.data
            : try Self.labels(count: count, path: labelsPath) { labelFile.integer($0) }
        let storage: Storage
        switch (imageFile.dtype.kind, imageFile.dtype.size) {
        case (.unsignedInteger, 1): storage = .bytes(imageFile.data)
        case (.float, 4):
            storage = .floats(imageFile.data.withUnsafeBytes { raw in
                (0..<imageFile.count).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self))) }
            })
        case (.float, _): storage = .floats((0..<imageFile.count).map { imageFile.float($0) })
        default:
            throw DataError("\(imagesPath): images of dtype \(imageFile.dtype) are not supported (only |u1, <f4, <f8); save them with np.save(path, images.astype(np.uint8)) or images.astype(np.float32)")
        }
        self.init(count: count, featureSize: sampleShape.reduce(1, *), labels: labels, storage: storage, sampleShape: sampleShape)
    }
}
