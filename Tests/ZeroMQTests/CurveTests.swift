import XCTest
import ZeroMQ

/// Oracle: libzmq's CURVE and ZAP contracts — a listed client key completes the handshake and exchanges
/// messages; an unlisted one is refused and its side sees ZMQ_EVENT_HANDSHAKE_FAILED_AUTH.
final class CurveTests: XCTestCase {
    func testZ85RoundTripAndKeyDerivation() throws {
        try XCTSkipUnless(Curve.isAvailable, "libzmq without CURVE")
        let (publicKey, secretKey) = try Curve.generateKeyPair()
        XCTAssertEqual(publicKey.utf8.count, 40)
        XCTAssertEqual(try Curve.publicKey(forSecretKey: secretKey), publicKey)
        let bytes = try XCTUnwrap(Curve.decode(publicKey))
        XCTAssertEqual(bytes.count, 32)
        XCTAssertEqual(Curve.encode(bytes), publicKey)
        XCTAssertNil(Curve.decode("too short"))
        XCTAssertNil(Curve.decode(String(repeating: "~", count: 40)), "~ is not a Z85 character")
    }

    func testZAPAdmitsListedKeysAndRefusesOthers() throws {
        try XCTSkipUnless(Curve.isAvailable, "libzmq without CURVE")
        let server = try Curve.generateKeyPair(), good = try Curve.generateKeyPair(), bad = try Curve.generateKeyPair()
        let allowed = try XCTUnwrap(Curve.decode(good.publicKey))
        let context = try Context()
        let zap = try ZAPHandler(context: context) { $0 == allowed }
        let router = try Socket(context, .router)
        try router.makeCurveServer(secretKey: server.secretKey, domain: "test")
        try router.bind("tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint

        func client(_ keys: (publicKey: String, secretKey: String)) throws -> (Socket, SocketMonitor) {
            let dealer = try Socket(context, .dealer)
            try dealer.makeCurveClient(serverKey: server.publicKey, publicKey: keys.publicKey, secretKey: keys.secretKey)
            let monitor = try SocketMonitor(dealer)
            try dealer.connect(endpoint)
            return (dealer, monitor)
        }

        let (admitted, admittedMonitor) = try client(good)
        try admitted.send([42])
        XCTAssertTrue(try router.waitReadable(timeoutMilliseconds: 5000), "the listed key's message arrives")
        XCTAssertEqual(try router.receiveFrames(dontWait: true)?.last, [42])

        let (refused, refusedMonitor) = try client(bad)
        try refused.send([7])
        var sawAuthFailure = false
        let deadline = Date().addingTimeInterval(5)
        while !sawAuthFailure, Date() < deadline {
            guard try refusedMonitor.socket.waitReadable(timeoutMilliseconds: 200) else { continue }
            while let event = try refusedMonitor.nextEvent() {
                if event.kind == SocketMonitor.Event.handshakeFailedAuth { sawAuthFailure = true }
            }
        }
        XCTAssertTrue(sawAuthFailure, "an unlisted key sees HANDSHAKE_FAILED_AUTH")
        XCTAssertFalse(try router.waitReadable(timeoutMilliseconds: 100), "nothing from the refused client arrives")

        admittedMonitor.close()
        refusedMonitor.close()
        for socket in [admitted, refused, router] { socket.close() }
        zap.stop()
    }
}
