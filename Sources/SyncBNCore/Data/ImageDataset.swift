import Foundation

/// The training and test splits of an image data set in one directory, in any `DataFormat`; both splits
/// hold samples of one shape.
public struct ImageDataset: Sendable {
    public static let defaultDirectory = "/usr/share/datasets/fashion-mnist"

    public let train: LabeledImages
    public let test: LabeledImages

    /// The data set in `directory`, in the format its file names show.
    public static func load(directory: String) throws -> ImageDataset {
        try load(directory: directory, format: nil)
    }

    /// Loads both splits of the data set in `directory`.
    /// - Parameter format: the format to read; `nil` detects it from the file names (`DataFormat.detect`).
    /// - Throws: `DataError` if the directory is missing, its format unknown, a file missing or malformed,
    ///   or the training and test images differ in shape.
    public static func load(directory: String, format: DataFormat? = nil) throws -> ImageDataset {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw DataError("no data directory at \(directory): install Fashion-MNIST with `apt-get install dataset-fashion-mnist`, or pass --data DIR")
        }
        func path(_ name: String) -> String { (directory as NSString).appendingPathComponent(name) }
        func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: path(name)) }

        let train: LabeledImages, test: LabeledImages
        switch try format ?? DataFormat.detect(directory: directory) {
        case .idx:
            func file(_ stem: String) throws -> String {
                for candidate in [stem, stem + ".gz"] where exists(candidate) { return path(candidate) }
                throw DataError("\(directory) has no \(stem) or \(stem).gz: point --data at a directory of MNIST-format IDX files")
            }
            train = try .load(images: file("train-images-idx3-ubyte"), labels: file("train-labels-idx1-ubyte"))
            test = try .load(images: file("t10k-images-idx3-ubyte"), labels: file("t10k-labels-idx1-ubyte"))
        case .cifar10:
            let batches = (1...5).map { "data_batch_\($0).bin" }.filter(exists)
            guard !batches.isEmpty else {
                throw DataError("\(directory) has none of data_batch_1.bin … data_batch_5.bin: point --data at the cifar-10-batches-bin directory of CIFAR-10's binary version")
            }
            guard exists("test_batch.bin") else {
                throw DataError("\(directory) has no test_batch.bin: point --data at the cifar-10-batches-bin directory of CIFAR-10's binary version")
            }
            train = try .load(cifar10: batches.map(path))
            test = try .load(cifar10: [path("test_batch.bin")])
        case .npy:
            for name in ["train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy"] where !exists(name) {
                throw DataError("\(directory) has no \(name): a NumPy data set needs train_images.npy, train_labels.npy, test_images.npy and test_labels.npy")
            }
            train = try .load(npyImages: path("train_images.npy"), labels: path("train_labels.npy"))
            test = try .load(npyImages: path("test_images.npy"), labels: path("test_labels.npy"))
        }
        guard train.sampleShape == test.sampleShape else {
            throw DataError("\(directory): the training images have shape \(train.sampleShape) but the test images \(test.sampleShape); both splits must hold images of one shape")
        }
        return ImageDataset(train: train, test: test)
    }
}

extension ImageDataset {
    /// A data set from splits already in memory (a program that makes or loads its own data).
    /// - Throws: `DataError` if the two splits' samples differ in shape.
    public init(training train: LabeledImages, test: LabeledImages) throws {
        guard train.sampleShape == test.sampleShape else {
            throw DataError("the training samples are \(train.sampleShape) but the test samples are \(test.sampleShape): both splits need one shape")
        }
        self.init(train: train, test: test)
    }
}
