import Foundation
import SyncBNSimulation

// syncbn-swarm [seconds] [first-seed]: runs random seeded schedules for as long as asked and prints every
// seed whose run breaks an invariant, with the command that replays it. SYNCBN_SIM_SEED=... replays one.
// SYNCBN_SIM_PAIRS=1: the schedules of two workers that exchange BatchNorm rounds (`Scenario.randomPair`).
// `--exhaustive`: kills each participant once at every message boundary of a short run.
let arguments = CommandLine.arguments.dropFirst()
if arguments.first == "--exhaustive" {
    let report = Exhaustive.run(workers: 3, steps: 3)
    print(report.summary)
    for failure in report.failures { print("FAIL \(failure)") }
    exit(report.failures.isEmpty ? 0 : 1)
}
let pairs = ProcessInfo.processInfo.environment["SYNCBN_SIM_PAIRS"] == "1"
@Sendable func scenario(_ seed: UInt64) -> Scenario { pairs ? Scenario.randomPair(seed: seed) : Scenario.random(seed: seed) }
if let text = ProcessInfo.processInfo.environment["SYNCBN_SIM_SEED"], let seed = UInt64(text) {
    let outcome = Simulation.check(scenario(seed), seed: seed, keepTrace: true)
    for line in outcome.trace { print(line) }
    print(scenario(seed).faults, outcome)
    exit(outcome.violations.isEmpty ? 0 : 1)
}
let seconds = Double(arguments.first ?? "60") ?? 60
var seed = arguments.dropFirst().first.flatMap { UInt64($0) } ?? UInt64.random(in: 0 ..< 1 << 40)
let started = Date()
var runs = 0, failures = 0, completed = 0
var positions = Set<String>()
// Batches of seeds on every core (each simulation is deterministic whatever runs beside it).
let batch = UInt64(8 * ProcessInfo.processInfo.activeProcessorCount)
while -started.timeIntervalSinceNow < seconds {
    for (seed, outcome) in Simulation.checkMany(seeds: seed..<(seed + batch), scenario: scenario) {
        runs += 1
        if outcome.completed { completed += 1 }
        positions.formUnion(outcome.faultPositions)
        if !outcome.violations.isEmpty {
            failures += 1
            print("FAIL \(outcome) faults \(scenario(seed).faults)\n  replay: \(pairs ? "SYNCBN_SIM_PAIRS=1 " : "")SYNCBN_SIM_SEED=\(seed) Scripts/swarm.sh")
        }
    }
    seed &+= batch
}
print("\(runs) schedules in \(Int(-started.timeIntervalSinceNow)) s (\(completed) completed, \(runs - completed) gave up for lack of workers and resumed), \(positions.count) distinct fault kinds × positions, \(failures) failing")
exit(failures == 0 ? 0 : 1)
