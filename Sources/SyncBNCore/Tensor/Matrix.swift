/// A row-major Float32 matrix with a fixed row capacity and a variable number of live rows.
///
/// Buffers are allocated once, for the largest batch a layer will see, so that a training step
/// allocates nothing: a worker whose slice changes size from step to step only changes `rows`.
public final class Matrix {
    public let capacity: Int
    public let columns: Int
    public var rows: Int
    public let storage: UnsafeMutablePointer<Float>

    public init(capacity: Int, columns: Int) {
        precondition(capacity >= 0 && columns > 0, "a matrix needs a non-negative capacity and at least one column")
        self.capacity = capacity
        self.columns = columns
        self.rows = capacity
        storage = .allocate(capacity: max(1, capacity * columns))
        storage.initialize(repeating: 0, count: max(1, capacity * columns))
    }

    deinit { storage.deallocate() }

    /// The first element of `row`.
    @inline(__always)
    public func row(_ row: Int) -> UnsafeMutablePointer<Float> { storage + row * columns }

    public var count: Int { rows * columns }

    public var elements: UnsafeMutableBufferPointer<Float> { .init(start: storage, count: count) }

    public func toArray() -> [Float] { Array(elements) }

    /// Copies `values` (row-major, `rows` rows) in and sets `rows`.
    public func assign(_ values: [Float], rows: Int) {
        precondition(values.count == rows * columns && rows <= capacity, "values do not fit a \(capacity)×\(columns) matrix")
        self.rows = rows
        values.withUnsafeBufferPointer { storage.update(from: $0.baseAddress!, count: values.count) }
    }
}
