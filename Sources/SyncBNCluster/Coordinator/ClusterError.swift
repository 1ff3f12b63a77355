/// The distributed job cannot go on: a worker failed, refused us, or never came.
public struct ClusterError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Timeouts and limits of the coordinator and workers, in one place with their units.
public struct ClusterTimeouts: Sendable {
    /// How long the coordinator waits for all workers to join.
    public var joinSeconds: Double = 120
    /// How long one all-reduce round may wait for the slowest worker.
    public var roundSeconds: Double = 120
    /// How long a worker waits for the coordinator to answer its hello.
    public var connectSeconds: Double = 30
    /// How long a worker waits for its next instruction before it concludes the coordinator is gone.
    public var idleSeconds: Double = 300
    /// Poll granularity: how often a waiting loop checks for an abort request. Waiting itself blocks.
    public static let pollMilliseconds = 200

    public init() {}
}
