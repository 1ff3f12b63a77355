/// How training samples become a network's input, the same in every process:
/// 1. when a batch is assembled (by `train`, or by the coordinator before it ships the batch), each sample is
///    augmented as drawn from (seed, epoch, its index in the data set) — never from who trains it;
/// 2. when features are written as Float32 (bytes scaled to [0, 1]), each sample is normalized per channel.
/// Evaluation normalizes and never augments.
public struct InputPipeline: Codable, Equatable, Sendable {
    public var normalization: Normalization?
    public var augmentation: Augmentation?

    public init(normalization: Normalization? = nil, augmentation: Augmentation? = nil) {
        self.normalization = normalization
        self.augmentation = augmentation.flatMap { $0.isIdentity ? nil : $0 }
    }

    /// - Throws: `DataError` if the normalization's channels or the augmentation's padding do not fit samples of `shape`.
    public func check(sampleShape shape: [Int]) throws {
        try normalization?.check(sampleShape: shape)
        try augmentation?.check(sampleShape: shape)
    }

    /// The samples at `indices` of `data`, in order and augmented for `epoch`, in `data`'s storage type.
    public func batch<C: Collection>(_ data: LabeledImages, indices: C, seed: UInt64, epoch: Int) -> LabeledImages where C.Element == Int {
        let n = data.featureSize, shape = data.sampleShape
        let labels = indices.map { data.labels[$0] }
        let storage: LabeledImages.Storage
        switch data.storage {
        case .bytes(let bytes):
            storage = .bytes(gather(bytes, indices: indices, width: n, shape: shape, seed: seed, epoch: epoch))
        case .floats(let values):
            storage = .floats(gather(values, indices: indices, width: n, shape: shape, seed: seed, epoch: epoch))
        }
        return LabeledImages(count: labels.count, featureSize: n, labels: labels, storage: storage, sampleShape: shape)
    }

    private func gather<T: Numeric, C: Collection>(_ values: [T], indices: C, width: Int, shape: [Int], seed: UInt64, epoch: Int) -> [T] where C.Element == Int {
        var out = [T](repeating: 0, count: indices.count * width)
        values.withUnsafeBufferPointer { source in
            out.withUnsafeMutableBufferPointer { target in
                for (row, index) in indices.enumerated() {
                    let from = UnsafeBufferPointer(rebasing: source[(index * width)..<((index + 1) * width)])
                    let to = UnsafeMutableBufferPointer(rebasing: target[(row * width)..<((row + 1) * width)])
                    if let augmentation {
                        augmentation.transform(from, to, shape: shape, placement: augmentation.placement(seed: seed, epoch: epoch, index: index), zero: 0)
                    } else {
                        _ = to.initialize(from: from)
                    }
                }
            }
        }
        return out
    }

    /// Writes the samples at `indices` as network input: augmented for `epoch`, scaled and normalized.
    public func copyBatch<C: Collection>(_ data: LabeledImages, indices: C, seed: UInt64, epoch: Int, into destination: UnsafeMutablePointer<Float>) where C.Element == Int {
        if augmentation == nil {
            data.copyFeatures(of: Array(indices), into: destination)
        } else {
            let augmented = batch(data, indices: indices, seed: seed, epoch: epoch)
            augmented.copyFeatures(of: 0..<augmented.count, into: destination)
        }
        normalize(destination, rows: indices.count, shape: data.sampleShape)
    }

    /// Normalizes `rows` samples of `shape` stored row after row at `features`, in place (nothing without a normalization).
    public func normalize(_ features: UnsafeMutablePointer<Float>, rows: Int, shape: [Int]) {
        guard let normalization else { return }
        let width = shape.reduce(1, *)
        for r in 0..<rows { normalization.apply(to: features + r * width, shape: shape) }
    }
}
