/// The distributed job cannot go on: a worker failed, refused us, or never came.
public struct ClusterError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Timeouts and limits of the coordinator and workers, in one place with their units.
public struct ClusterTimeouts: Sendable {
    /// How long the coordinator waits for the first workers to join, and for workers to come back when
    /// fewer than `--min-workers` are left.
    public var joinSeconds: Double = 120
    /// How long one all-reduce round may wait for a worker that is connected but silent (stuck).
    public var roundSeconds: Double = 120
    /// How long a worker waits for the coordinator to answer its first hello.
    public var connectSeconds: Double = 30
    /// How long a worker that lost its coordinator keeps trying to rejoin one (a restarted or resumed one).
    public var rejoinSeconds: Double = 60
    /// How long a worker waits for its next instruction before it concludes the coordinator is stuck.
    public var idleSeconds: Double = 600
    /// ZMTP heartbeats: a ping every interval; a peer silent for the timeout is disconnected. A killed,
    /// frozen (SIGSTOP) or cut-off peer is thus noticed within the timeout plus one probe.
    public var heartbeatIntervalSeconds: Double = 0.5
    public var heartbeatTimeoutSeconds: Double = 2
    /// Poll granularity: how often a waiting loop checks for aborts and probes silent workers. Waiting
    /// itself blocks in `zmq_poll`.
    public static let pollMilliseconds = 100
    /// A round slower than this starts probing the workers it waits for.
    public static let probeAfterSeconds = 0.1

    public init() {}

    /// How long a worker waits for a round's result before it concludes the coordinator is stuck: longer than
    /// the coordinator may take to give up on a silent member (`roundSeconds`) and then wait, paused below
    /// --min-workers, for others to join (`joinSeconds`). With a wait of just `roundSeconds` (before) the
    /// healthy workers gave up on the coordinator at about the moment it declared a stuck member dead, and
    /// the job fell apart instead of redoing the step (found by the simulation, seed 16).
    public var resultWaitSeconds: Double { roundSeconds + max(roundSeconds, joinSeconds) + heartbeatTimeoutSeconds }

    /// Heartbeats that declare a silent peer dead after `seconds`, pinging four times in that span
    /// (at most every 0.5 s).
    public mutating func setHeartbeatTimeout(_ seconds: Double) {
        heartbeatTimeoutSeconds = seconds
        heartbeatIntervalSeconds = min(0.5, seconds / 4)
    }
}

/// What the coordinator does when a worker's partials hold NaN or infinity.
public enum NonFinitePolicy: String, Sendable, CaseIterable {
    /// Save a checkpoint and stop the job with the reason.
    case abort
    /// Drop the step (no replica changes) and go on with the next.
    case skip
}

/// How the gradient round travels.
public enum GradientExchangeMode: String, CaseIterable, Sendable {
    /// Every worker sends its partials to the coordinator, which reduces them and sends the result to each:
    /// the fewest messages, best for small gradients and few workers.
    case star
    /// Reduce-scatter and all-gather among the workers (`PeerGradientExchange`): the coordinator receives
    /// each sum and row once, whatever the number of workers. Not with keys (peer links are not encrypted).
    case peers
}

/// How a BatchNorm layer's rounds (moments forward, sums backward) travel.
public enum BatchNormExchangeMode: String, CaseIterable, Sendable {
    /// Among the workers of a step of 2 to `CoordinatorMachine.directBatchNormWorkers` (4) workers that all
    /// listen for peers (a job without keys; on other hosts, workers given `--peer-address`) and whose gradients
    /// go through the coordinator: each sends every other its partials and all reduce them in chunk order, one
    /// hop instead of two per round. The coordinator, which needs them for its replica's running statistics,
    /// receives them with the gradient round. Otherwise through the coordinator.
    case auto
    /// Always through the coordinator.
    case star
}

/// The coordinator could not bind its address (another program has the port, or the host is not this one's).
public struct CannotBind: Error, CustomStringConvertible {
    public let description: String
}
