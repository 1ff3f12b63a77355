import Foundation
import SyncBNSimulation
import XCTest

/// The deterministic simulation (Sources/SyncBNSimulation): thousands of seeded fault schedules against the
/// real state machines. A failing seed prints itself; `SYNCBN_SIM_SEED=... swift run syncbn-swarm` replays it
/// with a trace.
final class SimulationTests: XCTestCase {
    /// Seeds that once broke an invariant, with the faults `Scenario.random(seed:)` draws for them (checked, so
    /// that a change of the generator cannot silently turn them into other schedules).
    static let regressionSeeds: [(seed: UInt64, faults: String)] = [
        // A worker stalls (connected, silent) past the round timeout: the coordinator declared it dead at the
        // moment the healthy workers, waiting the same --round-timeout for the result, gave up on the
        // coordinator as stuck. Fixed: workers wait `resultWaitSeconds`.
        (16, "[stall@38 w3 42.52s]"),
        (144, "[stall@5 w2 42.48s, duplicate@193 w4, freeze-worker@690 w3]"),
        // Two workers killed under --min-workers 3: the survivor gave up on the coordinator during its pause.
        (50, "[kill-worker@160 w1, kill-worker@267 w0]"),
        // One stalled worker under --min-workers 1: every healthy worker gave up, and the job ended with none.
        (44, "[duplicate@507 w1, stall@1183 w2 34.88s, hostile@1191 w2]"),
        // BatchNorm rounds among the workers: an abandoned try ran on among them after the redo began and sent the
        // coordinator its partials whole; a worker whose chunks stayed the same had its old try taken for the new
        // one's, so the step completed while it still ran the new try, which it then abandoned without applying
        // the step. Fixed: partials carry their table's epoch (found by the swarm).
        (286_426_400_935, "[drop-connection@61 w3, partition@271 w3 9.23s, hostile@1010 w3]"),
        (286_426_402_497, "[stall@164 w2 3.69s, interrupt-coordinator@567 w3 12.10s, kill-worker@1027 w0 11.41s]"),
        // A worker waiting for the others' BatchNorm partials past the deadline of its last awaited result: its
        // machine asked for a tick that found nothing to do, at once, forever. Fixed: no wake-up while not
        // awaiting a result (found by the swarm).
        (127_456_601_871, "[freeze-worker@952 w0, stall@982 w4 30.96s]"),
    ]

    func testUndisturbedRunMatchesTheReference() {
        let outcome = Simulation.check(Scenario(workers: 3, steps: 20), seed: 1)
        XCTAssertTrue(outcome.completed, "\(outcome)")
        XCTAssertEqual(outcome.violations, [], "\(outcome)")
    }

    func testSameSeedReplaysExactly() {
        let scenario = Scenario.random(seed: 99)
        let a = Simulation(scenario: scenario, seed: 99, keepTrace: true).run()
        let b = Simulation(scenario: scenario, seed: 99, keepTrace: true).run()
        XCTAssertEqual(a.trace, b.trace)
        XCTAssertEqual(a.deliveries, b.deliveries)
    }

    func testRegressionSeeds() {
        for (seed, faults) in Self.regressionSeeds {
            XCTAssertEqual("\(Scenario.random(seed: seed).faults)", faults, "the schedule generator changed: pin seed \(seed)'s schedule again")
            expectGood(seed)
        }
    }

    /// 2,000 random schedules (SYNCBN_SIM_SCHEDULES), on every core: each simulation is one thread at a time
    /// and deterministic whatever runs beside it.
    func testRandomSchedules() {
        let count = Int(ProcessInfo.processInfo.environment["SYNCBN_SIM_SCHEDULES"] ?? "") ?? 2000
        let first = UInt64(ProcessInfo.processInfo.environment["SYNCBN_SIM_FIRST_SEED"] ?? "") ?? 1
        let started = Date()
        let outcomes = Simulation.checkMany(seeds: first..<(first + UInt64(count)))
        var positions = Set<String>(), kinds = Set<String>(), completed = 0, redone = 0, deliveries = 0
        for (seed, outcome) in outcomes {
            XCTAssertEqual(outcome.violations, [], "\(outcome) with faults \(Scenario.random(seed: seed).faults); replay: SYNCBN_SIM_SEED=\(seed) swift run syncbn-swarm")
            positions.formUnion(outcome.faultPositions)
            kinds.formUnion(outcome.faultPositions.map { String($0.prefix { $0 != " " }) })
            if outcome.completed { completed += 1 }
            redone += outcome.redoneSteps
            deliveries += outcome.deliveries
        }
        print("simulation: \(count) schedules in \(String(format: "%.1f", -started.timeIntervalSinceNow)) s (\(deliveries) messages): \(completed) completed, \(count - completed) gave up for lack of workers and resumed from their checkpoint; \(redone) steps redone; \(kinds.count) fault kinds at \(positions.count) distinct kinds × positions")
    }

    /// 400 schedules of two workers whose BatchNorm rounds run between them (`Scenario.randomPair`), with the
    /// faults of the random schedules: the peer links carry most of the messages, and faults hit their deliveries.
    func testRandomSchedulesOfTwoWorkersExchangingBatchNormRounds() {
        let count = Int(ProcessInfo.processInfo.environment["SYNCBN_SIM_PAIR_SCHEDULES"] ?? "") ?? 400
        let outcomes = Simulation.checkMany(seeds: 1..<(1 + UInt64(count)), scenario: Scenario.randomPair(seed:))
        var peerDeliveries = 0, deliveries = 0, atPeerMessages = 0, redone = 0
        for (seed, outcome) in outcomes {
            XCTAssertEqual(outcome.violations, [], "\(outcome) with faults \(Scenario.randomPair(seed: seed).faults); replay: SYNCBN_SIM_PAIRS=1 SYNCBN_SIM_SEED=\(seed) swift run syncbn-swarm")
            peerDeliveries += outcome.peerDeliveries
            deliveries += outcome.deliveries
            atPeerMessages += outcome.faultPositions.filter { $0.contains("@ across ") }.count
            redone += outcome.redoneSteps
        }
        print("simulation, two workers exchanging BatchNorm rounds: \(count) schedules, \(peerDeliveries) of \(deliveries) messages between workers, \(atPeerMessages) faults at their deliveries, \(redone) steps redone")
        // A fault-free bn-mlp step of two workers: 12 messages between them of 42 in all.
        XCTAssertGreaterThan(peerDeliveries, deliveries / 5, "the BatchNorm rounds did not run between the workers")
        XCTAssertGreaterThan(atPeerMessages, count / 10, "too few faults hit messages between workers")
    }

    func testExhaustiveKillsOfAShortRun() {
        let report = Exhaustive.run(workers: 3, steps: 2)
        print(report.summary)
        XCTAssertEqual(report.failures, [])
    }

    @discardableResult
    func expectGood(_ seed: UInt64) -> Simulation.Outcome {
        let scenario = Scenario.random(seed: seed)
        let outcome = Simulation.check(scenario, seed: seed)
        XCTAssertEqual(outcome.violations, [], "\(outcome) with faults \(scenario.faults); replay: SYNCBN_SIM_SEED=\(seed) swift run syncbn-swarm")
        return outcome
    }
}
