/// Reductions of per-chunk partials in a fixed (chunk) order.
///
/// Floating-point addition is not associative, so "the same sum" computed over a different grouping
/// gives different bits. Every replica and the coordinator call these functions on partials laid out
/// chunk-major (chunk 0's `width` values, then chunk 1's, …), so a sum over the global batch is always
/// ((c₀ + c₁) + c₂) + …, whichever process computed each cᵢ.
public enum OrderedReduction {
    /// Σ over chunks, left to right: result[i] = ((p₀[i] + p₁[i]) + p₂[i]) + ….
    /// With no chunks the result is all zeros.
    @_specialize(exported: true, where T == Float)
    @_specialize(exported: true, where T == Double)
    public static func sum<T: BinaryFloatingPoint>(
        _ partials: UnsafeBufferPointer<T>, width: Int, into result: UnsafeMutableBufferPointer<T>
    ) {
        precondition(width > 0 && partials.count % width == 0 && result.count == width, "partials must hold whole chunks of \(width) values")
        let chunkCount = partials.count / width
        guard chunkCount > 0 else { result.update(repeating: 0); return }
        let out = result.baseAddress!, base = partials.baseAddress!
        out.update(from: base, count: width)
        for chunk in 1..<chunkCount {
            let p = base + chunk * width
            for i in 0..<width { out[i] += p[i] }
        }
    }

    /// Merges per-chunk moments in chunk order with Chan, Golub & LeVeque's pairwise update.
    ///
    /// Each chunk's partial is `[mean₀ … mean_{F−1}, M2₀ … M2_{F−1}]` (Float64) for `counts[c]` samples,
    /// where M2 = Σ(x − mean)². Merging (n_a, μ_a, M2_a) with (n_b, μ_b, M2_b):
    ///   n = n_a + n_b,  δ = μ_b − μ_a,  μ = μ_a + δ·n_b/n,  M2 = M2_a + M2_b + δ²·n_a·n_b/n.
    /// Unlike Σx and Σx², this stays exact for a feature with mean 1e4 and standard deviation 1e-2.
    /// The result has the same layout; its count is Σ counts. Chunks with count 0 are skipped.
    ///
    /// Reference: T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a pairwise algorithm for
    /// computing sample variances", 1979.
    public static func mergeMoments(
        _ partials: UnsafeBufferPointer<Double>, counts: ArraySlice<Int>, features: Int,
        into result: UnsafeMutableBufferPointer<Double>
    ) {
        let width = 2 * features
        precondition(partials.count == counts.count * width && result.count == width, "moments must hold [mean, M2] per feature for every chunk")
        result.update(repeating: 0)
        let out = result.baseAddress!
        var total = 0
        for (chunk, count) in counts.enumerated() where count > 0 {
            let p = partials.baseAddress! + chunk * width
            if total == 0 {
                out.update(from: p, count: width)
                total = count
                continue
            }
            let na = Double(total), nb = Double(count), n = na + nb
            for f in 0..<features {
                let delta = p[f] - out[f]
                out[f] += delta * (nb / n)
                out[features + f] += p[features + f] + delta * delta * (na * nb / n)
            }
            total += count
        }
    }

    /// Moments of one chunk: `rows` of a row-major matrix whose rows hold `features` runs of `spatial`
    /// values each (a [C, H, W] sample: C features of H·W values), two passes in Float64 over the
    /// rows.count·spatial values of each feature. Writes `[mean(F), M2(F)]` to `out`.
    public static func chunkMoments(
        _ x: UnsafePointer<Float>, rows: Range<Int>, features: Int, spatial: Int = 1, into out: UnsafeMutablePointer<Double>
    ) {
        let mean = out, m2 = out + features
        for f in 0..<features { mean[f] = 0; m2[f] = 0 }
        guard !rows.isEmpty else { return }
        let rowWidth = features * spatial
        for r in rows {
            let row = x + r * rowWidth
            if spatial == 1 {
                VectorKernels.accumulate(row, into: mean, count: features)
            } else {
                for f in 0..<features { mean[f] += VectorKernels.sum(row + f * spatial, count: spatial) }
            }
        }
        let n = Double(rows.count * spatial)
        for f in 0..<features { mean[f] /= n }
        for r in rows {
            let row = x + r * rowWidth
            if spatial == 1 {
                VectorKernels.accumulateSquaredDeviations(row, mean: mean, into: m2, count: features)
            } else {
                for f in 0..<features { m2[f] += VectorKernels.squaredDeviations(row + f * spatial, count: spatial, mean: mean[f]) }
            }
        }
    }
}
