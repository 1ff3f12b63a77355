/// Histogram buckets that a Float32's bits index directly, so that a logged step can bucket millions of
/// activations at a few nanoseconds each (TensorFlow's default buckets need a binary search per value):
/// each octave [2^e, 2^(e+1)) cut in eight equal parts — edges (1 + j/8)·2^e — for magnitudes from 2^-20 to
/// 2^20, mirrored for negative values, one bucket for |v| < 2^-20 (about zero) and one at each end for
/// |v| ≥ 2^20 (±∞ there, and NaN in the last).
///
/// The index is the top 11 bits of |v| below the sign (exponent and 3 mantissa bits), offset so that 2^-20
/// is 0: a bucket spans a ratio of 1.07 to 1.125, about TensorFlow's 1.1. `limits[i]` is bucket i's upper
/// edge, in increasing order, as TensorBoard's `HistogramProto` wants them; a negative value on an edge
/// belongs to the bucket that edge ends.
public enum FloatBuckets {
    static let lowBits: UInt32 = Float(0x1p-20).bitPattern >> 20
    static let highBits: UInt32 = Float(0x1p20).bitPattern >> 20
    /// Buckets for each sign between 2^-20 and 2^20.
    static let perSign = Int(highBits - lowBits)
    static let center = perSign + 1
    public static let count = 2 * perSign + 3

    @inline(__always)
    public static func index(of v: Float) -> Int {
        let magnitude = v.magnitude
        if magnitude < 0x1p-20 { return center }
        if magnitude < 0x1p20 {
            let k = Int((magnitude.bitPattern >> 20) &- lowBits)
            return v > 0 ? center + 1 + k : center - 1 - k
        }
        return v < 0 ? 0 : count - 1
    }

    /// Upper edges of the buckets, increasing.
    public static let limits: [Double] = {
        func edge(_ k: Int) -> Double { Double(Float(bitPattern: (lowBits + UInt32(k)) << 20)) }
        let negatives = (0..<perSign).reversed().map { -edge($0) }   // bucket center−1−k ends at −edge(k)
        let positives = (0..<perSign).map { edge($0 + 1) }            // bucket center+1+k ends at edge(k + 1)
        return [-0x1p20] + negatives + [0x1p-20] + positives + [Double.greatestFiniteMagnitude]
    }()
}
