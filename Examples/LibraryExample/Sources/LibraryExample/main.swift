import Foundation
import Logging
import SyncBN

// 1. A network in code, from the same layer types as a model file: conv → BN2d → ReLU → a residual block →
//    global average pooling → Linear.
let spec = try ModelSpec(name: "tiny-resnet", input: TensorShape([1, 8, 8]), layers: [
    .conv2d(inChannels: 1, outChannels: 4, kernelSize: 3, stride: 1, padding: 1, bias: false),
    .batchNorm2d(numFeatures: 4, eps: 1e-5, momentum: 0.1), .relu,
    .residual(body: [.conv2d(inChannels: 4, outChannels: 4, kernelSize: 3, stride: 1, padding: 1, bias: false),
                     .batchNorm2d(numFeatures: 4, eps: 1e-5, momentum: 0.1)], shortcut: []),
    .relu, .adaptiveAvgPool2d(outputSize: 1), .flatten,
    .linear(inFeatures: 4, outFeatures: 3, bias: true),
])

// 2. Data: 60 images of 8×8 whose class (0, 1, 2) sets where a bright bar is.
func images(_ count: Int) -> LabeledImages {
    var pixels: [UInt8] = [], labels: [UInt8] = []
    for i in 0..<count {
        let label = i % 3
        labels.append(UInt8(label))
        for r in 0..<8 { for c in 0..<8 { pixels.append(r / 3 == label ? 220 : UInt8((i * 7 + r * 3 + c) % 40)) } }
    }
    return LabeledImages(count: count, featureSize: 64, labels: labels, storage: .bytes(pixels), sampleShape: [1, 8, 8])
}
let dataset = try ImageDataset(training: images(60), test: images(30))
let config = TrainingConfig(model: spec, plan: ChunkPlan(batchSize: 12, chunkSize: 3), optimizer: SGD(learningRate: 0.1, momentum: 0.9),
                            seed: 7, steps: 25, shuffle: true, logEvery: 5, evaluateEvery: 25)
var logger = Logger(label: "example")
logger.logLevel = .warning

// 3. One process.
let alone = config.makeNetwork()
let local = try TrainingRun(config: config, dataset: dataset, runner: LocalStepRunner(network: alone, data: dataset.train, config: config),
                            outputDirectory: nil, logger: logger).run()
print("one process: test accuracy \(local.test.accuracy), loss \(local.test.loss)")

// 4. A coordinator and two workers (threads here; processes or hosts in practice).
let coordinator = try Coordinator(config: config, data: dataset.train, bind: "tcp://127.0.0.1:*", workerCount: 2, logger: logger)
let workers = DispatchGroup()
for _ in 0..<2 {
    DispatchQueue.global().async(group: workers) { _ = try? Worker(endpoint: coordinator.endpoint, logger: logger).run() }
}
try coordinator.admitWorkers()
let distributed = try TrainingRun(config: config, dataset: dataset, runner: coordinator, outputDirectory: nil, logger: logger).run()
coordinator.finish()
workers.wait()
print("coordinator + 2 workers: test accuracy \(distributed.test.accuracy), loss \(distributed.test.loss)")

let same = alone.stateDict().map(\.tensor) == coordinator.network.stateDict().map(\.tensor)
print(same ? "the same bits either way" : "MISMATCH between one process and the cluster")
exit(same && local.test.accuracy > 0.5 ? 0 : 1)
