import Foundation

/// One layer of a model file: the `torch.nn` module of the same name, with its constructor's argument names
/// and defaults, so that a PyTorch user can read and write it.
///
///     {"type": "Conv2d", "in_channels": 1, "out_channels": 32, "kernel_size": 3, "padding": 1}
///     {"type": "Residual", "body": [ … ], "shortcut": [ … ]}     // body(x) + shortcut(x); no shortcut: identity
///
/// Sizes are square (`kernel_size: 3` or `[3, 3]`). Unknown keys are refused, so that a typo is not a
/// silently ignored setting.
public indirect enum LayerSpec: Equatable, Sendable {
    case linear(inFeatures: Int, outFeatures: Int, bias: Bool)
    case conv2d(inChannels: Int, outChannels: Int, kernelSize: Int, stride: Int, padding: Int, bias: Bool)
    case batchNorm1d(numFeatures: Int, eps: Double, momentum: Double)
    case batchNorm2d(numFeatures: Int, eps: Double, momentum: Double)
    case relu, sigmoid, tanh, flatten
    case maxPool2d(kernelSize: Int, stride: Int, padding: Int)
    case avgPool2d(kernelSize: Int, stride: Int, padding: Int)
    /// Only `output_size` 1 (global average pooling).
    case adaptiveAvgPool2d(outputSize: Int)
    case dropout(p: Double)
    /// output = body(x) + shortcut(x); an empty shortcut is the identity.
    case residual(body: [LayerSpec], shortcut: [LayerSpec])

    /// The `type` of the model file: the `torch.nn` class name.
    public var typeName: String {
        switch self {
        case .linear: "Linear"
        case .conv2d: "Conv2d"
        case .batchNorm1d: "BatchNorm1d"
        case .batchNorm2d: "BatchNorm2d"
        case .relu: "ReLU"
        case .sigmoid: "Sigmoid"
        case .tanh: "Tanh"
        case .flatten: "Flatten"
        case .maxPool2d: "MaxPool2d"
        case .avgPool2d: "AvgPool2d"
        case .adaptiveAvgPool2d: "AdaptiveAvgPool2d"
        case .dropout: "Dropout"
        case .residual: "Residual"
        }
    }

    public static let typeNames = ["Linear", "Conv2d", "BatchNorm1d", "BatchNorm2d", "ReLU", "Sigmoid", "Tanh", "Flatten",
                                   "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Dropout", "Residual"]

    public var isBatchNorm: Bool {
        switch self {
        case .batchNorm1d, .batchNorm2d: true
        default: false
        }
    }

    /// This layer with every BatchNorm layer inside it removed (`--bn none`); nil if it is one.
    public func removingBatchNorm() -> LayerSpec? {
        switch self {
        case .batchNorm1d, .batchNorm2d: nil
        case .residual(let body, let shortcut): .residual(body: body.compactMap { $0.removingBatchNorm() }, shortcut: shortcut.compactMap { $0.removingBatchNorm() })
        default: self
        }
    }

    // MARK: Shapes

    /// The shape this layer produces from `input`.
    /// - Throws: `ModelError` naming `path` (the layer's index, e.g. "layer 4.body.1"), the layer and both
    ///   shapes when the layer does not fit its input.
    public func outputShape(for input: TensorShape, path: String) throws -> TensorShape {
        func fail(_ why: String) -> ModelError { ModelError("\(path) (\(typeName)): \(why)") }
        func image(_ what: String) throws -> (c: Int, h: Int, w: Int) {
            guard input.isImage else { throw fail("\(what) needs an image input [channels, height, width], but its input is \(input)") }
            return (input.channels, input.height, input.width)
        }
        /// Output size of a sliding window: ⌊(n + 2p − k)/s⌋ + 1.
        func slide(_ n: Int, kernel: Int, stride: Int, padding: Int, what: String) throws -> Int {
            let padded = n + 2 * padding
            guard kernel <= padded else { throw fail("its \(what) \(kernel) is larger than its input \(input) with padding \(padding)") }
            return (padded - kernel) / stride + 1
        }
        switch self {
        case .linear(let inFeatures, let outFeatures, _):
            guard input.count == inFeatures else {
                throw fail("in_features is \(inFeatures), but its input \(input) has \(input.count) values" + (input.isImage ? " (a Flatten before it gives [\(input.count)])" : ""))
            }
            guard input.dimensions.count == 1 else { throw fail("its input \(input) is an image: put a Flatten before it") }
            return try TensorShape([outFeatures])
        case .conv2d(let inChannels, let outChannels, let k, let s, let p, _):
            let (c, h, w) = try image("Conv2d")
            guard c == inChannels else { throw fail("in_channels is \(inChannels), but its input \(input) has \(c) channels") }
            return try TensorShape([outChannels, slide(h, kernel: k, stride: s, padding: p, what: "kernel_size"),
                                    slide(w, kernel: k, stride: s, padding: p, what: "kernel_size")])
        case .batchNorm1d(let features, _, _):
            guard input.dimensions.count == 1, input.count == features else {
                throw fail("num_features is \(features), but its input is \(input)" + (input.isImage ? ": use BatchNorm2d for images" : ""))
            }
            return input
        case .batchNorm2d(let features, _, _):
            let (c, _, _) = try image("BatchNorm2d")
            guard c == features else { throw fail("num_features is \(features), but its input \(input) has \(c) channels") }
            return input
        case .relu, .sigmoid, .tanh, .dropout:
            return input
        case .flatten:
            return TensorShape(checked: [input.count])
        case .maxPool2d(let k, let s, let p), .avgPool2d(let k, let s, let p):
            let (c, h, w) = try image(typeName)
            guard 2 * p <= k else { throw fail("padding \(p) must be at most half of kernel_size \(k), as in PyTorch") }
            return try TensorShape([c, slide(h, kernel: k, stride: s, padding: p, what: "kernel_size"),
                                    slide(w, kernel: k, stride: s, padding: p, what: "kernel_size")])
        case .adaptiveAvgPool2d:
            let (c, _, _) = try image("AdaptiveAvgPool2d")
            return TensorShape(checked: [c, 1, 1])
        case .residual(let body, let shortcut):
            let bodyShape = try LayerSpec.outputShape(of: body, input: input, path: path + ".body")
            let shortcutShape = try LayerSpec.outputShape(of: shortcut, input: input, path: path + ".shortcut")
            guard bodyShape == shortcutShape else {
                throw fail("its body gives \(bodyShape) but its shortcut gives \(shortcutShape) for input \(input): give the shortcut a layer that matches (e.g. a 1×1 Conv2d with stride 2)")
            }
            return bodyShape
        }
    }

    /// The shape a sequence of layers produces. `path` names the sequence in errors: "layer" for a model's
    /// top level (its layers are "layer 0", "layer 1", …), "layer 4.body" inside a Residual.
    public static func outputShape(of layers: [LayerSpec], input: TensorShape, path: String = "layer") throws -> TensorShape {
        var shape = input
        for (i, layer) in layers.enumerated() {
            shape = try layer.outputShape(for: shape, path: path == "layer" ? "layer \(i)" : "\(path).\(i)")
        }
        return shape
    }
}

