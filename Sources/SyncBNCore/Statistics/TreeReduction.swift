/// Sums of per-chunk Float32 partials grouped by a fixed binary tree over chunk indices, so that any
/// contiguous run of chunks can be pre-summed where it was computed and sent as a few blocks.
///
/// The tree: chunks 0 ..< C are the leaves of a perfect binary tree over 0 ..< P (P the smallest power of
/// two ≥ C); node [lo, hi) has children [lo, mid) and [mid, hi). Its value is
///
///     value([c, c+1)) = partial c
///     value([lo, hi)) = value([lo, mid)) + value([mid, hi))   if mid < C
///                     = value([lo, mid))                       otherwise (the right half holds no chunk)
///
/// and the sum over the batch is value([0, P)). The grouping depends only on C, never on who holds which
/// chunks, so the bits are the same for any number of workers. A worker holding chunks [a, b) sends the
/// values of the few nodes that tile [a, b) (`blocks(covering:chunkCount:)`, at most 2·log₂ P of them);
/// whoever receives every tile evaluates the same tree and gets the same bits as a single process.
///
/// Nodes are named by their range clipped to 0 ..< C: a node whose right half is empty has the same value
/// as its left child, and the same name.
public enum TreeReduction {
    /// The nodes that tile `chunks` (a run inside 0 ..< chunkCount), left to right, each as large as the tree
    /// allows. Empty for an empty run.
    public static func blocks(covering chunks: Range<Int>, chunkCount: Int) -> [Range<Int>] {
        precondition(chunks.lowerBound >= 0 && chunks.upperBound <= chunkCount, "chunks \(chunks) outside 0..<\(chunkCount)")
        guard !chunks.isEmpty else { return [] }
        var out: [Range<Int>] = []
        func visit(_ lo: Int, _ hi: Int) {
            guard lo < chunkCount else { return }
            let clipped = lo..<min(hi, chunkCount)
            guard !clipped.isEmpty, clipped.overlaps(chunks) else { return }
            if chunks.contains(clipped.lowerBound) && clipped.upperBound <= chunks.upperBound {
                out.append(clipped)
                return
            }
            let mid = (lo + hi) / 2
            visit(lo, mid)
            visit(mid, hi)
        }
        visit(0, paddedCount(chunkCount))
        return out
    }

    /// Evaluates the tree's node `node` (a clipped node range, or the whole `0 ..< chunkCount` for the total)
    /// into `result` (`width` values). `value(of:)` gives the stored values of a node, or nil to evaluate it
    /// from its children; every leaf of `node` must be reachable that way.
    /// `scratch` holds at least `scratchCount(chunkCount:) × width` values.
    public static func evaluate(
        _ node: Range<Int>, chunkCount: Int, width: Int,
        value: (Range<Int>) -> UnsafePointer<Float>?,
        into result: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
    ) {
        precondition(node.lowerBound >= 0 && node.upperBound <= chunkCount && !node.isEmpty)
        // The tree node with this clipped range: the largest aligned power-of-two span starting at lo.
        var span = paddedCount(chunkCount)
        while node.lowerBound % span != 0 || min(node.lowerBound + span, chunkCount) > node.upperBound && span > 1 { span /= 2 }
        evaluate(lo: node.lowerBound, hi: node.lowerBound + span, chunkCount: chunkCount, width: width, value: value,
                 into: result, scratch: scratch)
    }

    private static func evaluate(
        lo: Int, hi: Int, chunkCount: Int, width: Int, value: (Range<Int>) -> UnsafePointer<Float>?,
        into result: UnsafeMutablePointer<Float>, scratch: UnsafeMutablePointer<Float>
    ) {
        if let stored = value(lo..<min(hi, chunkCount)) {
            result.update(from: stored, count: width)
            return
        }
        precondition(hi - lo > 1, "chunk \(lo)'s partial is missing from the tree")
        let mid = (lo + hi) / 2
        evaluate(lo: lo, hi: mid, chunkCount: chunkCount, width: width, value: value, into: result, scratch: scratch)
        guard mid < chunkCount else { return }
        evaluate(lo: mid, hi: hi, chunkCount: chunkCount, width: width, value: value, into: scratch, scratch: scratch + width)
        for i in 0..<width { result[i] += scratch[i] }
    }

    /// Scratch buffers (of `width` values each) that `evaluate` needs: one per tree level.
    public static func scratchCount(chunkCount: Int) -> Int {
        paddedCount(chunkCount).trailingZeroBitCount + 1
    }

    /// The number of leaves of the perfect tree: the smallest power of two ≥ `chunkCount`.
    static func paddedCount(_ chunkCount: Int) -> Int {
        precondition(chunkCount > 0)
        var p = 1
        while p < chunkCount { p *= 2 }
        return p
    }
}
