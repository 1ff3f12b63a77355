/// Tests of model files (`ModelSpec` / `LayerSpec` JSON mirroring torch.nn), their shape checks and error
/// messages, state-dict names of nested layers, and the presets' sizes.
///
/// Oracles: the torch.nn constructors' documented defaults (Conv2d stride 1, padding 0, bias True;
/// MaxPool2d/AvgPool2d stride = kernel_size; BatchNorm eps 1e-5, momentum 0.1; Dropout p 0.5); the
/// state_dict names PyTorch gives a Sequential holding a module with `body` and `shortcut` Sequentials;
/// parameter counts worked out by hand below (weights Cout·Cin·k·k, biases, γ and β per BatchNorm channel);
/// and, for errors, the documented contract: one line naming the layer and the shapes involved.
import Foundation
import XCTest
@testable import SyncBNCore

final class ModelFileTests: XCTestCase {
    /// A model file in the shape of the issue's example: a stem, a downsampling residual block with a
    /// 1×1 stride-2 shortcut, and a classifier; kernel sizes given as a number and as a square pair.
    private let example = """
    {
      "name": "mnist-resnet",
      "input": [1, 28, 28],
      "layers": [
        {"type": "Conv2d", "in_channels": 1, "out_channels": 16, "kernel_size": 3, "padding": 1},
        {"type": "BatchNorm2d", "num_features": 16},
        {"type": "ReLU"},
        {"type": "MaxPool2d", "kernel_size": 2},
        {"type": "Residual",
         "body": [
           {"type": "Conv2d", "in_channels": 16, "out_channels": 32, "kernel_size": 3, "stride": 2, "padding": 1, "bias": false},
           {"type": "BatchNorm2d", "num_features": 32},
           {"type": "ReLU"},
           {"type": "Conv2d", "in_channels": 32, "out_channels": 32, "kernel_size": [3, 3], "padding": 1, "bias": false},
           {"type": "BatchNorm2d", "num_features": 32, "eps": 0.001, "momentum": 0.2}
         ],
         "shortcut": [
           {"type": "Conv2d", "in_channels": 16, "out_channels": 32, "kernel_size": 1, "stride": 2, "bias": false},
           {"type": "BatchNorm2d", "num_features": 32}
         ]},
        {"type": "ReLU"},
        {"type": "Flatten"},
        {"type": "Linear", "in_features": 1568, "out_features": 10}
      ]
    }
    """

    private func bn(_ c: Int, eps: Double = 1e-5, momentum: Double = 0.1) -> LayerSpec { .batchNorm2d(numFeatures: c, eps: eps, momentum: momentum) }

    private var exampleLayers: [LayerSpec] {
        [.conv2d(inChannels: 1, outChannels: 16, kernelSize: 3, stride: 1, padding: 1, bias: true), bn(16), .relu,
         .maxPool2d(kernelSize: 2, stride: 2, padding: 0),
         .residual(body: [.conv2d(inChannels: 16, outChannels: 32, kernelSize: 3, stride: 2, padding: 1, bias: false), bn(32), .relu,
                          .conv2d(inChannels: 32, outChannels: 32, kernelSize: 3, stride: 1, padding: 1, bias: false), bn(32, eps: 0.001, momentum: 0.2)],
                   shortcut: [.conv2d(inChannels: 16, outChannels: 32, kernelSize: 1, stride: 2, padding: 0, bias: false), bn(32)]),
         .relu, .flatten, .linear(inFeatures: 1568, outFeatures: 10, bias: true)]
    }

    func testTheExampleDecodes() throws {
        let spec = try ModelSpec.decode(Array(example.utf8))
        XCTAssertEqual(spec.name, "mnist-resnet")
        XCTAssertEqual(spec.input, try TensorShape([1, 28, 28]))
        XCTAssertEqual(spec.layers, exampleLayers)
        XCTAssertEqual(spec.batchNorm, .sync, "the default mode")
        XCTAssertEqual(spec.classes, 10)
        // 28 → conv (pad 1) 28 → pool 14 → stride-2 block 7: 32·7·7 = 1568 values before the Linear.
        XCTAssertEqual(try LayerSpec.outputShape(of: Array(exampleLayers.prefix(5)), input: spec.input), try TensorShape([32, 7, 7]))
    }

