/// The architecture of a multi-layer perceptron: [Linear, BatchNorm?, activation] per hidden layer,
/// then a Linear classifier.
public struct ModelSpec: Codable, Equatable, Sendable {
    public var name: String
    public var inputSize: Int
    public var hiddenSizes: [Int]
    public var classes: Int
    public var activation: Activation
    public var batchNorm: BatchNormMode

    public init(name: String, inputSize: Int, hiddenSizes: [Int], classes: Int, activation: Activation, batchNorm: BatchNormMode) {
        self.name = name
        self.inputSize = inputSize
        self.hiddenSizes = hiddenSizes
        self.classes = classes
        self.activation = activation
        self.batchNorm = batchNorm
    }

    /// The names `--model` accepts.
    public static let names = ["bn-mlp", "wide-mlp"]

    /// `bn-mlp`: the network of the Batch Normalization paper's MNIST experiment, three hidden layers of
    /// 100 sigmoid units. `wide-mlp`: 784-1024-1024-1024-10, for measuring speed on larger matrices.
    public static func named(_ name: String, batchNorm: BatchNormMode, inputSize: Int = 784, classes: Int = 10) -> ModelSpec? {
        switch name {
        case "bn-mlp":
            ModelSpec(name: name, inputSize: inputSize, hiddenSizes: [100, 100, 100], classes: classes, activation: .sigmoid, batchNorm: batchNorm)
        case "wide-mlp":
            ModelSpec(name: name, inputSize: inputSize, hiddenSizes: [1024, 1024, 1024], classes: classes, activation: .sigmoid, batchNorm: batchNorm)
        default:
            nil
        }
    }

    public var hasBatchNorm: Bool { batchNorm != .none }

    /// Layer sizes from input to output.
    public var widths: [Int] { [inputSize] + hiddenSizes + [classes] }

    /// Index of each layer in the equivalent `torch.nn.Sequential`, which names its state_dict entries:
    /// per hidden layer i, its Linear, BatchNorm (if any) and activation; then the classifier.
    public var sequentialIndices: (linear: [Int], batchNorm: [Int]) {
        var linear: [Int] = [], norms: [Int] = [], next = 0
        for _ in hiddenSizes {
            linear.append(next); next += 1
            if hasBatchNorm { norms.append(next); next += 1 }
            next += 1
        }
        linear.append(next)
        return (linear, norms)
    }
}
