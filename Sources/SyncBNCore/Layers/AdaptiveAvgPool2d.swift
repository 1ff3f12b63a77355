/// `torch.nn.AdaptiveAvgPool2d(1)`, global average pooling: [C, H, W] → [C, 1, 1], each channel's mean over
/// its H·W values (summed in Float64). Backward: every position of channel c receives dy_c/(H·W).
public final class AdaptiveAvgPool2d: Layer {
    public let inputShape: TensorShape
    public let outputShape: TensorShape
    private let output: Matrix
    private let inputGradient: Matrix

    init(shape: TensorShape, capacity: Int) {
        inputShape = shape
        outputShape = TensorShape(checked: [shape.channels, 1, 1])
        output = Matrix(capacity: capacity, columns: shape.channels)
        inputGradient = Matrix(capacity: capacity, columns: shape.count)
    }

    private func pool(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        let plane = inputShape.spatialSize
        for c in 0..<inputShape.channels {
            var sum = 0.0
            for i in (c * plane)..<((c + 1) * plane) { sum += Double(x[i]) }
            y[c] = Float(sum / Double(plane))
        }
    }

    public func forward(_ x: Matrix, _ step: StepContext) throws -> Matrix {
        output.rows = x.rows
        step.forEachChunk(work: x.count) { c, _ in
            for r in step.chunks[c] { pool(x.row(r), output.row(r)) }
        }
        return output
    }

    public func backward(_ dy: Matrix, _ step: StepContext) throws -> Matrix {
        inputGradient.rows = dy.rows
        let plane = inputShape.spatialSize, scale = 1 / Float(plane)
        step.forEachChunk(work: dy.rows * inputShape.count) { chunk, _ in
            for r in step.chunks[chunk] {
                let g = dy.row(r), dx = inputGradient.row(r)
                for c in 0..<inputShape.channels {
                    let value = g[c] * scale
                    (dx + c * plane).update(repeating: value, count: plane)
                }
            }
        }
        return inputGradient
    }

    public func infer(_ x: Matrix, store: ParameterStore) -> Matrix {
        let y = Matrix(capacity: x.rows, columns: inputShape.channels)
        for r in 0..<x.rows { pool(x.row(r), y.row(r)) }
        return y
    }
}
