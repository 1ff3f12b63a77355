import Foundation

/// Median of `values` (the mean of the two middle values for an even count); nil when empty.
func benchMedian(_ values: [Double]) -> Double? {
    guard !values.isEmpty else { return nil }
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

/// The monotonic clock the benchmark times with, in nanoseconds.
func benchNow() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
