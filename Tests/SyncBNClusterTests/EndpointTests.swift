// Oracle: the address forms the README documents — tcp://HOST:PORT with a port from 1 to 65535 (or * when
// binding), tcp://[IPv6]:PORT, ipc:///path — and one-line refusals naming the flag and the expected forms.
import XCTest
@testable import SyncBNCluster

final class EndpointTests: XCTestCase {
    func testValidAddresses() throws {
        let cases: [(String, Bool, String, Bool)] = [
            ("tcp://127.0.0.1:5555", false, "tcp://127.0.0.1:5555", true),
            ("tcp://node7.cluster:5555", false, "tcp://node7.cluster:5555", false),
            ("tcp://[::1]:80", false, "tcp://[::1]:80", true),
            ("tcp://*:*", true, "tcp://*:*", false),
            ("tcp://0.0.0.0:5555", true, "tcp://0.0.0.0:5555", false),
            ("tcp://localhost:6000", true, "tcp://127.0.0.1:6000", true),  // libzmq binds an interface name, not a host
            ("ipc:///tmp/syncbn.sock", false, "ipc:///tmp/syncbn.sock", true),
        ]
        for (text, binding, printed, local) in cases {
            let endpoint = try Endpoint(parsing: text, flag: "--bind", forBinding: binding)
            XCTAssertEqual(endpoint.description, printed, text)
            XCTAssertEqual(endpoint.isLocal, local, text)
        }
    }

    func testRefusalsNameTheProblemAndTheForms() {
        let cases: [(String, Bool, String)] = [
            ("tcp://127.0.0.1:99999", true, "port 99999 is not a number from 1 to 65535"),
            ("tcp://127.0.0.1:0", false, "port 0"),
            ("garbage", true, "no tcp:// or ipc:// scheme"),
            ("udp://1.2.3.4:5", false, "udp:// is not a transport"),
            ("tcp://127.0.0.1", false, "no :PORT"),
            ("tcp://:5555", false, "host is empty"),
            ("tcp://*:5555", false, "* binds every interface"),
            ("tcp://host:*", false, "* binds a free port"),
            ("tcp://[::1:80", false, "in brackets"),
            ("tcp://ho st:80", false, "characters"),
            ("ipc://", true, "path is empty"),
        ]
        for (text, binding, words) in cases {
            XCTAssertThrowsError(try Endpoint(parsing: text, flag: "--connect", forBinding: binding), text) { error in
                let message = "\(error)"
                XCTAssertTrue(message.contains(words) && message.contains("--connect \(text)") && message.contains(Endpoint.expectedForms), message)
                XCTAssertFalse(message.contains("\n"), message)
            }
        }
    }
}
