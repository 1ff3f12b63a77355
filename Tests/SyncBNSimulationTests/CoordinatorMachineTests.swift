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

    /// The tables of peers in `actions`: to whom, in order, with their fields.
    func peerTables(_ actions: [CoordinatorAction]) -> [(to: PeerIdentity, epoch: UInt32, rank: UInt32, uses: WireProtocol.PeerUses)] {
        actions.compactMap {
            guard case .send(let to, let bytes) = $0, case .peers(let epoch, let rank, let uses, _)? = try? Message.decode(bytes) else { return nil }
            return (to, epoch, rank, uses)
        }
    }

    func listeningHello(_ name: String) -> [UInt8] { Message.hello(peer: name, peerEndpoint: "ipc:///tmp/\(name).sock").encoded() }

    /// `--bn-exchange auto`: a table that hands the BatchNorm rounds to the workers goes out before the step
    /// when a try has two workers that listen for peers; every redo brings a new epoch, even with the same two
    /// members (one rejoined on its connection), so that no partials of the abandoned try are taken; a loss that
    /// leaves one worker takes the rounds back.
    func testBatchNormRoundsGoBetweenTwoListeningWorkersWithANewTableForEveryRedo() throws {
        let m = CoordinatorMachine(config: SimulationJob.config(steps: 4), data: SimulationJob.data, workerCount: 2, batchNormExchange: .auto,
                                   endpoint: "test", logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        _ = m.admit(now: 0)
        for (id, name) in [(a, "a"), (b, "b")] { _ = m.handle(.received(from: id, frame: listeningHello(name)), now: 0) }
        let first = m.beginStep(stepInput(0), next: stepInput(1), now: 1)
        let tables = peerTables(first)
        XCTAssertEqual(tables.map(\.to), [a, b])
        XCTAssertEqual(tables.map(\.rank), [0, 1])
        XCTAssertEqual(tables.map(\.uses), [.batchNormRounds, .batchNormRounds])
        XCTAssertEqual(Set(tables.map(\.epoch)).count, 1)
        XCTAssertEqual(sends(first, kind: .step), [a, b])
        let firstStep = try XCTUnwrap(first.firstIndex { if case .send(_, let bytes) = $0 { return bytes[6] == 4 } else { return false } })
        let lastTable = try XCTUnwrap(first.lastIndex { if case .send(_, let bytes) = $0 { return bytes[6] == 10 } else { return false } })
        XCTAssertLessThan(lastTable, firstStep, "the table goes before the step")

        _ = m.handle(.received(from: b, frame: listeningHello("b")), now: 2)  // b rejoins on the same connection
        let redo = m.handle(.tick, now: 2)
        XCTAssertEqual(m.memberIdentities, [a, b])
        let again = peerTables(redo)
        XCTAssertEqual(again.map(\.to), [a, b], "the redo has a table of its own")
        XCTAssertEqual(again.map(\.uses), [.batchNormRounds, .batchNormRounds])
        XCTAssertEqual(again.first?.epoch, tables[0].epoch &+ 1)
        XCTAssertEqual(sends(redo, kind: .step), [a, b])

        let lost = m.handle(.unreachable(b), now: 3)
        XCTAssertEqual(peerTables(lost).map(\.to), [a])
        XCTAssertEqual(peerTables(lost).map(\.uses), [[]], "one worker left: every round through the coordinator")
        XCTAssertEqual(sends(lost, kind: .step), [a])
    }

    /// A worker that does not listen for peers (keys, or a remote coordinator without --peer-address) keeps the
    /// BatchNorm rounds with the coordinator, and so do more workers than `directBatchNormWorkers`: no table goes
    /// out. Up to that many, one does.
    func testATableOnlyWhenFewEnoughWorkersAllListen() {
        let most = CoordinatorMachine.directBatchNormWorkers
        let cases = [(2, [true, false], false), (most, [Bool](repeating: true, count: most), true),
                     (most + 1, [Bool](repeating: true, count: most + 1), false)]
        for (count, listening, expected) in cases {
            let names = (0..<count).map { "w\($0)" }
            let m = CoordinatorMachine(config: SimulationJob.config(steps: 4), data: SimulationJob.data, workerCount: names.count,
                                       batchNormExchange: .auto, endpoint: "test", logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
            _ = m.admit(now: 0)
            for (index, name) in names.enumerated() {
                _ = m.handle(.received(from: [UInt8(index + 1)], frame: listening[index] ? listeningHello(name) : hello(name)), now: 0)
            }
            let first = m.beginStep(stepInput(0), next: nil, now: 1)
            XCTAssertEqual(sends(first, kind: .step).count, names.count)
            XCTAssertEqual(peerTables(first).count, expected ? count : 0, "\(count) workers, listening \(listening)")
        }
    }
}
