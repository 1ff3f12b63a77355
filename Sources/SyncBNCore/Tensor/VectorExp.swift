/// e^t and the logistic sigmoid sixteen lanes at a time, in plain SIMD adds, multiplies and bit operations, so
/// that they vectorize on every x86-64 (no call per element, no FMA, no SSE4.1 rounding) and give the same bits
/// on every CPU — unlike libm's `expf`, which glibc picks per CPU (`__expf_fma` on one, `__expf` on another).
/// (`tanh` and the loss's logarithm, which no gradient depends on, still call libm.)
///
/// e^t = 2^n · e^r with n = round(t·log₂e) and r = t − n·ln 2 (ln 2 split in a high part exact in float and a
/// low part, Cody–Waite), |r| ≤ ½ ln 2; e^r = 1 + r + r²·p(r) with Cephes' degree-5 minimax p; 2^n is built
/// from its exponent bits. Error ≤ 2 ulp against the exact value (tested on a 1/64 grid and every reduction edge).
/// t > 88 gives +∞ (e^88 ≈ 1.65e38 is the largest power reached without a second scaling), t < −87 gives 0
/// (below that e^t is subnormal): for the sigmoid that is 0 and 1 where the exact value is below 6e−39 from them.
/// NaN stays NaN.
enum VectorExp {
    typealias Lanes = SIMD16<Float>
    static let laneCount = 16

    @inline(__always)
    static func exp(_ t: Lanes) -> Lanes {
        let high: Float = 88, low: Float = -87
        // t is not clamped to [low, high]: outside it the lanes compute nonsense that the selects at the end
        // replace (fewer operations, and no subnormal products for t < low, which cost this CPU twice the time).
        let x = t
        // round(x·log₂e) by adding and subtracting 1.5·2²³ (exact for |x·log₂e| < 2²²); the integer sits in the
        // low mantissa bits of the sum.
        let magic = Lanes(repeating: 12_582_912)
        let shifted = x * Lanes(repeating: 1.442_695_04) + magic
        let n = shifted - magic
        let r = (x - n * Lanes(repeating: 0.693_359_375)) - n * Lanes(repeating: -2.121_944_4e-4)
        var p = Lanes(repeating: 1.987_569_15e-4)
        p = p * r + Lanes(repeating: 1.398_199_95e-3)
        p = p * r + Lanes(repeating: 8.333_451_9e-3)
        p = p * r + Lanes(repeating: 4.166_579_59e-2)
        p = p * r + Lanes(repeating: 1.666_666_55e-1)
        p = p * r + Lanes(repeating: 5.000_000_12e-1)
        let er = (p * (r * r) + r) + Lanes(repeating: 1)
        let integer = unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- SIMD16<Int32>(repeating: 0x4B40_0000)
        let scale = unsafeBitCast((integer &+ SIMD16<Int32>(repeating: 127)) &<< SIMD16<Int32>(repeating: 23), to: Lanes.self)
        var result = er * scale
        result.replace(with: .infinity, where: t .> high)
        result.replace(with: 0, where: t .< low)
        return result
    }

    /// y[i] = e^(x[i]) for `count` values (`y` may be `x`).
    static func exp(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        map(x, y, count: count) { exp($0) }
    }

    /// y[i] = 1/(1 + e^(−x[i])) for `count` values (`y` may be `x`).
    static func sigmoid(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        let one = Lanes(repeating: 1)
        map(x, y, count: count) { one / (one + exp(-$0)) }
    }

    /// y[i] = f(x)[i] for `count` values, sixteen lanes at a time. A tail shorter than sixteen goes through the
    /// same lanes (padded with zeros), so an element's bits do not depend on where it sits in the run.
    @inline(__always)
    private static func map(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int, _ f: (Lanes) -> Lanes) {
        var i = 0
        while i + laneCount <= count {
            let v = UnsafeRawPointer(x + i).loadUnaligned(as: Lanes.self)
            UnsafeMutableRawPointer(y + i).storeBytes(of: f(v), as: Lanes.self)
            i += laneCount
        }
        guard i < count else { return }
        var tail = Lanes(repeating: 0)
        for j in i..<count { tail[j - i] = x[j] }
        let result = f(tail)
        for j in i..<count { y[j] = result[j - i] }
    }
}
