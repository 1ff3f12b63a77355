/// Tests of the safetensors codec and of `Network`'s state dict.
///
/// Oracles: the safetensors format definition (8-byte little-endian header length, JSON header with dtype,
/// shape and data_offsets, little-endian data), parsed here independently with JSONSerialization; and the
/// state_dict of the equivalent `torch.nn.Sequential` — for bn-mlp with BatchNorm: Linear(784,100) at 0,
/// BatchNorm1d(100) at 1, Sigmoid at 2, … Linear(100,10) at 9; without BatchNorm: Linear layers at 0, 2, 4, 6.
import Foundation
import XCTest
@testable import SyncBNCore

final class SafetensorsTests: XCTestCase {
    private func sampleTensors() -> [(name: String, tensor: Safetensors.Tensor)] {
        let matrix: [Float] = [1, -2.5, 3e-8, .greatestFiniteMagnitude, -0.0, 0.1]
        return [
            ("layer.weight", matrix.withUnsafeBufferPointer { Safetensors.Tensor($0, shape: [2, 3]) }),
            ("count", Safetensors.Tensor(int64: -1_234_567_890_123)),
            ("a", [Float(7)].withUnsafeBufferPointer { Safetensors.Tensor($0, shape: [1]) }),
        ]
    }

    func testRoundTrip() throws {
        let tensors = sampleTensors()
        let decoded = try Safetensors.decode(Safetensors.encode(tensors), source: "memory")
        XCTAssertEqual(decoded.count, tensors.count)
        for (name, tensor) in tensors { XCTAssertEqual(decoded[name], tensor, name) }
        XCTAssertEqual(bits(decoded["layer.weight"]!.floats), bits([1, -2.5, 3e-8, .greatestFiniteMagnitude, -0.0, 0.1] as [Float]))
        XCTAssertEqual(decoded["count"]!.int64, -1_234_567_890_123)
        XCTAssertEqual(decoded["count"]!.shape, [])
    }

    func testLayoutFollowsTheFormat() throws {
        // Oracle: the format definition, read here byte by byte.
        let tensors = sampleTensors()
        let bytes = Safetensors.encode(tensors)
        let headerLength = Int(bytes[0..<8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
        XCTAssertEqual(headerLength % 8, 0, "header length must be a multiple of 8")
        let dataSize = tensors.reduce(0) { $0 + $1.tensor.bytes.count }
        XCTAssertEqual(bytes.count, 8 + headerLength + dataSize)
        let header = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + headerLength)])) as? [String: Any])
        XCTAssertEqual((header["__metadata__"] as? [String: String])?["format"], "pt")
        var offset = 0
        for (name, tensor) in tensors {
            let entry = try XCTUnwrap(header[name] as? [String: Any], name)
            XCTAssertEqual(entry["dtype"] as? String, tensor.dtype.rawValue)
            XCTAssertEqual(entry["shape"] as? [Int], tensor.shape)
            XCTAssertEqual(entry["data_offsets"] as? [Int], [offset, offset + tensor.bytes.count], "tensors in the given order")
            XCTAssertEqual(Array(bytes[(8 + headerLength + offset)..<(8 + headerLength + offset + tensor.bytes.count)]), tensor.bytes)
            offset += tensor.bytes.count
        }
        // Little-endian data: 1.0f is 00 00 80 3F.
        XCTAssertEqual(Array(bytes[(8 + headerLength)..<(8 + headerLength + 4)]), [0x00, 0x00, 0x80, 0x3F])
        // Deterministic: the same tensors give the same bytes.
        XCTAssertEqual(Safetensors.encode(tensors), bytes)
    }

    func testDecodeRejectsMalformedFiles() {
        let good = Safetensors.encode(sampleTensors())
        func assertRejected(_ bytes: [UInt8], _ phrase: String, line: UInt = #line) {
            XCTAssertThrowsError(try Safetensors.decode(bytes, source: "ckpt.safetensors"), line: line) { error in
                let message = String(describing: error)
                XCTAssertTrue(error is CheckpointError, line: line)
                XCTAssertTrue(message.contains("ckpt.safetensors") && message.contains(phrase), "“\(message)” lacks “\(phrase)”", line: line)
            }
        }
        assertRejected([1, 0, 0], "shorter")
        assertRejected(Array(good.prefix(20)), "header length")
        var hugeLength = good
        hugeLength[7] = 0x80  // a negative / enormous length
        assertRejected(hugeLength, "header length")
        assertRejected(Array(good.dropLast(4)), "byte range of a")
        var notJSON = good
        notJSON[8] = UInt8(ascii: "[")
        assertRejected(notJSON, "JSON")
    }
}

