/// An in-process stand-in for the cluster: replicas run on threads and meet in `InProcessHub`, which plays
/// the coordinator (gathers each round's per-chunk partials in rank order — which is chunk order — and
/// reduces them with `Round.reduce` / `GradientExchange.reduce` over the whole plan). Used by the
/// determinism and multi-worker gradient tests; it is test machinery, not an oracle by itself.
import Foundation
import XCTest
@testable import SyncBNCore

/// Plays the coordinator for replicas running on threads: every round, waits for all ranks' partials,
/// concatenates them in rank order and reduces them over the whole plan.
final class InProcessHub: @unchecked Sendable {
    let plan: ChunkPlan
    let workers: Int
    private let condition = NSCondition()
    private var contributions: [Any]
    private var roundsSeen: [Round?]
    private var arrived = 0, generation = 0
    private var result: Any = ()
    private(set) var problems: [String] = []
    private(set) var log: [Round] = []

    init(plan: ChunkPlan, workers: Int) {
        self.plan = plan
        self.workers = workers
        contributions = Array(repeating: (), count: workers)
        roundsSeen = Array(repeating: nil, count: workers)
    }

    /// `logged`: whether the round goes in `log` (the gradients riding with a backward round do not: they are
    /// part of that round).
    func exchange<T>(rank: Int, round: Round, partials: [T], width: Int, logged: Bool = true, combine: ([T]) -> [T]) -> [T] {
        condition.lock()
        defer { condition.unlock() }
        let mine = generation
        contributions[rank] = partials
        roundsSeen[rank] = round
        arrived += 1
        if arrived == workers {
            if Set(roundsSeen.map { $0! }).count != 1 { problems.append("ranks disagree on the round: \(roundsSeen)") }
            let all = contributions.flatMap { $0 as! [T] }
            if all.count != plan.chunkCount * width {
                problems.append("\(round): \(all.count) partial values for \(plan.chunkCount) chunks of width \(width)")
            }
            result = combine(all)
            if logged { log.append(round) }
            arrived = 0
            generation += 1
            condition.broadcast()
        } else {
            while generation == mine { condition.wait() }
        }
        return result as! [T]
    }

    /// The last gathered partials of each reported round (`HubCollective.report`).
    private(set) var reported: [Round: [Double]] = [:]

    func keep(_ round: Round, _ values: [Double]) {
        condition.lock(); reported[round] = values; condition.unlock()
    }

    func note(_ problem: String) {
        condition.lock(); problems.append(problem); condition.unlock()
    }
}

/// One replica's view of the hub.
final class HubCollective: Collective {
    let hub: InProcessHub
    let rank: Int

    init(hub: InProcessHub, rank: Int) {
        self.hub = hub
        self.rank = rank
    }

    /// The gradients riding with a round are combined right after it, as the coordinator does.
    func allReduce(_ round: Round, partials: UnsafeBufferPointer<Double>, into result: UnsafeMutableBufferPointer<Double>,
                   riding: RidingGradients?) throws {
        let plan = hub.plan, width = result.count
        let reduced = hub.exchange(rank: rank, round: round, partials: Array(partials), width: width) { all in
            withDoubles(width) { out in
                all.withUnsafeBufferPointer { round.reduce($0, plan: plan, chunks: 0..<plan.chunkCount, width: width, into: out) }
            }
        }
        for i in 0..<width { result[i] = reduced[i] }
        if let riding { combineGradients(riding.partials, exchange: riding.exchange, into: riding.result, logged: false) }
    }

    func allGather(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int, into result: UnsafeMutableBufferPointer<Double>,
                   riding: RidingGradients?) throws {
        let all = hub.exchange(rank: rank, round: round, partials: Array(partials), width: width) { $0 }
        for i in 0..<result.count { result[i] = all[i] }
        if let riding { combineGradients(riding.partials, exchange: riding.exchange, into: riding.result, logged: false) }
    }

    func exchangeGradients(_ partials: UnsafeBufferPointer<Float>, exchange: GradientExchange, into result: UnsafeMutableBufferPointer<Float>) throws {
        combineGradients(partials, exchange: exchange, into: result, logged: true)
    }

    func combineGradients(_ partials: UnsafeBufferPointer<Float>, exchange: GradientExchange, into result: UnsafeMutableBufferPointer<Float>, logged: Bool) {
        let width = result.count
        let combined = hub.exchange(rank: rank, round: .gradients, partials: Array(partials), width: exchange.chunkWidth, logged: logged) { all in
            var out = [Float](repeating: .nan, count: width)
            all.withUnsafeBufferPointer { p in out.withUnsafeMutableBufferPointer { exchange.reduce(p, into: $0) } }
            return out
        }
        for i in 0..<width { result[i] = combined[i] }
    }

    /// Gathers the partials as the coordinator would and keeps them in `hub.reported` (the last of each round).
    func report(_ round: Round, partials: UnsafeBufferPointer<Double>, width: Int) throws {
        let all = hub.exchange(rank: rank, round: round, partials: Array(partials), width: width) { $0 }
        if rank == 0 { hub.keep(round, all) }
    }
}

/// Runs `body(rank, collective)` for every rank of `hub` on its own thread; false if they did not all
/// finish within `timeout` seconds (a deadlock). Errors are recorded in `hub.problems`.
func runReplicas(_ hub: InProcessHub, timeout: Double = 60, _ body: @escaping (Int, HubCollective) throws -> Void) -> Bool {
    let done = DispatchGroup()
    for rank in 0..<hub.workers {
        done.enter()
        let thread = Thread {
            defer { done.leave() }
            do { try body(rank, HubCollective(hub: hub, rank: rank)) } catch { hub.note("rank \(rank): \(error)") }
        }
        thread.start()
    }
    return done.wait(timeout: .now() + timeout) == .success
}

/// Per-rank losses written from the replicas' threads.
final class LossTable: @unchecked Sendable {
    private let lock = NSLock()
    private var table: [[UInt64]]
    init(workers: Int) { table = Array(repeating: [], count: workers) }
    func append(rank: Int, _ value: UInt64) { lock.lock(); table[rank].append(value); lock.unlock() }
    var losses: [[UInt64]] { lock.lock(); defer { lock.unlock() }; return table }
}
