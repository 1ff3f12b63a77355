import Foundation

/// Images flattened to rows of `featureSize` values, with a class label each, and the shape each row had.
///
/// `sampleShape` is [C, H, W] for images (a file of 2-D images gives [1, H, W]) and [F] for samples that
/// were vectors in their file; `featureSize` is its product and rows are row-major in that shape (CHW).
/// Images stored as unsigned bytes keep their bytes, so that a coordinator can ship a slice to a worker at
/// one byte per pixel; the worker scales them to [0, 1] with the same `scale(pixel:)`, so the Float32 values
/// agree bit for bit. Other element types are kept as Float32 values, unscaled.
public struct LabeledImages: Sendable {
    public let count: Int
    public let featureSize: Int
    public let sampleShape: [Int]
    public let labels: [UInt8]
    public let storage: Storage

    public enum Storage: Sendable {
        case bytes([UInt8])
        case floats([Float])
    }

    /// - Parameter sampleShape: the shape of one sample, whose product must be `featureSize`;
    ///   `[featureSize]` when not given.
    public init(count: Int, featureSize: Int, labels: [UInt8], storage: Storage, sampleShape: [Int]? = nil) {
        precondition(labels.count == count)
        let shape = sampleShape ?? [featureSize]
        precondition(shape.reduce(1, *) == featureSize, "a sample shape \(shape) does not hold \(featureSize) features")
        self.count = count
        self.featureSize = featureSize
        self.sampleShape = shape
        self.labels = labels
        self.storage = storage
    }

    /// The number of channels of a sample of `shape`: C of [C, H, W]; 1 for any other rank.
    public static func channels(of shape: [Int]) -> Int { shape.count == 3 ? shape[0] : 1 }

    /// The number of channels of each sample (C of [C, H, W]; 1 for vectors).
    public var channels: Int { Self.channels(of: sampleShape) }

    @inline(__always)
    public static func scale(pixel: UInt8) -> Float { Float(pixel) / 255 }

    /// `scale(pixel:)` of `count` bytes, eight at a time (the same conversion and division per value).
    @inline(__always)
    static func scale(pixels source: UnsafePointer<UInt8>, into out: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + 8 <= count {
            let bytes = UnsafeRawPointer(source + i).loadUnaligned(as: SIMD8<UInt8>.self)
            let values = SIMD8<Float>(SIMD8<Int32>(truncatingIfNeeded: bytes)) / SIMD8<Float>(repeating: 255)
            UnsafeMutableRawPointer(out + i).storeBytes(of: values, as: SIMD8<Float>.self)
            i += 8
        }
        while i < count { out[i] = scale(pixel: source[i]); i += 1 }
    }

    /// Copies the features of samples `range` (in order) into `destination`, row after row.
    public func copyFeatures(of range: Range<Int>, into destination: UnsafeMutablePointer<Float>) {
        copyFeatures(of: Array(range), into: destination)
    }

    public func copyFeatures(of indices: [Int], into destination: UnsafeMutablePointer<Float>) {
        let width = featureSize
        switch storage {
        case .bytes(let bytes):
            bytes.withUnsafeBufferPointer { all in
                for (row, index) in indices.enumerated() {
                    precondition(index >= 0 && (index + 1) * width <= all.count, "sample \(index) is outside the data")
                    let out = destination + row * width, source = all.baseAddress! + index * width
                    Self.scale(pixels: source, into: out, count: width)
                }
            }
        case .floats(let values):
            values.withUnsafeBufferPointer { all in
                for (row, index) in indices.enumerated() {
                    precondition(index >= 0 && (index + 1) * width <= all.count, "sample \(index) is outside the data")
                    (destination + row * width).update(from: all.baseAddress! + index * width, count: width)
                }
            }
        }
    }

    /// The IDX image and label files of one split, checked against each other.
    /// - Throws: `DataError` naming the file that is missing, malformed or does not match the other.
    public static func load(images: String, labels: String) throws -> LabeledImages {
        try LabeledImages(idxImages: IDXFile.read(images), labels: IDXFile.read(labels), imagesPath: images, labelsPath: labels)
    }

