/// The thread team that computes a step's chunks (`ChunkThreads`), and the bits of training with it.
///
/// Oracles: (1) the contract — every index runs exactly once, on a slot below the team's size that no other
/// running call holds, for teams of 1 to 4 and counts 0 to 40, over many calls of one team; the calls really
/// overlap on a team of 2; thousands of short calls back to back never run an index with another call's body;
/// a team of 1, and a call of little work, run inline, in index order, and are not cut into pieces; released
/// teams leave no thread behind (/proc/self/status). (2) For training, one process with one thread is the
/// reference: the same network with 2, 3 and 4 threads, sharing every call (`inlineWork` 0), must end with
/// the same bits (parameters, velocity, running statistics, losses) after 3 steps, for a network with a layer
/// of every kind, in every BatchNorm mode. (The multi-process tests in ThreadDeterminismTests run larger
/// chunks, where a shared scratch buffer shows.)
import Foundation
import XCTest
@testable import SyncBNCore

final class ChunkThreadsTests: XCTestCase {
    override func setUp() {
        super.setUp()
        BLAS.useSingleThread()
    }

    // MARK: The contract

    func testEveryIndexRunsExactlyOnceOnAFreeSlot() {
        for threads in 1...4 {
            let team = ChunkThreads(threadCount: threads)
            for repeatCall in 0..<3 {
                for count in 0...40 {
                    let lock = NSLock()
                    var runs = [Int](repeating: 0, count: count), busy = [Bool](repeating: false, count: threads)
                    var badSlots: [Int] = [], sharedSlots: [Int] = []
                    team.run(count) { index, slot in
                        lock.withLock {
                            runs[index] += 1
                            if !(0..<threads).contains(slot) { badSlots.append(slot); return }
                            if busy[slot] { sharedSlots.append(slot) }
                            busy[slot] = true
                        }
                        if index % 3 == 0 { usleep(50) }  // some calls long enough for the others to overlap them
                        lock.withLock { if (0..<threads).contains(slot) { busy[slot] = false } }
                    }
                    XCTAssertEqual(runs, [Int](repeating: 1, count: count), "\(threads) threads, count \(count), call \(repeatCall): runs per index")
                    XCTAssertEqual(badSlots, [], "\(threads) threads, count \(count): slots outside the team")
                    XCTAssertEqual(sharedSlots, [], "\(threads) threads, count \(count): a slot held by two running calls")
                }
            }
        }
    }

    /// A call often ends before a helper has woken for it (the caller claimed everything), and the next call is
    /// posted at once: a helper that then woke must join the open call with its own body, never run an index of
    /// the new call with the old call's body, nor claim from a call that is over. Thousands of short calls back to
    /// back, each index writing its call's number: every index of every call ran once, by that call's body.
    func testBackToBackCallsNeverRunAnIndexWithAnotherCallsBody() {
        for threads in [2, 3] {
            let team = ChunkThreads(threadCount: threads, inlineWork: 0)
            let capacity = 9
            let seen = UnsafeMutablePointer<Int>.allocate(capacity: capacity)
            defer { seen.deallocate() }
            var wrong = 0
            for call in 1...20_000 {
                let count = 2 + call % (capacity - 1)
                seen.initialize(repeating: 0, count: capacity)
                team.run(count) { index, _ in seen[index] += call }  // one writer per index
                for index in 0..<capacity where seen[index] != (index < count ? call : 0) { wrong += 1 }
            }
            XCTAssertEqual(wrong, 0, "\(threads) threads: indices run by another call's body, twice, or not at all")
        }
    }

    /// How finely a call is cut (`pieces`): not at all on a team of one or below the inline work; past it, in
    /// pieces of about a quarter of the inline work each, at most `limit` per index.
    func testPiecesFollowTheWorkUpToTheLimit() {
        let pair = ChunkThreads(threadCount: 2, inlineWork: 4000)
        XCTAssertEqual(ChunkThreads(threadCount: 1, inlineWork: 4000).pieces(work: 1_000_000, count: 4, limit: 50), 1)
        XCTAssertEqual(pair.pieces(work: 3999, count: 4, limit: 50), 1, "a call that runs inline is not cut")
        XCTAssertEqual(pair.pieces(work: 4000, count: 4, limit: 50), 1, "4,000 over 4 indices: one piece of 1,000 each")
        XCTAssertEqual(pair.pieces(work: 40_000, count: 4, limit: 50), 10)
        XCTAssertEqual(pair.pieces(work: 40_000, count: 4, limit: 6), 6, "the limit (a chunk's rows, say) caps the cut")
        XCTAssertEqual(pair.pieces(work: 40_000, count: 4, limit: 1), 1)
    }

