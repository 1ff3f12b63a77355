import Foundation

/// Deterministic data augmentation of [C, H, W] samples: a random crop of a zero-padded image and a random
/// horizontal flip, as in He et al. (2016) for CIFAR-10 ("4 pixels are padded on each side, and a 32×32 crop
/// is randomly sampled from the padded image or its horizontal flip").
///
/// The random draws depend only on (seed, epoch, the sample's index in its data set) — never on the number
/// of workers, the batch or the order in which samples are processed — so every process transforms a
/// sample the same way. The generator for one sample is
///
///     family = SplitMix64(seed: seed, stream: 2).next()           // apart from weights (1), batch order (1000 + epoch)
///     key    = SplitMix64(seed: family, stream: UInt64(epoch)).next()
///     random = SplitMix64(seed: key, stream: UInt64(index))
///
/// and it is drawn in this order: if cropping (padding N > 0), the row offset `random.below(2N + 1)`, then
/// the column offset `random.below(2N + 1)`; then, if flipping, `random.next() >> 63 == 1` (flip when the top
/// bit is set). A step that is off draws nothing.
///
/// With offsets (dy, dx) and flip f, output element (c, y, x) is input element (c, y + dy − N, x′ + dx − N),
/// where x′ = W − 1 − x if f and x otherwise, and zero (byte 0 or 0.0) where that lies outside the image.
///
/// Text form: comma-separated words, `cropN` (N ≥ 0 pixels of padding on each side; `crop0` is no crop) and
/// `flip`, each at most once; `none` for neither. Example: `crop4,flip`.
///
/// Reference: He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition" (2016), section 4.2.
public struct Augmentation: Codable, Equatable, Sendable, CustomStringConvertible {
    /// Pixels of zeros added on each side before cropping; 0 for no crop.
    public let cropPadding: Int
    /// Whether to flip horizontally with probability 1/2.
    public let flip: Bool

    /// The largest padding accepted; `check(sampleShape:)` bounds it further by the image's size.
    public static let maximumPadding = 1 << 16

    public static let none = Augmentation(cropPadding: 0, flip: false)

    public init(cropPadding: Int = 0, flip: Bool = false) {
        precondition((0...Self.maximumPadding).contains(cropPadding), "a crop padding of \(cropPadding) pixels is outside 0...\(Self.maximumPadding)")
        self.cropPadding = cropPadding
        self.flip = flip
    }

    /// Parses the text form (`crop4,flip`, `flip`, `crop2`, `none`).
    /// - Throws: `DataError` naming the word that is unknown, repeated or out of range.
    public init(parsing text: String) throws {
        let usage = "expected comma-separated cropN (N pixels of padding) and flip, e.g. crop4,flip, or none"
        let words = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        if words == ["none"] {
            self = .none
            return
        }
        var padding: Int?, flip = false
        for word in words {
            if word == "flip" {
                guard !flip else { throw DataError("--augment \(text): “flip” appears twice; \(usage)") }
                flip = true
            } else if word.hasPrefix("crop") {
                let digits = word.dropFirst(4)
                guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let n = Int(digits), n <= Self.maximumPadding else {
                    throw DataError("--augment \(text): “\(word)” needs a padding of 0...\(Self.maximumPadding) pixels after crop; \(usage)")
                }
                guard padding == nil else { throw DataError("--augment \(text): crop appears twice; \(usage)") }
                padding = n
            } else {
                throw DataError("--augment \(text): unknown word “\(word)”; \(usage)")
            }
        }
        self.init(cropPadding: padding ?? 0, flip: flip)
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let padding = try container.decode(Int.self, forKey: .cropPadding)
        guard (0...Self.maximumPadding).contains(padding) else {
            throw DecodingError.dataCorruptedError(forKey: .cropPadding, in: container, debugDescription: "crop padding \(padding) is outside 0...\(Self.maximumPadding)")
        }
        self.init(cropPadding: padding, flip: try container.decode(Bool.self, forKey: .flip))
    }

    /// Whether the transformation is always the identity.
    public var isIdentity: Bool { cropPadding == 0 && !flip }

    /// The text form, which `init(parsing:)` reads back.
    public var description: String {
        let words = (cropPadding > 0 ? ["crop\(cropPadding)"] : []) + (flip ? ["flip"] : [])
        return words.isEmpty ? "none" : words.joined(separator: ",")
    }

