/// Tests of `Augmentation`: parsing, the crop and flip it computes, and that its random draws depend only
/// on (seed, epoch, index).
///
/// Oracles: hand-computed crops of a 3×3 image; the type's documented draw order, re-implemented here with
/// `SplitMix64` directly; identities (no padding and no flip, the centre crop, a flip applied twice);
/// and, for independence from the worker count, the same samples transformed in other orders and groupings.
import Foundation
import XCTest
@testable import SyncBNCore

final class AugmentationTests: XCTestCase {
    /// The sample transformed by `augmentation` for (seed, epoch, index).
    private func transformed(_ augmentation: Augmentation, _ sample: [Float], shape: [Int], seed: UInt64 = 7, epoch: Int = 0, index: Int) -> [Float] {
        var out = [Float](repeating: .nan, count: sample.count)
        sample.withUnsafeBufferPointer { source in
            out.withUnsafeMutableBufferPointer { augmentation.apply(to: source, into: $0, shape: shape, seed: seed, epoch: epoch, index: index) }
        }
        return out
    }

    private func transformed(_ augmentation: Augmentation, _ sample: [UInt8], shape: [Int], placement: Augmentation.Placement) -> [UInt8] {
        var out = [UInt8](repeating: 99, count: sample.count)
        sample.withUnsafeBufferPointer { source in
            out.withUnsafeMutableBufferPointer { augmentation.transform(source, $0, shape: shape, placement: placement, zero: 0) }
        }
        return out
    }

