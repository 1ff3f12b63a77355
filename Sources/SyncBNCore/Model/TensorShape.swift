/// The shape of one sample as a layer sees it: `[features]` for a flat vector, `[channels, height, width]`
/// for an image (PyTorch's CHW, row-major). A batch is a `Matrix` with one sample per row, so a sample of
/// shape [C, H, W] is a row of C·H·W values, channel-major.
public struct TensorShape: Equatable, Hashable, Codable, Sendable, CustomStringConvertible {
    public let dimensions: [Int]

    /// The largest number of values one sample may have; keeps every product of sizes far from overflow.
    public static let maximumCount = 1 << 31

    /// - Throws: `ModelError` if a dimension is not positive or the sample has more than `maximumCount` values.
    public init(_ dimensions: [Int]) throws {
        guard !dimensions.isEmpty, dimensions.count <= 3 else {
            throw ModelError("a sample shape has 1 to 3 dimensions ([features] or [channels, height, width]); \(dimensions) has \(dimensions.count)")
        }
        var count = 1
        for d in dimensions {
            guard d > 0 else { throw ModelError("a sample shape's dimensions must be positive; \(dimensions) is not") }
            let (product, overflow) = count.multipliedReportingOverflow(by: d)
            guard !overflow, product <= Self.maximumCount else {
                throw ModelError("a sample of shape \(dimensions) has more than \(Self.maximumCount) values")
            }
            count = product
        }
        self.dimensions = dimensions
    }

    /// A shape already known to be valid (built from valid shapes by a layer).
    init(checked dimensions: [Int]) { self.dimensions = dimensions }

    public init(from decoder: Decoder) throws {
        try self.init(try decoder.singleValueContainer().decode([Int].self))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(dimensions)
    }

    /// Values per sample.
    public var count: Int { dimensions.reduce(1, *) }

    public var isImage: Bool { dimensions.count == 3 }
    /// Channels, height and width of an image shape.
    public var channels: Int { dimensions[0] }
    public var height: Int { dimensions[1] }
    public var width: Int { dimensions[2] }
    /// Values per channel of an image (H·W), 1 for a flat vector.
    public var spatialSize: Int { isImage ? height * width : 1 }

    public var description: String { "[" + dimensions.map(String.init).joined(separator: ", ") + "]" }
}

/// A model that cannot be built: a malformed model file, or layers that do not fit their input shapes.
public struct ModelError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
