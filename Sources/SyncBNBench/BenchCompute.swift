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
