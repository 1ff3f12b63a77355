import Foundation

/// Whether OpenBLAS gives each row of a product the same bits whether the rows come in one `sgemm` call or
/// chunk by chunk, for the products whose rows are independent samples (a Linear layer's y = x·Wᵀ + b and
/// ∂x = dy·W).
///
/// Mathematically row i of A·B depends on row i of A alone, but OpenBLAS picks its kernels, its edge
/// handling and sometimes its summation order from the sizes (measured on a Cooperlake core, 0.3.21: y = x·Wᵀ
/// with 10 outputs differs from row 12 on when 30 rows go in one call instead of two of 15; with 100 outputs
/// it agrees). So nothing is assumed: before a layer multiplies a group of chunks in one call, the group's
/// layout (its chunks' row counts) is checked once per process by running the same-shaped product on random
/// data both ways and comparing every bit; a layout that does not agree keeps one call per chunk. The
/// product's code path depends only on the sizes, the transposition, β and the leading dimensions, which
/// the probe reproduces, so one probe speaks for every call of that layout; with full-mantissa random data a
/// different summation order shows in some element with overwhelming probability.
///
/// Either way each row has the bits of its chunk's own call, so results do not depend on how many rows a
/// process or a thread holds.
public enum RowwiseProducts {
    /// Which product: `forward` is C = A·Bᵀ + C (β = 1, B of shape n × k), `inputGradient` is C = A·B
    /// (β = 0, B of shape k × n); A is m × k; all contiguous, row-major.
    public enum Kind: Hashable, Sendable { case forward, inputGradient }

    struct Key: Hashable {
        let kind: Kind
        let n: Int
        let k: Int
        let chunkRows: [Int]
    }

    /// Off: every product runs chunk by chunk (`SYNCBN_ROWWISE=0`, or set by tests and benchmarks).
    nonisolated(unsafe) public static var enabled: Bool = ProcessInfo.processInfo.environment["SYNCBN_ROWWISE"] != "0"

    private static let verdicts = Verdicts<Key>()

    /// Whether one call over consecutive chunks of `chunkRows` rows gives every row the bits of its chunk's call.
    /// A single chunk agrees trivially. Probes once per layout and remembers (thread-safe).
    public static func agree(_ kind: Kind, n: Int, k: Int, chunkRows: [Int]) -> Bool {
        let rows = chunkRows.filter { $0 > 0 }
        guard enabled else { return false }
        guard rows.count > 1 else { return true }
        let key = Key(kind: kind, n: n, k: k, chunkRows: rows)
        return verdicts.verdict(key) { probe(key, seed: $0) }
    }

    /// Verdicts by layout, each the probe's on two seeds (both must agree), worked out once per process (thread-safe).
    final class Verdicts<Key: Hashable>: @unchecked Sendable {
        private let lock = NSLock()
        private var known: [Key: Bool] = [:]

        func verdict(_ key: Key, probe: (_ seed: UInt64) -> Bool) -> Bool {
            lock.lock()
            defer { lock.unlock() }
            if let verdict = known[key] { return verdict }
            let verdict = probe(1) && probe(2)
            known[key] = verdict
            return verdict
        }

        /// Every layout probed so far and its verdict.
        var all: [(key: Key, agrees: Bool)] {
            lock.lock()
            defer { lock.unlock() }
            return known.map { ($0.key, $0.value) }
        }
    }

    struct AccumulationKey: Hashable { let m: Int, n: Int, k: Int, lda: Int, ldb: Int }
    private static let accumulationVerdicts = Verdicts<AccumulationKey>()

