import Foundation
import Logging
import SyncBNCore
import XCTest
import ZeroMQ
@testable import SyncBNCluster

/// Oracle: the key-file contract in KeyFiles.swift (formats, permissions, one-line errors naming the file)
/// and the coordinator's bind policy (no keys → local addresses only, unless allowed explicitly).
final class KeyFilesTests: XCTestCase {
    private var directory: String!

    override func setUpWithError() throws {
        try XCTSkipUnless(Curve.isAvailable, "libzmq without CURVE")
        directory = NSTemporaryDirectory() + "syncbn-keys-\(getpid())-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if let directory { try? FileManager.default.removeItem(atPath: directory) }
    }

    private func path(_ name: String) -> String { directory + "/" + name }

    private func mode(_ path: String) throws -> Int {
        (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as! NSNumber).intValue
    }

    private func assertError(_ body: @autoclosure () throws -> Any, contains fragments: [String], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            let text = "\(error)"
            for fragment in fragments { XCTAssertTrue(text.contains(fragment), "\(text) lacks \(fragment)", file: file, line: line) }
            XCTAssertFalse(text.contains("\n"), "one line: \(text)", file: file, line: line)
        }
    }

    func testKeygenWritesAPrivateSecretAndAPublicKeyThatMatch() throws {
        let written = try KeyFiles.generate(name: path("node"))
        XCTAssertEqual(try mode(written.secretPath), 0o600)
        XCTAssertEqual(try mode(written.publicPath), 0o644)
        let secret = try KeyFiles.readSecretKey(written.secretPath)
        XCTAssertEqual(secret.publicKey, written.publicKey)
        XCTAssertEqual(try KeyFiles.readPublicKey(written.publicPath), written.publicKey)
        assertError(try KeyFiles.generate(name: path("node")), contains: ["node.key already exists"])
    }

    func testSecretKeyReadableByOthersIsRefused() throws {
        let written = try KeyFiles.generate(name: path("loose"))
        chmod(written.secretPath, 0o644)
        assertError(try KeyFiles.readSecretKey(written.secretPath), contains: ["loose.key", "readable by others", "chmod 600"])
    }

    func testMalformedKeysNameTheFileAndLine() throws {
        try "# comment\nshort\n".write(toFile: path("short.pub"), atomically: true, encoding: .utf8)
        assertError(try KeyFiles.readPublicKey(path("short.pub")), contains: ["short.pub:2", "40 Z85 characters, found 5"])
        try (String(repeating: "~", count: 40) + "\n").write(toFile: path("bad.pub"), atomically: true, encoding: .utf8)
        assertError(try KeyFiles.readPublicKey(path("bad.pub")), contains: ["bad.pub:1", "not valid Z85"])
        assertError(try KeyFiles.readPublicKey(path("missing.pub")), contains: ["cannot read", "missing.pub"])
    }

    func testAuthorizedKeysAllowCommentsNamesAndBlankLines() throws {
        let a = try KeyFiles.generate(name: path("a")), b = try KeyFiles.generate(name: path("b"))
        try "# workers\n\n\(a.publicKey) worker-a\n  \(b.publicKey)\n".write(toFile: path("authorized"), atomically: true, encoding: .utf8)
        let keys = try KeyFiles.readAuthorizedKeys(path("authorized"))
        XCTAssertEqual(keys, [Curve.decode(a.publicKey)!, Curve.decode(b.publicKey)!])
        try "# nobody\n".write(toFile: path("empty"), atomically: true, encoding: .utf8)
        assertError(try KeyFiles.readAuthorizedKeys(path("empty")), contains: ["lists no public keys"])
    }

    func testCoordinatorRefusesANonLocalAddressWithoutKeys() throws {
        XCTAssertTrue(CoordinatorSecurity.isLocal("tcp://127.0.0.1:5555"))
        XCTAssertTrue(CoordinatorSecurity.isLocal("ipc:///tmp/x.sock"))
        XCTAssertFalse(CoordinatorSecurity.isLocal("tcp://0.0.0.0:5555"))
        XCTAssertFalse(CoordinatorSecurity.isLocal("tcp://10.0.0.1:5555"))
        let data = LabeledImages(count: 4, featureSize: 2, labels: [0, 1, 0, 1], storage: .floats([0, 1, 1, 0, 0, 0, 1, 1]))
        let spec = try ModelSpec(name: "mlp", input: TensorShape([2]), layers: ModelSpec.mlp(inputs: 2, hidden: [3], classes: 2))
        let config = TrainingConfig(model: spec, plan: ChunkPlan(batchSize: 2, chunkSize: 1), optimizer: SGD(learningRate: 0.1, momentum: 0),
                                    seed: 1, steps: 1, shuffle: false, logEvery: 1, evaluateEvery: 1)
        let logger = Logger(label: "test")
        assertError(try Coordinator(config: config, data: data, bind: "tcp://0.0.0.0:*", workerCount: 1, logger: logger),
                    contains: ["refusing to bind tcp://0.0.0.0:*", "--insecure"])
        XCTAssertNoThrow(try Coordinator(config: config, data: data, bind: "tcp://0.0.0.0:*", workerCount: 1, allowInsecure: true, logger: logger))
    }
}
