import Foundation

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
