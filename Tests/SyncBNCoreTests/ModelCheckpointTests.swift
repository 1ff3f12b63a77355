/// Saved models of the conv presets carry their architecture: `saveModel(to:)` then
/// `Network.spec(ofCheckpoint:)` gives back the spec, and a network built from it loads the same bits.
///
/// Oracles: the saving network's own spec and state dict (every parameter and BatchNorm buffer set to
/// values a fresh network does not have, so that a load that skipped anything would show).
import Foundation
import XCTest
@testable import SyncBNCore

final class ModelCheckpointTests: XCTestCase {
    private let plan = ChunkPlan(batchSize: 2, chunkSize: 1)

    /// A network of `spec` whose parameters, running statistics and counters all differ from a fresh one's.
    private func scrambled(_ spec: ModelSpec) -> Network {
        let network = Network(spec: spec, plan: plan, optimizer: SGD(learningRate: 0.1, momentum: 0.9), seed: 5)
        let values = randomFloats(network.store.count, seed: 6)
        for i in 0..<network.store.count { network.store.values[i] = values[i] }
        for (n, norm) in network.norms.enumerated() {
            norm.runningMean = randomFloats(norm.features, seed: UInt64(100 + n))
            norm.runningVariance = randomFloats(norm.features, seed: UInt64(200 + n), low: 0.5, high: 2)
            norm.batchesTracked = Int64(7 + n)
        }
        return network
    }

    private func roundTrip(_ spec: ModelSpec, file: StaticString = #filePath, line: UInt = #line) throws {
        let directory = try temporaryDirectory(self)
        let path = (directory as NSString).appendingPathComponent("\(spec.name).safetensors")
        let source = scrambled(spec)
        try source.saveModel(to: path)
        let saved = try Network.spec(ofCheckpoint: path)
        XCTAssertEqual(saved, spec, "\(spec.name): architecture from the metadata", file: file, line: line)
        let target = Network(spec: saved, plan: plan, optimizer: SGD(learningRate: 0.1, momentum: 0.9), seed: 99)
        let expected = Safetensors.encode(source.stateDict())
        XCTAssertNotEqual(Safetensors.encode(target.stateDict()), expected, "\(spec.name): a fresh network differs", file: file, line: line)
        try target.loadModel(from: path)
        XCTAssertEqual(Safetensors.encode(target.stateDict()), expected, "\(spec.name): loaded bits", file: file, line: line)
        XCTAssertEqual(bits(Array(UnsafeBufferPointer(start: target.store.values, count: target.store.count))),
                       bits(Array(UnsafeBufferPointer(start: source.store.values, count: source.store.count))), file: file, line: line)
        XCTAssertEqual(target.norms.map(\.batchesTracked), source.norms.map(\.batchesTracked), file: file, line: line)
        // Both compute the same evaluation function.
        let x = randomFloats(2 * spec.input.count, seed: 8)
        let input = makeMatrix(x, rows: 2, columns: spec.input.count)
        XCTAssertEqual(bits(target.infer(input).toArray()), bits(source.infer(input).toArray()), file: file, line: line)
    }

    func testBnCNNCheckpointCarriesItsArchitecture() throws {
        try roundTrip(try XCTUnwrap(ModelSpec.preset("bn-cnn", input: TensorShape([1, 28, 28]), classes: 10)))
        try roundTrip(try XCTUnwrap(ModelSpec.preset("bn-cnn", input: TensorShape([3, 32, 32]), classes: 10, batchNorm: .local)))
    }

    func testResNet20CheckpointCarriesItsArchitecture() throws {
        try roundTrip(try XCTUnwrap(ModelSpec.preset("resnet20", input: TensorShape([3, 32, 32]), classes: 10)))
    }

    func testCheckpointOfAnotherArchitectureIsRefused() throws {
        // Oracle: the load contract — a file whose tensors do not match the network changes nothing.
        let directory = try temporaryDirectory(self)
        let path = (directory as NSString).appendingPathComponent("cnn.safetensors")
        try scrambled(try XCTUnwrap(ModelSpec.preset("bn-cnn", input: TensorShape([3, 32, 32]), classes: 10))).saveModel(to: path)
        let resnet = Network(spec: try XCTUnwrap(ModelSpec.preset("resnet20", input: TensorShape([3, 32, 32]), classes: 10)), plan: plan,
                             optimizer: SGD(learningRate: 0.1, momentum: 0.9), seed: 1)
        let before = Safetensors.encode(resnet.stateDict())
        XCTAssertThrowsError(try resnet.loadModel(from: path)) { error in
            XCTAssertTrue(String(describing: error).contains(path))
        }
        XCTAssertEqual(Safetensors.encode(resnet.stateDict()), before)
    }
}