    /// Whether C ← Aᵀ·B + C in one call (β = 1) gives C + (Aᵀ·B) bit for bit, the product formed alone (β = 0) and
    /// then added element by element — for Aᵀ m × k (A k × m, leading dimension `lda`), B k × n (`ldb`), C m × n
    /// (contiguous). OpenBLAS adds each k-block's sums to C, so this holds only while k fits one block; the
    /// probe decides, once per shape (thread-safe), as `agree` does.
    public static func accumulates(m: Int, n: Int, k: Int, lda: Int, ldb: Int) -> Bool {
        guard enabled, m > 0, n > 0, k > 0 else { return false }
        let key = AccumulationKey(m: m, n: n, k: k, lda: lda, ldb: ldb)
        return accumulationVerdicts.verdict(key) { probeAccumulation(key, seed: $0) }
    }

    static func probeAccumulation(_ key: AccumulationKey, seed: UInt64) -> Bool {
        let (m, n, k) = (key.m, key.n, key.k)
        var random = SplitMix64(seed: 0xACC0_0000 &+ seed, stream: UInt64(m * 7919 + n * 31 + k))
        let a = UnsafeMutablePointer<Float>.allocate(capacity: k * key.lda), b = UnsafeMutablePointer<Float>.allocate(capacity: k * key.ldb)
        let added = UnsafeMutablePointer<Float>.allocate(capacity: m * n), accumulated = UnsafeMutablePointer<Float>.allocate(capacity: m * n)
        let product = UnsafeMutablePointer<Float>.allocate(capacity: m * n)
        defer { a.deallocate(); b.deallocate(); added.deallocate(); accumulated.deallocate(); product.deallocate() }
        for i in 0..<(k * key.lda) { a[i] = random.uniform(-1, 1) }
        for i in 0..<(k * key.ldb) { b[i] = random.uniform(-1, 1) }
        for i in 0..<(m * n) { added[i] = random.uniform(-1, 1) }
        accumulated.update(from: added, count: m * n)
        BLAS.gemm(transposeA: true, transposeB: false, m: m, n: n, k: k, a: a, lda: key.lda, b: b, ldb: key.ldb, c: product, ldc: n)
        for i in 0..<(m * n) { added[i] += product[i] }
        BLAS.gemm(transposeA: true, transposeB: false, m: m, n: n, k: k, a: a, lda: key.lda, b: b, ldb: key.ldb, beta: 1, c: accumulated, ldc: n)
        return memcmp(added, accumulated, m * n * MemoryLayout<Float>.stride) == 0
    }

    struct RowBlocksKey: Hashable { let m: Int, n: Int, k: Int, lda: Int, ldb: Int, cuts: [Int] }
    private static let rowBlocksVerdicts = Verdicts<RowBlocksKey>()

    /// Whether C = Aᵀ·B (β = 0; A k × m with leading dimension `lda`, B k × n with `ldb`, C m × n contiguous)
    /// formed block of rows by block of rows — rows `blocks[0]`, `blocks[1]`, …, each block its own call on A's
    /// columns — gives every element the bits of the one call over all m rows. OpenBLAS forms each element as
    /// one dot product over k, but its edge kernels for a block's last rows might sum differently; the probe
    /// decides, once per shape and cut (thread-safe), as `agree` does. It lets a weight gradient be formed tile of
    /// rows by tile, the tiles shared among threads (`Network.apply(gradients:)`). Blocks must be consecutive and
    /// cover 0..<m, else the answer is no.
    public static func rowBlocksAgree(m: Int, n: Int, k: Int, lda: Int, ldb: Int, blocks: [Range<Int>]) -> Bool {
        guard enabled, m > 0, n > 0, k > 0, blocks.first?.lowerBound == 0, blocks.last?.upperBound == m,
              zip(blocks, blocks.dropFirst()).allSatisfy({ $0.upperBound == $1.lowerBound }) else { return false }
        guard blocks.count > 1 else { return true }
        let key = RowBlocksKey(m: m, n: n, k: k, lda: lda, ldb: ldb, cuts: blocks.map(\.upperBound))
        return rowBlocksVerdicts.verdict(key) { probeRowBlocks(key, blocks: blocks, seed: $0) }
    }

