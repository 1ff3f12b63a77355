import Foundation
import ArgumentParser
import SyncBNCluster

struct KeygenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Write a CurveZMQ key pair: NAME.key (secret, mode 0600) and NAME.pub.",
        discussion: """
        Give the coordinator its .key as --secret-key and a file listing the workers' .pub lines as
        --authorized-keys; give each worker its own .key as --secret-key and the coordinator's .pub as --server-key.
        """)

    @Option(help: "Path and name of the key pair, without extension.")
    var out: String

    func validate() throws {
        let name = (out as NSString).lastPathComponent
        guard !out.isEmpty, !out.hasSuffix("/"), !name.isEmpty, name != ".", name != ".." else {
            throw ValidationError("--out \"\(out)\" names no file: give a path and name such as keys/worker1 (writes keys/worker1.key and keys/worker1.pub)")
        }
    }

    func run() throws {
        let logger = makeLogger("syncbn.keygen")
        try reportingErrors(logger) {
            let written = try KeyFiles.generate(name: out)
            print("wrote \(written.secretPath) (secret) and \(written.publicPath): public key \(written.publicKey)")
        }
    }
}
