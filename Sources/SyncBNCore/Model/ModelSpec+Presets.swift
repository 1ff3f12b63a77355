/// The built-in architectures `--model` names. Each is also shipped as a model file in `Examples/models/`.
extension ModelSpec {
    public static let presetNames = ["bn-mlp", "wide-mlp", "bn-cnn", "resnet20"]

    /// One line per preset, for `--help`.
    public static let presetSummaries = [
        "bn-mlp: the Batch Normalization paper's MNIST net, 3 × (Linear 100, BN, sigmoid), Linear",
        "wide-mlp: 3 × (Linear 1024, BN, sigmoid), Linear",
        "bn-cnn: 2 × (Conv 3×3, BN2d, ReLU, MaxPool 2) with 32 and 64 channels, Linear 128, BN, ReLU, Linear",
        "resnet20: He et al.'s CIFAR ResNet (16/32/64 channels, 3 × 3 basic blocks), global average pool, Linear",
    ]

    /// The preset `name` for samples of shape `input` and `classes` classes, or nil for an unknown name.
    /// The MLPs flatten the input themselves (their first layer takes input.count features), so that their
    /// state-dict names are those of the Batch Normalization paper's network (`0.weight` is [100, 784]).
    public static func preset(_ name: String, input: TensorShape, classes: Int, batchNorm: BatchNormMode = .sync) throws -> ModelSpec? {
        let layers: [LayerSpec]
        var shape = input
        switch name {
        case "bn-mlp", "wide-mlp":
            shape = try TensorShape([input.count])
            layers = mlp(inputs: input.count, hidden: name == "bn-mlp" ? [100, 100, 100] : [1024, 1024, 1024], classes: classes,
                         activation: .sigmoid)
        case "bn-cnn":
            guard input.isImage else { throw ModelError("bn-cnn takes images [channels, height, width], but the data's samples are \(input)") }
            let flat = 64 * (input.height / 2 / 2) * (input.width / 2 / 2)
            layers = [
                .conv2d(inChannels: input.channels, outChannels: 32, kernelSize: 3, stride: 1, padding: 1, bias: true),
                .batchNorm2d(numFeatures: 32, eps: BatchNorm.defaultEpsilon, momentum: BatchNorm.defaultMomentum), .relu,
                .maxPool2d(kernelSize: 2, stride: 2, padding: 0),
                .conv2d(inChannels: 32, outChannels: 64, kernelSize: 3, stride: 1, padding: 1, bias: true),
                .batchNorm2d(numFeatures: 64, eps: BatchNorm.defaultEpsilon, momentum: BatchNorm.defaultMomentum), .relu,
                .maxPool2d(kernelSize: 2, stride: 2, padding: 0),
                .flatten,
                .linear(inFeatures: flat, outFeatures: 128, bias: true),
                .batchNorm1d(numFeatures: 128, eps: BatchNorm.defaultEpsilon, momentum: BatchNorm.defaultMomentum), .relu,
                .linear(inFeatures: 128, outFeatures: classes, bias: true),
            ]
        case "resnet20":
            guard input.isImage else { throw ModelError("resnet20 takes images [channels, height, width], but the data's samples are \(input)") }
            layers = resnet(inputChannels: input.channels, blocksPerStage: 3, classes: classes)
        default:
            return nil
        }
        return try ModelSpec(name: name, input: shape, layers: layers, batchNorm: batchNorm)
    }

    /// [Linear, BatchNorm1d, activation] per hidden layer, then a Linear classifier.
    public static func mlp(inputs: Int, hidden: [Int], classes: Int, activation: LayerSpec = .sigmoid, batchNorm: Bool = true) -> [LayerSpec] {
        var layers: [LayerSpec] = []
        var width = inputs
        for h in hidden {
            layers.append(.linear(inFeatures: width, outFeatures: h, bias: true))
            if batchNorm { layers.append(.batchNorm1d(numFeatures: h, eps: BatchNorm.defaultEpsilon, momentum: BatchNorm.defaultMomentum)) }
            layers.append(activation)
            width = h
        }
        layers.append(.linear(inFeatures: width, outFeatures: classes, bias: true))
        return layers
    }

    /// He et al.'s CIFAR ResNet-(6n+2): a 3×3 convolution to 16 channels, three stages of n basic blocks with
    /// 16, 32 and 64 channels (the first block of stages 2 and 3 halves the resolution with stride 2 and has a
    /// 1×1 convolution + BatchNorm shortcut), global average pooling and a Linear classifier.
    ///
    /// Reference: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016, §4.2.
    public static func resnet(inputChannels: Int, blocksPerStage n: Int, classes: Int) -> [LayerSpec] {
        func bn(_ c: Int) -> LayerSpec { .batchNorm2d(numFeatures: c, eps: BatchNorm.defaultEpsilon, momentum: BatchNorm.defaultMomentum) }
        func conv(_ i: Int, _ o: Int, stride: Int) -> LayerSpec {
            .conv2d(inChannels: i, outChannels: o, kernelSize: 3, stride: stride, padding: 1, bias: false)
        }
        var layers: [LayerSpec] = [conv(inputChannels, 16, stride: 1), bn(16), .relu]
        var channels = 16
        for (stage, width) in [16, 32, 64].enumerated() {
            for block in 0..<n {
                let stride = stage > 0 && block == 0 ? 2 : 1
                let shortcut: [LayerSpec] = stride == 1 && channels == width ? [] :
                    [.conv2d(inChannels: channels, outChannels: width, kernelSize: 1, stride: stride, padding: 0, bias: false), bn(width)]
                layers.append(.residual(body: [conv(channels, width, stride: stride), bn(width), .relu, conv(width, width, stride: 1), bn(width)],
                                        shortcut: shortcut))
                layers.append(.relu)
                channels = width
            }
        }
        layers += [.adaptiveAvgPool2d(outputSize: 1), .flatten, .linear(inFeatures: 64, outFeatures: classes, bias: true)]
        return layers
    }
}
