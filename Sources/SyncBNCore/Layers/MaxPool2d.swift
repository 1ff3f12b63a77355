/// `torch.nn.MaxPool2d(kernel_size, stride, padding)`: each output is the maximum of its k×k window (padding
/// counts as −∞). Backward sends each output's gradient to the position of its maximum — on ties the first in
/// scan order, as PyTorch does — accumulating where windows overlap.
public final class MaxPool2d: Layer {
    public let kernelSize: Int
    public let stride: Int
    public let padding: Int
    public let inputShape: TensorShape
    public let outputShape: TensorShape
    private let output: Matrix
    private let inputGradient: Matrix
    /// Per output value of the last forward slice: the index of its maximum within the input sample.
    private let argmax: UnsafeMutablePointer<Int32>

    init(kernelSize: Int, stride: Int, padding: Int, shape: TensorShape, output outputShape: TensorShape, capacity: Int) {
        self.kernelSize = kernelSize
        self.stride = stride
        self.padding = padding
        inputShape = shape
        self.outputShape = outputShape
        output = Matrix(capacity: capacity, columns: outputShape.count)
        inputGradient = Matrix(capacity: capacity, columns: shape.count)
        argmax = .allocate(capacity: max(1, capacity * outputShape.count))
        argmax.initialize(repeating: 0, count: max(1, capacity * outputShape.count))
    }

    deinit { argmax.deallocate() }

    /// Pools one sample `x` into `y`, writing the maxima's positions to `indices` if given.
    private func pool(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, indices: UnsafeMutablePointer<Int32>?) {
        let (c, h, w) = (inputShape.channels, inputShape.height, inputShape.width)
        let (oh, ow) = (outputShape.height, outputShape.width)
        for ch in 0..<c {
            let plane = ch * h * w
            for i in 0..<oh {
                for j in 0..<ow {
                    var best = -Float.infinity, bestIndex = -1
                    for ki in 0..<kernelSize {
                        let row = i * stride - padding + ki
                        guard row >= 0 && row < h else { continue }
                        for kj in 0..<kernelSize {
                            let col = j * stride - padding + kj
                            guard col >= 0 && col < w else { continue }
                            let index = plane + row * w + col
                            if x[index] > best || bestIndex < 0 { best = x[index]; bestIndex = index }
                        }
                    }
                    let o = (ch * oh + i) * ow + j
                    y[o] = best
                    indices?[o] = Int32(bestIndex)
                }
            }
        }
    }

    public func forward(_ x: Matrix, _ step: StepContext) throws -> Matrix {
        output.rows = x.rows
        let n = outputShape.count
        for r in 0..<x.rows { pool(x.row(r), output.row(r), indices: argmax + r * n) }
        return output
    }

    public func backward(_ dy: Matrix, _ step: StepContext) throws -> Matrix {
        inputGradient.rows = dy.rows
        inputGradient.elements.update(repeating: 0)
        let n = outputShape.count
        for r in 0..<dy.rows {
            let g = dy.row(r), dx = inputGradient.row(r), indices = argmax + r * n
            for o in 0..<n { dx[Int(indices[o])] += g[o] }
        }
        return inputGradient
    }

    public func infer(_ x: Matrix, store: ParameterStore) -> Matrix {
        let y = Matrix(capacity: x.rows, columns: outputShape.count)
        for r in 0..<x.rows { pool(x.row(r), y.row(r), indices: nil) }
        return y
    }
}
