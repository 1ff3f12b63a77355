import Foundation

/// The on-disk formats of an image data set directory, and how to tell them apart by file names.
///
/// - `idx`: MNIST-format IDX files `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
///   `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each plain or with `.gz`.
/// - `cifar10`: CIFAR-10's binary version, `data_batch_1.bin` … `data_batch_5.bin` (those present, at least
///   one) for training and `test_batch.bin`.
/// - `npy`: NumPy arrays `train_images.npy`, `train_labels.npy`, `test_images.npy`, `test_labels.npy`.
public enum DataFormat: String, CaseIterable, Codable, Sendable {
    case idx, cifar10, npy

    /// The files a directory of this format holds, for messages.
    public var expectedFiles: String {
        switch self {
        case .idx: "idx: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (each plain or .gz)"
        case .cifar10: "cifar10: data_batch_1.bin … data_batch_5.bin and test_batch.bin"
        case .npy: "npy: train_images.npy, train_labels.npy, test_images.npy, test_labels.npy"
        }
    }

    /// The names whose presence marks a directory as holding this format.
    var markers: [String] {
        switch self {
        case .idx: ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte", "t10k-images-idx3-ubyte.gz"]
        case .cifar10: (1...5).map { "data_batch_\($0).bin" } + ["test_batch.bin"]
        case .npy: ["train_images.npy", "test_images.npy"]
        }
    }

    /// The format of the data set in `directory`, from the names of its files.
    /// - Throws: `DataError` if no format's files are there (listing what each format expects), or if
    ///   files of several formats are.
    public static func detect(directory: String) throws -> DataFormat {
        let found = allCases.filter { format in
            format.markers.contains { FileManager.default.fileExists(atPath: (directory as NSString).appendingPathComponent($0)) }
        }
        guard found.count <= 1 else {
            throw DataError("\(directory) holds files of several data formats (\(found.map(\.rawValue).joined(separator: ", "))): name the format to read, or keep one data set per directory")
        }
        guard let format = found.first else {
            throw DataError("\(directory) holds no data set SyncBN can read; expected one of \(allCases.map(\.expectedFiles).joined(separator: "; "))")
        }
        return format
    }
}
