/// `torch.nn.AvgPool2d(kernel_size, stride, padding)` with PyTorch's defaults (`count_include_pad=True`):
/// each output is the sum of its k×k window divided by k², padding counting as zeros.
/// Backward: every input position of a window receives dy/k², accumulated where windows overlap.
public final class AvgPool2d: Layer {
    let window: PoolingWindow
    public var kernelSize: Int { window.kernelSize }
    public var stride: Int { window.stride }
    public var padding: Int { window.padding }
    public var inputShape: TensorShape { window.input }
    public var outputShape: TensorShape { window.output }
    private let output: Matrix
    private let inputGradient: Matrix

    init(window: PoolingWindow, capacity: Int) {
        self.window = window
        output = Matrix(capacity: capacity, columns: window.output.count)
        inputGradient = Matrix(capacity: capacity, columns: window.input.count)
    }

    private func pool(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        let scale = 1 / Float(kernelSize * kernelSize), w = inputShape.width
        window.forEachOutput { o, rows, columns, plane in
            var sum: Float = 0
            for row in rows { for col in columns { sum += x[plane + row * w + col] } }
            y[o] = sum * scale
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
        let scale = 1 / Float(kernelSize * kernelSize), w = inputShape.width, width = inputShape.count
        step.forEachChunk(work: dy.rows * inputShape.count) { c, _ in
            for r in step.chunks[c] {
                let g = dy.row(r), dx = inputGradient.row(r)
                dx.update(repeating: 0, count: width)
                window.forEachOutput { o, rows, columns, plane in
                    let share = g[o] * scale
                    for row in rows { for col in columns { dx[plane + row * w + col] += share } }
                }
            }
        }
        return inputGradient
    }

    public func infer(_ x: Matrix, store: ParameterStore) -> Matrix {
        let y = Matrix(capacity: x.rows, columns: outputShape.count)
        for r in 0..<x.rows { pool(x.row(r), y.row(r)) }
        return y
    }
}
