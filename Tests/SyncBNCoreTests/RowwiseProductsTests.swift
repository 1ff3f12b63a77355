/// Per-sample products over several chunks at once (`RowwiseProducts`, used by Linear).
///
/// Oracle: the chunk-by-chunk product, one `sgemm` per chunk, is what the model's bits were defined by. For
/// the shapes of the presets' Linear layers (bn-mlp 784→100→100→100→10, wide-mlp 784→1024→1024→1024→10,
/// bn-cnn 3136→128→10), for every run of consecutive chunks of several plans (every offset and length:
/// what any worker's slice or any thread's run can be), on data other than the probe's:
/// - where `RowwiseProducts.agree` says one call is safe, one call over the run must give every row exactly the
///   bits of its chunk's call, for y = x·Wᵀ + b and for ∂x = dy·W, and also when the run is computed inside any
///   longer agreeing run; (where it says no, the layer keeps one call per chunk, nothing to check).
/// - training the bn-mlp preset gives the same bits with per-sample products on or off, in one process on one
///   or 3 threads and as 1 to 4 workers.
/// This holds on whichever machine runs it: the verdicts are taken on that machine's OpenBLAS kernels, as the
/// layers take them at run time. Which layouts agreed is printed.
import Foundation
import XCTest
@testable import SyncBNCore

final class RowwiseProductsTests: XCTestCase {
    override func setUp() {
        super.setUp()
        BLAS.useSingleThread()
        RowwiseProducts.enabled = true
    }

    override func tearDown() {
        RowwiseProducts.enabled = true
        super.tearDown()
    }

    /// (inputs, outputs) of the presets' Linear layers.
    private let shapes = [(784, 100), (100, 100), (100, 10), (784, 1024), (1024, 1024), (1024, 10), (3136, 128), (128, 10)]

    /// The product of `kind` for the rows `rows` of `a`, into the same rows of `c` (bias rows preset for forward).
    private func product(_ kind: RowwiseProducts.Kind, rows: Range<Int>, n: Int, k: Int, a: [Float], b: [Float], c: inout [Float]) {
        guard !rows.isEmpty else { return }
        a.withUnsafeBufferPointer { a in
            b.withUnsafeBufferPointer { b in
                c.withUnsafeMutableBufferPointer { c in
                    RowwiseProducts.multiply(kind, rows: rows.count, n: n, k: k, a: a.baseAddress! + rows.lowerBound * k,
                                             b: b.baseAddress!, c: c.baseAddress! + rows.lowerBound * n)
                }
            }
        }
    }

    func testOneCallOverAgreeingChunksGivesEveryRowItsChunksBits() {
        var report: [String] = []
        for (inputs, outputs) in shapes {
            let wide = inputs >= 1024 || outputs >= 1024 || inputs >= 3136
            // bn-mlp's and bn-cnn's plan (batch 60 in chunks of 15), odd chunks with a short last one, and chunks of 8.
            let plans = wide ? [ChunkPlan(batchSize: 60, chunkSize: 15), ChunkPlan(batchSize: 23, chunkSize: 4)]
                             : [ChunkPlan(batchSize: 60, chunkSize: 15), ChunkPlan(batchSize: 23, chunkSize: 4),
                                ChunkPlan(batchSize: 64, chunkSize: 8), ChunkPlan(batchSize: 7, chunkSize: 2)]
            for kind in [RowwiseProducts.Kind.forward, .inputGradient] {
                let (n, k) = kind == .forward ? (outputs, inputs) : (inputs, outputs)
                for plan in plans {
                    let m = plan.batchSize
                    let a = randomFloats(m * k, seed: 11), b = randomFloats(n * k, seed: 12), bias = randomFloats(m * n, seed: 13)
                    let start: [Float] = kind == .forward ? bias : Array(repeating: 0, count: m * n)
                    // The reference: one call per chunk.
                    var reference = start
                    for c in 0..<plan.chunkCount { product(kind, rows: plan.rows(ofChunk: c), n: n, k: k, a: a, b: b, c: &reference) }
                    var agreeing: [Range<Int>] = []
                    for first in 0..<plan.chunkCount {
                        for end in (first + 1)...plan.chunkCount {
                            let run = first..<end
                            let layout = run.map { plan.rows(ofChunk: $0).count }
                            guard RowwiseProducts.agree(kind, n: n, k: k, chunkRows: layout) else { continue }
                            XCTAssertTrue(RowwiseProducts.agree(kind, n: n, k: k, chunkRows: layout), "a verdict changed")
                            agreeing.append(run)
                            let rows = plan.rows(ofChunks: run)
                            var whole = start
                            product(kind, rows: rows, n: n, k: k, a: a, b: b, c: &whole)
                            let range = (rows.lowerBound * n)..<(rows.upperBound * n)
                            if bits(Array(whole[range])) != bits(Array(reference[range])) {
                                XCTFail("\(kind) \(k)→\(n), chunks \(layout): the probe agreed but rows \(rows) of one call differ from the chunks' calls")
                            }
                        }
                    }
                    // Every agreeing run matched the chunks' calls, so a row has the same bits at any offset of any agreeing run.
                    report.append("\(kind) k=\(k) n=\(n) plan \(plan.batchSize)/\(plan.chunkSize): \(agreeing.count) of \(plan.chunkCount * (plan.chunkCount + 1) / 2) runs in one call")
                }
            }
        }
        print("RowwiseProducts on \(BLAS.kernelName):\n  " + report.joined(separator: "\n  "))
    }

