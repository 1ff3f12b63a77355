/// A fully connected layer, `torch.nn.Linear`: y = x·Wᵀ + b, with W of shape [outputs, inputs].
///
/// Backward, per chunk c of the slice: ∂W_c = dy_cᵀ·x_c and ∂b_c = Σ_rows dy_c (its partial gradients), and
/// ∂x = dy·W. When the network sends this layer's gradient as factors (`sendsFactors`), the partials are not
/// computed here: the rows of x and dy travel instead, and every replica forms ∂W from them
/// (`GradientExchange`).
///
/// The weight gradient is a sum over the batch: it is formed chunk by chunk (one `sgemm` per chunk). The
/// forward product and ∂x are per sample: they run over a whole run of chunks in one `sgemm` where
/// `RowwiseProducts` has checked that OpenBLAS then gives every row the bits of its chunk's own call, and
/// chunk by chunk where it does not (OpenBLAS may pick a different kernel, and so a different summation
/// order, for a different number of rows). Either way no row depends on how many rows a process holds.
public final class Linear: Layer {
    public let inputs: Int
    public let outputs: Int
    public let weight: ParameterTensor
    public let bias: ParameterTensor?
    public let inputShape: TensorShape
    public let outputShape: TensorShape
    public let output: Matrix
    /// ∂L/∂x, for the layer below.
    public let inputGradient: Matrix
    /// Set by the network: this layer's gradient travels as factor rows, not as per-chunk partials.
    public internal(set) var sendsFactors = false
    /// Cleared by the network for its first layer, whose input gradient nobody needs.
    public internal(set) var computesInputGradient = true
    private var lastInput: Matrix?

    public var weightOffset: Int { weight.offset }
    /// The bias's offset; for a layer without bias, where it would be (nothing is read or written there).
    public var biasOffset: Int { bias?.offset ?? weight.range.upperBound }

    init(inputs: Int, outputs: Int, bias hasBias: Bool, capacity: Int, allocator: inout ParameterAllocator) {
        self.inputs = inputs
        self.outputs = outputs
        inputShape = TensorShape(checked: [inputs])
        outputShape = TensorShape(checked: [outputs])
        weight = allocator.allocate("weight", shape: [outputs, inputs])
        bias = hasBias ? allocator.allocate("bias", shape: [outputs]) : nil
        output = Matrix(capacity: capacity, columns: outputs)
        inputGradient = Matrix(capacity: capacity, columns: inputs)
    }

    public var parameters: [ParameterTensor] { [weight] + (bias.map { [$0] } ?? []) }

    /// PyTorch's default initialization: W and b uniform on ±1/√inputs (Kaiming-uniform with a = √5).
    public func initialize(_ store: ParameterStore, random: inout SplitMix64) {
        let bound = 1 / Float(inputs).squareRoot()
        for i in weight.range { store.values[i] = random.uniform(-bound, bound) }
        for i in bias?.range ?? 0..<0 { store.values[i] = random.uniform(-bound, bound) }
    }

    /// y = x·Wᵀ + b for every row of every chunk: one product per run of chunks (`StepContext.chunkRuns`)
    /// where `RowwiseProducts` found that this gives every row its chunk's bits, else one per chunk.
    public func forward(_ x: Matrix, _ step: StepContext) throws -> Matrix {
        lastInput = x
        output.rows = x.rows
        let store = step.store
        let w = store.values + weight.offset
        perRun(.forward, work: productWork(rows: x.rows), step: step) { rows in
            let y = output.row(rows.lowerBound)
            setBias(y, rows: rows.count, store: store)
            RowwiseProducts.multiply(.forward, rows: rows.count, n: outputs, k: inputs, a: x.row(rows.lowerBound), b: w, c: y)
        }
        return output
    }

    /// Per chunk c, unless `sendsFactors`: ∂W_c = dyᵀ·x, ∂b_c = Σ_rows dy in the chunk's gradient row.
    /// Then ∂x = dy·W if `computesInputGradient`, a run of chunks at a time where that keeps each row's bits
    /// (as in `forward`).
    public func backward(_ dy: Matrix, _ step: StepContext) throws -> Matrix {
        let x = lastInput!
        inputGradient.rows = dy.rows
        let w = step.store.values + weight.offset
        if !sendsFactors {
            step.forEachChunk(work: productWork(rows: dy.rows)) { c, _ in
                chunkGradients(c, rows: step.chunks[c], dy: dy, x: x, step: step)
            }
        }
        if computesInputGradient {
            perRun(.inputGradient, work: productWork(rows: dy.rows), step: step) { rows in
                RowwiseProducts.multiply(.inputGradient, rows: rows.count, n: inputs, k: outputs, a: dy.row(rows.lowerBound), b: w,
                                         c: inputGradient.row(rows.lowerBound))
            }
        }
        return inputGradient
    }

