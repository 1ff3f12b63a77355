@testable import SyncBNSimulation
import SyncBNCluster
import SyncBNCore
import XCTest

/// Thousands of runs in one process: a run must release its replicas (a worker's network holds its
/// collective in its step context, so the simulation breaks that cycle at the end).
final class LeakTests: XCTestCase {
    func testARunReleasesItsMachinesAndReplicas() {
        weak var sim: Simulation?
        weak var machine: CoordinatorMachine?
        weak var compute: SimCompute?
        weak var replica: Network?
        do {
            let s = Simulation(scenario: Scenario(workers: 3, steps: 3), seed: 1)
            sim = s
            _ = s.run()
            machine = s.coordinator?.machine
            compute = s.workers[0]?.compute
            replica = s.workers[0]?.compute.network
        }
        XCTAssertNil(sim)
        XCTAssertNil(machine)
        XCTAssertNil(compute)
        XCTAssertNil(replica)
    }
}