    /// - Throws: `DataError` unless samples of `sampleShape` can be cropped and flipped: [C, H, W] with the
    ///   padding smaller than both H and W. The identity accepts any shape.
    public func check(sampleShape: [Int]) throws {
        guard !isIdentity else { return }
        guard sampleShape.count == 3, sampleShape.allSatisfy({ $0 > 0 }) else {
            throw DataError("--augment \(description) needs images of shape [C, H, W], but the samples have shape \(sampleShape)")
        }
        guard cropPadding < min(sampleShape[1], sampleShape[2]) else {
            throw DataError("--augment \(description) pads more than the \(sampleShape[1])×\(sampleShape[2]) images are wide or tall; pass a padding below \(min(sampleShape[1], sampleShape[2]))")
        }
    }

    /// Where one sample's crop lies and whether it is flipped.
    public struct Placement: Equatable, Sendable {
        /// Offsets into the padded image, each in 0...2N; N, N is the uncropped position.
        public let rowOffset: Int
        public let columnOffset: Int
        public let flipped: Bool
    }

    /// The placement of sample `index` in `epoch`, drawn as the type's documentation states.
    public func placement(seed: UInt64, epoch: Int, index: Int) -> Placement {
        var family = SplitMix64(seed: seed, stream: 2)
        var perEpoch = SplitMix64(seed: family.next(), stream: UInt64(truncatingIfNeeded: epoch))
        var random = SplitMix64(seed: perEpoch.next(), stream: UInt64(truncatingIfNeeded: index))
        var rowOffset = cropPadding, columnOffset = cropPadding, flipped = false
        if cropPadding > 0 {
            rowOffset = random.below(2 * cropPadding + 1)
            columnOffset = random.below(2 * cropPadding + 1)
        }
        if flip { flipped = random.next() >> 63 == 1 }
        return Placement(rowOffset: rowOffset, columnOffset: columnOffset, flipped: flipped)
    }

    /// Transforms one sample of bytes (CHW, `shape`) into `destination`, padding with byte 0.
    /// - Precondition: `check(sampleShape: shape)` passes; both buffers hold `shape`'s product and do not overlap.
    public func apply(to source: UnsafeBufferPointer<UInt8>, into destination: UnsafeMutableBufferPointer<UInt8>,
                      shape: [Int], seed: UInt64, epoch: Int, index: Int) {
        transform(source, destination, shape: shape, placement: placement(seed: seed, epoch: epoch, index: index), zero: 0)
    }

    /// Transforms one sample of Float32 values (CHW, `shape`) into `destination`, padding with 0.0.
    /// - Precondition: `check(sampleShape: shape)` passes; both buffers hold `shape`'s product and do not overlap.
    public func apply(to source: UnsafeBufferPointer<Float>, into destination: UnsafeMutableBufferPointer<Float>,
                      shape: [Int], seed: UInt64, epoch: Int, index: Int) {
        transform(source, destination, shape: shape, placement: placement(seed: seed, epoch: epoch, index: index), zero: 0)
    }

    func transform<T>(_ source: UnsafeBufferPointer<T>, _ destination: UnsafeMutableBufferPointer<T>,
                              shape: [Int], placement: Placement, zero: T) {
        let count = shape.reduce(1, *)
        precondition(source.count == count && destination.count == count,
                      "a sample of shape \(shape) needs \(count) values; source has \(source.count), destination \(destination.count)")
        guard count > 0 else { return }
        if isIdentity {
            _ = destination.update(fromContentsOf: source)
            return
        }
        precondition(shape.count == 3, "augmentation \(description) applied to a sample of shape \(shape), not [C, H, W]")
        let (channels, height, width) = (shape[0], shape[1], shape[2])
        let n = cropPadding, dy = placement.rowOffset, dx = placement.columnOffset
        for c in 0..<channels {
            for y in 0..<height {
                let out = destination.baseAddress! + (c * height + y) * width
                let sourceRow = y + dy - n
                guard sourceRow >= 0, sourceRow < height else {
                    out.update(repeating: zero, count: width)
                    continue
                }
                let row = source.baseAddress! + (c * height + sourceRow) * width
                for x in 0..<width {
                    let sourceColumn = (placement.flipped ? width - 1 - x : x) + dx - n
                    out[x] = sourceColumn >= 0 && sourceColumn < width ? row[sourceColumn] : zero
                }
            }
        }
    }
}
