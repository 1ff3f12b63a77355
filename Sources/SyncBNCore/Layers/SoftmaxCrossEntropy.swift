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
        let classes = logits.columns
        gradient.rows = logits.rows
        let inverseBatch = 1 / Float(batchSize)
        threads.run(chunks.count, work: 4 * logits.count) { c, _ in
            var lossSum = 0.0, correct = 0.0
            for r in chunks[c] {
                let z = logits.row(r), g = gradient.row(r)
                let label = Int(labels[r])
                var maxIndex = 0
                for j in 1..<classes where z[j] > z[maxIndex] { maxIndex = j }
                let shift = z[maxIndex]
                var total: Float = 0
                for j in 0..<classes {
                    g[j] = expf(z[j] - shift)
                    total += g[j]
                }
                lossSum += Double(logf(total) + shift - z[label])
                if maxIndex == label { correct += 1 }
                let inverseTotal = 1 / total
                for j in 0..<classes { g[j] = g[j] * inverseTotal * inverseBatch }
                g[label] -= inverseBatch
            }
            metrics[2 * c] = lossSum
            metrics[2 * c + 1] = correct
        }
    }
}
