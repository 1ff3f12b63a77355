import Foundation
import ZeroMQ

/// CurveZMQ key files.
///
/// - `NAME.key`: the secret key, one line of 40 Z85 characters (lines starting with `#` are comments);
///   readable by its owner only (mode 0600).
/// - `NAME.pub`: the public key, the same format, shareable.
/// - authorized keys: one public key per line, optionally followed by a name; `#` comments, blank lines.
public enum KeyFiles {
    public struct SecretKey: Sendable {
        public let secret: String
        public let publicKey: String
    }

    /// Writes `NAME.key` (mode 0600) and `NAME.pub` for a new key pair; refuses to overwrite either.
    public static func generate(name: String) throws -> (secretPath: String, publicPath: String, publicKey: String) {
        guard Curve.isAvailable else { throw SecurityError("this libzmq was built without CURVE: install Debian's libzmq5") }
        let (publicKey, secretKey) = try Curve.generateKeyPair()
        let secretPath = name + ".key", publicPath = name + ".pub"
        for path in [secretPath, publicPath] where FileManager.default.fileExists(atPath: path) {
            throw SecurityError("\(path) already exists: remove it or choose another --out")
        }
        try write("# SyncBN CurveZMQ secret key: keep it private (mode 0600)\n\(secretKey)\n", to: secretPath, mode: 0o600)
        try write("# SyncBN CurveZMQ public key: list it in the coordinator's --authorized-keys file\n\(publicKey)\n", to: publicPath, mode: 0o644)
        return (secretPath, publicPath, publicKey)
    }

    /// Reads a secret key file, checking that only its owner can read it.
    public static func readSecretKey(_ path: String) throws -> SecretKey {
        var info = stat()
        guard stat(path, &info) == 0 else { throw SecurityError("cannot read the secret key \(path): \(String(cString: strerror(errno)))") }
        guard info.st_mode & 0o077 == 0 else {
            throw SecurityError("the secret key \(path) is readable by others (mode \(String(info.st_mode & 0o777, radix: 8))): run chmod 600 \(path)")
        }
        let secret = try singleKey(in: path, kind: "secret key")
        return SecretKey(secret: secret, publicKey: try Curve.publicKey(forSecretKey: secret))
    }

    /// Reads a public key file (e.g. the coordinator's `.pub`, given to workers as --server-key).
    public static func readPublicKey(_ path: String) throws -> String {
        try singleKey(in: path, kind: "public key")
    }

    /// Reads an authorized-keys file into the set of admitted 32-byte public keys.
    public static func readAuthorizedKeys(_ path: String) throws -> Set<[UInt8]> {
        var keys = Set<[UInt8]>()
        for (number, line) in try lines(path).enumerated() {
            let text = line.trimmingCharacters(in: .whitespaces)
            if text.isEmpty || text.hasPrefix("#") { continue }
            let key = String(text.split(separator: " ", maxSplits: 1)[0])
            keys.insert(try decode(key, path: path, line: number + 1, kind: "public key"))
        }
        guard !keys.isEmpty else { throw SecurityError("\(path) lists no public keys: add one worker's .pub line per worker") }
        return keys
    }

    private static func singleKey(in path: String, kind: String) throws -> String {
        let entries = try lines(path).enumerated().filter { !$0.element.trimmingCharacters(in: .whitespaces).isEmpty && !$0.element.hasPrefix("#") }
        guard entries.count == 1 else { throw SecurityError("\(path) should hold one \(kind), found \(entries.count) lines of keys: use a file written by `syncbn keygen`") }
        let key = entries[0].element.trimmingCharacters(in: .whitespaces)
        _ = try decode(key, path: path, line: entries[0].offset + 1, kind: kind)
        return key
    }

    private static func decode(_ key: String, path: String, line: Int, kind: String) throws -> [UInt8] {
        guard key.utf8.count == Curve.z85Length else {
            throw SecurityError("\(path):\(line): a \(kind) is \(Curve.z85Length) Z85 characters, found \(key.utf8.count): use a file written by `syncbn keygen`")
        }
        guard let bytes = Curve.decode(key) else {
            throw SecurityError("\(path):\(line): the \(kind) is not valid Z85: use a file written by `syncbn keygen`")
        }
        return bytes
    }

    private static func lines(_ path: String) throws -> [String] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SecurityError("cannot read \(path): \(String(cString: strerror(errno)))")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw SecurityError("\(path) is not a text file of Z85 keys") }
        return text.components(separatedBy: "\n")
    }

    private static func write(_ text: String, to path: String, mode: mode_t) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode)
        guard fd >= 0 else { throw SecurityError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        fchmod(fd, mode)
        let bytes = Array(text.utf8)
        guard Glibc.write(fd, bytes, bytes.count) == bytes.count else { throw SecurityError("cannot write \(path): \(String(cString: strerror(errno)))") }
    }
}

/// A key file, an address or an authorization that does not hold.
public struct SecurityError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// The coordinator's side of CurveZMQ: its key pair and the workers' public keys it admits.
public struct CoordinatorSecurity: Sendable {
    public let key: KeyFiles.SecretKey
    public let authorizedKeys: Set<[UInt8]>

    public init(secretKeyFile: String, authorizedKeysFile: String) throws {
        key = try KeyFiles.readSecretKey(secretKeyFile)
        authorizedKeys = try KeyFiles.readAuthorizedKeys(authorizedKeysFile)
    }

    /// True for addresses only this machine can reach (loopback tcp, ipc, inproc).
    public static func isLocal(_ endpoint: String) -> Bool {
        ["tcp://127.", "tcp://localhost:", "tcp://[::1]:", "ipc://", "inproc://"].contains { endpoint.hasPrefix($0) }
    }
}

/// A worker's side of CurveZMQ: its key pair and the coordinator's public key.
public struct WorkerSecurity: Sendable {
    public let key: KeyFiles.SecretKey
    public let serverKey: String

    public init(secretKeyFile: String, serverKeyFile: String) throws {
        key = try KeyFiles.readSecretKey(secretKeyFile)
        serverKey = try KeyFiles.readPublicKey(serverKeyFile)
    }
}