final class StateDictTests: XCTestCase {
    private let plan = ChunkPlan(batchSize: 4, chunkSize: 2)

    private func bnMLP(_ mode: BatchNormMode, seed: UInt64 = 1) -> Network {
        Network(spec: ModelSpec.named("bn-mlp", batchNorm: mode)!, plan: plan, optimizer: SGD(learningRate: 0.1, momentum: 0.9), seed: seed)
    }

    func testBatchNormModelHasPyTorchNamesAndShapesInOrder() {
        // Oracle: torch.nn.Sequential(Linear, BatchNorm1d, Sigmoid, ×3, Linear).state_dict().
        var expected: [(String, Safetensors.DType, [Int])] = []
        for (i, inputs) in [(0, 784), (3, 100), (6, 100)] {
            expected += [("\(i).weight", .float32, [100, inputs]), ("\(i).bias", .float32, [100])]
            let b = i + 1
            expected += [("\(b).weight", .float32, [100]), ("\(b).bias", .float32, [100]),
                         ("\(b).running_mean", .float32, [100]), ("\(b).running_var", .float32, [100]),
                         ("\(b).num_batches_tracked", .int64, [])]
        }
        expected += [("9.weight", .float32, [10, 100]), ("9.bias", .float32, [10])]
        for mode in [BatchNormMode.sync, .local] {
            let state = bnMLP(mode).stateDict()
            XCTAssertEqual(state.map(\.name), expected.map(\.0), "\(mode)")
            XCTAssertEqual(state.map(\.tensor.dtype), expected.map(\.1), "\(mode)")
            XCTAssertEqual(state.map(\.tensor.shape), expected.map(\.2), "\(mode)")
        }
    }

    func testModelWithoutBatchNormHasLinearLayersAtEvenIndices() {
        // Oracle: torch.nn.Sequential(Linear, Sigmoid, ×3, Linear).state_dict().
        let state = bnMLP(.none).stateDict()
        XCTAssertEqual(state.map(\.name), ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias", "6.weight", "6.bias"])
        XCTAssertEqual(state.map(\.tensor.shape), [[100, 784], [100], [100, 100], [100], [100, 100], [100], [10, 100], [10]])
    }

    func testStateDictHoldsTheParametersAndBuffers() throws {
        // Oracle: the store and BatchNorm buffers themselves.
        let network = bnMLP(.sync)
        network.norms[1].runningMean[3] = 0.75
        network.norms[1].batchesTracked = 41
        let state = Dictionary(uniqueKeysWithValues: network.stateDict().map { ($0.name, $0.tensor) })
        let linear = network.linears[1]
        XCTAssertEqual(state["3.weight"]!.floats, Array(UnsafeBufferPointer(start: network.store.values + linear.weightOffset, count: 100 * 100)))
        XCTAssertEqual(state["4.weight"]!.floats, [Float](repeating: 1, count: 100), "γ starts at 1")
        XCTAssertEqual(state["4.bias"]!.floats, [Float](repeating: 0, count: 100), "β starts at 0")
        XCTAssertEqual(state["4.running_mean"]!.floats[3], 0.75)
        XCTAssertEqual(state["4.running_var"]!.floats, [Float](repeating: 1, count: 100))
        XCTAssertEqual(state["4.num_batches_tracked"]!.int64, 41)
        XCTAssertEqual(state["4.num_batches_tracked"]!.bytes, [41, 0, 0, 0, 0, 0, 0, 0])
    }

    /// A network whose every parameter and buffer differs from a fresh one's.
    private func trainedNetwork(_ mode: BatchNormMode) throws -> Network {
        let network = bnMLP(mode, seed: 11)
        let x = randomFloats(plan.batchSize * 784, seed: 3, low: 0, high: 1)
        network.input.assign(x, rows: plan.batchSize)
        for r in 0..<plan.batchSize { network.labels[r] = Int32(r % 10) }
        for _ in 0..<2 { try network.trainStep(slice: .whole(plan), collective: LocalCollective(plan: plan, valuesPerRow: flatScales), computeMetrics: false) }
        return network
    }

    func testLoadStateDictRestoresIdenticalBytes() throws {
        for mode in [BatchNormMode.sync, .none] {
            let source = try trainedNetwork(mode)
            let bytes = Safetensors.encode(source.stateDict())
            let target = bnMLP(mode, seed: 99)
            XCTAssertNotEqual(Safetensors.encode(target.stateDict()), bytes)
            try target.loadStateDict(Safetensors.decode(bytes, source: "memory"), source: "memory")
            XCTAssertEqual(Safetensors.encode(target.stateDict()), bytes, "\(mode)")
            for (a, b) in zip(source.norms, target.norms) {
                XCTAssertEqual(b.batchesTracked, a.batchesTracked)
                XCTAssertEqual(b.batchesTracked, 2)
            }
        }
    }

    func testSaveAndLoadModelThroughAFile() throws {
        let directory = try temporaryDirectory(self)
        let path = (directory as NSString).appendingPathComponent("model.safetensors")
        let source = try trainedNetwork(.sync)
        try source.saveModel(to: path)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory), ["model.safetensors"], "no temporary file left")
        let target = bnMLP(.sync, seed: 5)
        try target.loadModel(from: path)
        XCTAssertEqual(Safetensors.encode(target.stateDict()), Safetensors.encode(source.stateDict()))
        XCTAssertEqual(try Network.spec(ofCheckpoint: path), ModelSpec.named("bn-mlp", batchNorm: .sync))

