import Foundation

/// Kills each participant (the coordinator and every worker) once at every message boundary of a short run.
public enum Exhaustive {
    public struct Report {
        public var runs: Int
        public var boundaries: Int
        public var failures: [String]
        public var summary: String { "exhaustive: \(runs) runs (\(boundaries) message boundaries × \(runs / max(1, boundaries)) participants), \(failures.count) failing" }
    }

    /// `workers` workers, `steps` steps; each kill is followed by a restart (a worker comes back as a new
    /// one after a second, the coordinator restarts from its last checkpoint).
    public static func run(workers: Int, steps: Int, stride: Int = 1) -> Report {
        let base = Scenario(workers: workers, steps: steps, checkpointEvery: 1, maxDelay: 0.001, slowFraction: 0)
        let undisturbed = Simulation(scenario: base, seed: 1).run()
        let cases = Swift.stride(from: 0, to: undisturbed.deliveries, by: stride).flatMap { boundary in (-1..<workers).map { (boundary, $0) } }
        let lock = NSLock()
        var failures: [String] = []
        let lanes = max(1, ProcessInfo.processInfo.activeProcessorCount)
        DispatchQueue.concurrentPerform(iterations: lanes) { lane in
            for (boundary, participant) in Swift.stride(from: lane, to: cases.count, by: lanes).map({ cases[$0] }) {
                var scenario = base
                scenario.faults = [participant < 0
                    ? Fault(kind: .killCoordinator, atDelivery: boundary, duration: 1)
                    : Fault(kind: .killWorker, atDelivery: boundary, worker: participant, duration: 1)]
                let seed = UInt64(boundary * 16 + participant + 1)
                let outcome = Simulation.check(scenario, seed: seed)
                if !outcome.violations.isEmpty {
                    lock.lock()
                    failures.append("\(scenario.faults) seed \(seed): \(outcome)")
                    lock.unlock()
                }
            }
        }
        return Report(runs: cases.count, boundaries: undisturbed.deliveries, failures: failures.sorted())
    }
}
