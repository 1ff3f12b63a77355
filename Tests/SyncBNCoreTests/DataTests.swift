/// Tests of the IDX reader, `LabeledImages` and `ImageDataset` loading.
///
/// Oracle: small IDX files built byte by byte here from the format's definition (magic 00 00 type rank,
/// big-endian UInt32 dimensions, big-endian elements), written to a temporary directory, plain and
/// compressed with the system's /bin/gzip; the values they must parse to are the ones they were built from.
import Foundation
import XCTest
@testable import SyncBNCore

/// The bytes of an IDX file.
func idxBytes(type: UInt8, shape: [Int], body: [UInt8]) -> [UInt8] {
    var bytes: [UInt8] = [0, 0, type, UInt8(shape.count)]
    for d in shape { bytes += withUnsafeBytes(of: UInt32(d).bigEndian, Array.init) }
    return bytes + body
}

func bigEndianBytes(_ values: [Float]) -> [UInt8] {
    values.flatMap { withUnsafeBytes(of: $0.bitPattern.bigEndian, Array.init) }
}

final class IDXFileTests: XCTestCase {
    private var directory = ""

    override func setUpWithError() throws {
        directory = try temporaryDirectory(self)
    }

    private func write(_ bytes: [UInt8], _ name: String) -> String {
        let path = (directory as NSString).appendingPathComponent(name)
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        return path
    }

