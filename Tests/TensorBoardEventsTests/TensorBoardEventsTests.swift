/// Tests of the TensorBoard event-file writer, its reader, CRC-32C and the histogram buckets.
///
/// Oracles: the CRC-32C check value of "123456789" (0xE3069283, the catalogue value) and masked CRCs computed
/// by TensorBoard's own `masked_crc32c` (tensorboard.compat.tensorflow_stub.pywrap_tensorflow); TensorFlow's
/// default bucket construction (histogram.cc) recomputed independently; writer → reader round trips.
/// TensorBoard's `EventAccumulator` itself reads files written here through Tests/tensorboard/check-events.sh
/// (`SYNCBN_TB_SAMPLE_DIR=DIR swift test --filter TensorBoardEventsTests.testWriteSampleRun` writes a sample run).
import Foundation
import XCTest
@testable import TensorBoardEvents

final class TensorBoardEventsTests: XCTestCase {
    private var directory: String!

    override func setUpWithError() throws {
        directory = NSTemporaryDirectory() + "tbevents-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: directory)
    }

    // MARK: CRC

    func testCRC32CCheckValue() {
        XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
        XCTAssertEqual(CRC32C.checksum([UInt8]()), 0)
    }

    func testMaskedCRCMatchesTensorBoard() {
        XCTAssertEqual(CRC32C.maskedChecksum(Array("123456789".utf8)), 0xC78A_B0E5)
        XCTAssertEqual(CRC32C.maskedChecksum([UInt8]()), 0xA282_EAD8)
        XCTAssertEqual(CRC32C.maskedChecksum(withUnsafeBytes(of: UInt64(24).littleEndian, Array.init)), 0x224B_7FA3)
        XCTAssertEqual(CRC32C.unmask(CRC32C.mask(0xDEAD_BEEF)), 0xDEAD_BEEF)
    }

    func testSlicingMatchesBytewiseOnAllLengthsAndSplits() {
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<300).map { _ in UInt8.random(in: 0...255, using: &rng) }
        func bytewise(_ b: ArraySlice<UInt8>) -> UInt32 {
            var c: UInt32 = 0xFFFF_FFFF
            for x in b {
                c ^= UInt32(x)
                for _ in 0..<8 { c = (c & 1) != 0 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
            }
            return ~c
        }
        for n in 0...bytes.count where n < 40 || n % 17 == 0 {
            XCTAssertEqual(CRC32C.checksum(bytes[0..<n]), bytewise(bytes[0..<n]), "length \(n)")
        }
        let whole = CRC32C.checksum(bytes)
        for split in [0, 1, 7, 8, 9, 150, 300] {
            let a = bytes[0..<split].withUnsafeBytes { CRC32C.update(0, $0) }
            let ab = bytes[split...].withUnsafeBytes { CRC32C.update(a, $0) }
            XCTAssertEqual(ab, whole, "split \(split)")
        }
    }

    // MARK: Buckets

    func testDefaultBucketLimits() {
        let limits = HistogramBuckets.defaultLimits
        XCTAssertEqual(limits.count, 1551)
        XCTAssertEqual(limits.first, -Double.greatestFiniteMagnitude)
        XCTAssertEqual(limits.last, Double.greatestFiniteMagnitude)
        XCTAssertEqual(limits[775], 0)
        XCTAssertEqual(limits[776], 1e-12)
        XCTAssertEqual(limits[777], 1e-12 * 1.1)
        XCTAssertEqual(limits[774], -1e-12)
        XCTAssertLessThan(limits[1549], 1e20)
        XCTAssertGreaterThanOrEqual(limits[1549] * 1.1, 1e20)
        for i in 1..<limits.count { XCTAssertLessThan(limits[i - 1], limits[i]) }
        for i in 0..<limits.count { XCTAssertEqual(limits[i], -limits[limits.count - 1 - i]) }
    }

