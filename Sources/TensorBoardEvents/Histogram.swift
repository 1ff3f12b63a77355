// TensorFlow's HistogramProto and its default buckets.

/// A histogram as TensorBoard stores it: TensorFlow's `HistogramProto`
/// (tensorflow/core/framework/summary.proto).
///
/// Contract: fields 1 `min`, 2 `max`, 3 `num`, 4 `sum`, 5 `sum_squares` (doubles), 6 `bucket_limit` and
/// 7 `bucket` (packed repeated doubles, the same length). Bucket `i` counts the values `v` with
/// `bucketLimits[i-1] <= v < bucketLimits[i]` (the first bucket is open below; TensorFlow's
/// `Histogram::Add` places a value with `upper_bound`, the first limit greater than it). TensorBoard draws
/// bucket `i` from `bucketLimits[i-1]` (or `min` for the first) to `bucketLimits[i]` (or `max` for the
/// last), so the counts must sum to `count` and `min <= max` whenever `count > 0`.
public struct Histogram: Equatable, Sendable {
    public var min: Double
    public var max: Double
    /// The number of values (`num` in the proto).
    public var count: Double
    public var sum: Double
    public var sumOfSquares: Double
    public var bucketLimits: [Double]
    public var bucketCounts: [Double]

    /// A histogram from its fields as they are; nothing is checked (see `init(min:max:sum:sumOfSquares:denseCounts:limits:)`
    /// to build one from per-bucket counts).
    public init(min: Double, max: Double, count: Double, sum: Double, sumOfSquares: Double,
                bucketLimits: [Double], bucketCounts: [Double]) {
        self.min = min
        self.max = max
        self.count = count
        self.sum = sum
        self.sumOfSquares = sumOfSquares
        self.bucketLimits = bucketLimits
        self.bucketCounts = bucketCounts
    }

    /// A histogram from counts for every bucket of `limits` (`denseCounts[i]` for the bucket that ends at
    /// `limits[i]`, as `HistogramBuckets.accumulate` produces them), encoded the way TensorFlow's
    /// `Histogram::EncodeToProto(proto, preserve_zero_buckets: false)` does: each run of consecutive empty
    /// buckets becomes one empty bucket whose limit is the run's last limit (so it spans the whole run), and
    /// an all-empty histogram becomes a single empty bucket ending at `limits.last`. `count` is the sum of the
    /// counts. An empty histogram gets `min = max = 0` (TensorFlow would write `min = DBL_MAX, max = -DBL_MAX`,
    /// which TensorBoard cannot draw).
    ///
    /// Merging per-worker histograms: add their dense counts, take the min of mins, max of maxes, the sums of
    /// `sum` and `sumOfSquares`, then call this.
    public init(min: Double, max: Double, sum: Double, sumOfSquares: Double,
                denseCounts: [Double], limits: [Double] = HistogramBuckets.defaultLimits) {
        precondition(denseCounts.count == limits.count,
                     "Histogram: \(denseCounts.count) counts for \(limits.count) bucket limits")
        var outLimits: [Double] = []
        var outCounts: [Double] = []
        var total = 0.0
        var i = 0
        while i < denseCounts.count {
            var end = limits[i]
            var c = denseCounts[i]
            i += 1
            if c <= 0 {
                while i < denseCounts.count && denseCounts[i] <= 0 {
                    end = limits[i]
                    c = denseCounts[i]
                    i += 1
                }
            }
            outLimits.append(end)
            outCounts.append(c)
            total += c
        }
        if outLimits.isEmpty {
            outLimits = [limits.last ?? Double.greatestFiniteMagnitude]
            outCounts = [0]
        }
        let empty = total <= 0
        self.init(min: empty ? 0 : min, max: empty ? 0 : max, count: total, sum: sum, sumOfSquares: sumOfSquares,
                  bucketLimits: outLimits, bucketCounts: outCounts)
    }

