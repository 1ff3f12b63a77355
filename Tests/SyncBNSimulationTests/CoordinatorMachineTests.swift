import Foundation
import Logging
import SyncBNCluster
import SyncBNCore
import SyncBNSimulation
import XCTest

/// The coordinator's state machine on its own: events in, actions out, no sockets and no clock.
final class CoordinatorMachineTests: XCTestCase {
    let a: PeerIdentity = [1], b: PeerIdentity = [2], c: PeerIdentity = [3], d: PeerIdentity = [4]

    func makeMachine() -> CoordinatorMachine {
        CoordinatorMachine(config: SimulationJob.config(steps: 4), data: SimulationJob.data, workerCount: 3, endpoint: "test",
                           logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
    }

    func hello(_ name: String) -> [UInt8] { Message.hello(peer: name, peerEndpoint: "").encoded() }

    func sends(_ actions: [CoordinatorAction], kind: WireProtocol.Kind) -> [PeerIdentity] {
        actions.compactMap {
            guard case .send(let to, let bytes) = $0, let m = try? Message.decode(bytes), m.kind == kind else { return nil }
            return to
        }
    }

    func stepInput(_ step: Int) -> StepInput { StepInput(step: step, samples: Array(0..<16)[...], computeMetrics: false) }

    func testAdmissionWelcomesInOrderOfArrival() {
        let m = makeMachine()
        XCTAssertEqual(m.admit(now: 0), [])
        XCTAssertEqual(sends(m.handle(.received(from: b, frame: hello("b")), now: 1), kind: .welcome), [b])
        XCTAssertEqual(sends(m.handle(.received(from: a, frame: hello("a")), now: 2), kind: .welcome), [a])
        let last = m.handle(.received(from: c, frame: hello("c")), now: 3)
        XCTAssertEqual(sends(last, kind: .welcome), [c])
        XCTAssertEqual(last.last, .admitted)
        XCTAssertEqual(m.memberIdentities, [b, a, c])
    }

    func testAdmissionTimesOutWithTheReason() {
        let m = makeMachine()
        _ = m.admit(now: 0)
        _ = m.handle(.received(from: a, frame: hello("a")), now: 1)
        XCTAssertEqual(m.handle(.tick, now: 1), [])
        guard case .failed(let reason)? = m.handle(.tick, now: 1000).last else { return XCTFail("no failure at the join timeout") }
        XCTAssertTrue(reason.contains("only 1 of 3 workers joined"), reason)
    }

    /// A member lost mid-step: the step goes again to the survivors. A joiner whose welcome cannot be sent is
    /// dropped before the step is sent again, so it causes no second redo.
    func testALossRedoesTheStepAndAGoneJoinerCostsNoRedo() {
        let m = makeMachine()
        _ = m.admit(now: 0)
        for (id, name) in [(a, "a"), (b, "b"), (c, "c")] { _ = m.handle(.received(from: id, frame: hello(name)), now: 0) }
        XCTAssertEqual(sends(m.beginStep(stepInput(0), next: stepInput(1), now: 1), kind: .step), [a, b, c])
        _ = m.handle(.received(from: d, frame: hello("d")), now: 1.5)  // joins at the next try
        let lost = m.handle(.unreachable(b), now: 2)
        XCTAssertEqual(sends(lost, kind: .reject), [b])
        XCTAssertEqual(sends(lost, kind: .welcome), [d])
        XCTAssertEqual(sends(lost, kind: .step), [], "the step waits until the welcomes are known to have gone out")
        XCTAssertEqual(m.wakeup, 2)
        XCTAssertEqual(m.handle(.unreachable(d), now: 2), [], "a joiner gone before its welcome is dropped, no redo")
        XCTAssertEqual(sends(m.handle(.tick, now: 2), kind: .step), [a, c])
        XCTAssertEqual(m.memberIdentities, [a, c])
    }

    /// The step message's chunk assignment follows the threads each worker's hello announced.
    func testWorkersGetSharesOfTheBatchInProportionToTheirThreads() throws {
        let m = makeMachine()
        _ = m.admit(now: 0)
        for (id, threads) in [(a, 1), (b, 2), (c, 1)] {
            _ = m.handle(.received(from: id, frame: Message.hello(peer: "w", peerEndpoint: "", threads: UInt16(threads)).encoded()), now: 0)
        }
        var assigned: [PeerIdentity: Range<Int>] = [:]
        for case .send(let to, let bytes) in m.beginStep(stepInput(0), next: nil, now: 1) {
            if case .step(_, let first, let count, _, _) = try Message.decode(bytes) { assigned[to] = Int(first)..<Int(first + count) }
        }
        let chunks = SimulationJob.config(steps: 4).plan.chunkCount
        XCTAssertEqual(assigned[a], ChunkPlan.chunks(forRank: 0, weights: [1, 2, 1], chunkCount: chunks))
        XCTAssertEqual(assigned[b], ChunkPlan.chunks(forRank: 1, weights: [1, 2, 1], chunkCount: chunks))
        XCTAssertEqual(assigned[c], ChunkPlan.chunks(forRank: 2, weights: [1, 2, 1], chunkCount: chunks))
        XCTAssertEqual(assigned[b]!.count, 2 * assigned[a]!.count, "\(chunks) chunks: \(assigned)")
    }

    func testGarbageFromAStrangerIsCountedAndCutOff() {
        let m = makeMachine()
        _ = m.admit(now: 0)
        for i in 0..<30 { XCTAssertEqual(m.handle(.received(from: d, frame: [UInt8](repeating: UInt8(i), count: i)), now: 0), []) }
        XCTAssertEqual(m.handle(.received(from: d, frame: hello("d")), now: 0), [], "cut off after 20 malformed messages")
    }
}
