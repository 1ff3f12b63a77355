/// A 2-D convolution, `torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias)`, by
/// im2col and OpenBLAS `sgemm`: one per sample for y and ∂x, one per chunk for ∂W.
///
/// For a sample x of shape [Cin, H, W], with K = Cin·k·k and P = OH·OW output positions, im2col builds the
/// K×P matrix X whose column p holds the k×k window of every input channel at output position p (zeros in
/// the padding). With W the weight as a [Cout, K] matrix:
///   forward:   y = W·X + b                      ([Cout, P], i.e. [Cout, OH, OW])
///   backward:  ∂W = Σ_samples dy·Xᵀ,  ∂b = Σ_samples Σ_p dy,  ∂X = Wᵀ·dy, and ∂x = col2im(∂X) (overlapping
///              windows add up).
/// y and ∂x are per sample, one product each (so a late thread's samples can be taken over one by one); ∂W
/// sums over a chunk's samples, laid side by side as K×(n·P), in one product per chunk. Either way each
/// result depends on its sample or chunk alone: the same bits wherever it runs, on any number of threads.
public final class Conv2d: Layer {
    public let inChannels: Int
    public let outChannels: Int
    public let kernelSize: Int
    public let stride: Int
    public let padding: Int
    public let weight: ParameterTensor
    public let bias: ParameterTensor?
    public let inputShape: TensorShape
    public let outputShape: TensorShape
    /// Cleared by the network for its first layer, whose input gradient nobody needs.
    public internal(set) var computesInputGradient = true
    private let output: Matrix
    private let inputGradient: Matrix
    /// Rows of one chunk (the most the scratch buffers hold at once).
    private let blockRows: Int
    /// Per thread slot (`ChunkThreads`): `columns`, K × (blockRows·P), im2col of a chunk (for ∂W) or of one
    /// sample, or one sample's ∂X; `product`, Cout × (blockRows·P), a chunk's dy, channel-major (for ∂W).
    private var scratch: [(columns: UnsafeMutablePointer<Float>, product: UnsafeMutablePointer<Float>)] = []
    private var lastInput: Matrix?

    /// K = Cin·k·k, the rows of im2col.
    private var patchSize: Int { inChannels * kernelSize * kernelSize }
    private var positions: Int { outputShape.height * outputShape.width }