        let plainPath = (directory as NSString).appendingPathComponent("plain.safetensors")
        try bnMLP(.none).saveModel(to: plainPath)
        XCTAssertEqual(try Network.spec(ofCheckpoint: plainPath), ModelSpec.named("bn-mlp", batchNorm: .none))

        let missing = (directory as NSString).appendingPathComponent("absent.safetensors")
        XCTAssertThrowsError(try target.loadModel(from: missing)) { error in
            XCTAssertTrue(String(describing: error).contains(missing))
        }
    }

    func testLoadStateDictNamesTheOffendingTensor() throws {
        let network = bnMLP(.sync)
        let good = Dictionary(uniqueKeysWithValues: network.stateDict().map { ($0.name, $0.tensor) })
        func assertRejected(_ tensors: [String: Safetensors.Tensor], naming name: String, line: UInt = #line) {
            let before = Safetensors.encode(network.stateDict())
            XCTAssertThrowsError(try network.loadStateDict(tensors, source: "ckpt"), line: line) { error in
                XCTAssertTrue(error is CheckpointError, line: line)
                let message = String(describing: error)
                XCTAssertTrue(message.contains(name) && message.contains("ckpt"), "“\(message)” does not name \(name)", line: line)
            }
            XCTAssertEqual(Safetensors.encode(network.stateDict()), before, "a rejected checkpoint must change nothing", line: line)
        }
        var missing = good
        missing["4.running_var"] = nil
        assertRejected(missing, naming: "4.running_var")

        var extra = good
        extra["10.weight"] = [Float(1)].withUnsafeBufferPointer { Safetensors.Tensor($0, shape: [1]) }
        assertRejected(extra, naming: "10.weight")

        var misShaped = good
        misShaped["3.weight"] = [Float](repeating: 0, count: 100 * 100).withUnsafeBufferPointer { Safetensors.Tensor($0, shape: [50, 200]) }
        assertRejected(misShaped, naming: "3.weight")

        var wrongType = good
        wrongType["7.num_batches_tracked"] = Safetensors.Tensor(dtype: .float32, shape: [2], bytes: [UInt8](repeating: 0, count: 8))
        assertRejected(wrongType, naming: "7.num_batches_tracked")

        // A checkpoint without BatchNorm does not fit a model with it.
        let plain = Dictionary(uniqueKeysWithValues: bnMLP(.none).stateDict().map { ($0.name, $0.tensor) })
        assertRejected(plain, naming: "1.")
    }
}