    /// The verdicts are about the product's sizes only: a run that agrees on one data set agrees on others.
    func testAProbeThatAgreesKeepsAgreeingOnOtherData() {
        for (inputs, outputs) in shapes where inputs < 1024 && outputs < 1024 {
            for kind in [RowwiseProducts.Kind.forward, .inputGradient] {
                let (n, k) = kind == .forward ? (outputs, inputs) : (inputs, outputs)
                for layout in [[15, 15], [15, 15, 15, 15], [8, 8, 8], [4, 4, 3]] {
                    let key = RowwiseProducts.Key(kind: kind, n: n, k: k, chunkRows: layout)
                    let verdicts = (1...6).map { RowwiseProducts.probe(key, seed: UInt64(100 + $0)) }
                    XCTAssertEqual(Set(verdicts).count, 1, "\(kind) \(k)→\(n) \(layout): probes on different data disagree: \(verdicts)")
                }
            }
        }
    }

    /// A chunk's ∂W = dyᵀ·x added onto ∂W by OpenBLAS (β = 1) where the probe says that equals the product
    /// added afterwards: checked on other data for the presets' factor shapes (dy and x in a chunk's factor rows).
    func testAccumulatingAChunksProductAgreesWhereTheProbeSaysSo() {
        var report: [String] = []
        for (inputs, outputs) in shapes {
            for rows in [15, 7, 2] {
                let rowWidth = inputs + outputs  // x and dy side by side, as in a factor block
                let verdict = RowwiseProducts.accumulates(m: outputs, n: inputs, k: rows, lda: rowWidth, ldb: rowWidth)
                report.append("k=\(rows) \(inputs)→\(outputs): \(verdict)")
                guard verdict else { continue }
                let block = randomFloats(rows * rowWidth, seed: 21), start = randomFloats(outputs * inputs, seed: 22)
                var product = [Float](repeating: 0, count: outputs * inputs), accumulated = start
                block.withUnsafeBufferPointer { block in
                    let x = block.baseAddress!, dy = block.baseAddress! + inputs
                    product.withUnsafeMutableBufferPointer {
                        BLAS.gemm(transposeA: true, transposeB: false, m: outputs, n: inputs, k: rows, a: dy, lda: rowWidth, b: x, ldb: rowWidth,
                                  c: $0.baseAddress!, ldc: inputs)
                    }
                    accumulated.withUnsafeMutableBufferPointer {
                        BLAS.gemm(transposeA: true, transposeB: false, m: outputs, n: inputs, k: rows, a: dy, lda: rowWidth, b: x, ldb: rowWidth,
                                  beta: 1, c: $0.baseAddress!, ldc: inputs)
                    }
                }
                let added = zip(start, product).map { $0 + $1 }
                XCTAssertEqual(bits(accumulated), bits(added), "k=\(rows) \(inputs)→\(outputs): the probe agreed but β = 1 differs")
            }
        }
        print("β = 1 accumulation on \(BLAS.kernelName): " + report.joined(separator: ", "))
    }

