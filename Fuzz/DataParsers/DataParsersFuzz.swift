import Foundation
import SyncBNCore
import FuzzDriver

/// Fuzz target for the data readers: any bytes given to the IDX, NumPy `.npy` and CIFAR-10 parsers, and to
/// the split builders behind them, must parse or throw `DataError`, never crash; what parses must be
/// consistent (shape and element count agree). The same bytes read as text go to the `--augment` and
/// `--normalize` parsers, and to the model-file decoder (which must decode or throw `ModelError`; a decoded
/// model must build as a network and read back from its own JSON).
///
/// Built with `-sanitize=fuzzer -D FUZZING` (Scripts/fuzz.sh) it is a libFuzzer target; built normally it
/// replays the files or directories given as arguments (the committed corpus, Fuzz/DataParsers/corpus),
/// or with `--write-seeds DIR` writes the seed files that corpus started from.
func checkParsers(_ bytes: [UInt8]) {
    func expectDataError(_ body: () throws -> Void) {
        do { try body() } catch is DataError {} catch { fatalError("threw \(type(of: error)), not DataError: \(error)") }
    }
    func product(_ shape: [Int]) -> Int { shape.reduce(1) { $0.multipliedReportingOverflow(by: $1).partialValue } }

    expectDataError {
        let file = try IDXFile.parse(bytes, path: "fuzz.idx")
        let count: Int
        switch file.elements {
        case .unsignedBytes(let values): count = values.count
        case .signedIntegers(let values): count = values.count
        case .float32(let values): count = values.count
        case .float64(let values): count = values.count
        }
        if count != product(file.shape) { fatalError("IDX shape \(file.shape) with \(count) elements") }
        // As images, with labels that fit them; and as labels of images that fit them.
        if let n = file.shape.first {
            let labels = IDXFile(shape: [n], elements: .unsignedBytes([UInt8](repeating: 1, count: n)))
            expectDataError { _ = try LabeledImages(idxImages: file, labels: labels, imagesPath: "i", labelsPath: "l") }
            let images = IDXFile(shape: [n, 1], elements: .unsignedBytes([UInt8](repeating: 1, count: n)))
            expectDataError { _ = try LabeledImages(idxImages: images, labels: file, imagesPath: "i", labelsPath: "l") }
        }
    }
    expectDataError {
        let file = try NumpyFile.parse(bytes, path: "fuzz.npy")
        if file.data.count != product(file.shape) * file.dtype.size { fatalError("npy shape \(file.shape) of \(file.dtype) with \(file.data.count) bytes") }
        if let n = file.shape.first {
            let labels = NumpyFile(dtype: .init(kind: .unsignedInteger, size: 1), shape: [n], data: [UInt8](repeating: 2, count: n))
            expectDataError { _ = try LabeledImages(npyImages: file, labels: labels, imagesPath: "i", labelsPath: "l") }
            let images = NumpyFile(dtype: .init(kind: .float, size: 4), shape: [n, 1, 1], data: [UInt8](repeating: 0, count: 4 * n))
            expectDataError { _ = try LabeledImages(npyImages: images, labels: file, imagesPath: "i", labelsPath: "l") }
        }
    }
    expectDataError {
        let file = try CIFAR10File.parse(bytes, path: "fuzz.bin")
        if file.pixels.count != file.count * CIFAR10File.pixelsPerImage || file.labels.contains(where: { $0 >= 10 }) {
            fatalError("CIFAR-10 file of \(file.count) records with \(file.pixels.count) pixels")
        }
    }
    // Safetensors (models, checkpoints, --init): decode or CheckpointError; a decoded tensor's bytes fit its shape.
    do {
        _ = try Safetensors.metadata(bytes, source: "fuzz.safetensors")
        for (name, tensor) in try Safetensors.decode(bytes, source: "fuzz.safetensors") {
            if tensor.shape.contains(where: { $0 < 0 }) { fatalError("tensor \(name) decoded with shape \(tensor.shape)") }
        }
    } catch is CheckpointError {} catch { fatalError("the safetensors decoder threw \(type(of: error)), not CheckpointError: \(error)") }
    let text = String(decoding: bytes, as: UTF8.self)
    expectDataError {
        let augmentation = try Augmentation(parsing: text)
        if try Augmentation(parsing: augmentation.description) != augmentation { fatalError("augmentation \(augmentation) does not read back") }
        try augmentation.check(sampleShape: [1, 3, 3])
        let source = [Float](repeating: 1, count: 9)
        var destination = [Float](repeating: 0, count: 9)
        source.withUnsafeBufferPointer { s in
            destination.withUnsafeMutableBufferPointer { augmentation.apply(to: s, into: $0, shape: [1, 3, 3], seed: 1, epoch: 2, index: 3) }
        }
    }
    do {
        let spec = try ModelSpec.decode(bytes)
        // Bounded so that a fuzzed model cannot ask for gigabytes: build only small ones.
        if spec.parameterCount <= 1 << 16, largestActivation(spec) <= 1 << 14 {
            let network = Network(spec: spec, plan: ChunkPlan(batchSize: 2, chunkSize: 1), optimizer: SGD(learningRate: 0, momentum: 0), seed: 1)
            if network.store.count > 1 << 20 { _ = network }
        }
        if try ModelSpec.decode(Array(spec.encodedModelFile())) != spec { fatalError("model \(spec) does not read back") }
    } catch is ModelError {} catch { fatalError("the model decoder threw \(type(of: error)), not ModelError: \(error)") }
    expectDataError {
        let normalization = try Normalization(parsing: text, sampleShape: [1, 2, 2])
        var row: [Float] = [0, 1, 2, 3]
        normalization.apply(to: &row, shape: [1, 2, 2])
    }
}