    /// The histogram of `values` over TensorFlow's default buckets (what `tf.summary.histogram` wrote in
    /// TensorFlow 1). Values are widened to Double; `min`, `max`, `sum` and `sumOfSquares` are exact
    /// over the widened values up to Double rounding. Non-finite values are counted (−∞ in the first bucket,
    /// +∞ and NaN in the last) and propagate into `sum`; callers that care should filter them out first.
    public init<Values: Sequence>(values: Values) where Values.Element == Float {
        var counts = [Double](repeating: 0, count: HistogramBuckets.defaultLimits.count)
        var lo = Double.infinity, hi = -Double.infinity, s = 0.0, s2 = 0.0
        for f in values {
            let v = Double(f)
            counts[HistogramBuckets.bucketIndex(of: v)] += 1
            if v < lo { lo = v }
            if v > hi { hi = v }
            s += v
            s2 += v * v
        }
        self.init(min: lo, max: hi, sum: s, sumOfSquares: s2, denseCounts: counts)
    }

    /// The HistogramProto encoding of this histogram.
    public func encode(into w: inout ProtobufWriter) {
        w.writeDouble(1, min)
        w.writeDouble(2, max)
        w.writeDouble(3, count)
        w.writeDouble(4, sum)
        w.writeDouble(5, sumOfSquares)
        w.writePackedDoubles(6, bucketLimits)
        w.writePackedDoubles(7, bucketCounts)
    }
}

/// TensorFlow's default histogram buckets (tensorflow/core/lib/histogram/histogram.cc,
/// `InitDefaultBucketsInner`), reproduced exactly.
///
/// Construction used: `v = 1.0e-12; while v < 1.0e20 { positive.append(v); v *= 1.1 }` (repeated
/// multiplication in Double, not `pow`, so the limits are bit-identical to TensorFlow's), then `DBL_MAX`;
/// the negative limits are the same negated, in increasing order (−DBL_MAX first); the full list is
/// negatives, `0.0`, positives: 775 + 1 + 775 = 1551 strictly increasing limits from −DBL_MAX to DBL_MAX
/// (774 powers 1e-12·1.1^k, k = 0...773, plus DBL_MAX, on each side).
public enum HistogramBuckets {
    /// The 1551 default bucket limits, increasing.
    public static let defaultLimits: [Double] = {
        var positive: [Double] = []
        var v = 1.0e-12
        while v < 1.0e20 {
            positive.append(v)
            v *= 1.1
        }
        positive.append(Double.greatestFiniteMagnitude)
        let negative = positive.reversed().map { -$0 }
        return negative + [0.0] + positive
    }()

    /// The index of the default bucket that counts `value`: the first limit greater than `value`
    /// (binary search, TensorFlow's `std::upper_bound`), so a value equal to a limit goes to the next bucket
    /// and 0 goes to the bucket ending at 1e-12. Values with no greater limit (`DBL_MAX`, +∞, NaN) go to the
    /// last bucket (TensorFlow would index past the end).
    public static func bucketIndex(of value: Double) -> Int {
        bucketIndex(of: value, limits: defaultLimits)
    }

    /// `bucketIndex(of:)` for custom increasing `limits` (not empty).
    public static func bucketIndex(of value: Double, limits: [Double]) -> Int {
        var lo = 0, hi = limits.count
        while lo < hi {
            let mid = lo + (hi - lo) / 2
            if limits[mid] > value { hi = mid } else { lo = mid + 1 }
        }
        return Swift.min(lo, limits.count - 1)
    }

    /// Adds one to `counts[bucketIndex(of: v)]` for every value; `counts` must have
    /// `defaultLimits.count` entries (start from `[Double](repeating: 0, count: defaultLimits.count)`).
    public static func accumulate<Values: Sequence>(_ values: Values, into counts: inout [Double])
    where Values.Element == Float {
        precondition(counts.count == defaultLimits.count, "HistogramBuckets.accumulate: counts must match defaultLimits")
        for f in values { counts[bucketIndex(of: Double(f))] += 1 }
    }
}
