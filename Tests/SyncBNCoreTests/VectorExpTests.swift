import Foundation
import XCTest
@testable import SyncBNCore

final class VectorExpTests: XCTestCase {
    /// Oracle: Foundation's exp in Float64. Every 1/64th of the range where e^t is a normal float, and the
    /// points where the reduction switches n, within 2 ulp of the exact value.
    func testExpIsWithinTwoUlpOverTheNormalRange() {
        var worst = 0.0, at: Float = 0
        var t: Float = -87
        var points: [Float] = []
        while t <= 88 { points.append(t); t += 1.0 / 64 }
        for n in -125...126 { let edge = (Float(n) + 0.5) * 0.693_147_18; points += [edge.nextDown, edge, edge.nextUp] }
        points += [0, -0, Float.ulpOfOne, -Float.ulpOfOne, 1e-30, -1e-30]
        for start in stride(from: 0, to: points.count, by: 16) {
            var lanes = VectorExp.Lanes(repeating: 0)
            let end = min(start + 16, points.count)
            for i in start..<end { lanes[i - start] = points[i] }
            let result = VectorExp.exp(lanes)
            for i in start..<end {
                let exact = Foundation.exp(Double(points[i]))
                let ulp = Double(Float(exact).ulp)
                let error = abs(Double(result[i - start]) - exact) / ulp
                if error > worst { (worst, at) = (error, points[i]) }
            }
        }
        XCTAssertLessThanOrEqual(worst, 2, "worst error \(worst) ulp at t = \(at)")
    }

    func testExpEdgesInfinityZeroAndNaN() {
        var lanes = VectorExp.Lanes(repeating: 1)
        lanes[0] = 88.5; lanes[1] = .infinity; lanes[2] = -87.5; lanes[3] = -.infinity; lanes[4] = .nan; lanes[5] = 88
        lanes[6] = -87; lanes[7] = 1000; lanes[8] = -1000
        // Far outside the range (no clamp: the final selects alone must give ∞ and 0) and just past its ends.
        lanes[10] = 1e30; lanes[11] = -1e30; lanes[12] = Float(88).nextUp; lanes[13] = Float(-87).nextDown
        let result = VectorExp.exp(lanes)
        XCTAssertEqual(result[0], .infinity)
        XCTAssertEqual(result[1], .infinity)
        XCTAssertEqual(result[2], 0)
        XCTAssertEqual(result[3], 0)
        XCTAssertTrue(result[4].isNaN)
        XCTAssertTrue(result[5].isFinite && result[5] > 1e38, "e^88 = \(result[5])")
        XCTAssertTrue(result[6].isNormal && result[6] < 1e-37, "e^−87 = \(result[6])")
        XCTAssertEqual(result[7], .infinity)
        XCTAssertEqual(result[8], 0)
        XCTAssertEqual(result[9], Float(M_E), accuracy: Float(M_E).ulp * 2)
        XCTAssertEqual([result[10], result[11], result[12], result[13]], [.infinity, 0, .infinity, 0])
    }

    /// The sigmoid of a value is the same bits wherever it sits in a run (in a full group of sixteen or in the
    /// padded tail), and a NaN input gives NaN, ±∞ give 0 and 1.
    func testSigmoidBitsDoNotDependOnPositionAndEdgesAreExact() {
        let x = randomFloats(37, seed: 5, low: -20, high: 20)
        var whole = [Float](repeating: 0, count: 37)
        VectorExp.sigmoid(x, &whole, count: 37)
        for offset in [1, 5, 21, 36] {
            var part = [Float](repeating: 0, count: 37 - offset)
            x.withUnsafeBufferPointer { VectorExp.sigmoid($0.baseAddress! + offset, &part, count: 37 - offset) }
            XCTAssertEqual(part.map(\.bitPattern), whole[offset...].map(\.bitPattern), "run starting at \(offset)")
        }
        var edges: [Float] = [.nan, .infinity, -.infinity, 0], out = [Float](repeating: 7, count: 4)
        VectorExp.sigmoid(&edges, &out, count: 4)
        XCTAssertTrue(out[0].isNaN)
        XCTAssertEqual(out[1], 1)
        XCTAssertEqual(out[2], 0)
        XCTAssertEqual(out[3], 0.5)
    }

    /// e^x over a run (what the loss's softmax calls) gives each value the bits of the sixteen-lane exp, wherever
    /// it sits in the run, also when the run is written in place.
    func testExpOverARunMatchesTheLanesAtEveryPositionAndInPlace() {
        let x = randomFloats(37, seed: 8, low: -30, high: 10)
        var lanes = [Float]()
        for start in stride(from: 0, to: 37, by: 16) {
            var v = VectorExp.Lanes(repeating: 0)
            for i in start..<min(start + 16, 37) { v[i - start] = x[i] }
            let e = VectorExp.exp(v)
            for i in start..<min(start + 16, 37) { lanes.append(e[i - start]) }
        }
        for offset in [0, 3, 21, 36] {
            var out = [Float](repeating: 0, count: 37 - offset)
            x.withUnsafeBufferPointer { VectorExp.exp($0.baseAddress! + offset, &out, count: 37 - offset) }
            XCTAssertEqual(out.map(\.bitPattern), lanes[offset...].map(\.bitPattern), "run starting at \(offset)")
        }
        var inPlace = x
        inPlace.withUnsafeMutableBufferPointer { VectorExp.exp($0.baseAddress!, $0.baseAddress!, count: 37) }
        XCTAssertEqual(inPlace.map(\.bitPattern), lanes.map(\.bitPattern))
    }
}