    /// Compresses `path` with /bin/gzip, keeping the original; returns the `.gz` path.
    private func gzip(_ path: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/gzip")
        process.arguments = ["-k", "-f", "-n", path]
        try process.run()
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0)
        let compressed = try XCTUnwrap(FileManager.default.contents(atPath: path + ".gz"))
        XCTAssertEqual(Array(compressed.prefix(2)), [0x1F, 0x8B], "gzip magic")
        return path + ".gz"
    }

    private func assertThrows(_ path: String, containing phrases: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try IDXFile.read(path), file: file, line: line) { error in
            let message = String(describing: error)
            XCTAssertTrue(error is DataError, "\(type(of: error))", file: file, line: line)
            for phrase in [path] + phrases {
                XCTAssertTrue(message.contains(phrase), "“\(message)” does not mention “\(phrase)”", file: file, line: line)
            }
        }
    }

    func testReadsUnsignedBytesPlainAndCompressed() throws {
        let values = (0..<12).map { UInt8($0 * 21) }
        let plain = write(idxBytes(type: 0x08, shape: [2, 3, 2], body: values), "images-idx3-ubyte")
        let expected = IDXFile(shape: [2, 3, 2], elements: .unsignedBytes(values))
        XCTAssertEqual(try IDXFile.read(plain), expected)
        XCTAssertEqual(try IDXFile.read(gzip(plain)), expected)
        XCTAssertEqual(expected.count, 12)
    }

    func testReadsBigEndianFloat32PlainAndCompressed() throws {
        let values: [Float] = [1.5, -0.25, 1e-3, 3.4e38, -0.0, 255, .leastNonzeroMagnitude, -7]
        let plain = write(idxBytes(type: 0x0D, shape: [4, 2], body: bigEndianBytes(values)), "floats-idx2")
        for path in [plain, try gzip(plain)] {
            let file = try IDXFile.read(path)
            XCTAssertEqual(file.shape, [4, 2])
            guard case .float32(let read) = file.elements else { return XCTFail("expected float32 elements") }
            XCTAssertEqual(bits(read), bits(values))
        }
    }

    func testLargeDimensionsAreBigEndian() throws {
        // 300 = 0x012C: a little-endian reader would see 0x2C010000.
        let path = write(idxBytes(type: 0x08, shape: [300], body: [UInt8](repeating: 9, count: 300)), "labels-idx1")
        XCTAssertEqual(try IDXFile.read(path).shape, [300])
    }

    func testRejectsBadMagic() {
        var bytes = idxBytes(type: 0x08, shape: [2], body: [1, 2])
        bytes[0] = 0x1F
        assertThrows(write(bytes, "bad-magic"), containing: ["magic"])
        assertThrows(write([0, 0], "too-short"), containing: ["magic"])
    }

    func testRejectsTruncatedHeaderAndData() {
        assertThrows(write(Array(idxBytes(type: 0x08, shape: [2, 2], body: []).prefix(9)), "short-header"), containing: ["header"])
        assertThrows(write(idxBytes(type: 0x08, shape: [2, 3], body: [1, 2, 3, 4, 5]), "short-bytes"), containing: ["expected 6 bytes", "found 5"])
        assertThrows(write(idxBytes(type: 0x08, shape: [2], body: [1, 2, 3]), "long-bytes"), containing: ["expected 2 bytes", "found 3"])
        let floats = bigEndianBytes([1, 2, 3])
        assertThrows(write(idxBytes(type: 0x0D, shape: [3], body: Array(floats.dropLast())), "short-floats"), containing: ["expected 12 bytes", "found 11"])
    }

    func testRejectsUnsupportedElementType() {
        // The format defines 0x08, 0x09, 0x0B, 0x0C, 0x0D and 0x0E; 0x0A and 0x0F are none of them.
        assertThrows(write(idxBytes(type: 0x0A, shape: [2], body: [0, 1, 0, 2]), "type-0a"), containing: ["0xa", "not supported"])
        assertThrows(write(idxBytes(type: 0x0F, shape: [2], body: [0, 1]), "type-0f"), containing: ["0xf", "not supported"])
    }

    func testMissingFileNamesTheFile() {
        let path = (directory as NSString).appendingPathComponent("no-such-idx-file")
        assertThrows(path, containing: ["no such file"])
    }

    func testHugeDimensionsAreAnErrorNotACrash() throws {
        // Oracle: the reader's contract ("Throws: DataError naming the file and what is wrong with it"). Two
        // dimensions of 2³² − 1 overflow Int when multiplied, which must be an error, not a trap.
        var bytes: [UInt8] = [0, 0, 0x08, 3]
        bytes += [UInt8](repeating: 0xFF, count: 12)
        assertThrows(write(bytes, "huge-dims"), containing: [])
    }

    /// A gzip-compressed IDX file of 2000 bytes, and its compressed bytes.
    private func compressedLabels(_ name: String) throws -> [UInt8] {
        let values = randomFloats(2000, seed: 1).map { UInt8(truncatingIfNeeded: Int(($0 + 1) * 127)) }
        let plain = write(idxBytes(type: 0x08, shape: [2000], body: values), name)
        return Array(try XCTUnwrap(FileManager.default.contents(atPath: try gzip(plain))))
    }

    func testGzipCutInTheMiddleIsRejected() throws {
        // Oracle: half a deflate stream cannot hold the whole file.
        let compressed = try compressedLabels("half")
        assertThrows(write(Array(compressed.prefix(compressed.count / 2)), "half-cut.gz"), containing: [])
    }

    func testGzipWithABadChecksumIsRejected() throws {
        // Oracle: RFC 1952 — the trailer's CRC-32 must match the data.
        var compressed = try compressedLabels("crc")
        compressed[compressed.count - 8] ^= 0xFF
        assertThrows(write(compressed, "bad-crc.gz"), containing: ["decompress"])
    }

    func testGzipTruncatedInItsTrailerIsRejected() throws {
        // Oracle: RFC 1952 and zlib.h — a stream without its 8-byte trailer (CRC-32, ISIZE) is incomplete
        // (`gzip -t` says "unexpected end of file"); zlib's gzread does not return -1 for it but reports
        // Z_BUF_ERROR through gzerror / gzclose, which the reader must check. The data itself is intact
        // here, so only that check can catch it (e.g. a download cut short by a few bytes).
        let compressed = try compressedLabels("trailer")
        assertThrows(write(Array(compressed.dropLast(8)), "no-trailer.gz"), containing: [])
        assertThrows(write(Array(compressed.dropLast(4)), "half-trailer.gz"), containing: [])
    }
}

final class LabeledImagesTests: XCTestCase {
    private var directory = ""

    override func setUpWithError() throws {
        directory = try temporaryDirectory(self)
    }

    private func write(_ bytes: [UInt8], _ name: String, in folder: String? = nil) -> String {
        let path = ((folder ?? directory) as NSString).appendingPathComponent(name)
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        return path
    }

