/// All trainable parameters of a network in one flat Float32 buffer, with their gradients and the
/// optimizer's momentum buffer alongside. Layers address their tensors by offset.
///
/// One buffer means one all-reduce of gradients and one loop for the optimizer.
public final class ParameterStore {
    public let count: Int
    public let values: UnsafeMutablePointer<Float>
    public let gradients: UnsafeMutablePointer<Float>
    /// SGD's momentum buffer v.
    public let velocity: UnsafeMutablePointer<Float>

    init(count: Int) {
        self.count = count
        values = .allocate(capacity: count)
        values.initialize(repeating: 0, count: count)
        gradients = .allocate(capacity: count)
        gradients.initialize(repeating: 0, count: count)
        velocity = .allocate(capacity: count)
        velocity.initialize(repeating: 0, count: count)
    }

    deinit {
        values.deallocate()
        gradients.deallocate()
        velocity.deallocate()
    }
}

/// Stochastic gradient descent with momentum, in `torch.optim.SGD`'s form:
///   v ← μ·v + g,   p ← p − lr·v
/// (with v = 0 before the first step, so the first step takes v = g, as PyTorch does).
public struct SGD: Codable, Equatable, Sendable {
    public var learningRate: Float
    public var momentum: Float

    public init(learningRate: Float, momentum: Float) {
        self.learningRate = learningRate
        self.momentum = momentum
    }

    /// One update of every parameter, element by element, the elements shared among `threads` in pieces
    /// (each element's update is its own: the bits do not depend on the cut).
    public func step(_ store: ParameterStore, threads: ChunkThreads = .single) {
        let p = store.values, g = store.gradients, v = store.velocity
        let lr = learningRate, mu = momentum
        let pieces = threads.threadCount * threads.pieces(work: store.count, count: threads.threadCount, limit: 8)
        let part = (store.count + pieces - 1) / pieces
        threads.run(pieces, work: store.count) { k, _ in
            let range = min(k * part, store.count)..<min((k + 1) * part, store.count)
            guard !range.isEmpty else { return }
            VectorKernels.momentumStep(values: p + range.lowerBound, gradients: g + range.lowerBound, velocity: v + range.lowerBound,
                                       count: range.count, learningRate: lr, momentum: mu)
        }
    }
}
