/// Tests of the data formats beyond IDX bytes: IDX's other element types and sample shapes, CIFAR-10
/// binary files, NumPy `.npy` files, and detecting a directory's format.
///
/// Oracles: files built byte by byte from each format's definition (IDX: magic 00 00 type rank, big-endian
/// dimensions and elements; CIFAR-10: label byte + 3,072 CHW bytes per record; .npy: NEP 1's layout, which
/// `npyBytes` reproduces exactly as NumPy pads it). One file is the literal output of NumPy 2.4's `np.save`:
///
///     import numpy as np, io; f = io.BytesIO()
///     np.save(f, np.array([[[0, 1.5, -2], [3.25, 1e-3, 255]]], dtype='<f4')); print(f.getvalue().hex())
///
/// A damaged file must give a `DataError` naming the file and what is wrong, never a trap.
import Foundation
import XCTest
@testable import SyncBNCore

/// The bytes of a `.npy` file as NumPy writes them: the header dict padded with spaces and a newline so that
/// magic, version, length and header together fill a multiple of 64 bytes.
func npyBytes(descr: String, fortranOrder: Bool = false, shape: [Int], body: [UInt8], major: UInt8 = 1) -> [UInt8] {
    let tuple = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
    var header = Array("{'descr': '\(descr)', 'fortran_order': \(fortranOrder ? "True" : "False"), 'shape': \(tuple), }".utf8)
    let prefix = major == 1 ? 10 : 12
    while (prefix + header.count + 1) % 64 != 0 { header.append(0x20) }
    header.append(0x0A)
    var bytes: [UInt8] = [0x93] + Array("NUMPY".utf8) + [major, 0]
    if major == 1 {
        bytes += withUnsafeBytes(of: UInt16(header.count).littleEndian, Array.init)
    } else {
        bytes += withUnsafeBytes(of: UInt32(header.count).littleEndian, Array.init)
    }
    return bytes + header + body
}

/// `.npy` bytes with a header given verbatim (no padding), for malformed headers.
func npyBytes(header: String, body: [UInt8] = []) -> [UInt8] {
    let text = Array(header.utf8)
    return [0x93] + Array("NUMPY".utf8) + [1, 0] + withUnsafeBytes(of: UInt16(text.count).littleEndian, Array.init) + text + body
}

func littleEndianBytes<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
    values.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) }
}

func littleEndianBytes(_ values: [Float]) -> [UInt8] { littleEndianBytes(values.map(\.bitPattern)) }

/// CIFAR-10 records: label byte, then 3,072 pixels where pixel p of record r is (r·7 + p) mod 256.
func cifarBytes(labels: [UInt8]) -> [UInt8] {
    labels.enumerated().flatMap { r, label in [label] + (0..<3072).map { UInt8(truncatingIfNeeded: r * 7 + $0) } }
}

/// Fails unless `body` throws a `DataError` whose message mentions `path` and each of `phrases`.
func assertDataError<T>(_ body: @autoclosure () throws -> T, mentions phrases: [String],
                        file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertThrowsError(try body(), file: file, line: line) { error in
        XCTAssertTrue(error is DataError, "\(type(of: error)): \(error)", file: file, line: line)
        let message = String(describing: error)
        XCTAssertFalse(message.contains("\n"), "not one line: \(message)", file: file, line: line)
        for phrase in phrases {
            XCTAssertTrue(message.contains(phrase), "“\(message)” does not mention “\(phrase)”", file: file, line: line)
        }
    }
}

final class DataFormatTests: XCTestCase {
    private var directory = ""

    override func setUpWithError() throws {
        directory = try temporaryDirectory(self)
    }

    @discardableResult
    private func write(_ bytes: [UInt8], _ name: String, in folder: String? = nil) -> String {
        let path = ((folder ?? directory) as NSString).appendingPathComponent(name)
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        return path
    }

