/// `torch.nn.Flatten`: a [C, H, W] sample becomes [C·H·W] in row-major CHW order. Samples are already
/// stored that way, one per row, so forward and backward pass their matrix through unchanged.
public final class Flatten: Layer {
    public let inputShape: TensorShape
    public let outputShape: TensorShape

    init(shape: TensorShape) {
        inputShape = shape
        outputShape = TensorShape(checked: [shape.count])
    }

    public func forward(_ x: Matrix, _ step: StepContext) throws -> Matrix { x }
    public func backward(_ dy: Matrix, _ step: StepContext) throws -> Matrix { dy }
    public func infer(_ x: Matrix, store: ParameterStore) -> Matrix { x }
}
