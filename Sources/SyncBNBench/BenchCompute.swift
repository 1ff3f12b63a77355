import Foundation
import SyncBNCore

/// One process, one thread: a model's training step on random data (fixed seed) through the whole network
/// and a local collective, timed step by step, with the share of the time spent in OpenBLAS's sgemm.
enum BenchCompute {
    struct Profile {
        var medianStepMs: Double
        var medianGemmMs: Double
    }

    static func profile(model: String, batchSize: Int, chunkSize: Int, steps: Int, warmup: Int = 3) throws -> Profile {
        BLAS.useSingleThread()
        let spec = try ModelSpec.preset(model, input: TensorShape([1, 28, 28]), classes: 10)!
        let plan = ChunkPlan(batchSize: batchSize, chunkSize: chunkSize)
        let network = Network(spec: spec, plan: plan, optimizer: SGD(learningRate: 0.01, momentum: 0.9), seed: 1)
        var random = SplitMix64(seed: 3)
        for i in 0..<(batchSize * spec.input.count) { network.batchInput.storage[i] = random.uniform(0, 1) }
        network.input.storage.update(from: network.batchInput.storage, count: batchSize * spec.input.count)
        for r in 0..<batchSize { network.labels[r] = Int32(random.below(10)) }
        let collective = LocalCollective(plan: plan, valuesPerRow: network.momentScales)
        var stepMs: [Double] = [], gemmMs: [Double] = []
        for step in 0..<(warmup + steps) {
            BLAS.measuredNanoseconds = 0
            BLAS.measuring = true
            let start = DispatchTime.now().uptimeNanoseconds
            try network.trainStep(slice: .whole(plan), collective: collective, computeMetrics: false, step: step)
            let elapsed = DispatchTime.now().uptimeNanoseconds - start
            BLAS.measuring = false
            guard step >= warmup else { continue }
            stepMs.append(Double(elapsed) / 1e6)
            gemmMs.append(Double(BLAS.measuredNanoseconds) / 1e6)
        }
        return Profile(medianStepMs: benchMedian(stepMs) ?? 0, medianGemmMs: benchMedian(gemmMs) ?? 0)
    }
}

/// The sgemm floor of a model's training step: every matrix product of one step at batch B, each in one call
/// over the whole batch (unchunked), on one OpenBLAS thread, on random data — what the step would cost if it
/// did nothing but its products. Per Linear: y = x·Wᵀ (B×out, k = in), ∂W = dyᵀ·x (out×in, k = B) and ∂x = dy·W
/// (B×in, k = out; not for the first layer). Per Conv2d (im2col, the batch side by side, N = B·OH·OW): y = W·X
/// (Cout×N, k = Cin·k²), ∂W = dy·Xᵀ (Cout×Cin·k², k = N), ∂X = Wᵀ·dy (Cin·k²×N, k = Cout; not for the first layer).
enum BenchFloor {
    struct Product {
        var transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int
        var flops: Double { 2 * Double(m) * Double(n) * Double(k) }
    }

    /// The products of one training step of `model` at `batchSize`.
    static func products(model: String, batchSize b: Int) throws -> [Product] {
        let spec = try ModelSpec.preset(model, input: TensorShape([1, 28, 28]), classes: 10)!
        let network = Network(spec: spec, plan: ChunkPlan(batchSize: b, chunkSize: b), optimizer: SGD(learningRate: 0, momentum: 0), seed: 1)
        var products: [Product] = [], first = true
        for (_, layer) in network.namedLayers {
            if let linear = layer as? Linear {
                let (i, o) = (linear.inputs, linear.outputs)
                products.append(.init(transposeA: false, transposeB: true, m: b, n: o, k: i))
                products.append(.init(transposeA: true, transposeB: false, m: o, n: i, k: b))
                if !first { products.append(.init(transposeA: false, transposeB: false, m: b, n: i, k: o)) }
                first = false
            } else if let conv = layer as? Conv2d {
                let patch = conv.inChannels * conv.kernelSize * conv.kernelSize
                let columns = b * conv.outputShape.height * conv.outputShape.width
                products.append(.init(transposeA: false, transposeB: false, m: conv.outChannels, n: columns, k: patch))
                products.append(.init(transposeA: false, transposeB: true, m: conv.outChannels, n: patch, k: columns))
                if !first { products.append(.init(transposeA: true, transposeB: false, m: patch, n: columns, k: conv.outChannels)) }
                first = false
            }
        }
        return products
    }

    /// The median over `rounds` of the time of all of `model`'s products, in ms (after a warm-up round).
    static func measure(model: String, batchSize: Int, rounds: Int) throws -> Double {
        BLAS.useSingleThread()
        let products = try products(model: model, batchSize: batchSize)
        var random = SplitMix64(seed: 9)
        let buffers = products.map { p -> (a: UnsafeMutablePointer<Float>, b: UnsafeMutablePointer<Float>, c: UnsafeMutablePointer<Float>) in
            let a = UnsafeMutablePointer<Float>.allocate(capacity: p.m * p.k), b = UnsafeMutablePointer<Float>.allocate(capacity: p.k * p.n)
            let c = UnsafeMutablePointer<Float>.allocate(capacity: p.m * p.n)
            for i in 0..<(p.m * p.k) { a[i] = random.uniform(-1, 1) }
            for i in 0..<(p.k * p.n) { b[i] = random.uniform(-1, 1) }
            c.initialize(repeating: 0, count: p.m * p.n)
            return (a, b, c)
        }
        defer { for buffer in buffers { buffer.a.deallocate(); buffer.b.deallocate(); buffer.c.deallocate() } }
        var times: [Double] = []
        for round in 0..<(rounds + 1) {
            let start = benchNow()
            for (p, buffer) in zip(products, buffers) {
                BLAS.gemm(transposeA: p.transposeA, transposeB: p.transposeB, m: p.m, n: p.n, k: p.k,
                          a: buffer.a, lda: p.transposeA ? p.m : p.k, b: buffer.b, ldb: p.transposeB ? p.k : p.n,
                          c: buffer.c, ldc: p.n)
            }
            if round > 0 { times.append(Double(benchNow() - start) / 1e6) }
        }
        return benchMedian(times) ?? 0
    }
}
