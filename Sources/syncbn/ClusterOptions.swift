import ArgumentParser
import SyncBNCluster

extension NonFinitePolicy: ExpressibleByArgument {}
extension GradientExchangeMode: ExpressibleByArgument {}
extension BatchNormExchangeMode: ExpressibleByArgument {}

/// A command-line address checked by `Endpoint`, its error as the command line's own.
func parseEndpoint(_ text: String, flag: String, forBinding: Bool) throws -> Endpoint {
    do {
        return try Endpoint(parsing: text, flag: flag, forBinding: forBinding)
    } catch let error as EndpointError {
        throw ValidationError(error.description)
    }
}

/// Checkpoints of a run and continuing one, shared by `train`, `coordinator` and `launch`.
struct CheckpointOptions: ParsableArguments {
    @Option(help: "Write a checkpoint to --out every N steps (0: only when interrupted or stopped).")
    var checkpointEvery = 500

    @Option(help: "Continue the run whose checkpoint is in this directory, with its settings; --steps or --epochs extend it, --log-every and --eval-every apply, other training flags must match.")
    var resume: String?

    func validate() throws {
        guard checkpointEvery >= 0 else { throw ValidationError("--checkpoint-every must be 0 or more") }
    }
}

/// How a coordinator copes with failures, shared by `coordinator` and `launch`.
struct ClusterOptions: ParsableArguments {
    @Option(help: "Below this many live workers, pause and wait for workers to join.")
    var minWorkers = 1

    @Option(help: "Seconds to wait for the workers to join (at the start, and when paused below --min-workers); then save a checkpoint and stop.")
    var joinTimeout: Double = 120

    @Option(help: "Seconds a round may wait for a worker that is connected but silent (stuck).")
    var roundTimeout: Double = 120

    @Option(help: "Seconds without heartbeat answers after which a worker is declared dead.")
    var heartbeatTimeout: Double = 2

    @OptionGroup var checkpoints: CheckpointOptions
    var checkpointEvery: Int { checkpoints.checkpointEvery }
    var resume: String? { checkpoints.resume }

    @Option(help: "On NaN or infinity in a worker's partials: abort (save a checkpoint and stop) or skip the step.")
    var onNonfinite: NonFinitePolicy = .abort

    @Option(help: "How gradients travel: star (through the coordinator) or peers (reduce-scatter + all-gather among the workers, whose coordinator traffic does not grow with the worker count; not with keys).")
    var gradientExchange: GradientExchangeMode = .star

    @Option(help: "How BatchNorm rounds travel: auto (among the workers of a step of 2 to 4 workers that all listen for peers — no keys, and on other hosts --peer-address — with star gradients; else through the coordinator) or star (always through the coordinator).")
    var bnExchange: BatchNormExchangeMode = .auto

    func validate() throws {
        guard minWorkers >= 1 else { throw ValidationError("--min-workers must be at least 1") }
        guard joinTimeout > 0, roundTimeout > 0, heartbeatTimeout > 0 else { throw ValidationError("timeouts must be positive numbers of seconds") }
    }

    var timeouts: ClusterTimeouts {
        var timeouts = ClusterTimeouts()
        timeouts.joinSeconds = joinTimeout
        timeouts.roundSeconds = roundTimeout
        timeouts.setHeartbeatTimeout(heartbeatTimeout)
        return timeouts
    }
}
