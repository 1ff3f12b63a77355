/// Turns a model's `LayerSpec`s into layers: allocates their parameters in the store in depth-first order,
/// numbers BatchNorm and Dropout layers, and sizes every buffer for `capacity` rows.
///
/// Adding a layer type means a `LayerSpec` case (the model-file decoder) and one line here.
struct LayerBuilder {
    let capacity: Int
    let plan: ChunkPlan
    var allocator = ParameterAllocator()
    private(set) var norms: [BatchNorm] = []
    private var dropouts = 0

    init(capacity: Int, plan: ChunkPlan) {
        self.capacity = capacity
        self.plan = plan
    }

    /// The layers of `specs` for input samples of shape `input`. The specs must fit their shapes
    /// (`ModelSpec`'s initializer checked them).
    mutating func build(_ specs: [LayerSpec], input: TensorShape) -> [Layer] {
        var shape = input
        return specs.map { spec in
            let output = try! spec.outputShape(for: shape, path: "layer")
            defer { shape = output }
            return make(spec, input: shape, output: output)
        }
    }

    private mutating func make(_ spec: LayerSpec, input: TensorShape, output: TensorShape) -> Layer {
        switch spec {
        case .linear(let i, let o, let bias):
            return Linear(inputs: i, outputs: o, bias: bias, capacity: capacity, allocator: &allocator)
        case .conv2d(let i, let o, let k, let s, let p, let bias):
            return Conv2d(inChannels: i, outChannels: o, kernelSize: k, stride: s, padding: p, bias: bias, shape: input,
                          output: output, capacity: capacity, chunkSize: plan.chunkSize, allocator: &allocator)
        case .batchNorm1d(_, let eps, let momentum), .batchNorm2d(_, let eps, let momentum):
            let norm = BatchNorm(index: norms.count, shape: input, epsilon: eps, momentum: momentum, capacity: capacity,
                                 maxChunks: plan.chunkCount, allocator: &allocator)
            norms.append(norm)
            return norm
        case .relu: return Activation(.relu, shape: input, capacity: capacity)
        case .sigmoid: return Activation(.sigmoid, shape: input, capacity: capacity)
        case .tanh: return Activation(.tanh, shape: input, capacity: capacity)
        case .flatten: return Flatten(shape: input)
        case .maxPool2d(let k, let s, let p):
            return MaxPool2d(window: PoolingWindow(kernelSize: k, stride: s, padding: p, input: input, output: output), capacity: capacity)
        case .avgPool2d(let k, let s, let p):
            return AvgPool2d(window: PoolingWindow(kernelSize: k, stride: s, padding: p, input: input, output: output), capacity: capacity)
        case .adaptiveAvgPool2d:
            return AdaptiveAvgPool2d(shape: input, capacity: capacity)
        case .dropout(let p):
            defer { dropouts += 1 }
            return Dropout(p: p, ordinal: dropouts, shape: input, capacity: capacity)
        case .residual(let body, let shortcut):
            let bodyLayers = build(body, input: input)
            let shortcutLayers = build(shortcut, input: input)
            return Residual(body: bodyLayers, shortcut: shortcutLayers, shape: input, output: output, capacity: capacity)
        }
    }
}
