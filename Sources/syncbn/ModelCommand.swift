import ArgumentParser
import Foundation
import SyncBNCore

struct ModelCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "model",
        abstract: "Print a model file: a preset's, or check and print one's own (layers, shapes, parameter count).",
        discussion: "Start a model of your own from a preset: `syncbn model bn-cnn > my-net.json`, edit it, then train with --model-file my-net.json.")

    @Argument(help: "A preset (\(ModelSpec.presetNames.joined(separator: ", "))) or a model file to check.")
    var model: String

    @Option(help: "The shape of one input sample for a preset, C,H,W or F (default 1,28,28: Fashion-MNIST).")
    var input = "1,28,28"

    @Option(help: "Classes, for a preset.")
    var classes = 10

    @Flag(help: "Print each layer's output shape and the parameter count instead of the JSON.")
    var summary = false

    func run() throws {
        let spec: ModelSpec
        do {
            if ModelSpec.presetNames.contains(model) {
                let dimensions = input.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
                guard !dimensions.contains(nil), let shape = try? TensorShape(dimensions.compactMap { $0 }), classes >= 2 else {
                    throw ValidationError("--input \(input) is not a shape like 1,28,28 or 784, or --classes \(classes) is below 2")
                }
                spec = try ModelSpec.preset(model, input: shape, classes: classes)!
            } else {
                spec = try ModelSpec.load(modelFile: model)
            }
        } catch let error as ModelError {
            throw ValidationError(error.description)
        }
        guard summary else {
            print(String(decoding: spec.encodedModelFile(), as: UTF8.self))
            return
        }
        var shape = spec.input
        print("\(spec.name): input \(spec.input)")
        for (i, layer) in spec.layers.enumerated() {
            shape = try layer.outputShape(for: shape, path: "layer \(i)")
            print("  \(i) \(layer.typeName) → \(shape)")
        }
        print("\(spec.parameterCount) parameters, \(spec.classes) classes")
    }
}
