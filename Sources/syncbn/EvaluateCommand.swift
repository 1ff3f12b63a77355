import ArgumentParser
import Foundation
import SyncBNCore

struct EvaluateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evaluate",
        abstract: "Test-set loss and accuracy of a saved model (BatchNorm uses its running statistics).")

    @Option(help: "The model.safetensors to evaluate.")
    var model: String

    @Option(help: "Data directory: MNIST-format IDX files (plain or .gz), CIFAR-10 binary batches, or NumPy .npy files.")
    var data = ImageDataset.defaultDirectory

    @Option(help: "Data format (idx, cifar10, npy); detected from the directory's files when not given.")
    var dataFormat: DataFormat?

    @Flag(help: "Print one JSON object with accuracy, loss and samples.")
    var json = false

    func run() throws {
        let logger = makeLogger("syncbn.evaluate")
        BLAS.useSingleThread()
        try reportingErrors(logger) {
            let spec = try Network.spec(ofCheckpoint: model)
            let dataset = try ImageDataset.load(directory: data, format: dataFormat)
            try spec.check(against: dataset, source: data)
            let network = Network(spec: spec, plan: ChunkPlan(batchSize: 1, chunkSize: 1), optimizer: SGD(learningRate: 0, momentum: 0), seed: 0)
            try network.loadModel(from: model)
            if let name = network.firstNonFiniteTensor() {
                throw CheckpointError("\(model): tensor \(name) holds NaN or infinity, so the model's outputs are meaningless: it diverged in training; retrain with a lower --lr")
            }
            let normalization = try Network.normalization(ofCheckpoint: model)
            try normalization?.check(sampleShape: dataset.test.sampleShape)
            let result = network.evaluate(dataset.test, normalization: normalization)
            if json {
                let object: [String: Any] = ["accuracy": result.accuracy, "loss": result.loss, "samples": dataset.test.count, "model": model]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                print("test accuracy \(String(format: "%.4f", result.accuracy)), test loss \(String(format: "%.4f", result.loss)) over \(dataset.test.count) samples")
            }
        }
    }
}