    func testParsesTheTextForm() throws {
        XCTAssertEqual(try Augmentation(parsing: "crop4,flip"), Augmentation(cropPadding: 4, flip: true))
        XCTAssertEqual(try Augmentation(parsing: " flip , crop2"), Augmentation(cropPadding: 2, flip: true))
        XCTAssertEqual(try Augmentation(parsing: "flip"), Augmentation(flip: true))
        XCTAssertEqual(try Augmentation(parsing: "crop3"), Augmentation(cropPadding: 3))
        XCTAssertEqual(try Augmentation(parsing: "none"), .none)
        XCTAssertEqual(try Augmentation(parsing: "crop0"), .none)
        for text in ["crop4,flip", "flip", "crop1", "none"] {
            XCTAssertEqual(try Augmentation(parsing: text).description, text)
        }
        let both = Augmentation(cropPadding: 4, flip: true)
        XCTAssertEqual(try JSONDecoder().decode(Augmentation.self, from: JSONEncoder().encode(both)), both)
        XCTAssertThrowsError(try JSONDecoder().decode(Augmentation.self, from: Data(#"{"cropPadding": -1, "flip": false}"#.utf8)))
    }

    func testRejectsBadText() {
        assertDataError(try Augmentation(parsing: "crop4,rotate"), mentions: ["unknown word “rotate”", "crop4,flip"])
        assertDataError(try Augmentation(parsing: "crop"), mentions: ["“crop”", "padding"])
        assertDataError(try Augmentation(parsing: "crop-1"), mentions: ["“crop-1”"])
        assertDataError(try Augmentation(parsing: "crop+1"), mentions: ["“crop+1”"])
        assertDataError(try Augmentation(parsing: "crop99999999999999999999"), mentions: ["padding of 0...65536"])
        assertDataError(try Augmentation(parsing: "flip,flip"), mentions: ["twice"])
        assertDataError(try Augmentation(parsing: "crop1,crop2"), mentions: ["twice"])
        assertDataError(try Augmentation(parsing: ""), mentions: ["unknown word “”"])
        assertDataError(try Augmentation(parsing: "crop4,,flip"), mentions: ["unknown word “”"])
    }

    func testChecksTheSampleShape() throws {
        let crop = Augmentation(cropPadding: 4, flip: true)
        XCTAssertNoThrow(try crop.check(sampleShape: [3, 32, 32]))
        XCTAssertNoThrow(try crop.check(sampleShape: [1, 5, 5]))
        assertDataError(try crop.check(sampleShape: [1, 4, 28]), mentions: ["4×28", "below 4"])
        assertDataError(try crop.check(sampleShape: [784]), mentions: ["[C, H, W]", "[784]"])
        assertDataError(try Augmentation(flip: true).check(sampleShape: [28, 28]), mentions: ["[28, 28]"])
        XCTAssertNoThrow(try Augmentation.none.check(sampleShape: [784]))
    }

    func testCropAndFlipByHand() {
        // Oracle: output (y, x) = input (y + dy − N, x′ + dx − N), x′ = W − 1 − x if flipped, zero outside.
        let image: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8, 9]  // one channel, 3×3
        let crop1 = Augmentation(cropPadding: 1, flip: true)
        XCTAssertEqual(transformed(crop1, image, shape: [1, 3, 3], placement: .init(rowOffset: 0, columnOffset: 0, flipped: false)),
                       [0, 0, 0, 0, 1, 2, 0, 4, 5])
        XCTAssertEqual(transformed(crop1, image, shape: [1, 3, 3], placement: .init(rowOffset: 2, columnOffset: 1, flipped: true)),
                       [6, 5, 4, 9, 8, 7, 0, 0, 0])
        XCTAssertEqual(transformed(crop1, image, shape: [1, 3, 3], placement: .init(rowOffset: 1, columnOffset: 2, flipped: false)),
                       [2, 3, 0, 5, 6, 0, 8, 9, 0])
        // Two channels move together (the second is the first plus 10); source column = (2 − x) + 2 − 1.
        let two = image + image.map { $0 + 10 }
        XCTAssertEqual(transformed(crop1, two, shape: [2, 3, 3], placement: .init(rowOffset: 0, columnOffset: 2, flipped: true)),
                       [0, 0, 0, 0, 3, 2, 0, 6, 5, 0, 0, 0, 0, 13, 12, 0, 16, 15])
        // A padding as wide as the whole image leaves only zeros at the extreme offsets.
        XCTAssertEqual(transformed(Augmentation(cropPadding: 3), image, shape: [1, 3, 3], placement: .init(rowOffset: 6, columnOffset: 0, flipped: false)),
                       Array(repeating: 0, count: 9))
    }

    func testIdentities() throws {
        let shape = [3, 5, 4]
        let sample = randomFloats(60, seed: 3)
        for index in 0..<20 {
            // No padding and no flip copies.
            XCTAssertEqual(transformed(.none, sample, shape: shape, index: index), sample)
            XCTAssertEqual(transformed(.none, sample, shape: [60], index: index), sample)
            // A flip applied twice with the same draw (the same seed, epoch and index) is the identity.
            let flip = Augmentation(flip: true)
            let once = transformed(flip, sample, shape: shape, index: index)
            XCTAssertEqual(transformed(flip, once, shape: shape, index: index), sample)
        }
        // The centre crop (offsets N, N) without a flip is the identity, through the cropping code.
        let crop = Augmentation(cropPadding: 2)
        let bytes = (0..<60).map { UInt8($0 + 1) }
        XCTAssertEqual(transformed(crop, bytes, shape: shape, placement: .init(rowOffset: 2, columnOffset: 2, flipped: false)), bytes)
        let centred = (0..<200).first { crop.placement(seed: 7, epoch: 0, index: $0) == .init(rowOffset: 2, columnOffset: 2, flipped: false) }
        let index = try XCTUnwrap(centred, "1 in 25 samples is centred")
        XCTAssertEqual(transformed(crop, sample, shape: shape, index: index), sample)
    }

    func testDrawOrderIsTheDocumentedOne() {
        // Oracle: the generator and draw order the type documents, written out with SplitMix64.
        func documented(_ n: Int, flip: Bool, seed: UInt64, epoch: Int, index: Int) -> Augmentation.Placement {
            var family = SplitMix64(seed: seed, stream: 2)
            var perEpoch = SplitMix64(seed: family.next(), stream: UInt64(epoch))
            var random = SplitMix64(seed: perEpoch.next(), stream: UInt64(index))
            let dy = n > 0 ? random.below(2 * n + 1) : n, dx = n > 0 ? random.below(2 * n + 1) : n
            let flipped = flip ? random.next() >> 63 == 1 : false
            return .init(rowOffset: dy, columnOffset: dx, flipped: flipped)
        }
        for (n, flip) in [(4, true), (4, false), (0, true), (1, true)] {
            let augmentation = Augmentation(cropPadding: n, flip: flip)
            for (seed, epoch, index) in [(1, 0, 0), (1, 0, 1), (2, 3, 49_999), (0, 1, 7)] as [(UInt64, Int, Int)] {
                XCTAssertEqual(augmentation.placement(seed: seed, epoch: epoch, index: index),
                               documented(n, flip: flip, seed: seed, epoch: epoch, index: index))
            }
        }
        // The crop draws come first, so adding flip keeps every sample's crop.
        for index in 0..<50 {
            let cropOnly = Augmentation(cropPadding: 4).placement(seed: 9, epoch: 2, index: index)
            let both = Augmentation(cropPadding: 4, flip: true).placement(seed: 9, epoch: 2, index: index)
            XCTAssertEqual([cropOnly.rowOffset, cropOnly.columnOffset], [both.rowOffset, both.columnOffset])
        }
    }

    func testDrawsDependOnSeedEpochAndIndexOnly() {
        let augmentation = Augmentation(cropPadding: 4, flip: true)
        let shape = [3, 8, 8]
        let samples = (0..<24).map { randomFloats(192, seed: UInt64(100 + $0)) }
        // One process transforming samples 0..<24 in order …
        let reference = samples.indices.map { transformed(augmentation, samples[$0], shape: shape, seed: 5, epoch: 3, index: $0) }
        // … and 2, 3 or 5 workers each transforming their share, in reverse order, give the same bytes.
        for workers in [2, 3, 5] {
            var results = [[Float]](repeating: [], count: samples.count)
            for rank in (0..<workers).reversed() {
                for index in stride(from: rank, to: samples.count, by: workers).reversed() {
                    results[index] = transformed(augmentation, samples[index], shape: shape, seed: 5, epoch: 3, index: index)
                }
            }
            XCTAssertEqual(results.map(bits), reference.map(bits), "\(workers) workers")
        }
        // Each of seed, epoch and index changes the draws.
        let placements = (0..<64).map { augmentation.placement(seed: 5, epoch: 3, index: $0) }
        XCTAssertNotEqual(placements, (0..<64).map { augmentation.placement(seed: 6, epoch: 3, index: $0) })
        XCTAssertNotEqual(placements, (0..<64).map { augmentation.placement(seed: 5, epoch: 4, index: $0) })
        XCTAssertNotEqual(placements, (1..<65).map { augmentation.placement(seed: 5, epoch: 3, index: $0) })
        XCTAssertGreaterThan(Set(placements.map { [$0.rowOffset, $0.columnOffset] }).count, 20)
    }

    func testDrawsAreUniform() {
        // 9 offsets each on 9,000 draws (≈ 1,000 each, σ ≈ 30) and a fair flip (≈ 4,500, σ ≈ 47): bounds at ±6σ.
        let augmentation = Augmentation(cropPadding: 4, flip: true)
        var rows = [Int](repeating: 0, count: 9), columns = rows, flips = 0
        for index in 0..<9000 {
            let p = augmentation.placement(seed: 11, epoch: 1, index: index)
            rows[p.rowOffset] += 1
            columns[p.columnOffset] += 1
            if p.flipped { flips += 1 }
        }
        for count in rows + columns { XCTAssert((820...1180).contains(count), "\(rows) \(columns)") }
        XCTAssert((4220...4780).contains(flips), "\(flips) flips in 9000")
    }

    func testBytesAndFloatsAgree() {
        // The byte and Float32 paths place pixels identically; padding is 0 in both.
        let augmentation = Augmentation(cropPadding: 3, flip: true)
        let shape = [3, 6, 7]
        let bytes = (0..<126).map { UInt8(1 + $0) }
        for index in 0..<30 {
            var outBytes = [UInt8](repeating: 99, count: 126)
            bytes.withUnsafeBufferPointer { source in
                outBytes.withUnsafeMutableBufferPointer { augmentation.apply(to: source, into: $0, shape: shape, seed: 1, epoch: 2, index: index) }
            }
            XCTAssertEqual(transformed(augmentation, bytes.map(Float.init), shape: shape, seed: 1, epoch: 2, index: index), outBytes.map(Float.init))
        }
    }
}
