import Foundation

/// Images flattened to rows of `featureSize` values in [0, 1], with a class label each.
///
/// Images stored as unsigned bytes keep their bytes, so that a coordinator can ship a slice to a worker at
/// one byte per pixel; the worker scales them with the same `scale(pixel:)`, so the Float32 values agree bit
/// for bit.
public struct LabeledImages: Sendable {
    public let count: Int
    public let featureSize: Int
    public let labels: [UInt8]
    public let storage: Storage

    public enum Storage: Sendable {
        case bytes([UInt8])
        case floats([Float])
    }

    public init(count: Int, featureSize: Int, labels: [UInt8], storage: Storage) {
        precondition(labels.count == count)
        self.count = count
        self.featureSize = featureSize
        self.labels = labels
        self.storage = storage
    }

    @inline(__always)
    public static func scale(pixel: UInt8) -> Float { Float(pixel) / 255 }

    /// Copies the features of samples `range` (in order) into `destination`, row after row.
    public func copyFeatures(of range: Range<Int>, into destination: UnsafeMutablePointer<Float>) {
        copyFeatures(of: Array(range), into: destination)
    }

    public func copyFeatures(of indices: [Int], into destination: UnsafeMutablePointer<Float>) {
        for (row, index) in indices.enumerated() {
            let out = destination + row * featureSize, start = index * featureSize
            switch storage {
            case .bytes(let bytes):
                for i in 0..<featureSize { out[i] = Self.scale(pixel: bytes[start + i]) }
            case .floats(let values):
                for i in 0..<featureSize { out[i] = values[start + i] }
            }
        }
    }

    /// The IDX image and label files of one split, checked against each other.
    public static func load(images: String, labels: String) throws -> LabeledImages {
        let imageFile = try IDXFile.read(images), labelFile = try IDXFile.read(labels)
        guard imageFile.shape.count >= 2 else { throw DataError("\(images): expected images of rank 2 or more, found shape \(imageFile.shape)") }
        let count = imageFile.shape[0]
        let featureSize = imageFile.shape.dropFirst().reduce(1, *)
        guard labelFile.shape == [count], case .unsignedBytes(let labelBytes) = labelFile.elements else {
            throw DataError("\(labels): expected \(count) unsigned-byte labels to match \(images), found shape \(labelFile.shape)")
        }
        let storage: Storage
        switch imageFile.elements {
        case .unsignedBytes(let bytes): storage = .bytes(bytes)
        case .float32(let values): storage = .floats(values)
        }
        return LabeledImages(count: count, featureSize: featureSize, labels: labelBytes, storage: storage)
    }
}

/// The training and test splits of an MNIST-format data set in one directory
/// (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, `t10k-…`).
public struct ImageDataset: Sendable {
    public static let defaultDirectory = "/usr/share/datasets/fashion-mnist"

    public let train: LabeledImages
    public let test: LabeledImages

    public static func load(directory: String) throws -> ImageDataset {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw DataError("no data directory at \(directory): install Fashion-MNIST with `apt-get install dataset-fashion-mnist`, or pass --data DIR")
        }
        func file(_ stem: String) throws -> String {
            for candidate in [stem, stem + ".gz"] {
                let path = (directory as NSString).appendingPathComponent(candidate)
                if FileManager.default.fileExists(atPath: path) { return path }
            }
            throw DataError("\(directory) has no \(stem) or \(stem).gz: point --data at a directory of MNIST-format IDX files")
        }
        return ImageDataset(
            train: try .load(images: file("train-images-idx3-ubyte"), labels: file("train-labels-idx1-ubyte")),
            test: try .load(images: file("t10k-images-idx3-ubyte"), labels: file("t10k-labels-idx1-ubyte")))
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
