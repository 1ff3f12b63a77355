import Foundation

/// Element-wise non-linearities, `torch.nn.ReLU`, `Sigmoid` and `Tanh`. Backward uses the forward output y:
///   sigmoid: y = 1/(1 + e^(−x)),  ∂y/∂x = y·(1 − y)
///   relu:    y = max(x, 0),        ∂y/∂x = 1 if y > 0, else 0
///   tanh:    y = tanh(x),          ∂y/∂x = 1 − y²
public final class Activation: Layer {
    public enum Kind: String, Sendable { case relu, sigmoid, tanh }

    public let kind: Kind
    public let inputShape: TensorShape
    public var outputShape: TensorShape { inputShape }
    private let output: Matrix
    private let inputGradient: Matrix
    /// The forward pass's y: `output`, or the rectified matrix a BatchNorm handed over.
    private var lastOutput: Matrix?
    /// Whether the last forward pass took a BatchNorm's rectified output and passed it on (for tests).
    var passedOnRectifiedInput: Bool { lastOutput.map { $0 !== output } ?? false }

    init(_ kind: Kind, shape: TensorShape, capacity: Int) {
        self.kind = kind
        inputShape = shape
        output = Matrix(capacity: capacity, columns: shape.count)
        inputGradient = Matrix(capacity: capacity, columns: shape.count)
    }

    public func forward(_ x: Matrix, _ step: StepContext) throws -> Matrix {
        if kind == .relu, let rectified = step.rectified, rectified === x {  // the BatchNorm before did it
            step.rectified = nil
            lastOutput = x
            return x
        }
        step.rectified = nil
        step.observe(self, x)
        lastOutput = output
        output.rows = x.rows
        let width = x.columns
        step.forEachChunk(work: x.count) { c, _ in
            let rows = step.chunks[c]
            Self.apply(kind, x.row(rows.lowerBound), output.row(rows.lowerBound), count: rows.count * width)
        }
        return output
    }

    public func backward(_ dy: Matrix, _ step: StepContext) throws -> Matrix {
        if kind == .relu, passedOnRectifiedInput {  // the BatchNorm before masks dy in its own passes
            step.unmaskedReLUGradient = dy
            return dy
        }
        let output = lastOutput ?? self.output
        inputGradient.rows = dy.rows
        let width = dy.columns
        step.forEachChunk(work: dy.count) { c, _ in
            let rows = step.chunks[c], count = rows.count * width
            let y = output.row(rows.lowerBound), g = dy.row(rows.lowerBound), dx = inputGradient.row(rows.lowerBound)
            switch kind {
            case .sigmoid:
                for i in 0..<count { dx[i] = g[i] * (y[i] * (1 - y[i])) }
            case .relu:
                Self.reluBackward(y, g, dx, count: count)
            case .tanh:
                for i in 0..<count { dx[i] = g[i] * (1 - y[i] * y[i]) }
            }
        }
        return inputGradient
    }

    public func infer(_ x: Matrix, store: ParameterStore) -> Matrix {
        let y = Matrix(capacity: x.rows, columns: inputShape.count)
        Self.apply(kind, x.storage, y.storage, count: x.count)
        return y
    }

    /// dx = dy where y > 0, else 0; sixteen lanes at a time.
    private static func reluBackward(_ y: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ dx: UnsafeMutablePointer<Float>, count: Int) {
        let lanes = 16, whole = count / lanes * lanes
        var i = 0
        while i < whole {
            let yv = UnsafeRawPointer(y + i).loadUnaligned(as: SIMD16<Float>.self)
            let gv = UnsafeRawPointer(g + i).loadUnaligned(as: SIMD16<Float>.self)
            UnsafeMutableRawPointer(dx + i).storeBytes(of: gv.replacing(with: 0, where: yv .<= 0), as: SIMD16<Float>.self)
            i += lanes
        }
        for j in whole..<count { dx[j] = y[j] > 0 ? g[j] : 0 }
    }

    /// y = f(x), element by element.
    static func apply(_ kind: Kind, _ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        switch kind {
        case .sigmoid:
            VectorExp.sigmoid(x, y, count: count)
        case .relu:
            VectorKernels.relu(x, y, count: count)
        case .tanh:
            for i in 0..<count { y[i] = tanhf(x[i]) }
        }
    }
}