    func testBucketIndexEdges() {
        let limits = HistogramBuckets.defaultLimits
        let zero = 775
        // The first limit greater than the value: a value equal to a limit goes to the next bucket.
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: 0), zero + 1)
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: -0.0), zero + 1)
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: 1e-13), zero + 1)
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: 1e-12), zero + 2)
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: -1e-12), zero)
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: -1e-13), zero)
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: limits[1000]), 1001)
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: limits[1000].nextDown), 1000)
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: 1), limits.firstIndex { $0 > 1 })
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: -.infinity), 0)
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: -Double.greatestFiniteMagnitude), 1)
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: 1e30), limits.count - 1)
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: .greatestFiniteMagnitude), limits.count - 1)
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: .infinity), limits.count - 1)
        XCTAssertEqual(HistogramBuckets.bucketIndex(of: .nan), limits.count - 1)
    }

    // MARK: Histograms

    func testHistogramOfKnownValues() {
        let values: [Float] = [0, 0, 1, 1, 1, -2.5, 3, 1e-20, 100]
        let h = Histogram(values: values)
        XCTAssertEqual(h.count, Double(values.count))
        XCTAssertEqual(h.bucketCounts.reduce(0, +), h.count)
        XCTAssertEqual(h.min, -2.5)
        XCTAssertEqual(h.max, 100)
        XCTAssertEqual(h.sum, values.reduce(0.0) { $0 + Double($1) })
        XCTAssertEqual(h.sumOfSquares, values.reduce(0.0) { $0 + Double($1) * Double($1) })
        XCTAssertEqual(h.bucketLimits.count, h.bucketCounts.count)
        for i in 1..<h.bucketLimits.count { XCTAssertLessThan(h.bucketLimits[i - 1], h.bucketLimits[i]) }
        // No two empty buckets in a row; the last limit is DBL_MAX (the run of empty buckets up to it).
        for i in 1..<h.bucketCounts.count { XCTAssertFalse(h.bucketCounts[i - 1] == 0 && h.bucketCounts[i] == 0) }
        XCTAssertEqual(h.bucketLimits.last, .greatestFiniteMagnitude)
        // 0 and 1e-20 share the bucket ending at 1e-12; each nonempty bucket holds what it should.
        let limits = HistogramBuckets.defaultLimits
        func countIn(_ value: Double) -> Double? {
            let end = limits[HistogramBuckets.bucketIndex(of: value)]
            return h.bucketLimits.firstIndex(of: end).map { h.bucketCounts[$0] }
        }
        XCTAssertEqual(countIn(0), 3)
        XCTAssertEqual(countIn(1), 3)
        XCTAssertEqual(countIn(-2.5), 1)
        XCTAssertEqual(countIn(3), 1)
        XCTAssertEqual(countIn(100), 1)
        XCTAssertEqual(h.bucketCounts.filter { $0 > 0 }.count, 5)
    }

    func testCollapsingMatchesEncodeToProto() {
        let limits: [Double] = [1, 2, 3, 4, 5, 6]
        let h = Histogram(min: 0.5, max: 5.5, sum: 0, sumOfSquares: 0, denseCounts: [0, 0, 2, 0, 1, 0], limits: limits)
        XCTAssertEqual(h.bucketLimits, [2, 3, 4, 5, 6])
        XCTAssertEqual(h.bucketCounts, [0, 2, 0, 1, 0])
        XCTAssertEqual(h.count, 3)
        let empty = Histogram(values: [Float]())
        XCTAssertEqual(empty.count, 0)
        XCTAssertEqual(empty.bucketLimits, [.greatestFiniteMagnitude])
        XCTAssertEqual(empty.bucketCounts, [0])
        XCTAssertEqual(empty.min, 0)
        XCTAssertEqual(empty.max, 0)
    }

    // MARK: Writer and reader

    func testFileNameAndFirstRecord() throws {
        let now = Date(timeIntervalSince1970: 1_700_000_000.25)
        let a = try EventFileWriter(directory: directory, now: now)
        let b = try EventFileWriter(directory: directory, now: now)
        XCTAssertNotEqual(a.path, b.path)
        let name = (a.path as NSString).lastPathComponent
        XCTAssertTrue(name.hasPrefix("events.out.tfevents.1700000000."), name)
        XCTAssertTrue(name.contains(".\(ProcessInfo.processInfo.processIdentifier)."), name)
        try a.close()
        try b.close()
        let events = try EventFileReader(path: a.path).events
        XCTAssertEqual(events, [EventFileReader.Event(wallTime: 1_700_000_000.25, step: 0, fileVersion: "brain.Event:2")])
    }

    func testMissingDirectoryIsATypedError() {
        let missing = directory + "/no/such/dir"
        XCTAssertThrowsError(try EventFileWriter(directory: missing)) { error in
            guard let e = error as? EventFileError, case .cannotCreate(let path, _) = e else {
                return XCTFail("\(error)")
            }
            XCTAssertTrue(path.hasPrefix(missing + "/events.out.tfevents."))
            XCTAssertTrue(e.description.contains("mkdir -p"), e.description)
            XCTAssertFalse(e.description.contains("\n"))
        }
    }

    func testRoundTripScalarsAndHistograms() throws {
        let writer = try EventFileWriter(directory: directory)
        let h = Histogram(values: (0..<1000).map { Float($0) / 100 - 3 })
        writer.addScalar("loss", 2.302585, step: 1, wallTime: 10)
        writer.addHistogram("weights/0", h, step: 1, wallTime: 10.5)
        writer.addSummary(step: 50, wallTime: 11, scalars: [("loss", 0.5), ("train_accuracy", 0.875)],
                          histograms: [("weights/0", h), ("empty", Histogram(values: [Float]()))])
        writer.addScalar("negative_step", -1, step: -3, wallTime: 12)
        // Large enough to pass the buffer limit and force automatic flushes.
        for step in 100..<3100 { writer.addScalar("many", Double(step), step: step, wallTime: Double(step)) }
        try writer.flush()
        try writer.close()
        try writer.close()

        let reader = try EventFileReader(path: writer.path)
        XCTAssertEqual(reader.events.count, 1 + 4 + 3000)
        let scalars = reader.scalars
        XCTAssertEqual(scalars.count, 4 + 3000)
        XCTAssertEqual(scalars[0].step, 1)
        XCTAssertEqual(scalars[0].tag, "loss")
        XCTAssertEqual(scalars[0].value, Float(2.302585))
        XCTAssertEqual(scalars[1].step, 50)
        XCTAssertEqual(scalars[2].tag, "train_accuracy")
        XCTAssertEqual(scalars[2].value, 0.875)
        XCTAssertEqual(scalars[3].step, -3)
        XCTAssertEqual(scalars[3].value, -1)
        XCTAssertEqual(scalars.last?.step, 3099)
        XCTAssertEqual(scalars.last?.value, 3099)
        XCTAssertEqual(reader.events[2].wallTime, 10.5)
        let histograms = reader.histograms
        XCTAssertEqual(histograms.map(\.tag), ["weights/0", "weights/0", "empty"])
        XCTAssertEqual(histograms[0].histogram, h)
        XCTAssertEqual(histograms[1].step, 50)
        XCTAssertEqual(histograms[0].histogram.count, 1000)
        XCTAssertEqual(histograms[2].histogram.count, 0)
    }

    func testSessionStartRoundTrip() throws {
        let writer = try EventFileWriter(directory: directory)
        writer.addSessionStart(step: 201, wallTime: 5)
        writer.addScalar("loss", 1, step: 250, wallTime: 6)
        try writer.close()
        let events = try EventFileReader(path: writer.path).events
        XCTAssertEqual(events.count, 3)
        XCTAssertEqual(events[1], EventFileReader.Event(wallTime: 5, step: 201, sessionLogStatus: 1))
        XCTAssertNil(events[2].sessionLogStatus)
    }

    func testAddAfterCloseIsReportedNotTrapped() throws {
        let writer = try EventFileWriter(directory: directory)
        try writer.close()
        writer.addScalar("late", 1, step: 1, wallTime: 1)
        XCTAssertThrowsError(try writer.flush()) { XCTAssertEqual($0 as? EventFileError, .closed(path: writer.path)) }
    }

    func testCorruptedByteIsDetected() throws {
        let bytes = try sampleFile()
        let records = try EventFileReader.records(in: bytes)
        XCTAssertEqual(records.count, 3)
        // Flip one bit everywhere in the file: every position must be refused with a typed error.
        for i in bytes.indices {
            var corrupt = bytes
            corrupt[i] ^= 0x10
            XCTAssertThrowsError(try EventFileReader(bytes: corrupt), "byte \(i)") { error in
                XCTAssertTrue(error is EventFileReadError, "\(error)")
            }
        }
        var corrupt = bytes
        corrupt[records[1].data.lowerBound + 3] ^= 1
        XCTAssertThrowsError(try EventFileReader(bytes: corrupt)) {
            XCTAssertEqual($0 as? EventFileReadError, .dataChecksumMismatch(offset: records[1].offset))
        }
    }

    func testTruncatedFileIsRefused() throws {
        let bytes = try sampleFile()
        let boundaries = Set(try EventFileReader.records(in: bytes).map(\.offset) + [bytes.count])
        for n in 0..<bytes.count where !boundaries.contains(n) {
            XCTAssertThrowsError(try EventFileReader(bytes: Array(bytes[0..<n])), "length \(n)") { error in
                guard case .truncated = error as? EventFileReadError else { return XCTFail("length \(n): \(error)") }
            }
        }
        XCTAssertNoThrow(try EventFileReader(bytes: []))
    }

    func testHostileLengthsAreRefused() {
        // A record claiming 2^64 - 1 bytes, with a valid length CRC.
        var header = withUnsafeBytes(of: UInt64.max.littleEndian, Array.init)
        header += withUnsafeBytes(of: CRC32C.maskedChecksum(header).littleEndian, Array.init)
        XCTAssertThrowsError(try EventFileReader(bytes: header + [1, 2, 3, 4])) {
            XCTAssertEqual($0 as? EventFileReadError, .truncated(offset: 0, needed: .max, available: 16))
        }
        // Valid framing around a protobuf whose string length overflows, and an over-long varint.
        for payload: [UInt8] in [[0x1A, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
                                 [0x10] + [UInt8](repeating: 0xFF, count: 10) + [0x01],
                                 [0x2A, 0x02, 0x0A, 0x05], [0x0B], [0x00, 0x00]] {
            XCTAssertThrowsError(try EventFileReader(bytes: record(payload)), "\(payload)") { error in
                guard case .malformedEvent = error as? EventFileReadError else { return XCTFail("\(payload): \(error)") }
            }
        }
    }

    func testMutatedPayloadsWithValidCRCsNeverTrap() throws {
        // The CRCs stop random corruption before the protobuf decoder; re-frame mutated payloads with valid
        // CRCs so the decoder itself sees garbage: it must decode or throw EventFileReadError, never trap.
        let bytes = try sampleFile()
        let payloads = try EventFileReader.records(in: bytes).map { Array(bytes[$0.data]) }
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<3000 {
            var p = payloads[Int.random(in: 0..<payloads.count, using: &rng)]
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                switch Int.random(in: 0..<3, using: &rng) {
                case 0 where !p.isEmpty: p[Int.random(in: 0..<p.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                case 1 where !p.isEmpty: p.removeLast(Int.random(in: 1...p.count, using: &rng))
                default: p.insert(UInt8.random(in: 0...255, using: &rng), at: Int.random(in: 0...p.count, using: &rng))
                }
            }
            do { _ = try EventFileReader(bytes: record(p)) } catch { XCTAssertTrue(error is EventFileReadError, "\(error)") }
        }
    }

    /// Writes a sample run that Tests/tensorboard/check-events.sh checks with TensorBoard's reader, when
    /// SYNCBN_TB_SAMPLE_DIR names a directory (created if missing); skipped otherwise.
    func testWriteSampleRun() throws {
        guard let out = ProcessInfo.processInfo.environment["SYNCBN_TB_SAMPLE_DIR"], !out.isEmpty else {
            throw XCTSkip("set SYNCBN_TB_SAMPLE_DIR to write a sample run")
        }
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        // A run checkpointed at step 200 and interrupted after logging step 250, then resumed: the second file
        // starts with a session start at 201, so TensorBoard drops the first file's step 250; metrics.jsonl
        // (as the training run keeps it) has no trace of the lost step either.
        let t0 = Date()
        let first = try EventFileWriter(directory: out, now: t0)
        var lines: [String] = []
        let weights = (0..<4096).map { Float(sin(Double($0))) * 0.1 }
        func log(_ writer: EventFileWriter, _ step: Int, keep: Bool) {
            let loss = 2.3 / Double(step + 1).squareRoot() + (keep ? 0.1 : 0.2)
            let accuracy = Double(step) / 350
            writer.addSummary(step: step, wallTime: Date().timeIntervalSince1970,
                              scalars: [("loss", loss), ("train_accuracy", accuracy)],
                              histograms: [("weights/0", Histogram(values: weights.map { $0 * Float(step + 1) })),
                                           ("bn/0/running_var", Histogram(values: (0..<64).map { Float($0) / 64 + 0.5 }))])
            if keep { lines.append("{\"step\": \(step), \"epoch\": 1, \"loss\": \(loss), \"train_accuracy\": \(accuracy)}") }
        }
        for step in stride(from: 0, through: 200, by: 50) { log(first, step, keep: true) }
        first.addScalar("test_accuracy", 0.9123, step: 200, wallTime: Date().timeIntervalSince1970)
        lines.append("{\"step\": 200, \"test_accuracy\": 0.9123, \"epoch\": 1}")
        log(first, 250, keep: false)
        try first.close()
        let second = try EventFileWriter(directory: out, now: t0 + 1)
        second.addSessionStart(step: 201, wallTime: Date().timeIntervalSince1970)
        for step in [250, 300] { log(second, step, keep: true) }
        try second.close()
        try (lines.joined(separator: "\n") + "\n").write(toFile: out + "/metrics.jsonl", atomically: true, encoding: .utf8)
    }

    // MARK: Helpers

    private func sampleFile() throws -> [UInt8] {
        let writer = try EventFileWriter(directory: directory)
        writer.addScalar("loss", 1.5, step: 7, wallTime: 1)
        writer.addHistogram("h", Histogram(values: [1, 2, 3]), step: 7, wallTime: 1)
        try writer.close()
        return try XCTUnwrap(FileManager.default.contents(atPath: writer.path)).map { $0 }
    }

    private func record(_ data: [UInt8]) -> [UInt8] {
        let header = withUnsafeBytes(of: UInt64(data.count).littleEndian, Array.init)
        return header + withUnsafeBytes(of: CRC32C.maskedChecksum(header).littleEndian, Array.init)
            + data + withUnsafeBytes(of: CRC32C.maskedChecksum(data).littleEndian, Array.init)
    }
}