// MARK: - Model-file JSON

extension LayerSpec: Codable {
    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ string: String) { stringValue = string }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: Key.self)
        let type = try container.decode(String.self, forKey: Key("type"))
        // The coding path reads "layers.4.body.1": the layer's place in the model file.
        let place = decoder.codingPath.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".")
        func fail(_ why: String) -> DecodingError {
            .dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "\(type) at \(place): \(why)"))
        }
        var allowed: Set<String> = ["type"]
        func int(_ key: String, default value: Int? = nil, minimum: Int = 1) throws -> Int {
            allowed.insert(key)
            let decoded: Int
            if let single = try? container.decodeIfPresent(Int.self, forKey: Key(key)) {
                decoded = single
            } else if let pair = try? container.decodeIfPresent([Int].self, forKey: Key(key)) {
                guard pair.count == 2, pair[0] == pair[1] else { throw fail("\(key) \(pair): only square sizes are supported; give one number") }
                decoded = pair[0]
            } else if container.contains(Key(key)) {
                throw fail("\(key) must be a whole number")
            } else if let value {
                decoded = value
            } else {
                throw fail("it needs \(key)")
            }
            guard decoded >= minimum, decoded <= 1 << 24 else { throw fail("\(key) is \(decoded); it must be from \(minimum) to \(1 << 24)") }
            return decoded
        }
        func bool(_ key: String, default value: Bool) throws -> Bool {
            allowed.insert(key)
            guard container.contains(Key(key)) else { return value }
            guard let decoded = try? container.decode(Bool.self, forKey: Key(key)) else { throw fail("\(key) must be true or false") }
            return decoded
        }
        func double(_ key: String, default value: Double, in range: ClosedRange<Double>) throws -> Double {
            allowed.insert(key)
            guard container.contains(Key(key)) else { return value }
            guard let decoded = try? container.decode(Double.self, forKey: Key(key)), range.contains(decoded) else {
                throw fail("\(key) must be a number in [\(range.lowerBound), \(range.upperBound)]")
            }
            return decoded
        }
        func layers(_ key: String, required: Bool) throws -> [LayerSpec] {
            allowed.insert(key)
            guard container.contains(Key(key)) else {
                if required { throw fail("it needs \(key), a list of layers") }
                return []
            }
            return try container.decode([LayerSpec].self, forKey: Key(key))
        }
        switch type {
        case "Linear":
            self = .linear(inFeatures: try int("in_features"), outFeatures: try int("out_features"), bias: try bool("bias", default: true))
        case "Conv2d":
            let kernel = try int("kernel_size")
            self = .conv2d(inChannels: try int("in_channels"), outChannels: try int("out_channels"), kernelSize: kernel,
                           stride: try int("stride", default: 1), padding: try int("padding", default: 0, minimum: 0), bias: try bool("bias", default: true))
        case "BatchNorm1d", "BatchNorm2d":
            let features = try int("num_features")
            let eps = try double("eps", default: BatchNorm.defaultEpsilon, in: 1e-12...1)
            let momentum = try double("momentum", default: BatchNorm.defaultMomentum, in: 0...1)
            self = type == "BatchNorm1d" ? .batchNorm1d(numFeatures: features, eps: eps, momentum: momentum)
                                         : .batchNorm2d(numFeatures: features, eps: eps, momentum: momentum)
        case "ReLU": self = .relu
        case "Sigmoid": self = .sigmoid
        case "Tanh": self = .tanh
        case "Flatten": self = .flatten
        case "MaxPool2d", "AvgPool2d":
            let kernel = try int("kernel_size")
            let stride = try int("stride", default: kernel), padding = try int("padding", default: 0, minimum: 0)
            self = type == "MaxPool2d" ? .maxPool2d(kernelSize: kernel, stride: stride, padding: padding)
                                       : .avgPool2d(kernelSize: kernel, stride: stride, padding: padding)
        case "AdaptiveAvgPool2d":
            let size = try int("output_size")
            guard size == 1 else { throw fail("only output_size 1 (global average pooling) is supported") }
            self = .adaptiveAvgPool2d(outputSize: size)
        case "Dropout":
            self = .dropout(p: try double("p", default: 0.5, in: 0...0.999))
        case "Residual":
            self = .residual(body: try layers("body", required: true), shortcut: try layers("shortcut", required: false))
        default:
            throw fail("unknown layer type; known types: \(Self.typeNames.joined(separator: ", "))")
        }
        if let unknown = container.allKeys.map(\.stringValue).filter({ !allowed.contains($0) }).sorted().first {
            throw fail("unknown key \"\(unknown)\"; \(type) takes \(allowed.subtracting(["type"]).sorted().joined(separator: ", "))")
        }
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: Key.self)
        try container.encode(typeName, forKey: Key("type"))
        func put<T: Encodable>(_ key: String, _ value: T) throws { try container.encode(value, forKey: Key(key)) }
        switch self {
        case .linear(let i, let o, let bias):
            try put("in_features", i); try put("out_features", o); try put("bias", bias)
        case .conv2d(let i, let o, let k, let s, let p, let bias):
            try put("in_channels", i); try put("out_channels", o); try put("kernel_size", k)
            try put("stride", s); try put("padding", p); try put("bias", bias)
        case .batchNorm1d(let f, let eps, let momentum), .batchNorm2d(let f, let eps, let momentum):
            try put("num_features", f); try put("eps", eps); try put("momentum", momentum)
        case .relu, .sigmoid, .tanh, .flatten:
            break
        case .maxPool2d(let k, let s, let p), .avgPool2d(let k, let s, let p):
            try put("kernel_size", k); try put("stride", s); try put("padding", p)
        case .adaptiveAvgPool2d(let size):
            try put("output_size", size)
        case .dropout(let p):
            try put("p", p)
        case .residual(let body, let shortcut):
            try put("body", body)
            if !shortcut.isEmpty { try put("shortcut", shortcut) }
        }
    }
}