    private func folder(_ name: String) throws -> String {
        let path = (directory as NSString).appendingPathComponent(name)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    private func floats(_ data: LabeledImages) -> [Float] {
        var out = [Float](repeating: .nan, count: data.count * data.featureSize)
        data.copyFeatures(of: 0..<data.count, into: &out)
        return out
    }

    // MARK: IDX

    func testIDXSampleShapes() throws {
        // Oracle: [N, H, W] → [1, H, W]; [N, C, H, W] → [C, H, W]; [N, F] → [F].
        let labels = write(idxBytes(type: 0x08, shape: [2], body: [1, 2]), "labels")
        for (fileShape, sampleShape) in [([2, 2, 3], [1, 2, 3]), ([2, 3, 1, 2], [3, 1, 2]), ([2, 6], [6])] {
            let images = write(idxBytes(type: 0x08, shape: fileShape, body: Array(0..<12)), "images-\(fileShape.count)")
            let data = try LabeledImages.load(images: images, labels: labels)
            XCTAssertEqual(data.sampleShape, sampleShape)
            XCTAssertEqual(data.featureSize, 6)
            XCTAssertEqual(data.channels, sampleShape.count == 3 ? sampleShape[0] : 1)
        }
        let rank5 = write(idxBytes(type: 0x08, shape: [2, 1, 1, 2, 3], body: Array(0..<12)), "images-rank5")
        assertDataError(try LabeledImages.load(images: rank5, labels: labels), mentions: [rank5, "[2, 1, 1, 2, 3]"])
        let empty = write(idxBytes(type: 0x08, shape: [0, 2, 2], body: []), "images-empty")
        assertDataError(try LabeledImages.load(images: empty, labels: labels), mentions: [empty, "no images"])
    }

    func testDefaultSampleShapeIsTheFeatureSize() {
        let data = LabeledImages(count: 1, featureSize: 3, labels: [0], storage: .bytes([1, 2, 3]))
        XCTAssertEqual(data.sampleShape, [3])
        XCTAssertEqual(data.channels, 1)
    }

    func testIDXIntegerAndFloat64ElementsBecomeFloatsAsStored() throws {
        // Oracle: big-endian two's complement / IEEE 754 values of the bytes below, unscaled.
        let labels = write(idxBytes(type: 0x08, shape: [1], body: [3]), "labels")
        let cases: [(UInt8, [UInt8], [Float])] = [
            (0x09, [0xFF, 0x7F, 0x80, 0x00], [-1, 127, -128, 0]),
            (0x0B, [0xFF, 0xFE, 0x01, 0x00, 0x80, 0x00, 0x00, 0x07], [-2, 256, -32768, 7]),
            (0x0C, [0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x01, 0x00, 0x00, 0x7F, 0xFF, 0xFF, 0xFF, 0, 0, 0, 5],
             [-1, 65536, Float(Int32.max), 5]),
            (0x0E, [0x3F, 0xF8, 0, 0, 0, 0, 0, 0, 0xC0, 0x00, 0, 0, 0, 0, 0, 0, 0x3F, 0xB9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9A, 0, 0, 0, 0, 0, 0, 0, 0],
             [1.5, -2, Float(0.1 as Double), 0]),
        ]
        for (type, body, expected) in cases {
            let images = write(idxBytes(type: type, shape: [1, 2, 2], body: body), "images-\(type)")
            let data = try LabeledImages.load(images: images, labels: labels)
            guard case .floats = data.storage else { return XCTFail("type \(type) should be stored as floats") }
            XCTAssertEqual(bits(floats(data)), bits(expected), "type 0x\(String(type, radix: 16))")
            XCTAssertEqual(data.sampleShape, [1, 2, 2])
        }
    }

    func testIDXLabelsOfAnyIntegerTypeWithinAByte() throws {
        let images = write(idxBytes(type: 0x08, shape: [3, 1], body: [1, 2, 3]), "images")
        let shorts = write(idxBytes(type: 0x0B, shape: [3], body: [0, 9, 0, 0, 0, 255]), "labels-int16")
        XCTAssertEqual(try LabeledImages.load(images: images, labels: shorts).labels, [9, 0, 255])
        let ints = write(idxBytes(type: 0x0C, shape: [3], body: [0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 2]), "labels-int32")
        assertDataError(try LabeledImages.load(images: images, labels: ints), mentions: [ints, "sample 1", "256"])
        let negative = write(idxBytes(type: 0x09, shape: [3], body: [0, 1, 0xFF]), "labels-int8")
        assertDataError(try LabeledImages.load(images: images, labels: negative), mentions: [negative, "sample 2", "-1"])
        let floatLabels = write(idxBytes(type: 0x0D, shape: [3], body: bigEndianBytes([0, 1, 2])), "labels-float")
        assertDataError(try LabeledImages.load(images: images, labels: floatLabels), mentions: [floatLabels, "integers"])
    }

    // MARK: CIFAR-10

    func testReadsCIFAR10Records() throws {
        // Oracle: record r is label then pixels (r·7 + p) mod 256, p = 0..<3072, CHW.
        let path = write(cifarBytes(labels: [6, 9, 0]), "data_batch_1.bin")
        let file = try CIFAR10File.read(path)
        XCTAssertEqual(file.labels, [6, 9, 0])
        XCTAssertEqual(file.pixels.count, 3 * 3072)
        XCTAssertEqual(file.pixels[0], 0)
        XCTAssertEqual(file.pixels[3071], UInt8(3071 % 256))
        XCTAssertEqual(file.pixels[3072 + 1024], UInt8((7 + 1024) % 256), "green plane of record 1")
        let data = try LabeledImages.load(cifar10: [path, path])
        XCTAssertEqual(data.count, 6)
        XCTAssertEqual(data.labels, [6, 9, 0, 6, 9, 0])
        XCTAssertEqual(data.sampleShape, [3, 32, 32])
        XCTAssertEqual(data.featureSize, 3072)
        var row = [Float](repeating: .nan, count: 3072)
        data.copyFeatures(of: [4], into: &row)
        XCTAssertEqual(row[5], Float((7 + 5) % 256) / 255)
    }

    func testRejectsDamagedCIFAR10Files() {
        let good = cifarBytes(labels: [1, 2])
        let short = write(Array(good.dropLast()), "short.bin")
        assertDataError(try CIFAR10File.read(short), mentions: [short, "6145 bytes", "3073", "cifar-10-binary.tar.gz"])
        let empty = write([], "empty.bin")
        assertDataError(try CIFAR10File.read(empty), mentions: [empty, "3073"])
        var badLabel = good
        badLabel[3073] = 200
        let label200 = write(badLabel, "label200.bin")
        assertDataError(try CIFAR10File.read(label200), mentions: [label200, "record 1", "label 200", "0...9"])
        badLabel[3073] = 10
        assertDataError(try CIFAR10File.read(write(badLabel, "label10.bin")), mentions: ["label 10"])
    }

    // MARK: NumPy

    func testReadsWhatNumPyWrote() throws {
        // Oracle: the bytes np.save wrote (see the file's header); the values it was given.
        let hex = "934e554d5059010076007b276465736372273a20273c6634272c2027666f727472616e5f6f72646572273a2046616c73652c20277368617065273a2028312c20322c2033292c207d"
            + String(repeating: "20", count: 55) + "0a000000000000c03f000000c0000050406f12833a00007f43"
        var bytes: [UInt8] = []
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            bytes.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        XCTAssertEqual(bytes.count, 152)
        let file = try NumpyFile.parse(bytes, path: "numpy.npy")
        XCTAssertEqual(file.shape, [1, 2, 3])
        XCTAssertEqual(file.dtype, NumpyFile.DType(kind: .float, size: 4))
        XCTAssertEqual(bits((0..<6).map(file.float)), bits([0, 1.5, -2, 3.25, 1e-3, 255]))
        // The helper pads exactly as NumPy does.
        XCTAssertEqual(npyBytes(descr: "<f4", shape: [1, 2, 3], body: littleEndianBytes([0, 1.5, -2, 3.25, 1e-3, 255] as [Float])), bytes)
    }

    func testReadsEveryVersionAndSupportedDtype() throws {
        for major: UInt8 in [1, 2, 3] {
            let file = try NumpyFile.parse(npyBytes(descr: "|u1", shape: [2, 2], body: [1, 2, 3, 255], major: major), path: "v\(major).npy")
            XCTAssertEqual(file.shape, [2, 2])
            XCTAssertEqual(file.data, [1, 2, 3, 255])
        }
        // Oracle: little-endian two's complement; an unsigned 8-byte value above Int64.max saturates.
        let integers: [(String, [UInt8], [Int64])] = [
            ("|i1", [0xFF, 5], [-1, 5]),
            ("<i2", [0xFE, 0xFF, 0x00, 0x01], [-2, 256]),
            ("<u2", [0xFE, 0xFF, 0x00, 0x01], [65534, 256]),
            ("<i4", littleEndianBytes([Int32(-70000), 9]), [-70000, 9]),
            ("<u4", littleEndianBytes([UInt32.max, 9]), [Int64(UInt32.max), 9]),
            ("<i8", littleEndianBytes([Int64.min, 9]), [.min, 9]),
            ("<u8", littleEndianBytes([UInt64.max, 9]), [.max, 9]),
        ]
        for (descr, body, expected) in integers {
            let file = try NumpyFile.parse(npyBytes(descr: descr, shape: [2], body: body), path: "\(descr).npy")
            XCTAssertEqual((0..<2).map(file.integer), expected, descr)
            XCTAssertEqual(file.dtype.description, descr)
        }
        let doubles = try NumpyFile.parse(npyBytes(descr: "<f8", shape: [2], body: littleEndianBytes([(1.0 as Double).bitPattern, (0.1 as Double).bitPattern])), path: "f8.npy")
        XCTAssertEqual(bits((0..<2).map(doubles.float)), bits([1, Float(0.1 as Double)]))
        // Keys in another order, double quotes, Python 2's long suffix, an empty shape tuple (a scalar).
        let odd = try NumpyFile.parse(npyBytes(header: "{\"shape\": (2L, 1L), \"fortran_order\": False, \"descr\": \"|u1\"}\n", body: [4, 5]), path: "odd.npy")
        XCTAssertEqual(odd.shape, [2, 1])
        XCTAssertEqual(try NumpyFile.parse(npyBytes(header: "{'descr': '|u1', 'fortran_order': False, 'shape': ()}", body: [7]), path: "scalar.npy").shape, [])
    }

    func testRejectsDamagedNumpyFiles() {
        let good = npyBytes(descr: "<f4", shape: [2, 2], body: littleEndianBytes([1, 2, 3, 4] as [Float]))
        func rejects(_ bytes: [UInt8], _ name: String, _ phrases: [String], line: UInt = #line) {
            assertDataError(try NumpyFile.parse(bytes, path: name), mentions: [name] + phrases, line: line)
        }
        rejects(Array(good.dropLast()), "truncated.npy", ["needs 16 bytes", "holds 15", "np.save"])
        rejects(good + [0], "long.npy", ["needs 16 bytes", "holds 17"])
        var magic = good
        magic[1] = UInt8(ascii: "n")
        rejects(magic, "magic.npy", ["magic"])
        rejects(Array(good.prefix(9)), "header-cut.npy", ["header"])
        rejects(Array(good.prefix(40)), "header-cut2.npy", ["cut short"])
        var version = good
        version[6] = 4
        rejects(version, "version.npy", ["version 4.0"])
        rejects(npyBytes(descr: "<f4", shape: [1 << 62, 4], body: []), "overflow.npy", ["[4611686018427387904, 4]", "Int"])
        rejects(npyBytes(descr: "<f4", shape: [1 << 61, 2], body: []), "bytes-overflow.npy", ["bytes"])
        rejects(npyBytes(header: "{'descr': '|u1', 'fortran_order': False, 'shape': (99999999999999999999,)}"), "huge-dim.npy", ["larger than an Int"])
        rejects(npyBytes(descr: "<f4", fortranOrder: true, shape: [2, 2], body: littleEndianBytes([1, 2, 3, 4] as [Float])), "fortran.npy",
                ["Fortran order", "np.ascontiguousarray"])
        rejects(npyBytes(descr: ">f4", shape: [2], body: [0, 0, 0, 0, 0, 0, 0, 0]), "big.npy", ["big-endian", "astype('<f4')"])
        rejects(npyBytes(descr: "<c8", shape: [1], body: Array(repeating: 0, count: 8)), "complex.npy", ["'<c8'", "not supported", "astype"])
        rejects(npyBytes(descr: "<f2", shape: [1], body: [0, 0]), "half.npy", ["'<f2'"])
        rejects(npyBytes(descr: "<f+4", shape: [1], body: [0, 0, 0, 0]), "plus.npy", ["'<f+4'"])
        rejects(npyBytes(header: "{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (1,)}"), "structured.npy", ["structured"])
        rejects(npyBytes(header: "{'descr': '|u1', 'shape': (1,)}", body: [0]), "no-order.npy", ["'fortran_order'"])
        rejects(npyBytes(header: "{'descr': '|u1', 'fortran_order': False, 'shape': (1,), 'extra': 1}", body: [0]), "extra.npy", ["'extra'"])
        rejects(npyBytes(header: "{'descr': '|u1', 'fortran_order': False, 'shape': (1,)} x", body: [0]), "trailing.npy", ["after"])
        rejects(npyBytes(header: "{'descr': '|u1', 'fortran_order': Maybe, 'shape': (1,)}", body: [0]), "maybe.npy", ["True or False"])
        rejects(npyBytes(header: "{'descr': '|u1, 'fortran_order': False, 'shape': (-1,)}", body: [0]), "quote.npy", ["header"])
        rejects(npyBytes(header: "{'descr': '|u1', 'fortran_order': False, 'shape': (-1,)}", body: [0]), "negative.npy", ["non-negative"])
        var long = [0x93] + Array("NUMPY".utf8) + [2, 0] as [UInt8]
        long += littleEndianBytes([UInt32(1 << 20)])
        rejects(long + Array(repeating: 0x20, count: 100), "long-header.npy", ["1048576", "header"])
    }

    func testNumpyImagesAndLabels() throws {
        // Oracle: |u1 images stay bytes scaled by 1/255; <f8 images round to Float32; labels of any integer dtype.
        let u1 = try NumpyFile.parse(npyBytes(descr: "|u1", shape: [2, 3, 2, 1], body: Array(0..<12)), path: "u1.npy")
        let labels = try NumpyFile.parse(npyBytes(descr: "<i8", shape: [2], body: littleEndianBytes([Int64(9), 255])), path: "labels.npy")
        let bytes = try LabeledImages(npyImages: u1, labels: labels, imagesPath: "u1.npy", labelsPath: "labels.npy")
        XCTAssertEqual(bytes.sampleShape, [3, 2, 1])
        XCTAssertEqual(bytes.labels, [9, 255])
        guard case .bytes(let stored) = bytes.storage else { return XCTFail("|u1 images should stay bytes") }
        XCTAssertEqual(stored, Array(0..<12))

        let f8 = try NumpyFile.parse(npyBytes(descr: "<f8", shape: [2, 1, 1], body: littleEndianBytes([(0.1 as Double).bitPattern, (-3.0).bitPattern])), path: "f8.npy")
        let doubles = try LabeledImages(npyImages: f8, labels: labels, imagesPath: "f8.npy", labelsPath: "labels.npy")
        XCTAssertEqual(doubles.sampleShape, [1, 1, 1])
        XCTAssertEqual(bits(floats(doubles)), bits([Float(0.1 as Double), -3]))

        let i4 = try NumpyFile.parse(npyBytes(descr: "<i4", shape: [2, 1, 1], body: littleEndianBytes([Int32(1), 2])), path: "i4.npy")
        assertDataError(try LabeledImages(npyImages: i4, labels: labels, imagesPath: "i4.npy", labelsPath: "l"), mentions: ["i4.npy", "<i4", "astype(np.uint8)"])
        let floatLabels = try NumpyFile.parse(npyBytes(descr: "<f4", shape: [2], body: littleEndianBytes([1, 2] as [Float])), path: "fl.npy")
        assertDataError(try LabeledImages(npyImages: u1, labels: floatLabels, imagesPath: "u1.npy", labelsPath: "fl.npy"), mentions: ["fl.npy", "astype(np.uint8)"])
        let three = try NumpyFile.parse(npyBytes(descr: "|u1", shape: [3], body: [1, 2, 3]), path: "three.npy")
        assertDataError(try LabeledImages(npyImages: u1, labels: three, imagesPath: "u1.npy", labelsPath: "three.npy"), mentions: ["three.npy", "expected 2 labels"])
        let big = try NumpyFile.parse(npyBytes(descr: "<u8", shape: [2], body: littleEndianBytes([UInt64(1), .max])), path: "big.npy")
        assertDataError(try LabeledImages(npyImages: u1, labels: big, imagesPath: "u1.npy", labelsPath: "big.npy"), mentions: ["big.npy", "sample 1"])
        let flat = try NumpyFile.parse(npyBytes(descr: "|u1", shape: [2], body: [1, 2]), path: "flat.npy")
        assertDataError(try LabeledImages(npyImages: flat, labels: labels, imagesPath: "flat.npy", labelsPath: "labels.npy"), mentions: ["flat.npy", "[N, H, W]"])
    }

    // MARK: Directories

    private func writeIDX(in folder: String, train: Int = 2, test: Int = 1, testSide: Int = 2) {
        write(idxBytes(type: 0x08, shape: [train, 2, 2], body: (0..<(4 * train)).map { UInt8($0) }), "train-images-idx3-ubyte", in: folder)
        write(idxBytes(type: 0x08, shape: [train], body: (0..<train).map { UInt8($0) }), "train-labels-idx1-ubyte", in: folder)
        write(idxBytes(type: 0x08, shape: [test, testSide, testSide], body: Array(repeating: 1, count: test * testSide * testSide)), "t10k-images-idx3-ubyte", in: folder)
        write(idxBytes(type: 0x08, shape: [test], body: Array(repeating: 3, count: test)), "t10k-labels-idx1-ubyte", in: folder)
    }

    private func writeNumpy(in folder: String, testShape: [Int] = [1, 1, 2, 2]) {
        write(npyBytes(descr: "<f4", shape: [3, 1, 2, 2], body: littleEndianBytes((0..<12).map { Float($0) / 4 })), "train_images.npy", in: folder)
        write(npyBytes(descr: "|u1", shape: [3], body: [0, 1, 2]), "train_labels.npy", in: folder)
        let testCount = testShape.reduce(1, *)
        write(npyBytes(descr: "<f4", shape: testShape, body: littleEndianBytes((0..<testCount).map { -Float($0) })), "test_images.npy", in: folder)
        write(npyBytes(descr: "<i2", shape: [testShape[0]], body: littleEndianBytes(Array(repeating: Int16(4), count: testShape[0]))), "test_labels.npy", in: folder)
    }

    func testDetectsEachFormatAndLoadsIt() throws {
        let idx = try folder("idx")
        writeIDX(in: idx)
        XCTAssertEqual(try DataFormat.detect(directory: idx), .idx)
        let mnist = try ImageDataset.load(directory: idx)
        XCTAssertEqual(mnist.train.sampleShape, [1, 2, 2])
        XCTAssertEqual(mnist.test.labels, [3])

        let cifar = try folder("cifar")
        write(cifarBytes(labels: [1, 2]), "data_batch_1.bin", in: cifar)
        write(cifarBytes(labels: [3]), "data_batch_3.bin", in: cifar)  // 2, 4 and 5 absent: read 1 then 3
        write(cifarBytes(labels: [9]), "test_batch.bin", in: cifar)
        XCTAssertEqual(try DataFormat.detect(directory: cifar), .cifar10)
        let cifarData = try ImageDataset.load(directory: cifar, format: nil)
        XCTAssertEqual(cifarData.train.labels, [1, 2, 3])
        XCTAssertEqual(cifarData.test.labels, [9])
        XCTAssertEqual(cifarData.train.sampleShape, [3, 32, 32])

        let numpy = try folder("numpy")
        writeNumpy(in: numpy)
        XCTAssertEqual(try DataFormat.detect(directory: numpy), .npy)
        let numpyData = try ImageDataset.load(directory: numpy)
        XCTAssertEqual(numpyData.train.labels, [0, 1, 2])
        XCTAssertEqual(numpyData.test.labels, [4])
        XCTAssertEqual(numpyData.train.sampleShape, [1, 2, 2])
        XCTAssertEqual(floats(numpyData.test), [0, -1, -2, -3])

        // An explicit format that is not there names its missing file.
        assertDataError(try ImageDataset.load(directory: numpy, format: .cifar10), mentions: [numpy, "data_batch_1.bin"])
        assertDataError(try ImageDataset.load(directory: cifar, format: .npy), mentions: [cifar, "train_images.npy"])
        assertDataError(try ImageDataset.load(directory: cifar, format: .idx), mentions: [cifar, "train-images-idx3-ubyte"])
        XCTAssertEqual(DataFormat.allCases.map(\.rawValue), ["idx", "cifar10", "npy"])
    }

    func testUnknownOrMixedDirectoriesAreNamedErrors() throws {
        let empty = try folder("empty")
        write([1, 2, 3], "readme.txt", in: empty)
        assertDataError(try ImageDataset.load(directory: empty), mentions: [empty, "train-images-idx3-ubyte", "data_batch_1.bin", "train_images.npy"])
        let mixed = try folder("mixed")
        writeIDX(in: mixed)
        write(cifarBytes(labels: [1]), "test_batch.bin", in: mixed)
        assertDataError(try DataFormat.detect(directory: mixed), mentions: [mixed, "idx, cifar10"])
        // Naming the format settles it.
        XCTAssertEqual(try ImageDataset.load(directory: mixed, format: .idx).train.count, 2)
        let cifar = try folder("cifar-no-test")
        write(cifarBytes(labels: [1]), "data_batch_2.bin", in: cifar)
        assertDataError(try ImageDataset.load(directory: cifar), mentions: [cifar, "test_batch.bin"])
    }

    func testTrainAndTestShapesMustAgreeAtLoadTime() throws {
        let idx = try folder("idx-shapes")
        writeIDX(in: idx, testSide: 3)
        assertDataError(try ImageDataset.load(directory: idx), mentions: [idx, "[1, 2, 2]", "[1, 3, 3]"])
        let numpy = try folder("npy-shapes")
        writeNumpy(in: numpy, testShape: [1, 4, 1, 1])  // the same 4 features, another shape
        assertDataError(try ImageDataset.load(directory: numpy), mentions: [numpy, "[1, 2, 2]", "[4, 1, 1]"])
    }

    func testDamagedFileInADirectoryIsNamed() throws {
        let numpy = try folder("npy-damaged")
        writeNumpy(in: numpy)
        let labels = write(npyBytes(descr: "|u1", shape: [3], body: [0, 1]), "train_labels.npy", in: numpy)
        assertDataError(try ImageDataset.load(directory: numpy), mentions: [labels, "needs 3 bytes", "holds 2"])
        let cifar = try folder("cifar-damaged")
        write(cifarBytes(labels: [1]), "data_batch_1.bin", in: cifar)
        let test = write(cifarBytes(labels: [200]), "test_batch.bin", in: cifar)
        assertDataError(try ImageDataset.load(directory: cifar), mentions: [test, "label 200"])
    }

    func testFuzzCorpusParsesOrThrowsDataError() throws {
        // The data fuzz target's committed corpus (Fuzz/DataParsers/corpus), replayed without the fuzz
        // executable: each file parses or throws DataError in every reader; the seeds are valid files.
        let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fuzz/DataParsers/corpus").path
        let names = try FileManager.default.contentsOfDirectory(atPath: corpus).sorted()
        XCTAssertGreaterThanOrEqual(names.count, 19)
        var parsed: Set<String> = []
        for name in names {
            let bytes = Array(try XCTUnwrap(FileManager.default.contents(atPath: (corpus as NSString).appendingPathComponent(name))))
            for (reader, parse) in [("idx", { _ = try IDXFile.parse($0, path: name) }), ("npy", { _ = try NumpyFile.parse($0, path: name) }),
                                    ("cifar10", { _ = try CIFAR10File.parse($0, path: name) })] as [(String, ([UInt8]) throws -> Void)] {
                do {
                    try parse(bytes)
                    parsed.insert("\(reader) \(name)")
                } catch {
                    XCTAssertTrue(error is DataError, "\(reader) \(name): \(error)")
                }
            }
        }
        XCTAssertTrue(parsed.isSuperset(of: ["idx seed-idx-double", "npy seed-npy-v3-f8", "npy seed-npy-labels-u2", "cifar10 seed-cifar10-record"]), "\(parsed.sorted())")
    }
}
