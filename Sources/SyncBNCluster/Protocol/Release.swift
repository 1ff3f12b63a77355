/// The release of SyncBN, printed by `syncbn --version`. Peers must run the same wire protocol version
/// (`WireProtocol.version`); the release says which build a user runs.
public enum SyncBNRelease {
    public static let version = "0.9.0"
}
