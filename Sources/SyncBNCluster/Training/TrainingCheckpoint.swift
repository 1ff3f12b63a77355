import Foundation
import SyncBNCore

/// A checkpoint that continues a run exactly: the training state (parameters, BatchNorm buffers, SGD
/// momentum) of the replica at a step boundary, the step to run next, and the job's settings. The data order
/// and learning rate are functions of (seed, step), so nothing else is needed.
///
/// Stored as `checkpoint.safetensors`, written atomically (temporary file, fsync, rename, fsync of the
/// directory); its tensors load into PyTorch like a model's, plus `optimizer.velocity`.
public struct TrainingCheckpoint {
    public static let fileName = "checkpoint.safetensors"

    public let config: TrainingConfig
    public let nextStep: Int
    public let state: [String: Safetensors.Tensor]

    public static func path(in directory: String) -> String {
        (directory as NSString).appendingPathComponent(fileName)
    }

    /// Writes the checkpoint of `network` about to run `nextStep` into `directory`.
    @discardableResult
    public static func save(_ network: Network, config: TrainingConfig, nextStep: Int, directory: String) throws -> String {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = path(in: directory)
        let metadata = network.modelMetadata.merging(["syncbn.step": "\(nextStep)", "syncbn.config": String(decoding: try JSONEncoder().encode(config), as: UTF8.self)]) { $1 }
        try Network.writeAtomically(Safetensors.encode(network.trainingState(), metadata: metadata), to: path)
        return path
    }

    /// Reads `directory`'s checkpoint.
    /// - Throws: `CheckpointError` if it is missing or not a SyncBN training checkpoint.
    public static func load(directory: String) throws -> TrainingCheckpoint {
        let path = path(in: directory)
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CheckpointError("no checkpoint at \(path): --resume takes the --out directory of an interrupted run")
        }
        let bytes = Array(data)
        let metadata = try Safetensors.metadata(bytes, source: path)
        guard let stepText = metadata["syncbn.step"], let nextStep = Int(stepText), nextStep >= 0,
              let configText = metadata["syncbn.config"],
              let config = try? JSONDecoder().decode(TrainingConfig.self, from: Data(configText.utf8)) else {
            throw CheckpointError("\(path) is not a SyncBN training checkpoint (its metadata lacks the step and settings)")
        }
        do {
            try config.check()
        } catch let error as TrainingError {
            throw CheckpointError("\(path): \(error.description): it was edited or damaged; start a new run")
        }
        guard nextStep <= config.steps else { throw CheckpointError("\(path) continues at step \(nextStep + 1) of a run of \(config.steps) steps: it was edited or damaged") }
        return TrainingCheckpoint(config: config, nextStep: nextStep, state: try Safetensors.decode(bytes, source: path))
    }
}