    /// The `ChunkThreads` work of one of this layer's products over `rows` rows: a multiply-add counts 1/32, and a
    /// layer of fewer than 32 outputs counts as 32 wide. Narrow products run at half the speed of wide ones
    /// (OpenBLAS, one thread, here: wide-mlp's 1024 → 10 forward and ∂x products over 512 rows, 23 and 20 GMAC/s,
    /// 0.23 and 0.27 ms each; its 1024-wide ones 48 GMAC/s), and counted by their multiply-adds alone they would
    /// run inline on one thread.
    private func productWork(rows: Int) -> Int { rows * inputs * max(outputs, 32) / 32 }

    /// Verdicts of `RowwiseProducts` for the runs of global chunks this layer has met, per kind.
    private var forwardVerdicts: [Range<Int>: Bool] = [:]
    private var inputGradientVerdicts: [Range<Int>: Bool] = [:]
    /// The verdicts of the runs of the call in progress (reused storage: no array per call).
    private var runAgrees: [Bool] = []

    /// Calls `product(rows)` for the local rows of every run of chunks that agrees (`RowwiseProducts`), and for
    /// every chunk of the runs that do not, in parallel over the runs.
    private func perRun(_ kind: RowwiseProducts.Kind, work: Int, step: StepContext, _ product: (Range<Int>) -> Void) {
        let runs = step.chunkRuns(work: work)
        let (n, k) = kind == .forward ? (outputs, inputs) : (inputs, outputs)
        let first = step.slice.chunks.lowerBound
        runAgrees.removeAll(keepingCapacity: true)
        for run in runs {
            let global = (first + run.lowerBound)..<(first + run.upperBound)
            if let known = kind == .forward ? forwardVerdicts[global] : inputGradientVerdicts[global] {
                runAgrees.append(known)
                continue
            }
            let verdict = RowwiseProducts.agree(kind, n: n, k: k, chunkRows: global.map { step.plan.rows(ofChunk: $0).count })
            if kind == .forward { forwardVerdicts[global] = verdict } else { inputGradientVerdicts[global] = verdict }
            runAgrees.append(verdict)
        }
        let agree = runAgrees
        step.threads.run(runs.count, work: work) { r, _ in
            let run = runs[r]
            if agree[r] {
                let rows = step.rows(ofChunkRun: run)
                if !rows.isEmpty { product(rows) }
            } else {
                for c in run where !step.chunks[c].isEmpty { product(step.chunks[c]) }
            }
        }
    }

    /// ∂W_c = dyᵀ·x and ∂b_c = Σ_rows dy of chunk `c` (local `rows`) into its gradient row.
    private func chunkGradients(_ c: Int, rows: Range<Int>, dy: Matrix, x: Matrix, step: StepContext) {
        let chunkGradient = step.chunkGradient(c)
        BLAS.gemm(transposeA: true, transposeB: false, m: outputs, n: inputs, k: rows.count,
                  a: dy.row(rows.lowerBound), lda: outputs, b: x.row(rows.lowerBound), ldb: inputs,
                  c: chunkGradient + weight.offset, ldc: inputs)
        if let bias {
            let biasGradient = chunkGradient + bias.offset
            for o in 0..<outputs { biasGradient[o] = 0 }
            for r in rows {
                let g = dy.row(r)
                for o in 0..<outputs { biasGradient[o] += g[o] }
            }
        }
    }

    /// y = x·Wᵀ + b for a batch of any size, into a new matrix (evaluation).
    public func infer(_ x: Matrix, store: ParameterStore) -> Matrix {
        let y = Matrix(capacity: x.rows, columns: outputs)
        setBias(y.storage, rows: x.rows, store: store)
        BLAS.gemm(transposeA: false, transposeB: true, m: x.rows, n: outputs, k: inputs,
                  a: x.storage, lda: inputs, b: store.values + weight.offset, ldb: inputs,
                  beta: 1, c: y.storage, ldc: outputs)
        return y
    }

    /// Fills `rows` rows of `y` with b (zeros without bias).
    private func setBias(_ y: UnsafeMutablePointer<Float>, rows: Int, store: ParameterStore) {
        for r in 0..<rows {
            if let bias { (y + r * outputs).update(from: store.values + bias.offset, count: outputs) }
            else { (y + r * outputs).update(repeating: 0, count: outputs) }
        }
    }
}
