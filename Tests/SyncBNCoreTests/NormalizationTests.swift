/// Tests of `Normalization`: parsing `--normalize MEAN,…,STD,…`, its checks, and its formula.
///
/// Oracle: the documented formula, Float((Double(v) − Double(mean[c])) / Double(std[c])), evaluated here
/// independently on each element, and a few hand-computed values.
import Foundation
import XCTest
@testable import SyncBNCore

final class NormalizationTests: XCTestCase {
    func testParsesMeansThenStds() throws {
        let one = try Normalization(parsing: "0.5,0.25")
        XCTAssertEqual(one.mean, [0.5])
        XCTAssertEqual(one.std, [0.25])
        let three = try Normalization(parsing: "0.49, 0.48,0.45,0.25,0.24 ,0.26", sampleShape: [3, 2, 2])
        XCTAssertEqual(three.mean, [0.49, 0.48, 0.45])
        XCTAssertEqual(three.std, [0.25, 0.24, 0.26])
        XCTAssertEqual(three.channels, 3)
        XCTAssertEqual(try Normalization(parsing: three.description), three, "the text form reads back")
        XCTAssertEqual(try JSONDecoder().decode(Normalization.self, from: JSONEncoder().encode(three)), three)
    }

    func testRejectsBadText() {
        assertDataError(try Normalization(parsing: "0.5"), mentions: ["0.5", "1 numbers", "e.g. 0.5,0.25"])
        assertDataError(try Normalization(parsing: "0.5,abc"), mentions: ["“abc” is not a number"])
        assertDataError(try Normalization(parsing: "0.5,,0.2,0.3"), mentions: ["“” is not a number"])
        assertDataError(try Normalization(parsing: ""), mentions: ["not a number"])
        assertDataError(try Normalization(parsing: "0.5,0"), mentions: ["greater than 0"])
        assertDataError(try Normalization(parsing: "0.5,-1"), mentions: ["greater than 0"])
        assertDataError(try Normalization(parsing: "0.5,1e-50"), mentions: ["greater than 0"])  // rounds to 0 in Float32
        assertDataError(try Normalization(parsing: "nan,1"), mentions: ["finite"])
        assertDataError(try Normalization(parsing: "0,1e39"), mentions: ["finite"])  // overflows Float32
        assertDataError(try Normalization(parsing: "0.5,0.5,0.25,0.25", sampleShape: [1, 28, 28]), mentions: ["2 channels", "[1, 28, 28]", "have 1"])
        assertDataError(try Normalization(parsing: "0.5,0.25", sampleShape: [3, 32, 32]), mentions: ["1 channel,", "have 3"])
        XCTAssertNoThrow(try Normalization(parsing: "0.5,0.25", sampleShape: [784]), "vectors are one channel")
        let invalid = Data(#"{"mean": [0.5], "std": [0]}"#.utf8)
        XCTAssertThrowsError(try JSONDecoder().decode(Normalization.self, from: invalid)) { error in
            XCTAssertTrue(error is DecodingError, "\(error)")
        }
    }

    func testFormulaPerChannel() throws {
        // Hand-computed: channel 0 (mean 0.5, std 0.25): 1 → 2, 0 → −2; channel 1 (mean −1, std 2): 3 → 2, −1 → 0.
        let normalization = try Normalization(mean: [0.5, -1], std: [0.25, 2])
        var row: [Float] = [1, 0, 3, -1]
        normalization.apply(to: &row, shape: [2, 1, 2])
        XCTAssertEqual(row, [2, -2, 2, 0])

        // The exact formula on arbitrary values, three channels of 10×20.
        let cifar = try Normalization(parsing: "0.4914,0.4822,0.4465,0.247,0.243,0.261")
        let values = randomFloats(600, seed: 5, low: -300, high: 300)
        var out = values
        cifar.apply(to: &out, shape: [3, 10, 20])
        let expected = values.enumerated().map { i, v in
            Float((Double(v) - Double(cifar.mean[i / 200])) / Double(cifar.std[i / 200]))
        }
        XCTAssertEqual(bits(out), bits(expected))
        // And not the Float32 formula, which rounds twice: for these values it differs in the last bit at some
        // elements (about a third of them, NumPy finds for such values).
        let float32 = values.enumerated().map { i, v in (v - cifar.mean[i / 200]) / cifar.std[i / 200] }
        XCTAssertNotEqual(bits(out), bits(float32))
        for (a, b) in zip(out, float32) { assertClose(a, Double(b), relative: 1e-6) }
    }
}
