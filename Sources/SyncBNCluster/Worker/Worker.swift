import Foundation
import Logging
import SyncBNCore
import ZeroMQ

/// A worker process: connects a DEALER socket to the coordinator, says hello, receives its rank, the job's
/// settings and the initial model, then runs every step it is sent on its slice, calling the coordinator
/// at each all-reduce round, until told to stop.
public final class Worker {
    public struct Summary: Sendable {
        public var rank: Int
        public var steps: Int
        /// Medians per step: time computing, and time waiting for the coordinator's results.
        public var medianComputeSeconds: Double
        public var medianWaitingSeconds: Double
    }

    private let endpoint: String
    private let timeouts: ClusterTimeouts
    private var logger: Logger

    private let security: WorkerSecurity?

    /// With `security`, the connection is encrypted with CurveZMQ and authenticates this worker's key.
    public init(endpoint: String, timeouts: ClusterTimeouts = ClusterTimeouts(), security: WorkerSecurity? = nil, logger: Logger) {
        self.endpoint = endpoint
        self.timeouts = timeouts
        self.security = security
        self.logger = logger
    }

    /// Runs until the coordinator says stop.
    /// - Throws: `ClusterError` if nobody answers, the coordinator refuses this worker or fails, or a message
    ///   cannot be understood; `ProtocolError.versionMismatch` for a coordinator on another version.
    public func run() throws -> Summary {
        let context = try Context()
        let socket = try Socket(context, .dealer)
        defer { socket.close() }
        try socket.setMaximumMessageSize(WireProtocol.maximumMessageSize)
        try socket.setHighWaterMarks(send: 0, receive: 0)
        if let security {
            try socket.makeCurveClient(serverKey: security.serverKey, publicKey: security.key.publicKey, secretKey: security.key.secret)
        }
        let monitor = try SocketMonitor(socket)
        try socket.connect(endpoint)
        try socket.send(Message.hello(peer: "\(ProcessInfo.processInfo.hostName) pid \(getpid())").encoded())
        let first = try awaitWelcome(socket, monitor: monitor)
        monitor.close()
        let welcome: Message
        do {
            welcome = try Message.decode(first)
        } catch let error as ProtocolError {
            throw ClusterError("refused by the coordinator at \(endpoint): \(error)")
        }
        guard case .welcome(let rank, let workerCount, let configJSON, let model) = welcome else {
            if case .reject(let reason) = welcome { throw ClusterError("the coordinator at \(endpoint) refused this worker: \(reason)") }
            if case .failure(let reason) = welcome { throw ClusterError("the coordinator at \(endpoint) stopped the job: \(reason)") }
            throw ClusterError("expected a welcome from the coordinator, got a \(welcome.kind) message")
        }
        let config: TrainingConfig
        do {
            config = try JSONDecoder().decode(TrainingConfig.self, from: Data(configJSON))
        } catch {
            throw ClusterError("the coordinator's settings cannot be read (\(error)): run the same syncbn release everywhere")
        }
        let network = config.makeNetwork()
        try network.loadStateDict(Safetensors.decode(model, source: "the coordinator's initial model"), source: "the coordinator's initial model")
        logger[metadataKey: "rank"] = "\(rank)"
        logger.info("joined as worker \(rank) of \(workerCount) at \(endpoint)")

        let collective = RemoteCollective(socket: socket, slice: .whole(config.plan), timeoutSeconds: timeouts.roundSeconds)
        var compute: [Double] = [], waiting: [Double] = []
        while true {
            guard let frame = try receive(socket, seconds: timeouts.idleSeconds) else {
                throw ClusterError("no instruction from the coordinator for \(Int(timeouts.idleSeconds)) s: it is gone or stuck")
            }
            switch try Message.decode(frame) {
            case .step(let step, let firstChunk, let chunkCount, let computeMetrics, let batch):
                let t0 = DispatchTime.now().uptimeNanoseconds
                let chunks = Int(firstChunk)..<(Int(firstChunk) + Int(chunkCount))
                guard chunks.upperBound <= config.plan.chunkCount else {
                    throw ClusterError("step \(step + 1) assigns chunks \(chunks), but the batch has \(config.plan.chunkCount)")
                }
                let slice = BatchSlice(plan: config.plan, chunks: chunks)
                guard batch.rows == config.plan.batchSize, batch.featureSize == config.model.inputSize else {
                    throw ClusterError("step \(step + 1) carries \(batch.rows) rows of \(batch.featureSize) features for a batch of \(config.plan.batchSize) rows of \(config.model.inputSize)")
                }
                batch.copyFeatures(into: network.batchInput.storage)
                let rows = slice.globalRows
                network.input.storage.update(from: network.batchInput.row(rows.lowerBound), count: rows.count * config.model.inputSize)
                for (row, label) in batch.labels[rows].enumerated() {
                    guard Int(label) < config.model.classes else { throw ClusterError("step \(step + 1) has label \(label) for a model of \(config.model.classes) classes") }
                    network.labels[row] = Int32(label)
                }
                collective.beginStep(step, slice: slice)
                network.optimizer.learningRate = config.learningRate(atStep: Int(step))
                try network.trainStep(slice: slice, collective: collective, computeMetrics: computeMetrics)
                let total = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
                let waited = Double(collective.waitingNanoseconds) / 1e9
                compute.append(total - waited)
                waiting.append(waited)
            case .stop:
                logger.info("training finished; worker \(rank) exits")
                return Summary(rank: Int(rank), steps: compute.count, medianComputeSeconds: median(compute), medianWaitingSeconds: median(waiting))
            case .failure(let reason):
                throw ClusterError("the coordinator stopped the job: \(reason)")
            case let other:
                throw ClusterError("expected a step from the coordinator, got a \(other.kind) message")
            }
        }
    }