extension LayerSpec {
    /// Trainable values of this layer (and the layers inside it), or nil if the count overflows.
    public var parameterCount: Int? {
        func product(_ values: Int...) -> Int? {
            var result = 1
            for v in values {
                let (p, overflow) = result.multipliedReportingOverflow(by: v)
                if overflow { return nil }
                result = p
            }
            return result
        }
        func total(_ layers: [LayerSpec]) -> Int? {
            var sum = 0
            for layer in layers {
                guard let count = layer.parameterCount else { return nil }
                let (s, overflow) = sum.addingReportingOverflow(count)
                if overflow { return nil }
                sum = s
            }
            return sum
        }
        switch self {
        case .linear(let i, let o, let bias):
            return product(i, o).flatMap { $0.addingReportingOverflow(bias ? o : 0).overflow ? nil : $0 + (bias ? o : 0) }
        case .conv2d(let i, let o, let k, _, _, let bias):
            return product(i, o, k, k).flatMap { $0.addingReportingOverflow(bias ? o : 0).overflow ? nil : $0 + (bias ? o : 0) }
        case .batchNorm1d(let f, _, _), .batchNorm2d(let f, _, _):
            return product(2, f)
        case .residual(let body, let shortcut):
            return total(body + shortcut)
        default:
            return 0
        }
    }
}
