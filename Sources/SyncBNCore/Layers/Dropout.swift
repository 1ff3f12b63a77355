/// `torch.nn.Dropout(p)` in training: each value is kept with probability 1 − p and scaled by 1/(1 − p), or
/// zeroed; evaluation passes x through. Backward: ∂x = dy·mask/(1 − p).
///
/// The mask is a pure function of (seed, step, the sample's row in the global batch, this layer's ordinal
/// among the network's Dropout layers, the value's position in the sample), drawn with `SplitMix64`, so it is
/// the same whichever worker holds the sample and however many workers there are.
public final class Dropout: Layer {
    public let p: Double
    /// Position among the network's Dropout layers, which separates their masks.
    public let ordinal: Int
    public let inputShape: TensorShape
    public var outputShape: TensorShape { inputShape }
    private let output: Matrix
    private let inputGradient: Matrix
    /// 0 or 1/(1 − p) per value of the last forward slice.
    private let mask: Matrix

    init(p: Double, ordinal: Int, shape: TensorShape, capacity: Int) {
        self.p = p
        self.ordinal = ordinal
        inputShape = shape
        output = Matrix(capacity: capacity, columns: shape.count)
        inputGradient = Matrix(capacity: capacity, columns: shape.count)
        mask = Matrix(capacity: capacity, columns: shape.count)
    }

    /// Fills `mask` row `row` for global batch row `globalRow` of `step`: a value is kept when the top 53 bits
    /// of its draw, as a fraction of 2⁵³, are ≥ p.
    static func fillMask(_ mask: UnsafeMutablePointer<Float>, count: Int, p: Double, seed: UInt64, step: Int, globalRow: Int, ordinal: Int) {
        var random = SplitMix64(seed: seed ^ (UInt64(truncatingIfNeeded: step) &* 0x9E37_79B9_7F4A_7C15),
                                stream: (UInt64(truncatingIfNeeded: globalRow) << 8) | UInt64(truncatingIfNeeded: ordinal & 0xFF) | (1 << 62))
        let scale = Float(1 / (1 - p))
        for i in 0..<count {
            let unit = Double(random.next() >> 11) * 0x1p-53
            mask[i] = unit >= p ? scale : 0
        }
    }

    public func forward(_ x: Matrix, _ step: StepContext) throws -> Matrix {
        output.rows = x.rows
        mask.rows = x.rows
        let width = inputShape.count
        step.forEachChunk(work: x.count) { c, _ in
            for r in step.chunks[c] {
                Self.fillMask(mask.row(r), count: width, p: p, seed: step.seed, step: step.step, globalRow: step.firstGlobalRow + r, ordinal: ordinal)
                let m = mask.row(r), xs = x.row(r), y = output.row(r)
                for i in 0..<width { y[i] = xs[i] * m[i] }
            }
        }
        return output
    }

    public func backward(_ dy: Matrix, _ step: StepContext) throws -> Matrix {
        inputGradient.rows = dy.rows
        let width = inputShape.count
        step.forEachChunk(work: dy.count) { c, _ in
            let rows = step.chunks[c], count = rows.count * width
            let m = mask.row(rows.lowerBound), g = dy.row(rows.lowerBound), dx = inputGradient.row(rows.lowerBound)
            for i in 0..<count { dx[i] = g[i] * m[i] }
        }
        return inputGradient
    }

    public func infer(_ x: Matrix, store: ParameterStore) -> Matrix { x }
}
