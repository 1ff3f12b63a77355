import Foundation

/// One file of the binary version of CIFAR-10 (`data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`):
/// records of 3,073 bytes, each a label byte (0...9) then 3,072 pixel bytes, channel-major — 1,024 red,
/// 1,024 green, 1,024 blue, each plane row-major 32×32. No header; 10,000 records per file as distributed.
///
/// Reference: Krizhevsky, "Learning Multiple Layers of Features from Tiny Images" (2009), and the data set's
/// page https://www.cs.toronto.edu/~kriz/cifar.html ("Binary version").
public struct CIFAR10File: Equatable {
    /// The shape of one image: [C, H, W].
    public static let sampleShape = [3, 32, 32]
    public static let pixelsPerImage = 3 * 32 * 32
    public static let recordSize = 1 + pixelsPerImage
    public static let classes = 10

    public let labels: [UInt8]
    /// `labels.count` images of `pixelsPerImage` bytes, CHW.
    public let pixels: [UInt8]

    public var count: Int { labels.count }

    /// Reads the file at `path` (plain, or gzip-compressed under the same name).
    /// - Throws: `DataError` naming the file, what is wrong with it and what to do.
    public static func read(_ path: String) throws -> CIFAR10File {
        try parse(IDXFile.readPossiblyCompressed(path), path: path)
    }

    /// Splits the bytes of a CIFAR-10 binary file into labels and pixels; `path` only names it in errors.
    /// - Throws: `DataError` if the file is empty, is not a whole number of records, or holds a label ≥ 10.
    public static func parse(_ bytes: [UInt8], path: String) throws -> CIFAR10File {
        let download = "download the binary version (cifar-10-binary.tar.gz) again and unpack it unchanged"
        guard !bytes.isEmpty, bytes.count % recordSize == 0 else {
            throw DataError("\(path) is not a CIFAR-10 binary file: its \(bytes.count) bytes are not a whole, non-zero number of \(recordSize)-byte records (a label byte and 3×32×32 pixels); \(download)")
        }
        let count = bytes.count / recordSize
        var labels = [UInt8](repeating: 0, count: count)
        var pixels: [UInt8] = []
        pixels.reserveCapacity(count * pixelsPerImage)
        for record in 0..<count {
            let start = record * recordSize
            guard Int(bytes[start]) < classes else {
                throw DataError("\(path): record \(record) has label \(bytes[start]), but CIFAR-10 has 10 classes (0...9): the file is damaged or not CIFAR-10 (CIFAR-100 records have 2 label bytes); \(download)")
            }
            labels[record] = bytes[start]
            pixels += bytes[(start + 1)..<(start + recordSize)]
        }
        return CIFAR10File(labels: labels, pixels: pixels)
    }
}

extension LabeledImages {
    /// One split made of CIFAR-10 binary files, their records in the order given; samples [3, 32, 32],
    /// stored as bytes (scaled by `scale(pixel:)` like IDX bytes).
    /// - Throws: `DataError` naming the first file that is missing or malformed.
    public static func load(cifar10 paths: [String]) throws -> LabeledImages {
        precondition(!paths.isEmpty, "a CIFAR-10 split needs at least one file")
        var labels: [UInt8] = [], pixels: [UInt8] = []
        for path in paths {
            let file = try CIFAR10File.read(path)
            labels += file.labels
            pixels += file.pixels
        }
        return LabeledImages(count: labels.count, featureSize: CIFAR10File.pixelsPerImage, labels: labels,
                             storage: .bytes(pixels), sampleShape: CIFAR10File.sampleShape)
    }
}