    func testTorchDefaults() throws {
        func layer(_ json: String) throws -> LayerSpec { try JSONDecoder().decode(LayerSpec.self, from: Data(json.utf8)) }
        XCTAssertEqual(try layer(#"{"type": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 3}"#),
                       .conv2d(inChannels: 1, outChannels: 2, kernelSize: 3, stride: 1, padding: 0, bias: true))
        XCTAssertEqual(try layer(#"{"type": "Linear", "in_features": 4, "out_features": 2}"#), .linear(inFeatures: 4, outFeatures: 2, bias: true))
        XCTAssertEqual(try layer(#"{"type": "MaxPool2d", "kernel_size": 3}"#), .maxPool2d(kernelSize: 3, stride: 3, padding: 0))
        XCTAssertEqual(try layer(#"{"type": "AvgPool2d", "kernel_size": 2}"#), .avgPool2d(kernelSize: 2, stride: 2, padding: 0))
        XCTAssertEqual(try layer(#"{"type": "BatchNorm2d", "num_features": 8}"#), .batchNorm2d(numFeatures: 8, eps: 1e-5, momentum: 0.1))
        XCTAssertEqual(try layer(#"{"type": "BatchNorm1d", "num_features": 8}"#), .batchNorm1d(numFeatures: 8, eps: 1e-5, momentum: 0.1))
        XCTAssertEqual(try layer(#"{"type": "Dropout"}"#), .dropout(p: 0.5))
        XCTAssertEqual(try layer(#"{"type": "AdaptiveAvgPool2d", "output_size": 1}"#), .adaptiveAvgPool2d(outputSize: 1))
        XCTAssertEqual(try layer(#"{"type": "Residual", "body": [{"type": "ReLU"}]}"#), .residual(body: [.relu], shortcut: []))
    }

    func testEncodeDecodeRoundTrip() throws {
        let specs = [try ModelSpec.decode(Array(example.utf8)),
                     try ModelSpec(name: "local", input: TensorShape([1, 28, 28]), layers: exampleLayers, batchNorm: .local),
                     try XCTUnwrap(ModelSpec.preset("resnet20", input: TensorShape([3, 32, 32]), classes: 10)),
                     try XCTUnwrap(ModelSpec.preset("bn-cnn", input: TensorShape([1, 28, 28]), classes: 10, batchNorm: .none)),
                     try ModelSpec(name: "all", input: TensorShape([2, 9, 9]), layers: [
                         .avgPool2d(kernelSize: 3, stride: 2, padding: 1), .tanh, .sigmoid, .dropout(p: 0.25),
                         .adaptiveAvgPool2d(outputSize: 1), .flatten, .batchNorm1d(numFeatures: 2, eps: 1e-3, momentum: 0.01),
                         .linear(inFeatures: 2, outFeatures: 3, bias: false)])]
        for spec in specs {
            // The model file holds the architecture; the BatchNorm mode is the run's setting (sync when read).
            let decoded = try ModelSpec.decode(Array(spec.encodedModelFile()))
            XCTAssertEqual(decoded.layers, spec.layers, spec.name)
            XCTAssertEqual(decoded.input, spec.input, spec.name)
            XCTAssertEqual(decoded.encodedModelFile(), spec.encodedModelFile(), "\(spec.name): encoding is stable")
            // The job's settings (JSONEncoder) keep the mode too.
            XCTAssertEqual(try JSONDecoder().decode(ModelSpec.self, from: JSONEncoder().encode(spec)), spec, spec.name)
        }
    }

    func testModelFileLoadsFromDisk() throws {
        let directory = try temporaryDirectory(self)
        let path = (directory as NSString).appendingPathComponent("net.json")
        try Data(example.utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try ModelSpec.load(modelFile: path).layers, exampleLayers)
        XCTAssertEqual(try ModelSpec.load(modelFile: path, batchNorm: .none).hasBatchNorm, false)
        let bad = (directory as NSString).appendingPathComponent("bad.json")
        try Data(example.replacingOccurrences(of: "\"in_features\": 1568", with: "\"in_features\": 1500").utf8).write(to: URL(fileURLWithPath: bad))
        XCTAssertThrowsError(try ModelSpec.load(modelFile: bad)) { error in
            let message = (error as? ModelError)?.description ?? ""
            XCTAssertTrue(message.hasPrefix(bad), "“\(message)” names the file")
            XCTAssertFalse(message.contains("\n"))
        }
    }

    // MARK: Errors

    /// Decodes `layers` on `input` and returns the one-line error, failing if it decodes or spans lines.
    private func error(_ layers: String, input: String = "[3, 8, 8]", file: StaticString = #filePath, line: UInt = #line) -> String {
        let json = "{\"input\": \(input), \"layers\": [\(layers)]}"
        do {
            _ = try ModelSpec.decode(Array(json.utf8))
            XCTFail("\(json) decoded", file: file, line: line)
            return ""
        } catch let error as ModelError {
            XCTAssertFalse(error.description.contains("\n"), "“\(error.description)” is not one line", file: file, line: line)
            return error.description
        } catch {
            XCTFail("not a ModelError: \(error)", file: file, line: line)
            return ""
        }
    }

    private func assertMentions(_ message: String, _ parts: [String], file: StaticString = #filePath, line: UInt = #line) {
        for part in parts { XCTAssertTrue(message.contains(part), "“\(message)” does not mention “\(part)”", file: file, line: line) }
    }

    private let flattenLinear = #"{"type": "Flatten"}, {"type": "Linear", "in_features": 192, "out_features": 2}"#

    func testShapeErrorsNameTheLayerAndTheShapes() {
        // Wrong in_channels at layer 1: the input [2, 8, 8] it gets, and the channels it wanted.
        assertMentions(error(#"{"type": "Conv2d", "in_channels": 3, "out_channels": 2, "kernel_size": 1}, {"type": "Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 1}, "# + flattenLinear),
                       ["layer 1", "Conv2d", "in_channels is 3", "[2, 8, 8]"])
        // A Linear whose in_features is not the flattened size: both sizes.
        assertMentions(error(#"{"type": "Flatten"}, {"type": "Linear", "in_features": 100, "out_features": 2}"#),
                       ["layer 1", "Linear", "in_features is 100", "[192]"])
        // A Linear on an image: its in_features fit the count, but the shape needs a Flatten.
        assertMentions(error(#"{"type": "Linear", "in_features": 192, "out_features": 2}"#), ["layer 0", "Linear", "[3, 8, 8]", "Flatten"])
        assertMentions(error(#"{"type": "Linear", "in_features": 10, "out_features": 2}"#), ["layer 0", "[3, 8, 8]", "Flatten", "[192]"])
        // A pool larger than its input (after a stride-2 conv: [3, 4, 4]).
        assertMentions(error(#"{"type": "Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 2, "stride": 2}, {"type": "MaxPool2d", "kernel_size": 5}, "# + flattenLinear),
                       ["layer 1", "MaxPool2d", "kernel_size 5", "[3, 4, 4]"])
        // A residual whose body and shortcut disagree: both shapes, and the path inside the block.
        assertMentions(error(#"{"type": "Residual", "body": [{"type": "Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1}]}, "# + flattenLinear),
                       ["layer 0", "Residual", "[4, 4, 4]", "[3, 8, 8]"])
        assertMentions(error(#"{"type": "Residual", "body": [{"type": "ReLU"}, {"type": "Conv2d", "in_channels": 4, "out_channels": 3, "kernel_size": 1}]}, "# + flattenLinear),
                       ["layer 0.body.1", "in_channels is 4", "[3, 8, 8]"])
        // BatchNorm2d with the wrong channel count, and BatchNorm1d on an image.
        assertMentions(error(#"{"type": "BatchNorm2d", "num_features": 4}, "# + flattenLinear), ["layer 0", "num_features is 4", "[3, 8, 8]"])
        assertMentions(error(#"{"type": "BatchNorm1d", "num_features": 3}, "# + flattenLinear), ["layer 0", "[3, 8, 8]", "BatchNorm2d"])
        // A model that does not end in logits.
        assertMentions(error(#"{"type": "ReLU"}"#), ["[3, 8, 8]", "logit"])
    }

    func testSettingErrorsAreOneLineAndNameTheSetting() {
        assertMentions(error(#"{"type": "Conv3d"}, "# + flattenLinear), ["Conv3d", "unknown layer type", "Conv2d"])
        assertMentions(error(#"{"type": "Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 1, "strid": 2}, "# + flattenLinear),
                       ["unknown key \"strid\"", "stride"])
        assertMentions(error(#"{"type": "Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": [3, 5]}, "# + flattenLinear),
                       ["kernel_size", "[3, 5]", "square"])
        assertMentions(error(#"{"type": "Conv2d", "in_channels": 3, "out_channels": 0, "kernel_size": 1}, "# + flattenLinear), ["out_channels is 0"])
        assertMentions(error(#"{"type": "Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": -1}, "# + flattenLinear), ["kernel_size is -1"])
        assertMentions(error(#"{"type": "Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 1, "stride": 0}, "# + flattenLinear), ["stride is 0"])
        assertMentions(error(#"{"type": "Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 3, "padding": -1}, "# + flattenLinear), ["padding is -1"])
        assertMentions(error(#"{"type": "Dropout", "p": 1.5}, "# + flattenLinear), ["p must be"])
        assertMentions(error(#"{"type": "AdaptiveAvgPool2d", "output_size": 2}, "# + flattenLinear), ["output_size"])
        assertMentions(error(flattenLinear, input: "[3, 0, 8]"), ["[3, 0, 8]", "positive"])
        assertMentions(error(flattenLinear, input: "[-3, 8, 8]"), ["[-3, 8, 8]"])
        // Missing input.
        assertMentions({
            do { _ = try ModelSpec.decode(Array(#"{"layers": [{"type": "Flatten"}]}"#.utf8)); return "" } catch { return String(describing: error) }
        }(), ["\"input\""])
        // Not JSON at all.
        XCTAssertThrowsError(try ModelSpec.decode(Array("{\"input\": [1, 2".utf8))) { error in
            XCTAssertTrue(error is ModelError)
            XCTAssertFalse(String(describing: error).contains("\n"))
        }
    }

    func testSettingErrorsNameTheLayerByItsIndex() throws {
        // Regression: the layer's place was once printed "layers.layers.1".
        let top = error(#"{"type": "Flatten"}, {"type": "Conv3d"}"#)
        assertMentions(top, ["layers.1"])
        XCTAssertFalse(top.contains("layers.layers"), top)
        let nested = error(#"{"type": "Residual", "body": [{"type": "ReLU"}, {"type": "Linear", "in_features": 1, "out_features": 1, "bais": true}]}, "# + flattenLinear)
        assertMentions(nested, ["layers.0.body.1", "bais"])
        XCTAssertFalse(nested.contains("layers.layers"), nested)
    }

    // MARK: State-dict names

    func testStateDictNamesOfAResidualBlock() throws {
        // Oracle: nn.Sequential(conv, bn, relu, pool, Block(body=Sequential(…), shortcut=Sequential(…)),
        // relu, flatten, linear).state_dict().keys(), for the example.
        let spec = try ModelSpec.decode(Array(example.utf8))
        let network = Network(spec: spec, plan: ChunkPlan(batchSize: 2, chunkSize: 1), optimizer: SGD(learningRate: 0.1, momentum: 0), seed: 1)
        func norm(_ name: String) -> [String] { ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"].map { "\(name).\($0)" } }
        let expected = ["0.weight", "0.bias"] + norm("1")
            + ["4.body.0.weight"] + norm("4.body.1") + ["4.body.3.weight"] + norm("4.body.4")
            + ["4.shortcut.0.weight"] + norm("4.shortcut.1") + ["7.weight", "7.bias"]
        let state = network.stateDict()
        XCTAssertEqual(state.map(\.name), expected)
        let shapes = Dictionary(uniqueKeysWithValues: state.map { ($0.name, $0.tensor.shape) })
        XCTAssertEqual(shapes["4.body.0.weight"], [32, 16, 3, 3])
        XCTAssertEqual(shapes["4.shortcut.0.weight"], [32, 16, 1, 1])
        XCTAssertEqual(shapes["4.shortcut.1.running_mean"], [32])
        XCTAssertEqual(shapes["7.weight"], [10, 1568])
        // BatchNorm layers are numbered in forward order, body before shortcut.
        XCTAssertEqual(network.norms.map(\.features), [16, 32, 32, 32])
        XCTAssertEqual(network.norms.map(\.spatialSize), [28 * 28, 7 * 7, 7 * 7, 7 * 7])
        XCTAssertEqual(network.norms[2].momentum, 0.2)
    }

    // MARK: Presets

    /// Parameters of a Conv2d, a BatchNorm (γ and β) and a Linear.
    private func conv(_ i: Int, _ o: Int, _ k: Int, bias: Bool) -> Int { o * i * k * k + (bias ? o : 0) }
    private func norm(_ c: Int) -> Int { 2 * c }
    private func linear(_ i: Int, _ o: Int) -> Int { i * o + o }

    /// bn-cnn: conv 3×3 (C → 32) + BN, pool, conv 3×3 (32 → 64) + BN, pool, Linear(64·H/4·W/4 → 128) + BN1d, Linear(128 → 10).
    private func bnCNNCount(channels: Int, height: Int, width: Int) -> Int {
        conv(channels, 32, 3, bias: true) + norm(32) + conv(32, 64, 3, bias: true) + norm(64)
            + linear(64 * (height / 4) * (width / 4), 128) + norm(128) + linear(128, 10)
    }

    /// ResNet-20: conv 3×3 (C → 16) + BN; per stage of 3 blocks, two 3×3 convs + BNs each, the first block of
    /// stages 2 and 3 with a 1×1 conv + BN shortcut; Linear(64 → 10). No conv has a bias.
    private func resnet20Count(channels: Int) -> Int {
        var count = conv(channels, 16, 3, bias: false) + norm(16)
        var inChannels = 16
        for width in [16, 32, 64] {
            for _ in 0..<3 {
                count += conv(inChannels, width, 3, bias: false) + norm(width) + conv(width, width, 3, bias: false) + norm(width)
                if inChannels != width { count += conv(inChannels, width, 1, bias: false) + norm(width) }
                inChannels = width
            }
        }
        return count + linear(64, 10)
    }

    func testPresetsBuildWithTheExpectedParameterCounts() throws {
        // The arithmetic, spelled out once: bn-cnn on 1×28×28 = 320 + 64 + 18,496 + 128 + 401,536 + 256 + 1,290.
        XCTAssertEqual(bnCNNCount(channels: 1, height: 28, width: 28), 422_090)
        XCTAssertEqual(resnet20Count(channels: 3), 272_474)
        let expected: [(String, [Int], Int)] = [
            ("bn-cnn", [1, 28, 28], 422_090), ("bn-cnn", [3, 32, 32], bnCNNCount(channels: 3, height: 32, width: 32)),
            ("resnet20", [3, 32, 32], 272_474), ("resnet20", [1, 28, 28], resnet20Count(channels: 1)),
        ]
        for (name, input, count) in expected {
            let spec = try XCTUnwrap(ModelSpec.preset(name, input: TensorShape(input), classes: 10))
            XCTAssertEqual(spec.classes, 10)
            let network = Network(spec: spec, plan: ChunkPlan(batchSize: 2, chunkSize: 1), optimizer: SGD(learningRate: 0.1, momentum: 0), seed: 1)
            XCTAssertEqual(network.store.count, count, "\(name) on \(input)")
            // The state dict holds exactly the store's parameters (and BatchNorm buffers besides).
            let floats = network.stateDict().filter { !$0.name.hasSuffix("running_mean") && !$0.name.hasSuffix("running_var") && $0.tensor.dtype == .float32 }
            XCTAssertEqual(floats.reduce(0) { $0 + $1.tensor.shape.reduce(1, *) }, count, "\(name) on \(input)")
        }
        let resnet = try XCTUnwrap(ModelSpec.preset("resnet20", input: TensorShape([3, 32, 32]), classes: 10))
        XCTAssertEqual(resnet.layers.filter { if case .residual = $0 { return true }; return false }.count, 9)
        XCTAssertThrowsError(try ModelSpec.preset("bn-cnn", input: TensorShape([784]), classes: 10))
    }
}

/// Oracle: the presets' code. The model files shipped in Examples/models must decode to exactly the preset
/// of the same name (for Fashion-MNIST's 1×28×28 samples; resnet20 for CIFAR's 3×32×32), so that a user who
/// copies one trains what `--model` trains.
final class ShippedModelFileTests: XCTestCase {
    func testExampleModelFilesAreThePresets() throws {
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Examples/models").standardized
        let cases: [(String, [Int])] = [("bn-mlp", [1, 28, 28]), ("wide-mlp", [1, 28, 28]), ("bn-cnn", [1, 28, 28]), ("resnet20", [3, 32, 32])]
        for (name, input) in cases {
            let file = try ModelSpec.load(modelFile: folder.appendingPathComponent("\(name).json").path)
            let preset = try XCTUnwrap(try ModelSpec.preset(name, input: TensorShape(input), classes: 10))
            XCTAssertEqual(file.layers, preset.layers, name)
            XCTAssertEqual(file.input, preset.input, name)
        }
    }
}