    init(inChannels: Int, outChannels: Int, kernelSize: Int, stride: Int, padding: Int, bias hasBias: Bool,
         shape: TensorShape, output outputShape: TensorShape, capacity: Int, chunkSize: Int, allocator: inout ParameterAllocator) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernelSize = kernelSize
        self.stride = stride
        self.padding = padding
        inputShape = shape
        self.outputShape = outputShape
        weight = allocator.allocate("weight", shape: [outChannels, inChannels, kernelSize, kernelSize])
        bias = hasBias ? allocator.allocate("bias", shape: [outChannels]) : nil
        output = Matrix(capacity: capacity, columns: outputShape.count)
        inputGradient = Matrix(capacity: capacity, columns: shape.count)
        blockRows = max(1, min(chunkSize, max(1, capacity)))
        reserveScratch(slots: 1)
    }

    deinit {
        for buffers in scratch {
            buffers.columns.deallocate()
            buffers.product.deallocate()
        }
    }

    /// Scratch buffers for `slots` threads.
    private func reserveScratch(slots: Int) {
        while scratch.count < slots {
            scratch.append((.allocate(capacity: patchSize * blockRows * positions), .allocate(capacity: outChannels * blockRows * positions)))
        }
    }

    public var parameters: [ParameterTensor] { [weight] + (bias.map { [$0] } ?? []) }

    /// PyTorch's default initialization: W and b uniform on ±1/√(Cin·k·k) (Kaiming-uniform with a = √5).
    public func initialize(_ store: ParameterStore, random: inout SplitMix64) {
        let bound = 1 / Float(patchSize).squareRoot()
        for i in weight.range { store.values[i] = random.uniform(-bound, bound) }
        for i in bias?.range ?? 0..<0 { store.values[i] = random.uniform(-bound, bound) }
    }

    // MARK: im2col and col2im

    /// The output columns j whose input column j·stride − padding + kj lies inside [0, width).
    @inline(__always)
    private func validColumns(kj: Int) -> Range<Int> {
        let w = inputShape.width, ow = outputShape.width
        let first = padding - kj <= 0 ? 0 : (padding - kj + stride - 1) / stride
        let lastInput = w - 1 + padding - kj
        let end = lastInput < 0 ? 0 : min(ow, lastInput / stride + 1)
        return first..<max(first, end)
    }

    /// Fills `columns` (K × n·P, leading dimension n·P) from samples `rows` of `x`.
    private func im2col(_ x: Matrix, rows: Range<Int>, into columns: UnsafeMutablePointer<Float>) {
        let (h, w) = (inputShape.height, inputShape.width)
        let (oh, ow) = (outputShape.height, outputShape.width)
        let p = oh * ow, ld = rows.count * p, k = kernelSize
        for kj in 0..<k {
            let valid = validColumns(kj: kj), offset = kj - padding
            for (n, r) in rows.enumerated() {
                let sample = x.row(r)
                for c in 0..<inChannels {
                    let plane = sample + c * h * w
                    for ki in 0..<k {
                        let out = columns + ((c * k + ki) * k + kj) * ld + n * p
                        for i in 0..<oh {
                            let row = i * stride - padding + ki
                            let target = out + i * ow
                            guard row >= 0 && row < h, !valid.isEmpty else { target.update(repeating: 0, count: ow); continue }
                            if valid.lowerBound > 0 { target.update(repeating: 0, count: valid.lowerBound) }
                            if valid.upperBound < ow { (target + valid.upperBound).update(repeating: 0, count: ow - valid.upperBound) }
                            let source = plane + row * w
                            if stride == 1 {
                                (target + valid.lowerBound).update(from: source + valid.lowerBound + offset, count: valid.count)
                            } else {
                                for j in valid { target[j] = source[j * stride + offset] }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds `columns` (∂X, K × n·P) back onto the input positions of samples `rows` of `dx`, which it zeroes first.
    private func col2im(_ columns: UnsafePointer<Float>, rows: Range<Int>, into dx: Matrix) {
        let (h, w) = (inputShape.height, inputShape.width)
        let (oh, ow) = (outputShape.height, outputShape.width)
        let p = oh * ow, ld = rows.count * p, k = kernelSize
        for r in rows { dx.row(r).update(repeating: 0, count: inputShape.count) }
        for (n, r) in rows.enumerated() {
            let sample = dx.row(r)
            for c in 0..<inChannels {
                let plane = sample + c * h * w
                for ki in 0..<k {
                    for kj in 0..<k {
                        let valid = validColumns(kj: kj), offset = kj - padding
                        guard !valid.isEmpty else { continue }
                        let source = columns + ((c * k + ki) * k + kj) * ld + n * p
                        for i in 0..<oh {
                            let row = i * stride - padding + ki
                            guard row >= 0 && row < h else { continue }
                            let target = plane + row * w, values = source + i * ow
                            if stride == 1 {
                                let t = target + offset
                                for j in valid { t[j] += values[j] }
                            } else {
                                for j in valid { target[j * stride + offset] += values[j] }
                            }
                        }
                    }
                }
            }
        }
    }

    // MARK: Forward

    /// y = W·im2col(x) + b for sample `r` of `x` into the same row of `y`: the product lands in y's row as it is,
    /// [Cout, P] being the sample's layout. One product per sample, whatever the chunks and threads: a sample's
    /// output has the same bits wherever and with whatever company it is computed.
    private func convolve(_ x: Matrix, row r: Int, into y: Matrix, store: ParameterStore, columns: UnsafeMutablePointer<Float>) {
        let p = positions, out = y.row(r)
        im2col(x, rows: r..<(r + 1), into: columns)
        BLAS.gemm(transposeA: false, transposeB: false, m: outChannels, n: p, k: patchSize,
                  a: store.values + weight.offset, lda: patchSize, b: columns, ldb: p, c: out, ldc: p)
        guard let bias else { return }
        for o in 0..<outChannels {
            let b = store.values[bias.offset + o], target = out + o * p
            for i in 0..<p { target[i] += b }
        }
    }

    public func forward(_ x: Matrix, _ step: StepContext) throws -> Matrix {
        lastInput = x
        output.rows = x.rows
        reserveScratch(slots: step.threads.threadCount)
        step.threads.run(x.rows, work: x.rows * outChannels * patchSize * positions / 32) { r, slot in
            convolve(x, row: r, into: output, store: step.store, columns: scratch[slot].columns)
        }
        return output
    }

    // MARK: Backward

    /// Per chunk c: ∂W_c = dy·Xᵀ and ∂b_c = Σ dy into the chunk's gradient row (one product over the chunk: a
    /// sum over its samples). Per sample: ∂x = col2im(Wᵀ·dy), one product each, as in the forward pass.
    ///
    /// One parallel call of the chunks' weight gradients and the samples' input gradients, chunk c's weight
    /// gradient first and then its samples, so that a thread that is done takes over samples, not a chunk.
    public func backward(_ dy: Matrix, _ step: StepContext) throws -> Matrix {
        let x = lastInput!
        inputGradient.rows = dy.rows
        reserveScratch(slots: step.threads.threadCount)
        // Chunk c's pieces start at c·stride: every chunk but a replica's last holds the plan's chunk size.
        let chunks = step.chunks, samplesPerChunk = computesInputGradient ? 1 : 0
        let stride = 1 + samplesPerChunk * step.plan.chunkSize
        precondition(chunks.dropLast().allSatisfy { $0.count == step.plan.chunkSize }, "a short chunk before a replica's last")
        let pieces = chunks.isEmpty ? 0 : (chunks.count - 1) * stride + 1 + samplesPerChunk * chunks[chunks.count - 1].count
        step.threads.run(pieces, work: dy.rows * outChannels * patchSize * positions / 16) { index, slot in
            let c = index / stride, k = index - c * stride
            if k == 0 {
                weightGradient(dy, x, rows: chunks[c], into: step.chunkGradient(c), slot: slot)
            } else {
                inputGradient(dy, row: chunks[c].lowerBound + k - 1, store: step.store, columns: scratch[slot].columns)
            }
        }
        return inputGradient
    }

    /// ∂W = dy·Xᵀ and ∂b = Σ dy over samples `rows` into `gradient` (a chunk's gradient row).
    private func weightGradient(_ dy: Matrix, _ x: Matrix, rows: Range<Int>, into gradient: UnsafeMutablePointer<Float>, slot: Int) {
        guard !rows.isEmpty else { return }
        let p = positions, ld = rows.count * p, (columns, product) = scratch[slot]
        // dy of the chunk, channel-major: product[o, n·P + i] = dy[row n][o, i].
        for (n, r) in rows.enumerated() {
            let g = dy.row(r)
            for o in 0..<outChannels { (product + o * ld + n * p).update(from: g + o * p, count: p) }
        }
        if let bias {
            for o in 0..<outChannels {
                var sum = 0.0
                let g = product + o * ld
                for i in 0..<ld { sum += Double(g[i]) }
                gradient[bias.offset + o] = Float(sum)
            }
        }
        im2col(x, rows: rows, into: columns)
        BLAS.gemm(transposeA: false, transposeB: true, m: outChannels, n: patchSize, k: ld,
                  a: product, lda: ld, b: columns, ldb: ld, c: gradient + weight.offset, ldc: patchSize)
    }

    /// ∂x of sample `r` = col2im(Wᵀ·dy_r): dy's row is already [Cout, P].
    private func inputGradient(_ dy: Matrix, row r: Int, store: ParameterStore, columns: UnsafeMutablePointer<Float>) {
        let p = positions
        BLAS.gemm(transposeA: true, transposeB: false, m: patchSize, n: p, k: outChannels,
                  a: store.values + weight.offset, lda: patchSize, b: dy.row(r), ldb: p, c: columns, ldc: p)
        col2im(columns, rows: r..<(r + 1), into: inputGradient)
    }

    // MARK: Evaluation

    public func infer(_ x: Matrix, store: ParameterStore) -> Matrix {
        let y = Matrix(capacity: x.rows, columns: outputShape.count)
        let columns = UnsafeMutablePointer<Float>.allocate(capacity: patchSize * positions)
        defer { columns.deallocate() }
        for r in 0..<x.rows { convolve(x, row: r, into: y, store: store, columns: columns) }
        return y
    }
}
