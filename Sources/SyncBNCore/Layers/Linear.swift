/// A fully connected layer, y = x·Wᵀ + b, with W of shape [outputs, inputs] as in `torch.nn.Linear`.
///
/// Forward and backward run chunk by chunk (one `sgemm` per chunk), so that each chunk's results do not
/// depend on how many other rows the process holds: OpenBLAS may pick a different kernel, and so a
/// different summation order, for a different number of rows.
public final class Linear {
    public let inputs: Int
    public let outputs: Int
    /// Offsets of W and b in the parameter store.
    public let weightOffset: Int
    public let biasOffset: Int
    public let output: Matrix
    /// ∂L/∂x, for the layer below (unused for the first layer).
    public let inputGradient: Matrix

    init(inputs: Int, outputs: Int, weightOffset: Int, biasOffset: Int, capacity: Int) {
        self.inputs = inputs
        self.outputs = outputs
        self.weightOffset = weightOffset
        self.biasOffset = biasOffset
        output = Matrix(capacity: capacity, columns: outputs)
        inputGradient = Matrix(capacity: capacity, columns: inputs)
    }

    /// PyTorch's default initialization: W and b uniform on ±1/√inputs.
    func initialize(_ store: ParameterStore, random: inout SplitMix64) {
        let bound = 1 / Float(inputs).squareRoot()
        for i in 0..<(inputs * outputs) { store.values[weightOffset + i] = random.uniform(-bound, bound) }
        for i in 0..<outputs { store.values[biasOffset + i] = random.uniform(-bound, bound) }
    }

    /// y = x·Wᵀ + b for every row of every chunk.
    func forward(_ x: Matrix, chunks: [Range<Int>], store: ParameterStore) -> Matrix {
        output.rows = x.rows
        let weight = store.values + weightOffset, bias = store.values + biasOffset
        for rows in chunks where !rows.isEmpty {
            let y = output.row(rows.lowerBound)
            for r in 0..<rows.count { (y + r * outputs).update(from: bias, count: outputs) }
            BLAS.gemm(transposeA: false, transposeB: true, m: rows.count, n: outputs, k: inputs,
                      a: x.row(rows.lowerBound), lda: inputs, b: weight, ldb: inputs,
                      beta: 1, c: y, ldc: outputs)
        }
        return output
    }

    /// Per chunk c, if `weightGradient`: ∂W_c = dyᵀ·x, ∂b_c = Σ_rows dy, written at this layer's offsets in
    /// the chunk's gradient row (`gradients + c·gradientWidth`). Then ∂x = dy·W if `needsInputGradient`.
    func backward(
        _ dy: Matrix, input x: Matrix, chunks: [Range<Int>], store: ParameterStore,
        gradients: UnsafeMutablePointer<Float>, gradientWidth: Int, weightGradient: Bool = true, needsInputGradient: Bool
    ) -> Matrix {
        for (c, rows) in chunks.enumerated() where weightGradient {
            let chunkGradient = gradients + c * gradientWidth
            BLAS.gemm(transposeA: true, transposeB: false, m: outputs, n: inputs, k: rows.count,
                      a: dy.row(rows.lowerBound), lda: outputs, b: x.row(rows.lowerBound), ldb: inputs,
                      c: chunkGradient + weightOffset, ldc: inputs)
            let biasGradient = chunkGradient + biasOffset
            for o in 0..<outputs { biasGradient[o] = 0 }
            for r in rows {
                let g = dy.row(r)
                for o in 0..<outputs { biasGradient[o] += g[o] }
            }
        }
        inputGradient.rows = dy.rows
        if needsInputGradient {
            let weight = store.values + weightOffset
            for rows in chunks where !rows.isEmpty {
                BLAS.gemm(transposeA: false, transposeB: false, m: rows.count, n: inputs, k: outputs,
                          a: dy.row(rows.lowerBound), lda: outputs, b: weight, ldb: inputs,
                          c: inputGradient.row(rows.lowerBound), ldc: inputs)
            }
        }
        return inputGradient
    }

    /// y = x·Wᵀ + b for a batch of any size, into a new matrix (evaluation).
    func infer(_ x: Matrix, store: ParameterStore) -> Matrix {
        let y = Matrix(capacity: x.rows, columns: outputs)
        forward(x, into: y, store: store)
        return y
    }

    private func forward(_ x: Matrix, into y: Matrix, store: ParameterStore) {
        let bias = store.values + biasOffset
        for r in 0..<x.rows { y.row(r).update(from: bias, count: outputs) }
        BLAS.gemm(transposeA: false, transposeB: true, m: x.rows, n: outputs, k: inputs,
                  a: x.storage, lda: inputs, b: store.values + weightOffset, ldb: inputs,
                  beta: 1, c: y.storage, ldc: outputs)
    }
}
