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
                for i in 0..<oh {
                    let top = ch * h * w + 2 * i * w, out = (ch * oh + i) * ow
                    Self.pool2x2(x, top: top, width: w, count: ow, into: y + out, indices: indices + out)
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

    /// One row of 2×2 windows, stride 2: output j is the maximum of x[top + 2j], x[top + 2j + 1], x[top + w + 2j],
    /// x[top + w + 2j + 1], taken in that order with `>` (the first of equals wins; a NaN first stays, a NaN later
    /// is passed over), and its index. Eight windows at a time in SIMD lanes (the same comparisons per lane),
    /// then four, the rest one by one without branches: the comparisons of a max over data are a coin toss
    /// for a branch predictor.
    @inline(__always)
    static func pool2x2(_ x: UnsafePointer<Float>, top: Int, width w: Int, count: Int, into y: UnsafeMutablePointer<Float>,
                        indices: UnsafeMutablePointer<Int32>) {
        var j = 0
        let even = SIMD8<Int32>(0, 2, 4, 6, 8, 10, 12, 14)
        while j + 8 <= count {
            let a = top + 2 * j
            let (best, index) = largest(upper: UnsafeRawPointer(x + a).loadUnaligned(as: SIMD16<Float>.self),
                                        lower: UnsafeRawPointer(x + a + w).loadUnaligned(as: SIMD16<Float>.self),
                                        first: SIMD8<Int32>(repeating: Int32(a)) &+ even, width: w)
            UnsafeMutableRawPointer(y + j).storeBytes(of: best, as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(indices + j).storeBytes(of: index, as: SIMD8<Int32>.self)
            j += 8
        }
        if j + 4 <= count {  // four windows (a row of 7, or the rest of 14): the same lanes, their second half a copy
            let a = top + 2 * j
            let upper = UnsafeRawPointer(x + a).loadUnaligned(as: SIMD8<Float>.self)
            let lower = UnsafeRawPointer(x + a + w).loadUnaligned(as: SIMD8<Float>.self)
            let (best, index) = largest(upper: SIMD16(lowHalf: upper, highHalf: upper), lower: SIMD16(lowHalf: lower, highHalf: lower),
                                        first: SIMD8<Int32>(repeating: Int32(a)) &+ even, width: w)
            UnsafeMutableRawPointer(y + j).storeBytes(of: best.lowHalf, as: SIMD4<Float>.self)
            UnsafeMutableRawPointer(indices + j).storeBytes(of: index.lowHalf, as: SIMD4<Int32>.self)
            j += 4
        }
        while j < count {
            let a = top + 2 * j
            var best = x[a], index = a
            @inline(__always) func consider(_ position: Int) {
                let value = x[position], larger = value > best
                best = larger ? value : best
                index = larger ? position : index
            }
            consider(a + 1)
            consider(a + w)
            consider(a + w + 1)
            y[j] = best
            indices[j] = Int32(index)
            j += 1
        }
    }

    /// Lane by lane, the largest of eight windows' four values in scan order — `upper`'s even and odd lanes, then
    /// `lower`'s (positions `first`, +1, +w, +w+1) — by `pool2x2`'s rule, and its index.
    @inline(__always)
    private static func largest(upper: SIMD16<Float>, lower: SIMD16<Float>, first: SIMD8<Int32>, width w: Int) -> (SIMD8<Float>, SIMD8<Int32>) {
        var best = upper.evenHalf, index = first
        let right = SIMD8<Int32>(repeating: 1), down = SIMD8<Int32>(repeating: Int32(w))
        @inline(__always) func consider(_ value: SIMD8<Float>, _ position: SIMD8<Int32>) {
            let larger = value .> best
            best.replace(with: value, where: larger)
            index.replace(with: position, where: larger)
        }
        consider(upper.oddHalf, first &+ right)
        consider(lower.evenHalf, first &+ down)
        consider(lower.oddHalf, first &+ down &+ right)
        return (best, index)
    }

    public func forward(_ x: Matrix, _ step: StepContext) throws -> Matrix {
        output.rows = x.rows
        let n = outputShape.count
        step.forEachChunk(work: x.count, splittingRows: { _, rows, _ in
            for r in rows { pool(x.row(r), output.row(r), indices: argmax + r * n) }
        })
        return output
    }

    public func backward(_ dy: Matrix, _ step: StepContext) throws -> Matrix {
        inputGradient.rows = dy.rows
        let n = outputShape.count, width = inputShape.count
        step.forEachChunk(work: dy.rows * inputShape.count, splittingRows: { _, rows, _ in
            for r in rows {
                let g = dy.row(r), dx = inputGradient.row(r), indices = argmax + r * n
                dx.update(repeating: 0, count: width)
                for o in 0..<n { dx[Int(indices[o])] += g[o] }
            }
        })
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
