import Foundation

/// The network's state in the names, dtypes and shapes of the equivalent `torch.nn.Sequential`'s
/// state_dict, so that `load_state_dict(strict=True)` accepts it: `0.weight` [100, 784], `0.bias`,
/// `1.weight` (γ), `1.bias` (β), `1.running_mean`, `1.running_var`, `1.num_batches_tracked` (int64), ….
extension Network {
    public func stateDict() -> [(name: String, tensor: Safetensors.Tensor)] {
        let indices = spec.sequentialIndices
        var entries: [(Int, [(String, Safetensors.Tensor)])] = []
        for (l, linear) in linears.enumerated() {
            let i = indices.linear[l]
            entries.append((i, [
                ("\(i).weight", Safetensors.Tensor(buffer(linear.weightOffset, linear.inputs * linear.outputs), shape: [linear.outputs, linear.inputs])),
                ("\(i).bias", Safetensors.Tensor(buffer(linear.biasOffset, linear.outputs), shape: [linear.outputs])),
            ]))
        }
        for (n, norm) in norms.enumerated() {
            let i = indices.batchNorm[n], f = norm.features
            entries.append((i, [
                ("\(i).weight", Safetensors.Tensor(buffer(norm.gammaOffset, f), shape: [f])),
                ("\(i).bias", Safetensors.Tensor(buffer(norm.betaOffset, f), shape: [f])),
                ("\(i).running_mean", norm.runningMean.withUnsafeBufferPointer { Safetensors.Tensor($0, shape: [f]) }),
                ("\(i).running_var", norm.runningVariance.withUnsafeBufferPointer { Safetensors.Tensor($0, shape: [f]) }),
                ("\(i).num_batches_tracked", Safetensors.Tensor(int64: norm.batchesTracked)),
            ]))
        }
        return entries.sorted { $0.0 < $1.0 }.flatMap { $0.1.map { (name: $0.0, tensor: $0.1) } }
    }

    /// Replaces parameters and BatchNorm buffers with `tensors`, which must hold exactly this network's
    /// entries with the right dtypes and shapes.
    /// - Throws: `CheckpointError` naming the first missing, unexpected or mis-shaped tensor.
    public func loadStateDict(_ tensors: [String: Safetensors.Tensor], source: String) throws {
        let expected = stateDict()
        for (name, reference) in expected {
            guard let tensor = tensors[name] else {
                throw CheckpointError("\(source) has no tensor \(name), which a \(spec.name) with --bn \(spec.batchNorm.rawValue) needs: start from a checkpoint of the same model")
            }
            guard tensor.dtype == reference.dtype, tensor.shape == reference.shape else {
                throw CheckpointError("\(source): tensor \(name) is \(tensor.dtype.rawValue) \(tensor.shape), but \(spec.name) needs \(reference.dtype.rawValue) \(reference.shape)")
            }
        }
        let extra = Set(tensors.keys).subtracting(expected.map(\.name))
        if let name = extra.sorted().first {
            throw CheckpointError("\(source) has a tensor \(name) that \(spec.name) with --bn \(spec.batchNorm.rawValue) does not have: start from a checkpoint of the same model")
        }
        let indices = spec.sequentialIndices
        for (l, linear) in linears.enumerated() {
            let i = indices.linear[l]
            copyIn(tensors["\(i).weight"]!.floats, at: linear.weightOffset)
            copyIn(tensors["\(i).bias"]!.floats, at: linear.biasOffset)
        }
        for (n, norm) in norms.enumerated() {
            let i = indices.batchNorm[n]
            copyIn(tensors["\(i).weight"]!.floats, at: norm.gammaOffset)
            copyIn(tensors["\(i).bias"]!.floats, at: norm.betaOffset)
            norm.runningMean = tensors["\(i).running_mean"]!.floats
            norm.runningVariance = tensors["\(i).running_var"]!.floats
            norm.batchesTracked = tensors["\(i).num_batches_tracked"]!.int64
        }
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

    public func saveModel(to path: String) throws {
        try Self.writeAtomically(Safetensors.encode(stateDict()), to: path)
    }

    public func loadModel(from path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw CheckpointError("cannot read \(path): check the path given to --init or --model")
        }
        try loadStateDict(Safetensors.decode(Array(data), source: path), source: path)
    }

    /// The architecture a checkpoint holds: `bn-mlp` shapes, with or without BatchNorm layers.
    public static func spec(ofCheckpoint path: String) throws -> ModelSpec {
        guard let data = FileManager.default.contents(atPath: path) else { throw CheckpointError("cannot read \(path): check the path") }
        let tensors = try Safetensors.decode(Array(data), source: path)
        let hasNorm = tensors["1.running_mean"] != nil
        guard let first = tensors["0.weight"], first.shape.count == 2 else { throw CheckpointError("\(path) has no 0.weight matrix: it is not a SyncBN model") }
        var hidden: [Int] = []
        var index = 0
        while let weight = tensors["\(index).weight"], weight.shape.count == 2, tensors["\(index + (hasNorm ? 3 : 2)).weight"] != nil {
            hidden.append(weight.shape[0])
            index += hasNorm ? 3 : 2
        }
        guard let last = tensors["\(index).weight"], last.shape.count == 2 else { throw CheckpointError("\(path) has no classifier layer \(index).weight") }
        let name = hidden == [100, 100, 100] ? "bn-mlp" : hidden == [1024, 1024, 1024] ? "wide-mlp" : "mlp"
        return ModelSpec(name: name, inputSize: first.shape[1], hiddenSizes: hidden, classes: last.shape[0],
                         activation: .sigmoid, batchNorm: hasNorm ? .sync : .none)
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
