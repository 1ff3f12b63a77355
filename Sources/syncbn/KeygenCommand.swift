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

    func run() throws {
        let logger = makeLogger("syncbn.keygen")
        try reportingErrors(logger) {
            let written = try KeyFiles.generate(name: out)
            print("wrote \(written.secretPath) (secret) and \(written.publicPath): public key \(written.publicKey)")
        }
    }
}