    func testLoadsImagesAndLabelsAndScalesPixels() throws {
        // Oracle: pixel / 255 in Float32 for byte images; float images kept as they are.
        let pixels: [UInt8] = [0, 255, 128, 1, 2, 3, 4, 5, 250, 251, 252, 253]
        let images = write(idxBytes(type: 0x08, shape: [3, 2, 2], body: pixels), "images")
        let labels = write(idxBytes(type: 0x08, shape: [3], body: [7, 0, 9]), "labels")
        let data = try LabeledImages.load(images: images, labels: labels)
        XCTAssertEqual(data.count, 3)
        XCTAssertEqual(data.featureSize, 4)
        XCTAssertEqual(data.labels, [7, 0, 9])
        var out = [Float](repeating: .nan, count: 8)
        data.copyFeatures(of: [2, 0], into: &out)
        XCTAssertEqual(out, [250, 251, 252, 253, 0, 255, 128, 1].map { Float($0) / 255 })
        data.copyFeatures(of: 1..<2, into: &out)
        XCTAssertEqual(Array(out.prefix(4)), [2, 3, 4, 5].map { Float($0) / 255 })
        XCTAssertEqual(LabeledImages.scale(pixel: 255), 1)

        let floats: [Float] = [0.5, -1, 2, 0.25, 3, 4]
        let floatImages = write(idxBytes(type: 0x0D, shape: [2, 3], body: bigEndianBytes(floats)), "float-images")
        let twoLabels = write(idxBytes(type: 0x08, shape: [2], body: [1, 2]), "two-labels")
        let floatData = try LabeledImages.load(images: floatImages, labels: twoLabels)
        var row = [Float](repeating: .nan, count: 3)
        floatData.copyFeatures(of: [1], into: &row)
        XCTAssertEqual(row, [0.25, 3, 4])
    }

    func testRejectsLabelsThatDoNotMatchImages() {
        let images = write(idxBytes(type: 0x08, shape: [3, 2], body: [1, 2, 3, 4, 5, 6]), "images")
        let labels = write(idxBytes(type: 0x08, shape: [2], body: [1, 2]), "labels")
        XCTAssertThrowsError(try LabeledImages.load(images: images, labels: labels)) { error in
            XCTAssertTrue(String(describing: error).contains(labels), "\(error)")
        }
        let rankOne = write(idxBytes(type: 0x08, shape: [2], body: [1, 2]), "rank-one-images")
        XCTAssertThrowsError(try LabeledImages.load(images: rankOne, labels: labels)) { error in
            XCTAssertTrue(String(describing: error).contains(rankOne), "\(error)")
        }
    }

    func testMissingDatasetDirectoryExplainsHowToInstall() {
        let missing = (directory as NSString).appendingPathComponent("no-fashion-mnist-here")
        XCTAssertThrowsError(try ImageDataset.load(directory: missing)) { error in
            let message = String(describing: error)
            XCTAssertTrue(message.contains("apt-get install dataset-fashion-mnist"), message)
            XCTAssertTrue(message.contains(missing), message)
        }
        // A file where a directory is expected is just as missing.
        let file = write([0], "not-a-directory")
        XCTAssertThrowsError(try ImageDataset.load(directory: file)) { error in
            XCTAssertTrue(String(describing: error).contains("apt-get install dataset-fashion-mnist"))
        }
    }

    func testLoadsADatasetDirectoryAndNamesAMissingFile() throws {
        let folder = (directory as NSString).appendingPathComponent("mnist")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        _ = write(idxBytes(type: 0x08, shape: [2, 2, 2], body: [1, 2, 3, 4, 5, 6, 7, 8]), "train-images-idx3-ubyte", in: folder)
        _ = write(idxBytes(type: 0x08, shape: [2], body: [3, 4]), "train-labels-idx1-ubyte", in: folder)
        _ = write(idxBytes(type: 0x08, shape: [1, 2, 2], body: [9, 9, 9, 9]), "t10k-images-idx3-ubyte", in: folder)
        XCTAssertThrowsError(try ImageDataset.load(directory: folder)) { error in
            XCTAssertTrue(String(describing: error).contains("t10k-labels-idx1-ubyte"), "\(error)")
        }
        // The missing file, compressed, is found under its .gz name.
        let labels = write(idxBytes(type: 0x08, shape: [1], body: [5]), "t10k-labels-idx1-ubyte", in: folder)
        let process = try Process.run(URL(fileURLWithPath: "/bin/gzip"), arguments: ["-f", "-n", labels])
        process.waitUntilExit()
        XCTAssertFalse(FileManager.default.fileExists(atPath: labels))
        let dataset = try ImageDataset.load(directory: folder)
        XCTAssertEqual(dataset.train.count, 2)
        XCTAssertEqual(dataset.train.labels, [3, 4])
        XCTAssertEqual(dataset.test.count, 1)
        XCTAssertEqual(dataset.test.labels, [5])
        XCTAssertEqual(dataset.test.featureSize, 4)
    }
}