    static func probeRowBlocks(_ key: RowBlocksKey, blocks: [Range<Int>], seed: UInt64) -> Bool {
        let (m, n, k) = (key.m, key.n, key.k)
        var random = SplitMix64(seed: 0xB10C_0000 &+ seed, stream: UInt64(m * 7919 + n * 31 + k))
        let a = UnsafeMutablePointer<Float>.allocate(capacity: k * key.lda), b = UnsafeMutablePointer<Float>.allocate(capacity: k * key.ldb)
        let whole = UnsafeMutablePointer<Float>.allocate(capacity: m * n), blockwise = UnsafeMutablePointer<Float>.allocate(capacity: m * n)
        defer { a.deallocate(); b.deallocate(); whole.deallocate(); blockwise.deallocate() }
        for i in 0..<(k * key.lda) { a[i] = random.uniform(-1, 1) }
        for i in 0..<(k * key.ldb) { b[i] = random.uniform(-1, 1) }
        BLAS.gemm(transposeA: true, transposeB: false, m: m, n: n, k: k, a: a, lda: key.lda, b: b, ldb: key.ldb, c: whole, ldc: n)
        for rows in blocks where !rows.isEmpty {
            BLAS.gemm(transposeA: true, transposeB: false, m: rows.count, n: n, k: k, a: a + rows.lowerBound, lda: key.lda, b: b, ldb: key.ldb,
                      c: blockwise + rows.lowerBound * n, ldc: n)
        }
        return memcmp(whole, blockwise, m * n * MemoryLayout<Float>.stride) == 0
    }

    /// Where a product's operands sit: A's first element `aOffset` values into rows `lda` apart, B's `bOffset`
    /// into rows `ldb` apart.
    public struct Operands: Hashable, Sendable {
        public let aOffset: Int, lda: Int, bOffset: Int, ldb: Int
        public init(aOffset: Int, lda: Int, bOffset: Int, ldb: Int) { (self.aOffset, self.lda, self.bOffset, self.ldb) = (aOffset, lda, bOffset, ldb) }

        /// The same operands from A's column `columns` on (a tile of Aᵀ's rows).
        public func shiftingA(by columns: Int) -> Operands { Operands(aOffset: aOffset + columns, lda: lda, bOffset: bOffset, ldb: ldb) }
    }

    struct StridesKey: Hashable { let m: Int, n: Int, k: Int, beta: Float, one: Operands, other: Operands }
    private static let stridesVerdicts = Verdicts<StridesKey>()

    /// Whether C ← Aᵀ·B + β·C (Aᵀ m × k, B k × n, C m × n contiguous) gives the same bits with the operands laid out
    /// as `one` and as `other` (the same values, rows a different number of values apart). It lets one process read
    /// a factor layer's x and dy rows in its own matrices where workers read them gathered into wider rows
    /// (`Network.apply(gradients:)`): OpenBLAS picks its kernels from the sizes, but nothing is assumed; the probe
    /// decides, once per shape and pair of layouts (thread-safe), as `agree` does.
    public static func stridesAgree(m: Int, n: Int, k: Int, beta: Float, _ one: Operands, _ other: Operands) -> Bool {
        guard enabled, m > 0, n > 0, k > 0 else { return false }
        guard one != other else { return true }
        let key = StridesKey(m: m, n: n, k: k, beta: beta, one: one, other: other)
        return stridesVerdicts.verdict(key) { probeStrides(key, seed: $0) }
    }