    func testCallsOverlapOnATeamOfTwo() {
        // Each of the two calls waits for the other to have started: run one after the other, neither would.
        let team = ChunkThreads(threadCount: 2)
        let started = [DispatchSemaphore(value: 0), DispatchSemaphore(value: 0)]
        let lock = NSLock()
        var met = [false, false]
        team.run(2) { index, _ in
            started[index].signal()
            let other = started[1 - index].wait(timeout: .now() + 10) == .success
            lock.withLock { met[index] = other }
        }
        XCTAssertEqual(met, [true, true], "the two calls did not run at the same time")
    }

    /// Each thread owns a block of indices (two threads, four indices: the caller 0 and 1, the helper 2 and 3);
    /// a thread that is late has the rest of its block taken over. The caller stays in index 0 until index 1 has
    /// run, so the helper must run its own 2 and 3 and then take 1 from the caller's block.
    func testThreadsOwnBlocksOfIndicesAndALateThreadsAreTakenOver() {
        let team = ChunkThreads(threadCount: 2, inlineWork: 0)
        let lock = NSLock()
        var slots = [Int](repeating: -1, count: 4)
        let indexOneRan = DispatchSemaphore(value: 0)
        var waited = false
        team.run(4) { index, slot in
            lock.withLock { slots[index] = slot }
            if index == 0 { waited = indexOneRan.wait(timeout: .now() + 10) == .success }
            if index == 1 { indexOneRan.signal() }
        }
        XCTAssertTrue(waited, "index 1 never ran while the caller held index 0")
        XCTAssertEqual(slots, [0, 1, 1, 1], "slot per index")
    }

    func testATeamOfOneRunsInlineInIndexOrder() {
        let team = ChunkThreads(threadCount: 1)
        let caller = Thread.current
        var order: [Int] = [], slots: Set<Int> = [], onCaller = true
        team.run(7) { index, slot in
            order.append(index)
            slots.insert(slot)
            onCaller = onCaller && Thread.current == caller
        }
        XCTAssertEqual(order, Array(0..<7))
        XCTAssertEqual(slots, [0])
        XCTAssertTrue(onCaller)
    }

    func testCallsWithLittleWorkRunInline() {
        let team = ChunkThreads(threadCount: 3, inlineWork: 1000)
        let caller = Thread.current
        var order: [Int] = [], onCaller = true
        team.run(5, work: 999) { index, _ in
            order.append(index)
            onCaller = onCaller && Thread.current == caller
        }
        XCTAssertEqual(order, Array(0..<5))
        XCTAssertTrue(onCaller, "a call below the team's inline work left the caller's thread")
    }

    func testReleasedTeamsLeaveNoThreads() throws {
        let before = try Self.threadsOfThisProcess()
        for _ in 0..<20 {
            let team = ChunkThreads(threadCount: 4)
            team.run(8) { _, _ in }
        }
        XCTAssertEqual(try Self.threadsOfThisProcess(), before, "threads of released teams are still running")
    }

    private static func threadsOfThisProcess() throws -> Int {
        let status = try String(contentsOfFile: "/proc/self/status", encoding: .utf8)
        let line = try XCTUnwrap(status.split(separator: "\n").first { $0.hasPrefix("Threads:") })
        return try XCTUnwrap(Int(line.dropFirst("Threads:".count).trimmingCharacters(in: .whitespaces)))
    }

    /// The runs a layer multiplies in one call each are cut by rows: batch 512 in chunks of 15 (34 × 15 + 2) on
    /// two threads is 255 + 257 rows, not 270 + 242; on any number, each run within a chunk of its share; every chunk
    /// in exactly one run.
    func testChunkRunsShareTheRowsNotJustTheChunks() {
        let plan = ChunkPlan(batchSize: 512, chunkSize: 15)
        let context = StepContext.forTest(slice: .whole(plan), store: ParameterStore(count: 1))
        for threads in [2, 3, 5] {
            context.threads = ChunkThreads(threadCount: threads, inlineWork: 0)
            let runs = context.chunkRuns(work: 1)
            XCTAssertEqual(runs.count, threads)
            XCTAssertEqual(runs.first?.lowerBound, 0)
            XCTAssertEqual(runs.last?.upperBound, plan.chunkCount)
            for (a, b) in zip(runs, runs.dropFirst()) { XCTAssertEqual(a.upperBound, b.lowerBound, "runs must be consecutive") }
            let rows = runs.map { context.rows(ofChunkRun: $0).count }
            XCTAssertEqual(rows.reduce(0, +), 512)
            for count in rows { XCTAssertLessThanOrEqual(abs(Double(count) - 512 / Double(threads)), 15, "\(threads) threads: \(rows)") }
            if threads == 2 { XCTAssertEqual(rows, [255, 257]) }
        }
        context.threads = ChunkThreads(threadCount: 4, inlineWork: 0)
        let small = ChunkPlan(batchSize: 7, chunkSize: 2)  // 2, 2, 2, 1: four runs of one chunk each
        let smallContext = StepContext.forTest(slice: .whole(small), store: ParameterStore(count: 1))
        smallContext.threads = context.threads
        XCTAssertEqual(smallContext.chunkRuns(work: 1), [0..<1, 1..<2, 2..<3, 3..<4])
        smallContext.chunks = []  // a worker with an empty slice
        XCTAssertEqual(smallContext.chunkRuns(work: 1), [0..<0])
        smallContext.chunks = [0..<2, 2..<3]  // the same number of chunks as a cached cut, other rows: cut anew
        smallContext.threads = ChunkThreads(threadCount: 2, inlineWork: 0)
        XCTAssertEqual(smallContext.chunkRuns(work: 1), [0..<1, 1..<2])
        smallContext.chunks = [0..<1, 1..<3]
        XCTAssertEqual(smallContext.chunkRuns(work: 1), [0..<1, 1..<2])
    }