    /// The coordinator's first answer, watching the connection's handshakes meanwhile: a refused key or a
    /// failed CurveZMQ handshake is reported at once rather than as a timeout.
    private func awaitWelcome(_ socket: Socket, monitor: SocketMonitor) throws -> [UInt8] {
        let deadline = Date().addingTimeInterval(timeouts.connectSeconds)
        var handshakeFailure: SocketMonitor.Event?
        while true {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else {
                var hint = "check the address and that `syncbn coordinator` is running there"
                if handshakeFailure != nil {
                    hint = security == nil
                        ? "the connection's handshake failed: if the coordinator uses keys, give --secret-key and --server-key"
                        : "the CurveZMQ handshake failed: check that --server-key is the coordinator's .pub"
                }
                throw ClusterError("no coordinator answered at \(endpoint) within \(Int(timeouts.connectSeconds)) s: \(hint)")
            }
            guard let ready = try waitForFirstReadable([socket, monitor.socket], timeoutMilliseconds: Int(left * 1000) + 1) else { continue }
            if ready == 1 {
                while let event = try monitor.nextEvent() {
                    if event.kind == SocketMonitor.Event.handshakeFailedAuth {
                        let key = security?.key.publicKey ?? "(none)"
                        throw ClusterError("the coordinator at \(endpoint) did not authorize this worker: add its public key \(key) to the coordinator's --authorized-keys file")
                    }
                    if event.isHandshakeFailure { handshakeFailure = event }
                }
                continue
            }
            guard let frames = try socket.receiveFrames(dontWait: true) else { continue }
            guard frames.count == 1 else { throw ClusterError("the coordinator sent a message of \(frames.count) frames; SyncBN messages are one frame") }
            return frames[0]
        }
    }

    private func receive(_ socket: Socket, seconds: Double) throws -> [UInt8]? {
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return nil }
            guard try socket.waitReadable(timeoutMilliseconds: Int(left * 1000) + 1),
                  let frames = try socket.receiveFrames(dontWait: true) else { continue }
            guard frames.count == 1 else { throw ClusterError("the coordinator sent a message of \(frames.count) frames; SyncBN messages are one frame") }
            return frames[0]
        }
    }
}

func median(_ values: [Double]) -> Double {
    guard !values.isEmpty else { return 0 }
    return values.sorted()[values.count / 2]
}
