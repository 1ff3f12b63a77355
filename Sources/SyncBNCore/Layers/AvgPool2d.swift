/// `torch.nn.AvgPool2d(kernel_size, stride, padding)` with PyTorch's defaults (`count_include_pad=True`):
/// each output is the sum of its k×k window divided by k², padding counting as zeros.
/// Backward: every input position of a window receives dy/k², accumulated where windows overlap.
public final class AvgPool2d: Layer {
    public let kernelSize: Int
    public let stride: Int
    public let padding: Int
    public let inputShape: TensorShape
    public let outputShape: TensorShape
    private let output: Matrix
    private let inputGradient: Matrix

    init(kernelSize: Int, stride: Int, padding: Int, shape: TensorShape, output outputShape: TensorShape, capacity: Int) {
        self.kernelSize = kernelSize
        self.stride = stride
        self.padding = padding
        inputShape = shape
        self.outputShape = outputShape
        output = Matrix(capacity: capacity, columns: outputShape.count)
        inputGradient = Matrix(capacity: capacity, columns: shape.count)
    }

    /// Calls `body(output index, input index)` for every input position of every output's window, in scan order.
    @inline(__always)
    private func forEachWindowPosition(_ body: (Int, Int) -> Void) {
        let (c, h, w) = (inputShape.channels, inputShape.height, inputShape.width)
        let (oh, ow) = (outputShape.height, outputShape.width)
        for ch in 0..<c {
            for i in 0..<oh {
                for j in 0..<ow {
                    let o = (ch * oh + i) * ow + j
                    for ki in 0..<kernelSize {
                        let row = i * stride - padding + ki
                        guard row >= 0 && row < h else { continue }
                        for kj in 0..<kernelSize {
                            let col = j * stride - padding + kj
                            guard col >= 0 && col < w else { continue }
                            body(o, (ch * h + row) * w + col)
                        }
                    }
                }
            }
        }
    }

    private func pool(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
        let n = outputShape.count
        y.update(repeating: 0, count: n)
        forEachWindowPosition { o, i in y[o] += x[i] }
        let scale = 1 / Float(kernelSize * kernelSize)
        for o in 0..<n { y[o] *= scale }
    }

    public func forward(_ x: Matrix, _ step: StepContext) throws -> Matrix {
        output.rows = x.rows
        for r in 0..<x.rows { pool(x.row(r), output.row(r)) }
        return output
    }

    public func backward(_ dy: Matrix, _ step: StepContext) throws -> Matrix {
        inputGradient.rows = dy.rows
        inputGradient.elements.update(repeating: 0)
        let scale = 1 / Float(kernelSize * kernelSize)
        for r in 0..<dy.rows {
            let g = dy.row(r), dx = inputGradient.row(r)
            forEachWindowPosition { o, i in dx[i] += g[o] * scale }
        }
        return inputGradient
    }

    public func infer(_ x: Matrix, store: ParameterStore) -> Matrix {
        let y = Matrix(capacity: x.rows, columns: outputShape.count)
        for r in 0..<x.rows { pool(x.row(r), y.row(r)) }
        return y
    }
}
