import Foundation

/// The network's state in the names, dtypes and shapes of the equivalent `torch.nn.Sequential`'s
/// state_dict, so that `load_state_dict(strict=True)` accepts it: `0.weight` [100, 784], `0.bias`,
/// `1.weight` (γ), `1.bias` (β), `1.running_mean`, `1.running_var`, `1.num_batches_tracked` (int64), …;
/// a Residual at index k contributes `k.body.J.*` and `k.shortcut.J.*`.
extension Network {
    /// The metadata key under which a saved model or checkpoint carries its architecture (model-file JSON).
    public static let modelMetadataKey = "syncbn.model"

    public func stateDict() -> [(name: String, tensor: Safetensors.Tensor)] {
        var entries: [(name: String, tensor: Safetensors.Tensor)] = []
        for (name, layer) in namedLayers {
            for parameter in layer.parameters {
                entries.append(("\(name).\(parameter.name)", Safetensors.Tensor(buffer(parameter.offset, parameter.count), shape: parameter.shape)))
            }
            if let norm = layer as? BatchNorm {
                let f = norm.features
                entries.append(("\(name).running_mean", norm.runningMean.withUnsafeBufferPointer { Safetensors.Tensor($0, shape: [f]) }))
                entries.append(("\(name).running_var", norm.runningVariance.withUnsafeBufferPointer { Safetensors.Tensor($0, shape: [f]) }))
                entries.append(("\(name).num_batches_tracked", Safetensors.Tensor(int64: norm.batchesTracked)))
            }
        }
        return entries
    }

    /// Replaces parameters and BatchNorm buffers with `tensors`, which must hold exactly this network's
    /// entries with the right dtypes and shapes.
    /// - Throws: `CheckpointError` naming the first missing, unexpected or mis-shaped tensor.
    public func loadStateDict(_ tensors: [String: Safetensors.Tensor], source: String) throws {
        let expected = stateDict()
        let model = "\(spec.name) (--bn \(spec.batchNorm.rawValue))"
        for (name, reference) in expected {
            guard let tensor = tensors[name] else {
                throw CheckpointError("\(source) has no tensor \(name), which \(model) needs: start from a checkpoint of the same model")
            }
            guard tensor.dtype == reference.dtype, tensor.shape == reference.shape else {
                throw CheckpointError("\(source): tensor \(name) is \(tensor.dtype.rawValue) \(tensor.shape), but \(model) needs \(reference.dtype.rawValue) \(reference.shape)")
            }
        }
        let extra = Set(tensors.keys).subtracting(expected.map(\.name))
        if let name = extra.sorted().first {
            throw CheckpointError("\(source) has a tensor \(name) that \(model) does not have: start from a checkpoint of the same model")
        }
        for (name, layer) in namedLayers {
            for parameter in layer.parameters { copyIn(tensors["\(name).\(parameter.name)"]!.floats, at: parameter.offset) }
            if let norm = layer as? BatchNorm {
                norm.runningMean = tensors["\(name).running_mean"]!.floats
                norm.runningVariance = tensors["\(name).running_var"]!.floats
                norm.batchesTracked = tensors["\(name).num_batches_tracked"]!.int64
            }
        }
    }