    /// A chunk's ∂W = dyᵀ·x read from dy and x side by side in factor rows (as workers receive them) and from
    /// their own matrices (as one process holds them): where the probe says the bits agree, they do on other
    /// data, for the presets' factor shapes, β 0 and 1; the presets' shapes all agree on this machine's OpenBLAS
    /// (else one process would copy rows through the exchange, which the speed figures do not assume); and a
    /// layout whose rows overlap is refused.
    func testWeightGradientsReadInPlaceAgreeWithFactorRowsWhereTheProbeSaysSo() {
        var disagreed: [String] = []
        for (inputs, outputs) in shapes {
            for rows in [15, 2] {
                for beta: Float in [0, 1] {
                    let rowWidth = inputs + outputs
                    let gathered = RowwiseProducts.Operands(aOffset: inputs, lda: rowWidth, bOffset: 0, ldb: rowWidth)
                    let inPlace = RowwiseProducts.Operands(aOffset: 0, lda: outputs, bOffset: 0, ldb: inputs)
                    guard RowwiseProducts.stridesAgree(m: outputs, n: inputs, k: rows, beta: beta, gathered, inPlace) else {
                        disagreed.append("k=\(rows) \(inputs)→\(outputs) β=\(beta)")
                        continue
                    }
                    let block = randomFloats(rows * rowWidth, seed: 41), start = randomFloats(outputs * inputs, seed: 42)
                    let x = (0..<rows).flatMap { block[($0 * rowWidth)..<($0 * rowWidth + inputs)] }
                    let dy = (0..<rows).flatMap { block[($0 * rowWidth + inputs)..<(($0 + 1) * rowWidth)] }
                    var fromRows = start, fromMatrices = start
                    block.withUnsafeBufferPointer { block in
                        BLAS.gemm(transposeA: true, transposeB: false, m: outputs, n: inputs, k: rows, a: block.baseAddress! + inputs, lda: rowWidth,
                                  b: block.baseAddress!, ldb: rowWidth, beta: beta, c: &fromRows, ldc: inputs)
                    }
                    BLAS.gemm(transposeA: true, transposeB: false, m: outputs, n: inputs, k: rows, a: dy, lda: outputs, b: x, ldb: inputs,
                              beta: beta, c: &fromMatrices, ldc: inputs)
                    XCTAssertEqual(bits(fromRows), bits(fromMatrices), "k=\(rows) \(inputs)→\(outputs) β=\(beta): the probe agreed but the bits differ")
                }
            }
        }
        XCTAssertEqual(disagreed, [], "layouts whose bits differ on \(BLAS.kernelName)")
        let overlapping = RowwiseProducts.Operands(aOffset: 0, lda: 5, bOffset: 0, ldb: 8)
        XCTAssertFalse(RowwiseProducts.stridesAgree(m: 10, n: 8, k: 3, beta: 0, overlapping, RowwiseProducts.Operands(aOffset: 0, lda: 10, bOffset: 0, ldb: 8)))
    }

    /// A chunk's ∂W = dyᵀ·x formed block of rows by block of rows (as `Network` forms a factor layer's ∂W, tile by
    /// tile) where the probe says that gives the one call's bits: checked on other data for the presets' factor
    /// shapes, cut in two, in three and in tiles of 64 rows; a cut that leaves rows out is refused.
    func testRowBlocksOfAWeightGradientAgreeWhereTheProbeSaysSo() {
        var report: [String] = [], agreed = 0
        for (inputs, outputs) in shapes where outputs >= 32 {
            let cuts: [[Range<Int>]] = [[0..<(outputs / 32 * 16), (outputs / 32 * 16)..<outputs],
                                        [0..<16, 16..<32, 32..<outputs],
                                        stride(from: 0, to: outputs, by: 64).map { $0..<min($0 + 64, outputs) }]
            for blocks in cuts {
                for rows in [15, 2] {
                    let rowWidth = inputs + outputs
                    let verdict = RowwiseProducts.rowBlocksAgree(m: outputs, n: inputs, k: rows, lda: rowWidth, ldb: rowWidth, blocks: blocks)
                    report.append("k=\(rows) \(inputs)→\(outputs) \(blocks.map(\.upperBound)): \(verdict)")
                    guard verdict else { continue }
                    agreed += 1
                    let block = randomFloats(rows * rowWidth, seed: 31)
                    var whole = [Float](repeating: 0, count: outputs * inputs), blockwise = whole
                    block.withUnsafeBufferPointer { block in
                        let x = block.baseAddress!, dy = block.baseAddress! + inputs
                        BLAS.gemm(transposeA: true, transposeB: false, m: outputs, n: inputs, k: rows, a: dy, lda: rowWidth, b: x, ldb: rowWidth,
                                  c: &whole, ldc: inputs)
                        blockwise.withUnsafeMutableBufferPointer { c in
                            for part in blocks {
                                BLAS.gemm(transposeA: true, transposeB: false, m: part.count, n: inputs, k: rows, a: dy + part.lowerBound, lda: rowWidth,
                                          b: x, ldb: rowWidth, c: c.baseAddress! + part.lowerBound * inputs, ldc: inputs)
                            }
                        }
                    }
                    XCTAssertEqual(bits(blockwise), bits(whole), "k=\(rows) \(inputs)→\(outputs) \(blocks): the probe agreed but the blocks differ")
                }
            }
        }
        XCTAssertFalse(RowwiseProducts.rowBlocksAgree(m: 64, n: 8, k: 4, lda: 64, ldb: 8, blocks: [1..<32, 32..<64]), "a cut must start at row 0")
        XCTAssertFalse(RowwiseProducts.rowBlocksAgree(m: 64, n: 8, k: 4, lda: 64, ldb: 8, blocks: [0..<32, 32..<60]), "a cut must end at row m")
        XCTAssertFalse(RowwiseProducts.rowBlocksAgree(m: 64, n: 8, k: 4, lda: 64, ldb: 8, blocks: [0..<16, 32..<64]), "the blocks must not leave a gap")
        print("row blocks of ∂W on \(BLAS.kernelName) (\(agreed) agreed): " + report.joined(separator: ", "))
    }

