import Foundation

/// A network's architecture: the shape of one input sample and a sequence of layers that mirrors a
/// `torch.nn.Sequential`, whose last layer gives one logit per class. It is what a model file holds, what
/// the coordinator sends every worker, and what a saved model carries in its metadata.
///
/// Model-file JSON (`--model-file`): `{"input": [1, 28, 28], "layers": [ … ]}` (see `LayerSpec`), with an
/// optional `"name"`. Built-in presets are listed in `presetNames`.
public struct ModelSpec: Equatable, Sendable {
    public var name: String
    public let input: TensorShape
    public let layers: [LayerSpec]
    /// The last layer's output: one logit per class (derived from `input` and `layers` once, at init).
    public let outputShape: TensorShape
    /// How BatchNorm layers normalize across workers; `.none` when the model has none.
    public var batchNorm: BatchNormMode
    /// What BatchNorm's backward pass differentiates through (`--bn-backward`; `.full` but for the ablation).
    public var batchNormBackward: BatchNormBackward = .full

    /// - Throws: `ModelError` naming the first layer that does not fit its input, or a model whose output is
    ///   not a flat vector of logits.
    public init(name: String, input: TensorShape, layers: [LayerSpec], batchNorm: BatchNormMode = .sync) throws {
        self.name = name
        self.input = input
        self.layers = batchNorm == .none ? layers.compactMap { $0.removingBatchNorm() } : layers
        self.batchNorm = batchNorm
        guard !self.layers.isEmpty else { throw ModelError("the model \(name) has no layers") }
        let count = LayerSpec.residual(body: self.layers, shortcut: []).parameterCount
        guard let count, count <= Self.maximumParameters else {
            throw ModelError("the model \(name) has more than \(Self.maximumParameters) parameters (\(count.map(String.init) ?? "the count overflows")): make its layers smaller")
        }
        outputShape = try LayerSpec.outputShape(of: self.layers, input: input)
        guard outputShape.dimensions.count == 1, outputShape.count >= 2 else {
            throw ModelError("the model \(name) ends with shape \(outputShape); its last layer must give one logit per class (e.g. Flatten then Linear)")
        }
        if batchNorm != .none && !hasBatchNorm { self.batchNorm = .none }
    }

    /// The most trainable values a model may have (one Float32 buffer each for values, gradients, momentum).
    public static let maximumParameters = 1 << 30

    /// Trainable values of every layer.
    public var parameterCount: Int { LayerSpec.residual(body: layers, shortcut: []).parameterCount ?? 0 }

    /// Classes: the size of the last layer's output.
    public var classes: Int { outputShape.count }

    public var hasBatchNorm: Bool {
        func any(_ layers: [LayerSpec]) -> Bool {
            layers.contains { layer in
                if layer.isBatchNorm { return true }
                if case .residual(let body, let shortcut) = layer { return any(body) || any(shortcut) }
                return false
            }
        }
        return any(layers)
    }

    /// Values per input sample.
    public var inputSize: Int { input.count }

    // MARK: Model files

    /// Reads a model file.
    /// - Throws: `ModelError` with one line naming the file and what is wrong (JSON, a layer's settings, or
    ///   a layer that does not fit its input shape, with both shapes).
    public static func load(modelFile path: String, batchNorm: BatchNormMode = .sync) throws -> ModelSpec {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelError("cannot read the model file \(path): check the path given to --model-file")
        }
        do {
            var spec = try decode(Array(data))
            if spec.name.isEmpty || spec.name == "model" { spec.name = ((path as NSString).lastPathComponent as NSString).deletingPathExtension }
            return try ModelSpec(name: spec.name, input: spec.input, layers: spec.layers, batchNorm: batchNorm)
        } catch let error as ModelError {
            throw ModelError("\(path): \(error.description)")
        }
    }

    /// Decodes model-file JSON.
    /// - Throws: `ModelError` with one line.
    public static func decode(_ bytes: [UInt8]) throws -> ModelSpec {
        do {
            return try JSONDecoder().decode(ModelSpec.self, from: Data(bytes))
        } catch let error as ModelError {
            throw error
        } catch let DecodingError.dataCorrupted(context) {
            throw ModelError(context.underlyingError.map { "not valid JSON (\($0.localizedDescription))" } ?? context.debugDescription)
        } catch let DecodingError.keyNotFound(key, context) {
            throw ModelError("\(Self.path(context.codingPath)) needs \"\(key.stringValue)\"")
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            throw ModelError("\(Self.path(context.codingPath)): \(context.debugDescription)")
        } catch {
            throw ModelError("not a model file: \(error)")
        }
    }

    private static func path(_ codingPath: [CodingKey]) -> String {
        let parts = codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }
        return parts.isEmpty ? "the model file" : parts.joined(separator: ".")
    }

    /// The model-file JSON of this architecture (pretty-printed, keys sorted), without the training's
    /// BatchNorm mode.
    public func encodedModelFile() -> Data {
        guard let data = try? JSONEncoder().encode(self),
              var object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return Data() }
        object["batch_norm"] = nil
        object["batch_norm_backward"] = nil
        return (try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])) ?? Data()
    }
}

extension ModelSpec: Codable {
    private enum CodingKeys: String, CodingKey { case name, input, layers, batchNorm = "batch_norm", batchNormBackward = "batch_norm_backward" }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let name = try container.decodeIfPresent(String.self, forKey: .name) ?? "model"
        let input = try container.decode(TensorShape.self, forKey: .input)
        let layers = try container.decode([LayerSpec].self, forKey: .layers)
        let mode = try container.decodeIfPresent(BatchNormMode.self, forKey: .batchNorm) ?? .sync
        try self.init(name: name, input: input, layers: layers, batchNorm: mode)
        batchNormBackward = try container.decodeIfPresent(BatchNormBackward.self, forKey: .batchNormBackward) ?? .full
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        try container.encode(input, forKey: .input)
        try container.encode(layers, forKey: .layers)
        try container.encode(batchNorm, forKey: .batchNorm)
        // Written only for the ablation, so that every other run's metadata stays as it was.
        if batchNormBackward != .full { try container.encode(batchNormBackward, forKey: .batchNormBackward) }
    }
}