    /// The architecture as metadata for a safetensors file.
    public var modelMetadata: [String: String] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return [Self.modelMetadataKey: String(decoding: (try? encoder.encode(spec)) ?? Data(), as: UTF8.self)]
    }

    /// The name of SGD's momentum buffer in a training state (the whole parameter store, flat).
    public static let velocityName = "optimizer.velocity"

    /// Everything needed to continue training exactly: the state_dict and SGD's momentum buffer.
    public func trainingState() -> [(name: String, tensor: Safetensors.Tensor)] {
        stateDict() + [(Self.velocityName, Safetensors.Tensor(UnsafeBufferPointer(start: store.velocity, count: store.count), shape: [store.count]))]
    }

    /// Restores what `trainingState()` saved.
    /// - Throws: `CheckpointError` for a missing, extra or mis-shaped tensor.
    public func loadTrainingState(_ tensors: [String: Safetensors.Tensor], source: String) throws {
        guard let velocity = tensors[Self.velocityName], velocity.dtype == .float32, velocity.shape == [store.count] else {
            throw CheckpointError("\(source) has no \(Self.velocityName) [\(store.count)]: it is a model, not a training checkpoint of this network")
        }
        var model = tensors
        model[Self.velocityName] = nil
        try loadStateDict(model, source: source)
        velocity.floats.withUnsafeBufferPointer { store.velocity.update(from: $0.baseAddress!, count: store.count) }
    }

    /// The name of the first tensor of the state_dict holding NaN or infinity, if any (a model that diverged).
    public func firstNonFiniteTensor() -> String? {
        stateDict().first { entry in entry.tensor.dtype == .float32 && !entry.tensor.floats.allSatisfy(\.isFinite) }?.name
    }

    /// The metadata key of the input normalization a model was trained with ("MEAN,…,STD,…", as --normalize).
    public static let normalizationMetadataKey = "syncbn.normalize"

    /// Writes the state_dict, with the architecture (and `metadata`) in the metadata, atomically.
    public func saveModel(to path: String, metadata: [String: String] = [:]) throws {
        try Self.writeAtomically(Safetensors.encode(stateDict(), metadata: modelMetadata.merging(metadata) { $1 }), to: path)
    }

    public func loadModel(from path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CheckpointError("cannot read \(path): check the path given to --init or --model")
        }
        try loadStateDict(Safetensors.decode(Array(data), source: path), source: path)
    }

    /// The architecture a saved model or checkpoint holds in its metadata.
    /// - Throws: `CheckpointError` if the file cannot be read or carries no architecture.
    public static func spec(ofCheckpoint path: String) throws -> ModelSpec {
        guard let data = FileManager.default.contents(atPath: path) else { throw CheckpointError("cannot read \(path): check the path") }
        let metadata = try Safetensors.metadata(Array(data), source: path)
        guard let json = metadata[modelMetadataKey] else {
            throw CheckpointError("\(path) has no \(modelMetadataKey) metadata, so its architecture is unknown: it was not saved by this syncbn release; retrain, or pass its tensors with --init to a run that names the model")
        }
        do {
            return try ModelSpec.decode(Array(json.utf8))
        } catch let error as ModelError {
            throw CheckpointError("\(path): its \(modelMetadataKey) metadata is not a valid model: \(error.description)")
        }
    }

    /// The input normalization a saved model was trained with, if any (its metadata).
    public static func normalization(ofCheckpoint path: String) throws -> Normalization? {
        guard let data = FileManager.default.contents(atPath: path) else { throw CheckpointError("cannot read \(path): check the path") }
        guard let text = try Safetensors.metadata(Array(data), source: path)[normalizationMetadataKey] else { return nil }
        return try Normalization(parsing: text)
    }

    private func buffer(_ offset: Int, _ count: Int) -> UnsafeBufferPointer<Float> {
        UnsafeBufferPointer(start: store.values + offset, count: count)
    }

    private func copyIn(_ values: [Float], at offset: Int) {
        values.withUnsafeBufferPointer { (store.values + offset).update(from: $0.baseAddress!, count: values.count) }
    }

    /// Writes a temporary file beside `path`, fsyncs it, renames it over `path` and fsyncs the directory,
    /// so that a crash leaves either the old file or the new one, never a partial one.
    public static func writeAtomically(_ bytes: [UInt8], to path: String) throws {
        let directory = (path as NSString).deletingLastPathComponent
        let temporary = path + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw CheckpointError("cannot write \(temporary): \(String(cString: strerror(errno)))") }
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, bytes.count - written) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                let reason = String(cString: strerror(errno))
                close(fd); unlink(temporary)
                throw CheckpointError("cannot write \(temporary): \(reason)")
            }
            written += n
        }
        fsync(fd)
        close(fd)
        guard rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw CheckpointError("cannot rename \(temporary) to \(path): \(reason)")
        }
        let directoryFD = open(directory.isEmpty ? "." : directory, O_RDONLY)
        if directoryFD >= 0 { fsync(directoryFD); close(directoryFD) }
    }
}
