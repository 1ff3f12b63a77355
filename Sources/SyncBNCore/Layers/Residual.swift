/// A residual block: output = body(x) + shortcut(x), where body and shortcut are layer sequences and an empty
/// shortcut is the identity (He et al. 2016). In PyTorch terms, a module with attributes `body` and
/// `shortcut` (each an `nn.Sequential`), so its state-dict names are `body.J.*` and `shortcut.J.*`.
///
/// Backward: ∂x = ∂body/∂x·dy + ∂shortcut/∂x·dy (dy itself for the identity). The body runs before the
/// shortcut in both directions, which fixes the order of their BatchNorm rounds.
public final class Residual: Layer {
    public let body: [Layer]
    public let shortcut: [Layer]
    public let inputShape: TensorShape
    public let outputShape: TensorShape
    private let output: Matrix
    private let inputGradient: Matrix

    init(body: [Layer], shortcut: [Layer], shape: TensorShape, output outputShape: TensorShape, capacity: Int) {
        self.body = body
        self.shortcut = shortcut
        inputShape = shape
        self.outputShape = outputShape
        output = Matrix(capacity: capacity, columns: outputShape.count)
        inputGradient = Matrix(capacity: capacity, columns: shape.count)
    }

    public var children: [(name: String, layer: Layer)] {
        body.enumerated().map { ("body.\($0.offset)", $0.element) } + shortcut.enumerated().map { ("shortcut.\($0.offset)", $0.element) }
    }

    public func initialize(_ store: ParameterStore, random: inout SplitMix64) {
        for layer in body + shortcut { layer.initialize(store, random: &random) }
    }

    public func forward(_ x: Matrix, _ step: StepContext) throws -> Matrix {
        var b = x
        for layer in body { b = try layer.forward(b, step) }
        var s = x
        for layer in shortcut { s = try layer.forward(s, step) }
        output.rows = x.rows
        Self.add(b, s, into: output, step)
        return output
    }

    public func backward(_ dy: Matrix, _ step: StepContext) throws -> Matrix {
        var b = dy
        for layer in body.reversed() { b = try layer.backward(b, step) }
        var s = dy
        for layer in shortcut.reversed() { s = try layer.backward(s, step) }
        inputGradient.rows = dy.rows
        Self.add(b, s, into: inputGradient, step)
        return inputGradient
    }

    /// out = a + b, chunk by chunk on the step's threads.
    private static func add(_ a: Matrix, _ b: Matrix, into out: Matrix, _ step: StepContext) {
        let width = out.columns
        step.forEachChunk(work: out.count) { c, _ in
            let rows = step.chunks[c], count = rows.count * width
            let o = out.row(rows.lowerBound), x = a.row(rows.lowerBound), y = b.row(rows.lowerBound)
            for i in 0..<count { o[i] = x[i] + y[i] }
        }
    }

    public func infer(_ x: Matrix, store: ParameterStore) -> Matrix {
        var b = x
        for layer in body { b = layer.infer(b, store: store) }
        var s = x
        for layer in shortcut { s = layer.infer(s, store: store) }
        let y = Matrix(capacity: x.rows, columns: outputShape.count)
        for i in 0..<y.count { y.storage[i] = b.storage[i] + s.storage[i] }
        return y
    }
}