/// The most values one sample has at any layer's input or output of `spec` (Int.max if a shape cannot be computed).
func largestActivation(_ spec: ModelSpec) -> Int {
    var largest = spec.input.count, shape = spec.input
    func visit(_ layers: [LayerSpec], _ input: TensorShape) -> TensorShape? {
        var shape = input
        for layer in layers {
            if case .residual(let body, let shortcut) = layer {
                guard visit(body, shape) != nil, visit(shortcut, shape) != nil else { return nil }
            }
            guard let next = try? layer.outputShape(for: shape, path: "layer") else { return nil }
            largest = max(largest, next.count)
            shape = next
        }
        return shape
    }
    guard visit(spec.layers, shape) != nil else { return Int.max }
    shape = spec.outputShape
    return largest
}

#if FUZZING

@main
struct Fuzz {
    static func main() { runFuzzer(checkParsers) }
}
#else
/// Small valid and nearly valid files of every format, the fuzzer's starting points.
func seedFiles() -> [(name: String, bytes: [UInt8])] {
    func idx(_ type: UInt8, _ shape: [Int], _ body: [UInt8]) -> [UInt8] {
        [0, 0, type, UInt8(shape.count)] + shape.flatMap { withUnsafeBytes(of: UInt32($0).bigEndian, Array.init) } + body
    }
    func npy(_ descr: String, _ shape: [Int], _ body: [UInt8], major: UInt8 = 1, fortran: Bool = false) -> [UInt8] {
        let tuple = shape.count == 1 ? "(\(shape[0]),)" : "(" + shape.map(String.init).joined(separator: ", ") + ")"
        var header = Array("{'descr': '\(descr)', 'fortran_order': \(fortran ? "True" : "False"), 'shape': \(tuple), }".utf8)
        let prefix = major == 1 ? 10 : 12
        while (prefix + header.count + 1) % 64 != 0 { header.append(0x20) }
        header.append(0x0A)
        let length = major == 1 ? withUnsafeBytes(of: UInt16(header.count).littleEndian, Array.init)
                                : withUnsafeBytes(of: UInt32(header.count).littleEndian, Array.init)
        return [0x93] + Array("NUMPY".utf8) + [major, 0] + length + header + body
    }
    let floats: [UInt8] = [0, 0, 0xC0, 0x3F, 0, 0, 0, 0xC0]  // 1.5, −2 little-endian
    return [
        ("idx-ubyte-images", idx(0x08, [2, 2, 2], [0, 1, 2, 3, 252, 253, 254, 255])),
        ("idx-ubyte-labels", idx(0x08, [3], [7, 0, 9])),
        ("idx-sbyte", idx(0x09, [2, 2], [0xFF, 1, 0x80, 0x7F])),
        ("idx-short", idx(0x0B, [2], [0xFF, 0xFE, 0, 9])),
        ("idx-int", idx(0x0C, [1, 2], [0, 0, 1, 0, 0xFF, 0xFF, 0xFF, 0xFF])),
        ("idx-float", idx(0x0D, [2, 1], [0x3F, 0xC0, 0, 0, 0xC0, 0, 0, 0])),
        ("idx-double", idx(0x0E, [1], [0x3F, 0xF8, 0, 0, 0, 0, 0, 0])),
        ("idx-rank4", idx(0x08, [1, 2, 1, 2], [1, 2, 3, 4])),
        ("npy-v1-u1", npy("|u1", [2, 2, 2], [0, 1, 2, 3, 4, 5, 6, 7])),
        ("npy-v2-f4", npy("<f4", [1, 1, 2], floats, major: 2)),
        ("npy-v3-f8", npy("<f8", [1, 1, 1], [0, 0, 0, 0, 0, 0, 0xF8, 0x3F], major: 3)),
        ("npy-labels-i8", npy("<i8", [2], [9, 0, 0, 0, 0, 0, 0, 0, 255, 0, 0, 0, 0, 0, 0, 0])),
        ("npy-labels-u2", npy("<u2", [2], [1, 0, 2, 0])),
        ("npy-fortran", npy("<f4", [2, 1], floats, fortran: true)),
        ("npy-big-endian", npy(">f4", [2], floats)),
        ("npy-scalar", npy("|i1", [], [5])),
        ("cifar10-record", [3] + (0..<3072).map { UInt8(truncatingIfNeeded: $0) }),
        ("text-augment", Array("crop4,flip".utf8)),
        ("text-normalize", Array("0.5,0.25".utf8)),
    ]
}

@main
struct ReplayCorpus {
    static func main() throws {
        if CommandLine.arguments.count == 3, CommandLine.arguments[1] == "--write-seeds" {
            let directory = CommandLine.arguments[2]
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            for (name, bytes) in seedFiles() {
                try Data(bytes).write(to: URL(fileURLWithPath: (directory as NSString).appendingPathComponent("seed-" + name)))
            }
            return
        }
        try replayInputs(CommandLine.arguments.dropFirst(), through: checkParsers, what: "the data parsers")
    }
}
#endif