    static func probeStrides(_ key: StridesKey, seed: UInt64) -> Bool {
        let (m, n, k) = (key.m, key.n, key.k)
        var random = SplitMix64(seed: 0x57D0_0000 &+ seed, stream: UInt64(m * 7919 + n * 31 + k))
        let a = (0..<(k * m)).map { _ in random.uniform(-1, 1) }, b = (0..<(k * n)).map { _ in random.uniform(-1, 1) }
        let c = (0..<(m * n)).map { _ in random.uniform(-1, 1) }
        /// C for the operands laid out as `layout` (unused places NaN: a read of one shows).
        func product(_ layout: Operands) -> [Float] {
            let aCount = layout.aOffset + (k - 1) * layout.lda + m, bCount = layout.bOffset + (k - 1) * layout.ldb + n
            guard layout.lda >= m, layout.ldb >= n, layout.aOffset >= 0, layout.bOffset >= 0 else { return [] }
            var aLaid = [Float](repeating: .nan, count: aCount), bLaid = [Float](repeating: .nan, count: bCount), result = c
            for r in 0..<k {
                for i in 0..<m { aLaid[layout.aOffset + r * layout.lda + i] = a[r * m + i] }
                for j in 0..<n { bLaid[layout.bOffset + r * layout.ldb + j] = b[r * n + j] }
            }
            aLaid.withUnsafeBufferPointer { aBuffer in
                bLaid.withUnsafeBufferPointer { bBuffer in
                    result.withUnsafeMutableBufferPointer { cBuffer in
                        BLAS.gemm(transposeA: true, transposeB: false, m: m, n: n, k: k, a: aBuffer.baseAddress! + layout.aOffset, lda: layout.lda,
                                  b: bBuffer.baseAddress! + layout.bOffset, ldb: layout.ldb, beta: key.beta, c: cBuffer.baseAddress!, ldc: n)
                    }
                }
            }
            return result
        }
        let one = product(key.one), other = product(key.other)
        return !one.isEmpty && one.allSatisfy(\.isFinite) && one.map(\.bitPattern) == other.map(\.bitPattern)
    }

    /// The verdicts so far (for reports and tests): layout and whether it agreed.
    public static var knownVerdicts: [(kind: Kind, n: Int, k: Int, chunkRows: [Int], agrees: Bool)] {
        verdicts.all.map { ($0.key.kind, $0.key.n, $0.key.k, $0.key.chunkRows, $0.agrees) }
    }

    /// Runs the product of `key`'s shape on random data in one call and chunk by chunk; true if every bit agrees.
    static func probe(_ key: Key, seed: UInt64) -> Bool {
        let m = key.chunkRows.reduce(0, +), n = key.n, k = key.k
        var random = SplitMix64(seed: 0x5EED_0000 &+ seed, stream: UInt64(m * 7919 + n * 31 + k))
        let a = UnsafeMutablePointer<Float>.allocate(capacity: m * k)
        let b = UnsafeMutablePointer<Float>.allocate(capacity: n * k)
        let whole = UnsafeMutablePointer<Float>.allocate(capacity: m * n)
        let chunked = UnsafeMutablePointer<Float>.allocate(capacity: m * n)
        defer { a.deallocate(); b.deallocate(); whole.deallocate(); chunked.deallocate() }
        for i in 0..<(m * k) { a[i] = random.uniform(-1, 1) }
        for i in 0..<(n * k) { b[i] = random.uniform(-1, 1) }
        for i in 0..<(m * n) { whole[i] = random.uniform(-1, 1) }
        chunked.update(from: whole, count: m * n)
        multiply(key.kind, rows: m, n: n, k: k, a: a, b: b, c: whole)
        var first = 0
        for rows in key.chunkRows {
            multiply(key.kind, rows: rows, n: n, k: k, a: a + first * k, b: b, c: chunked + first * n)
            first += rows
        }
        return memcmp(whole, chunked, m * n * MemoryLayout<Float>.stride) == 0
    }

    /// The product of `kind` for `rows` rows, as the layers call it.
    @inline(__always)
    public static func multiply(_ kind: Kind, rows: Int, n: Int, k: Int, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                                c: UnsafeMutablePointer<Float>) {
        switch kind {
        case .forward:
            BLAS.gemm(transposeA: false, transposeB: true, m: rows, n: n, k: k, a: a, lda: k, b: b, ldb: k, beta: 1, c: c, ldc: n)
        case .inputGradient:
            BLAS.gemm(transposeA: false, transposeB: false, m: rows, n: n, k: k, a: a, lda: k, b: b, ldb: n, c: c, ldc: n)
        }
    }
}
