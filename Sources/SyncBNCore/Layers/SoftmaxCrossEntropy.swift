import Foundation

/// Softmax cross-entropy averaged over the *global* batch of B samples.
///
/// Per row with logits z and label y: p = softmax(z), loss = log Σⱼ e^{zⱼ} − z_y, and
/// ∂L/∂z = (p − onehot(y)) / B. Dividing by the global B (not the slice's size) makes the sum of every
/// replica's gradients the gradient of the global mean loss.
public enum SoftmaxCrossEntropy {
    /// Writes ∂L/∂z into `gradient` and, per chunk c, `[Σ loss, number correct]` (Float64) at `metrics + 2c`;
    /// chunks run in parallel on `threads`.
    public static func forwardBackward(
        logits: Matrix, labels: UnsafePointer<Int32>, chunks: [Range<Int>], batchSize: Int,
        gradient: Matrix, metrics: UnsafeMutablePointer<Double>, threads: ChunkThreads = .single
    ) {
        gradient.rows = logits.rows
        let inverseBatch = 1 / Float(batchSize)
        threads.run(chunks.count, work: 4 * logits.count) { c, _ in
            let (lossSum, correct) = chunk(logits: logits, labels: labels, rows: chunks[c], gradient: gradient, inverseBatch: inverseBatch)
            metrics[2 * c] = lossSum
            metrics[2 * c + 1] = correct
        }
    }

    /// One chunk's rows: z − max z per row, then e^(·) over all of them in one vector pass (`VectorExp`: the
    /// same bits on every CPU, and a vector per sixteen values instead of a libm call per value), then each
    /// row's sum, loss and gradient. Returns `(Σ loss, number correct)`.
    private static func chunk(logits: Matrix, labels: UnsafePointer<Int32>, rows: Range<Int>, gradient: Matrix,
                              inverseBatch: Float) -> (Double, Double) {
        guard !rows.isEmpty else { return (0, 0) }
        let classes = logits.columns
        return withUnsafeTemporaryAllocation(of: (shift: Float, maxIndex: Int).self, capacity: rows.count) { top in
            for (k, r) in rows.enumerated() {
                let z = logits.row(r), g = gradient.row(r)
                var maxIndex = 0
                for j in 1..<classes where z[j] > z[maxIndex] { maxIndex = j }
                let shift = z[maxIndex]
                for j in 0..<classes { g[j] = z[j] - shift }
                top[k] = (shift, maxIndex)
            }
            VectorExp.exp(gradient.row(rows.lowerBound), gradient.row(rows.lowerBound), count: rows.count * classes)
            var lossSum = 0.0, correct = 0.0
            for (k, r) in rows.enumerated() {
                let z = logits.row(r), g = gradient.row(r)
                let label = Int(labels[r])
                var total: Float = 0
                for j in 0..<classes { total += g[j] }
                lossSum += Double(logf(total) + top[k].shift - z[label])
                if top[k].maxIndex == label { correct += 1 }
                let inverseTotal = 1 / total
                for j in 0..<classes { g[j] = g[j] * inverseTotal * inverseBatch }
                g[label] -= inverseBatch
            }
            return (lossSum, correct)
        }
    }
}
