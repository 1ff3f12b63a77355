/// Shared helpers for the SyncBNCore tests: seeded test data, matrix construction and tolerance checks.
/// Nothing here is an oracle; each test file names its own.
import Foundation
import XCTest
@testable import SyncBNCore

/// Seeded uniform Float32 values on [low, high).
func randomFloats(_ count: Int, seed: UInt64, low: Float = -1, high: Float = 1) -> [Float] {
    var random = SplitMix64(seed: seed, stream: 77)
    return (0..<count).map { _ in random.uniform(low, high) }
}

/// Seeded approximately normal values (Box–Muller in Float64), rounded to Float32.
func randomNormals(_ count: Int, seed: UInt64, mean: Double = 0, std: Double = 1) -> [Float] {
    var random = SplitMix64(seed: seed, stream: 78)
    return (0..<count).map { _ in
        let u1 = (Double(random.next() >> 11) + 0.5) * 0x1p-53
        let u2 = Double(random.next() >> 11) * 0x1p-53
        let z = (-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2)
        return Float(mean + std * z)
    }
}

/// A matrix holding exactly `values` (row-major, `rows` rows).
func makeMatrix(_ values: [Float], rows: Int, columns: Int) -> Matrix {
    let m = Matrix(capacity: rows, columns: columns)
    m.assign(values, rows: rows)
    return m
}

/// Fails unless |actual − expected| ≤ absolute + relative·|expected|.
func assertClose(
    _ actual: Double, _ expected: Double, absolute: Double = 0, relative: Double = 0,
    _ message: @autoclosure () -> String = "", file: StaticString = #filePath, line: UInt = #line
) {
    let tolerance = absolute + relative * Swift.abs(expected)
    if !(Swift.abs(actual - expected) <= tolerance) {
        XCTFail("\(actual) is not within \(tolerance) of \(expected) (|Δ| = \(Swift.abs(actual - expected))) \(message())",
                file: file, line: line)
    }
}

func assertClose(
    _ actual: Float, _ expected: Double, absolute: Double = 0, relative: Double = 0,
    _ message: @autoclosure () -> String = "", file: StaticString = #filePath, line: UInt = #line
) {
    assertClose(Double(actual), expected, absolute: absolute, relative: relative, message(), file: file, line: line)
}

/// Bit patterns, for exact (bitwise) comparisons of Float32 arrays.
func bits(_ values: [Float]) -> [UInt32] { values.map(\.bitPattern) }
func bits(_ values: [Double]) -> [UInt64] { values.map(\.bitPattern) }

/// A fresh temporary directory, removed at the end of the test.
func temporaryDirectory(_ testCase: XCTestCase) throws -> String {
    let path = (NSTemporaryDirectory() as NSString).appendingPathComponent("syncbn-coretests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    testCase.addTeardownBlock { try? FileManager.default.removeItem(atPath: path) }
    return path
}

/// Runs `body` on a buffer of `count` zeros and returns the buffer's final contents.
func withDoubles(_ count: Int, _ body: (UnsafeMutableBufferPointer<Double>) throws -> Void) rethrows -> [Double] {
    var out = [Double](repeating: 0, count: count)
    try out.withUnsafeMutableBufferPointer { try body($0) }
    return out
}

/// `LocalCollective`'s values per row for networks whose BatchNorm layers are all BatchNorm1d (one value per
/// row and feature).
let flatScales = Array(repeating: 1, count: 64)

/// Everything a replica's training changes, as bit patterns: parameters, momentum and BatchNorm buffers.
struct ReplicaState: Equatable {
    var values: [UInt32], velocity: [UInt32], runningMeans: [[UInt32]], runningVariances: [[UInt32]], tracked: [Int64]
    init(_ network: Network) {
        let store = network.store
        values = bits(Array(UnsafeBufferPointer(start: store.values, count: store.count)))
        velocity = bits(Array(UnsafeBufferPointer(start: store.velocity, count: store.count)))
        runningMeans = network.norms.map { bits($0.runningMean) }
        runningVariances = network.norms.map { bits($0.runningVariance) }
        tracked = network.norms.map(\.batchesTracked)
    }
}
