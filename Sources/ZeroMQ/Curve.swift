import CZeroMQ

/// CurveZMQ keys: 32-byte Curve25519 keys, written as 40 characters of Z85.
///
/// A server socket with `ZMQ_CURVE_SERVER` encrypts every connection; it authenticates clients only through
/// a ZAP handler (see `ZAPHandler`), without which any key pair gets in.
public enum Curve {
    public static let keyLength = 32
    public static let z85Length = 40

    /// Whether this libzmq was built with CURVE.
    public static var isAvailable: Bool { zmq_has("curve") == 1 }

    /// A new key pair, Z85-encoded.
    public static func generateKeyPair() throws -> (publicKey: String, secretKey: String) {
        var publicKey = [CChar](repeating: 0, count: z85Length + 1)
        var secretKey = [CChar](repeating: 0, count: z85Length + 1)
        guard zmq_curve_keypair(&publicKey, &secretKey) == 0 else { throw ZMQError.last("zmq_curve_keypair") }
        return (String(cString: publicKey), String(cString: secretKey))
    }

    /// The public key that belongs to a Z85 secret key.
    public static func publicKey(forSecretKey secretKey: String) throws -> String {
        var publicKey = [CChar](repeating: 0, count: z85Length + 1)
        guard zmq_curve_public(&publicKey, secretKey) == 0 else { throw ZMQError.last("zmq_curve_public") }
        return String(cString: publicKey)
    }

    /// The 32 bytes of a Z85 key, or nil if `text` is not 40 valid Z85 characters.
    public static func decode(_ text: String) -> [UInt8]? {
        guard text.utf8.count == z85Length else { return nil }
        var bytes = [UInt8](repeating: 0, count: keyLength)
        guard zmq_z85_decode(&bytes, text) != nil else { return nil }
        return bytes
    }

    public static func encode(_ key: [UInt8]) -> String {
        precondition(key.count == keyLength, "a Curve key has 32 bytes")
        var text = [CChar](repeating: 0, count: z85Length + 1)
        _ = zmq_z85_encode(&text, key, key.count)
        return String(cString: text)
    }
}

extension Socket {
    /// Makes this socket a CURVE server with `secretKey` (Z85); clients are checked by the context's ZAP
    /// handler under `domain`. Call before `bind`.
    public func makeCurveServer(secretKey: String, domain: String) throws {
        try setOption(ZMQ_CURVE_SERVER, Int32(1))
        try setOption(ZMQ_CURVE_SECRETKEY, bytes: Array(secretKey.utf8))
        try setOption(ZMQ_ZAP_DOMAIN, bytes: Array(domain.utf8))
    }

    /// Makes this socket a CURVE client of the server whose public key is `serverKey`. Call before `connect`.
    public func makeCurveClient(serverKey: String, publicKey: String, secretKey: String) throws {
        try setOption(ZMQ_CURVE_SERVERKEY, bytes: Array(serverKey.utf8))
        try setOption(ZMQ_CURVE_PUBLICKEY, bytes: Array(publicKey.utf8))
        try setOption(ZMQ_CURVE_SECRETKEY, bytes: Array(secretKey.utf8))
    }
}