    // MARK: Training

    private func trainBnMLP(rowwise: Bool, threads: Int = 1, workers: Int = 1) throws -> ReplicaState {
        RowwiseProducts.enabled = rowwise
        defer { RowwiseProducts.enabled = true }
        let spec = try XCTUnwrap(ModelSpec.preset("bn-mlp", input: TensorShape([1, 28, 28]), classes: 10))
        let plan = ChunkPlan(batchSize: 60, chunkSize: 15)
        let make = { Network(spec: spec, plan: plan, optimizer: SGD(learningRate: 0.1, momentum: 0.9), seed: 5) }
        let steps = 3
        func load(_ network: Network, step: Int, rows: Range<Int>) {
            let x = randomFloats(plan.batchSize * 784, seed: UInt64(300 + step), low: 0, high: 1)
            var random = SplitMix64(seed: UInt64(400 + step))
            let labels = (0..<plan.batchSize).map { _ in Int32(random.below(10)) }
            network.batchInput.assign(x, rows: plan.batchSize)
            network.input.assign(Array(x[(rows.lowerBound * 784)..<(rows.upperBound * 784)]), rows: rows.count)
            for (r, global) in rows.enumerated() { network.labels[r] = labels[global] }
        }
        if workers == 1 {
            let network = make()
            if threads > 1 { network.threads = ChunkThreads(threadCount: threads, inlineWork: 0) }
            let collective = LocalCollective(plan: plan, valuesPerRow: network.momentScales)
            for step in 0..<steps {
                load(network, step: step, rows: 0..<plan.batchSize)
                try network.trainStep(slice: .whole(plan), collective: collective, computeMetrics: step == steps - 1, step: step)
            }
            return ReplicaState(network)
        }
        let hub = InProcessHub(plan: plan, workers: workers)
        let networks = (0..<workers).map { _ in make() }
        let finished = runReplicas(hub) { rank, collective in
            let network = networks[rank]
            let slice = BatchSlice(plan: plan, chunks: plan.chunks(forRank: rank, of: workers))
            for step in 0..<steps {
                load(network, step: step, rows: slice.globalRows)
                try network.trainStep(slice: slice, collective: collective, computeMetrics: step == steps - 1, step: step)
            }
        }
        XCTAssertTrue(finished, "replicas deadlocked: \(hub.problems)")
        XCTAssertEqual(hub.problems, [])
        let states = networks.map(ReplicaState.init)
        for state in states.dropFirst() { XCTAssertEqual(state, states[0], "replicas differ") }
        return states[0]
    }

    func testBnMLPTrainsToTheSameBitsWithPerSampleProductsOnOrOff() throws {
        let reference = try trainBnMLP(rowwise: false)
        XCTAssertEqual(try trainBnMLP(rowwise: true), reference, "one process, one thread")
        XCTAssertEqual(try trainBnMLP(rowwise: true, threads: 3), reference, "one process, 3 threads")
        for workers in 2...4 {
            XCTAssertEqual(try trainBnMLP(rowwise: true, workers: workers), reference, "\(workers) workers")
        }
    }
}
