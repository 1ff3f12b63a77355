/// `torch.nn.MaxPool2d(kernel_size, stride, padding)`: each output is the maximum of its k×k window (padding
/// counts as −∞). Backward sends each output's gradient to the position of its maximum — on ties the first in
/// scan order, as PyTorch does — accumulating where windows overlap.
public final class MaxPool2d: Layer {
    let window: PoolingWindow
    public var kernelSize: Int { window.kernelSize }
    public var stride: Int { window.stride }
    public var padding: Int { window.padding }
    public var inputShape: TensorShape { window.input }
    public var outputShape: TensorShape { window.output }
    private let output: Matrix
    private let inputGradient: Matrix
    /// Per output value of the last forward slice: the index of its maximum within the input sample.
    private let argmax: UnsafeMutablePointer<Int32>

    init(window: PoolingWindow, capacity: Int) {
        self.window = window
        output = Matrix(capacity: capacity, columns: window.output.count)
        inputGradient = Matrix(capacity: capacity, columns: window.input.count)
        argmax = .allocate(capacity: max(1, capacity * window.output.count))
        argmax.initialize(repeating: 0, count: max(1, capacity * window.output.count))
    }

    deinit { argmax.deallocate() }

    /// Pools one sample `x` into `y`, writing each maximum's position to `indices`.
    private func pool(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, indices: UnsafeMutablePointer<Int32>) {
        let (c, h, w) = (inputShape.channels, inputShape.height, inputShape.width)
        let (oh, ow) = (outputShape.height, outputShape.width)
        if kernelSize == 2 && stride == 2 && padding == 0 {
            // The common case, without window bounds: the four values in scan order, the first of equals winning.
            for ch in 0..<c {
                let plane = ch * h * w
                for i in 0..<oh {
                    let top = plane + 2 * i * w, out = (ch * oh + i) * ow
                    for j in 0..<ow {
                        let a = top + 2 * j
                        var best = x[a], index = a
                        if x[a + 1] > best { best = x[a + 1]; index = a + 1 }
                        if x[a + w] > best { best = x[a + w]; index = a + w }
                        if x[a + w + 1] > best { best = x[a + w + 1]; index = a + w + 1 }
                        y[out + j] = best
                        indices[out + j] = Int32(index)
                    }
                }
            }
            return
        }
        window.forEachOutput { o, rows, columns, plane in
            var index = plane + rows.lowerBound * w + columns.lowerBound
            var best = x[index]
            for row in rows {
                let line = plane + row * w
                for col in columns where x[line + col] > best { best = x[line + col]; index = line + col }
            }
            y[o] = best
            indices[o] = Int32(index)
        }
    }

    public func forward(_ x: Matrix, _ step: StepContext) throws -> Matrix {
        output.rows = x.rows
        let n = outputShape.count
        step.forEachChunk(work: x.count) { c, _ in
            for r in step.chunks[c] { pool(x.row(r), output.row(r), indices: argmax + r * n) }
        }
        return output
    }

    public func backward(_ dy: Matrix, _ step: StepContext) throws -> Matrix {
        inputGradient.rows = dy.rows
        let n = outputShape.count, width = inputShape.count
        step.forEachChunk(work: dy.rows * inputShape.count) { c, _ in
            for r in step.chunks[c] {
                let g = dy.row(r), dx = inputGradient.row(r), indices = argmax + r * n
                dx.update(repeating: 0, count: width)
                for o in 0..<n { dx[Int(indices[o])] += g[o] }
            }
        }
        return inputGradient
    }

    public func infer(_ x: Matrix, store: ParameterStore) -> Matrix {
        let y = Matrix(capacity: x.rows, columns: outputShape.count)
        withUnsafeTemporaryAllocation(of: Int32.self, capacity: outputShape.count) { scratch in
            for r in 0..<x.rows { pool(x.row(r), y.row(r), indices: scratch.baseAddress!) }
        }
        return y
    }
}