    // MARK: Training bits do not depend on the threads

    /// Every layer kind, on 6×6 inputs.
    private func spec(_ mode: BatchNormMode) throws -> ModelSpec {
        func bn2(_ c: Int) -> LayerSpec { .batchNorm2d(numFeatures: c, eps: 1e-5, momentum: 0.1) }
        return try ModelSpec(name: "every-layer", input: TensorShape([1, 6, 6]), layers: [
            .conv2d(inChannels: 1, outChannels: 3, kernelSize: 3, stride: 1, padding: 1, bias: true), bn2(3), .relu,
            .residual(body: [.conv2d(inChannels: 3, outChannels: 4, kernelSize: 3, stride: 2, padding: 1, bias: false), bn2(4), .tanh],
                      shortcut: [.conv2d(inChannels: 3, outChannels: 4, kernelSize: 1, stride: 2, padding: 0, bias: false), bn2(4)]),
            .maxPool2d(kernelSize: 2, stride: 1, padding: 0), .dropout(p: 0.25),
            .residual(body: [.avgPool2d(kernelSize: 3, stride: 1, padding: 1)], shortcut: []),
            .flatten, .linear(inFeatures: 16, outFeatures: 8, bias: true),
            .batchNorm1d(numFeatures: 8, eps: 1e-5, momentum: 0.1), .sigmoid,
            .linear(inFeatures: 8, outFeatures: 5, bias: true),
        ], batchNorm: mode)
    }

    /// Batch 7 in chunks of 2, 2, 2, 1 (batch 8 with BatchNorm groups of 4, which must divide it).
    private func train(_ mode: BatchNormMode, threads: Int, groupSize: Int? = nil) throws -> (ReplicaState, [UInt64]) {
        let plan = ChunkPlan(batchSize: groupSize == nil ? 7 : 8, chunkSize: 2)
        let network = Network(spec: try spec(mode), plan: plan, optimizer: SGD(learningRate: 0.1, momentum: 0.9), seed: 3,
                              batchNormGroupSize: groupSize)
        network.threads = ChunkThreads(threadCount: threads, inlineWork: 0)  // share even this small network's calls
        let collective = LocalCollective(plan: plan, valuesPerRow: network.momentScales)
        var losses: [UInt64] = []
        for step in 0..<3 {
            let x = randomNormals(plan.batchSize * 36, seed: UInt64(100 + step), mean: 0.2, std: 1.5)
            var random = SplitMix64(seed: UInt64(200 + step))
            network.batchInput.assign(x, rows: plan.batchSize)
            network.input.assign(x, rows: plan.batchSize)
            for r in 0..<plan.batchSize { network.labels[r] = Int32(random.below(5)) }
            let metrics = try network.trainStep(slice: .whole(plan), collective: collective, computeMetrics: true, step: step)
            losses.append(try XCTUnwrap(metrics).loss.bitPattern)
        }
        return (ReplicaState(network), losses)
    }

    func testTrainingSavesTheSameBitsOnAnyNumberOfThreads() throws {
        let cases: [(BatchNormMode, Int?)] = [(.sync, nil), (.sync, 4), (.local, nil), (.none, nil)]
        for (mode, groupSize) in cases {
            let (reference, losses) = try train(mode, threads: 1, groupSize: groupSize)
            for threads in 2...4 {
                let (state, threadedLosses) = try train(mode, threads: threads, groupSize: groupSize)
                XCTAssertEqual(state, reference, "\(mode), groups \(groupSize.map(String.init) ?? "none"), \(threads) threads: the state differs from one thread's")
                XCTAssertEqual(threadedLosses, losses, "\(mode), \(threads) threads: the losses differ")
            }
        }
    }
}