    /// One split from parsed IDX files: images of shape [N, F], [N, H, W] or [N, C, H, W] (samples [F],
    /// [1, H, W], [C, H, W]); labels of shape [N], of any integer type, each in 0...255.
    /// Unsigned-byte images stay bytes; other types become Float32 values as stored (no scaling).
    public init(idxImages imageFile: IDXFile, labels labelFile: IDXFile, imagesPath: String, labelsPath: String) throws {
        let sampleShape = try Self.sampleShape(fileShape: imageFile.shape, path: imagesPath)
        let count = imageFile.shape[0]
        guard labelFile.shape == [count] else {
            throw DataError("\(labelsPath): expected \(count) labels (shape [\(count)]) to match \(imagesPath), found shape \(labelFile.shape)")
        }
        let labels: [UInt8]
        switch labelFile.elements {
        case .unsignedBytes(let bytes): labels = bytes
        case .signedIntegers(let values): labels = try Self.labels(count: count, path: labelsPath) { Int64(values[$0]) }
        case .float32, .float64:
            throw DataError("\(labelsPath): labels must be integers, found floating-point values; write them as IDX type 0x08 (unsigned byte)")
        }
        let storage: Storage
        switch imageFile.elements {
        case .unsignedBytes(let bytes): storage = .bytes(bytes)
        case .signedIntegers(let values): storage = .floats(values.map { Float($0) })
        case .float32(let values): storage = .floats(values)
        case .float64(let values): storage = .floats(values.map { Float($0) })
        }
        self.init(count: count, featureSize: sampleShape.reduce(1, *), labels: labels, storage: storage, sampleShape: sampleShape)
    }

    /// The shape of one sample of a file of images of shape `fileShape` ([N, F], [N, H, W] or [N, C, H, W]):
    /// [F], [1, H, W] or [C, H, W].
    /// - Throws: `DataError` for any other rank, no samples or empty samples.
    static func sampleShape(fileShape: [Int], path: String) throws -> [Int] {
        guard (2...4).contains(fileShape.count) else {
            throw DataError("\(path): expected images of shape [N, F], [N, H, W] or [N, C, H, W], found shape \(fileShape)")
        }
        guard fileShape[0] > 0 else { throw DataError("\(path) holds no images (shape \(fileShape)): it is damaged or empty; write it again") }
        guard !fileShape.contains(0) else { throw DataError("\(path): images of shape \(Array(fileShape.dropFirst())) hold no values; write the file again") }
        let sample = Array(fileShape.dropFirst())
        return sample.count == 2 ? [1] + sample : sample
    }

    /// `count` labels, the one of sample i read by `value(i)`.
    /// - Throws: `DataError` naming the file and the first sample whose label is outside 0...255.
    static func labels(count: Int, path: String, _ value: (Int) -> Int64) throws -> [UInt8] {
        var labels = [UInt8](repeating: 0, count: count)
        for i in 0..<count {
            let label = value(i)
            guard (0...255).contains(label) else {
                throw DataError("\(path): the label of sample \(i) is \(label), outside 0...255; labels must be class numbers 0...255")
            }
            labels[i] = UInt8(label)
        }
        return labels
    }
}

/// Which training samples make up each global batch: a seeded permutation per epoch, or file order
/// with `shuffle == false` (step k uses samples [kB, (k+1)B)). An incomplete last batch of an epoch is dropped.
public struct BatchOrder: Sendable {
    public let sampleCount: Int
    public let batchSize: Int
    public let shuffle: Bool
    public let seed: UInt64

    public init(sampleCount: Int, batchSize: Int, shuffle: Bool, seed: UInt64) {
        precondition(batchSize <= sampleCount, "a batch of \(batchSize) needs at least as many samples; there are \(sampleCount)")
        self.sampleCount = sampleCount
        self.batchSize = batchSize
        self.shuffle = shuffle
        self.seed = seed
    }

    public var stepsPerEpoch: Int { sampleCount / batchSize }

    /// The order of samples in `epoch`: a Fisher–Yates shuffle with a generator seeded by (seed, epoch).
    public func permutation(epoch: Int) -> [Int] {
        var order = Array(0..<sampleCount)
        guard shuffle else { return order }
        var random = SplitMix64(seed: seed, stream: 1000 + UInt64(epoch))
        for i in stride(from: sampleCount - 1, to: 0, by: -1) {
            order.swapAt(i, random.below(i + 1))
        }
        return order
    }

    /// The samples of global step `step`, given the permutation of its epoch.
    public func samples(step: Int, permutation: [Int]) -> ArraySlice<Int> {
        let start = (step % stepsPerEpoch) * batchSize
        return permutation[start..<(start + batchSize)]
    }
}
