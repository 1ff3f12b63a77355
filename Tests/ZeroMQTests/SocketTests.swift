import XCTest
import ZeroMQ

final class SocketTests: XCTestCase {
    func testRouterDealerRoundTripOverInproc() throws {
        let context = try Context()
        let router = try Socket(context, .router)
        try router.setRouterMandatory(true)
        try router.bind("inproc://round-trip")
        let dealer = try Socket(context, .dealer)
        try dealer.connect("inproc://round-trip")

        try dealer.send(frames: [[1, 2, 3], [4]])
        XCTAssertTrue(try router.waitReadable(timeoutMilliseconds: 2000))
        let received = try XCTUnwrap(try router.receiveFrames())
        XCTAssertEqual(received.count, 3, "identity frame plus the two frames sent")
        XCTAssertEqual(Array(received[1...]), [[1, 2, 3], [4]])

        try router.send(frames: [received[0], [9, 9]])
        try dealer.setReceiveTimeout(milliseconds: 2000)
        XCTAssertEqual(try dealer.receiveFrames(), [[9, 9]])
        dealer.close()
        router.close()
    }

    func testMessagesAreCountedOnceWhateverTheirFramesAndWhicheverCallMovesThem() throws {
        let context = try Context()
        let (push, pull) = try inprocPushPull(context, "counted")
        let (sent, received) = (MessageCounts.sent, MessageCounts.received)

        try push.send(frames: [[1], [2, 3]])  // two frames, one message
        try push.send([4])
        try push.send(size: 2) { $0.copyBytes(from: [5, 6]) }
        XCTAssertEqual(MessageCounts.sent - sent, 3)
        try pull.setReceiveTimeout(milliseconds: 2000)
        XCTAssertEqual(try pull.receiveFrames(), [[1], [2, 3]])
        var buffers: [[UInt8]] = [[]]
        XCTAssertEqual(try pull.receive(into: &buffers), 1)
        XCTAssertEqual(try pull.receiveInPlace { Array($0) }?.result, [5, 6])
        XCTAssertNil(try pull.receiveFrames(dontWait: true), "nothing left: counts nothing")
        XCTAssertEqual(MessageCounts.received - received, 3)
        push.close()
        pull.close()
    }

    /// One frame is handed over in place; a message of several is read whole and refused with its frame count;
    /// a shared message goes out to two receivers as the same bytes.
    func testSingleFrameReceiveAndSharedSend() throws {
        let context = try Context()
        let (push, pull) = try inprocPushPull(context, "single")
        try pull.setReceiveTimeout(milliseconds: 2000)
        try push.send(frames: [[1], [2, 3], [4]])
        XCTAssertThrowsError(try pull.receiveSingleFrameInPlace { Array($0) }) { XCTAssertEqual(($0 as? MultipartMessage)?.frames, 3) }
        let shared = try [UInt8](repeating: 9, count: 5000).withUnsafeBytes { try SharedMessage($0) }
        try push.send(shared)
        try push.send(shared)
        for _ in 0..<2 { XCTAssertEqual(try pull.receiveSingleFrameInPlace { Array($0) }, [UInt8](repeating: 9, count: 5000)) }
        XCTAssertNil(try pull.receiveSingleFrameInPlace(dontWait: true) { Array($0) })
        push.close()
        pull.close()
    }

    func testReceiveTimeoutReturnsNilInsteadOfThrowing() throws {
        let context = try Context()
        let dealer = try Socket(context, .dealer)
        try dealer.setReceiveTimeout(milliseconds: 10)
        try dealer.connect("tcp://127.0.0.1:9")
        XCTAssertNil(try dealer.receiveFrames())
        XCTAssertFalse(try dealer.waitReadable(timeoutMilliseconds: 10))
        dealer.close()
    }

    func testRouterMandatoryReportsUnknownPeer() throws {
        let context = try Context()
        let router = try Socket(context, .router)
        try router.setRouterMandatory(true)
        try router.bind("inproc://mandatory")
        XCTAssertThrowsError(try router.send(frames: [Array("nobody".utf8), [1]])) { error in
            XCTAssertEqual((error as? ZMQError)?.isHostUnreachable, true, "\(error)")
        }
        router.close()
    }

    func testBindErrorsCarryTheLibraryMessage() throws {
        let context = try Context()
        let socket = try Socket(context, .router)
        XCTAssertThrowsError(try socket.bind("nonsense://x")) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("zmq_bind(nonsense://x)"), text)
            XCTAssertTrue(text.lowercased().contains("protocol"), text)
        }
        socket.close()
    }

    func testEphemeralPortIsReported() throws {
        let context = try Context()
        let socket = try Socket(context, .router)
        try socket.bind("tcp://127.0.0.1:*")
        let endpoint = try socket.lastEndpoint
        XCTAssertTrue(endpoint.hasPrefix("tcp://127.0.0.1:"), endpoint)
        XCTAssertNotEqual(endpoint, "tcp://127.0.0.1:*")
        socket.close()
    }
}

/// A PUSH socket connected to a PULL socket bound at `inproc://name`.
private func inprocPushPull(_ context: Context, _ name: String) throws -> (push: Socket, pull: Socket) {
    let pull = try Socket(context, .pull)
    try pull.bind("inproc://\(name)")
    let push = try Socket(context, .push)
    try push.connect("inproc://\(name)")
    return (push, pull)
}
