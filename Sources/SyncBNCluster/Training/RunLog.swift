import Foundation
import SyncBNCore
import TensorBoardEvents

/// Where a run's logged steps go, written by `syncbn train` and the coordinator: `metrics.jsonl` (one flat
/// JSON object per logged step: `"step"`, `"epoch"` and one number per name) and a TensorBoard event file
/// (`events.out.tfevents.*`) holding the same numbers as scalars under the same names, plus histograms.
/// `--log-every` governs both.
///
/// A run resumed at step s keeps the metrics lines up to s and starts a new event file whose first event is
/// a session start at step s + 1: TensorBoard then drops the older file's values from step s + 1 on, so a
/// run interrupted after its last checkpoint shows no step twice.
final class RunLog {
    private let metricsFile: FileHandle
    private let events: EventFileWriter
    let eventsPath: String

    init(directory: String, startStep: Int) throws {
        let path = (directory as NSString).appendingPathComponent("metrics.jsonl")
        guard FileManager.default.createFile(atPath: path, contents: Self.linesBefore(startStep, ofMetricsAt: path)),
              let file = FileHandle(forWritingAtPath: path) else {
            throw TrainingError("cannot write \(path): give an --out directory you can write")
        }
        file.seekToEndOfFile()
        metricsFile = file
        do {
            events = try EventFileWriter(directory: directory)
        } catch let error as EventFileError {
            throw TrainingError(error.description)
        }
        eventsPath = events.path
        if startStep > 0 { events.addSessionStart(step: startStep + 1, wallTime: Date().timeIntervalSince1970) }
    }

    /// Writes one logged step. Non-finite numbers are left out (JSON has none to write them with).
    func write(step: Int, epoch: Double, scalars: [(String, Double)], histograms: [(String, Histogram)]) throws {
        let finite = scalars.filter { $0.1.isFinite }
        var record: [String: Any] = ["step": step, "epoch": epoch]
        for (name, value) in finite { record[name] = value }
        let line = try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys, .withoutEscapingSlashes])
        metricsFile.write(line + Data("\n".utf8))
        events.addSummary(step: step, wallTime: Date().timeIntervalSince1970, scalars: finite, histograms: histograms)
        do { try events.flush() } catch let error as EventFileError { throw TrainingError(error.description) }
    }

    func close() {
        try? metricsFile.close()
        try? events.close()
    }

    /// The lines of an existing metrics file for steps up to `step` (those a resumed run keeps).
    static func linesBefore(_ step: Int, ofMetricsAt path: String) -> Data? {
        guard step > 0, let data = FileManager.default.contents(atPath: path) else { return nil }
        let kept = String(decoding: data, as: UTF8.self).split(separator: "\n").filter { line in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let lineStep = object["step"] as? Int else { return false }
            return lineStep <= step
        }
        return Data(kept.map { $0 + "\n" }.joined().utf8)
    }
}

/// What a logged step records, by name (the names are the keys of metrics.jsonl and TensorBoard's tags).
struct LoggedStep {
    var scalars: [(String, Double)] = []
    var histograms: [(String, Histogram)] = []

    /// - Parameters:
    ///   - metrics: the training step's, with its observations of BatchNorm and activation inputs.
    ///   - test: the test set's, on steps that evaluate it.
    init(metrics: StepMetrics, test: StepMetrics?, learningRate: Double, stepSeconds: Double, samplesPerSecond: Double,
         cluster: ClusterStatus?, network: Network) {
        scalars = [("loss", metrics.loss), ("train_accuracy", metrics.accuracy)]
        if let test { scalars += [("test_loss", test.loss), ("test_accuracy", test.accuracy)] }
        scalars += [("lr", learningRate), ("step_seconds", stepSeconds), ("samples_per_second", samplesPerSecond)]
        if let cluster { scalars += [("live_workers", Double(cluster.liveWorkers)), ("redone_steps", Double(cluster.redoneSteps))] }
        for observation in metrics.observations {
            let label = observation.layer.label
            histograms.append(("\(label)/input", observation.histogram))
            for (rank, value) in zip(InputObservation.percentileRanks, observation.trackedPercentiles) {
                scalars.append(("\(label)/input_p\(Int(rank))", value))
            }
        }
        let store = network.store
        for (name, layer) in network.namedLayers {
            guard let norm = layer as? BatchNorm else { continue }
            let label = "\(name).\(norm.inputShape.isImage ? "BatchNorm2d" : "BatchNorm1d")"
            for tensor in [norm.gamma, norm.beta] {
                histograms.append(("\(label)/\(tensor.name)", Histogram(values: UnsafeBufferPointer(start: store.values + tensor.offset, count: tensor.count))))
            }
        }
        for (label, bias) in network.biasesFeedingBatchNorm {
            var squares = 0.0
            for i in bias.range { squares += Double(store.values[i]) * Double(store.values[i]) }
            scalars.append(("\(label)/bias_norm", squares.squareRoot()))
        }
    }
}
