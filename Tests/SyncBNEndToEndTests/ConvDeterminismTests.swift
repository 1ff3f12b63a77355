// Oracle: as in DeterminismTests, `syncbn train` is the reference and `syncbn launch --workers N` must save
// the same bytes — here for convolutional networks (BatchNorm2d statistics over N·H·W, Conv2d gradients
// summed per chunk, residual blocks with identity and projection shortcuts), on a small data set the test
// writes itself (IDX files of 12×12 images with a class-dependent pattern, so that training moves).

import Foundation
import SyncBNCore
import XCTest

final class ConvDeterminismTests: SyncBNProcessTestCase {
    /// A 12×12 one-channel data set: 120 training and 40 test images, written once per test process.
    static let dataSet: String = {
        let directory = (NSTemporaryDirectory() as NSString).appendingPathComponent("syncbn-conv-data-\(getpid())")
        removeAtExit()
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        for (split, count) in [("train", 120), ("t10k", 40)] {
            var seed: UInt64 = split == "train" ? 11 : 12
            func next() -> UInt8 { seed = seed &* 6364136223846793005 &+ 1442695040888963407; return UInt8(truncatingIfNeeded: seed >> 56) }
            var labels: [UInt8] = [], pixels: [UInt8] = []
            for i in 0..<count {
                let label = UInt8(i % 10)
                labels.append(label)
                for r in 0..<12 { for c in 0..<12 {
                    let stripe = (r + Int(label)) % 4 == 0 || (c * Int(label + 1)) % 7 == 0
                    pixels.append(stripe ? 200 &+ next() % 50 : next() % 60)
                } }
            }
            writeIDX(pixels, shape: [count, 12, 12], to: (directory as NSString).appendingPathComponent("\(split)-images-idx3-ubyte"))
            writeIDX(labels, shape: [count], to: (directory as NSString).appendingPathComponent("\(split)-labels-idx1-ubyte"))
        }
        return directory
    }()

    /// A CIFAR-10-format data set (binary batches of 3×32×32 images): 2 × 24 training and 10 test records.
    static let cifarDataSet: String = {
        let directory = (NSTemporaryDirectory() as NSString).appendingPathComponent("syncbn-cifar-data-\(getpid())")
        removeAtExit()
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var seed: UInt64 = 5
        func next() -> UInt8 { seed = seed &* 6364136223846793005 &+ 1442695040888963407; return UInt8(truncatingIfNeeded: seed >> 56) }
        func records(_ count: Int) -> Data {
            var bytes: [UInt8] = []
            for i in 0..<count {
                bytes.append(UInt8(i % 10))
                for j in 0..<3072 { bytes.append((j / 32 + i % 10) % 5 == 0 ? 255 : next()) }
            }
            return Data(bytes)
        }
        for (name, count) in [("data_batch_1.bin", 24), ("data_batch_2.bin", 24), ("test_batch.bin", 10)] {
            writeFixture(records(count), to: (directory as NSString).appendingPathComponent(name))
        }
        return directory
    }()

    /// A residual net with an identity block and a stride-2 block whose shortcut is a 1×1 convolution + BN.
    static let residualModel: String = {
        let path = (NSTemporaryDirectory() as NSString).appendingPathComponent("syncbn-residual-\(getpid()).json")
        removeAtExit()
        let json = """
        {"input": [1, 12, 12], "layers": [
          {"type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3, "padding": 1, "bias": false},
          {"type": "BatchNorm2d", "num_features": 4}, {"type": "ReLU"},
          {"type": "Residual", "body": [
            {"type": "Conv2d", "in_channels": 4, "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"type": "BatchNorm2d", "num_features": 4}, {"type": "ReLU"},
            {"type": "Conv2d", "in_channels": 4, "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"type": "BatchNorm2d", "num_features": 4}]},
          {"type": "ReLU"},
          {"type": "Residual", "body": [
            {"type": "Conv2d", "in_channels": 4, "out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1},
            {"type": "BatchNorm2d", "num_features": 8}],
           "shortcut": [
            {"type": "Conv2d", "in_channels": 4, "out_channels": 8, "kernel_size": 1, "stride": 2, "bias": false},
            {"type": "BatchNorm2d", "num_features": 8}]},
          {"type": "Tanh"}, {"type": "AvgPool2d", "kernel_size": 2}, {"type": "Dropout", "p": 0.25},
          {"type": "AdaptiveAvgPool2d", "output_size": 1}, {"type": "Flatten"},
          {"type": "Linear", "in_features": 8, "out_features": 10}]}
        """
        writeFixture(Data(json.utf8), to: path)
        return path
    }()

    private func cnn(_ extra: [String] = []) -> [String] {
        ["--data", Self.dataSet, "--model", "bn-cnn", "--steps", "6", "--log-every", "3", "--batch-size", "8", "--chunk-size", "2"] + extra
    }

    private func residual(_ extra: [String] = []) -> [String] {
        ["--data", Self.dataSet, "--model-file", Self.residualModel, "--steps", "6", "--log-every", "3", "--batch-size", "8", "--chunk-size", "2"] + extra
    }

    func testConvNetSavesTheSameModelForOneToFourWorkers() throws {
        // 4 chunks of 2 rows: 1 worker holds all, 3 workers hold 2/1/1 chunks.
        for workers in 1...4 { try assertLaunchMatchesTrain(workers: workers, flags: cnn()) }
    }

    func testConvNetWithAnEmptySliceSavesTheSameModel() throws {
        // 3 chunks (2, 2, 1 rows) over 4 workers: worker 3 has no rows and still joins every round.
        try assertLaunchMatchesTrain(workers: 4, flags: cnn(["--batch-size", "5"]))
    }

    func testBatchNormGroupsAreTheSameBitsForAnyWorkerCount() throws {
        // Groups of 4 samples (2 chunks) of the batch of 8, over 1, 3 and 4 workers: a group spans workers.
        for workers in [1, 3, 4] { try assertLaunchMatchesTrain(workers: workers, flags: cnn(["--bn-group-size", "4"])) }
        XCTAssertNotEqual(try reference(cnn(["--bn-group-size", "4"])).model, try reference(cnn()).model,
                          "--bn-group-size 4 saved the same model as whole-batch SyncBN")
    }

    func testBatchNormGroupsOfOneSliceReproducePerWorkerBatchNorm() throws {
        // Oracle: per-device BN on 2 workers (slices of 4) is one process with BN groups of 4, bit for bit.
        let local = try makeTemporaryDirectory("local")
        try runSuccessfully(["launch", "--workers", "2"] + cnn(["--bn", "local", "--out", local.path]))
        // The tensors, not the header: the metadata names each run's --bn mode.
        XCTAssertEqual(tensorBytes(try model(in: local)), tensorBytes(try reference(cnn(["--bn-group-size", "4"])).model),
                       "train --bn-group-size 4 differs from launch --workers 2 --bn local")
        let wrong = try run(["train"] + cnn(["--bn-group-size", "3"]))
        XCTAssertFalse(wrong.succeeded)
        XCTAssertTrue(wrong.stderr.contains("--bn-group-size 3 must be a multiple of --chunk-size 2"), wrong.transcript)
    }

    func testResidualNetSavesTheSameModelForTwoAndThreeWorkers() throws {
        for workers in [2, 3] { try assertLaunchMatchesTrain(workers: workers, flags: residual()) }
    }

    func testConvNetWithPerWorkerBatchNormIsReproducibleAndDiffersFromSync() throws {
        let local = try makeTemporaryDirectory("local"), again = try makeTemporaryDirectory("local2")
        try runSuccessfully(["launch", "--workers", "2"] + cnn(["--bn", "local", "--out", local.path]))
        try runSuccessfully(["launch", "--workers", "2"] + cnn(["--bn", "local", "--out", again.path]))
        XCTAssertEqual(try model(in: local), try model(in: again), "two identical --bn local runs saved different models")
        XCTAssertNotEqual(try model(in: local), try reference(cnn()).model, "--bn local on 2 workers saved the same model as --bn sync")
    }

    func testKilledWorkerIsSurvivedByAConvNetWithTheSameModel() throws {
        try checkKilledWorker(["--data", Self.dataSet, "--model-file", Self.residualModel, "--steps", "600", "--log-every", "10",
                               "--batch-size", "8", "--chunk-size", "2", "--no-shuffle"], workers: 3)
    }

    func testWorkerKilledWhileItsThreadsComputeIsSurvivedWithTheSameModel() throws {
        // bn-cnn, each worker a slice of 15 rows in 3 chunks: its second convolution's calls (~0.3 M work units
        // forward, ~0.6 M backward) are above ChunkThreads' inline threshold (0.26 M), so its 2 threads share them.
        try checkKilledWorker(["--data", Self.dataSet, "--model", "bn-cnn", "--steps", "30", "--log-every", "1",
                               "--batch-size", "30", "--chunk-size", "5", "--no-shuffle"],
                              workers: 2, launchFlags: ["--threads", "2"], whileThreadsCompute: true)
    }

    /// Runs `launch --workers N flags launchFlags`, SIGKILLs worker process 1 once 3 steps are logged, and checks
    /// that the job finishes with train's model. `whileThreadsCompute`: the worker is killed only when one of
    /// its compute threads is caught computing (`killWhileChunkThreadsCompute`), which also proves they run.
    private func checkKilledWorker(_ flags: [String], workers: Int, launchFlags: [String] = [], whileThreadsCompute: Bool = false,
                                   file: StaticString = #filePath, line: UInt = #line) throws {
        let expected = try reference(flags, file: file, line: line).model
        let out = try makeTemporaryDirectory("killed-conv")
        let launch = try start(["launch", "--workers", "\(workers)"] + flags + launchFlags + ["--out", out.path])
        let pids = try XCTUnwrap(launch.waitForStandardError(containing: "pids ", seconds: 60) ? ProcessLifecycleTests.workerProcessIDs(in: launch.stderr) : nil,
                                 launch.transcript, file: file, line: line)
        registerForeignProcesses(pids)
        XCTAssertTrue(waitForLines(out, 3), launch.transcript, file: file, line: line)
        if whileThreadsCompute {
            XCTAssertTrue(killWhileChunkThreadsCompute(pids[1], seconds: 60),
                          "never caught a compute thread of worker process 1 (pid \(pids[1])) computing\n\(launch.transcript)", file: file, line: line)
        } else {
            XCTAssertEqual(kill(pids[1], SIGKILL), 0, file: file, line: line)
        }
        let result = try finish(launch, seconds: 180, file: file, line: line)
        XCTAssertTrue(result.succeeded, result.transcript, file: file, line: line)
        XCTAssertTrue(result.stderr.contains("declared dead"), result.transcript, file: file, line: line)
        XCTAssertEqual(try model(in: out, file: file, line: line), expected, "the conv run that lost a worker saved a different model", file: file, line: line)
    }

    func testResNet20OnCIFARFormatSavesTheSameModelForOneToFourWorkersAndEvaluates() throws {
        // Normalized, augmented (crop and flip drawn per sample) CIFAR-format input through He et al.'s ResNet-20.
        let flags = ["--data", Self.cifarDataSet, "--model", "resnet20", "--steps", "3", "--log-every", "3", "--batch-size", "8",
                     "--chunk-size", "2", "--normalize", "0.5,0.5,0.5,0.25,0.25,0.25", "--augment", "crop4,flip"]
        var model = Data()
        for workers in 1...4 { model = try assertLaunchMatchesTrain(workers: workers, flags: flags) }
        let plain = try reference(flags.filter { $0 != "--augment" && $0 != "crop4,flip" }).model
        XCTAssertNotEqual(model, plain, "--augment crop4,flip changed nothing")
        // evaluate needs nothing but the model file: the architecture and the normalization are in its metadata.
        let directory = try makeTemporaryDirectory("resnet-model")
        try model.write(to: directory.appendingPathComponent("model.safetensors"))
        let evaluation = try runSuccessfully(["evaluate", "--model", directory.appendingPathComponent("model.safetensors").path,
                                              "--data", Self.cifarDataSet, "--json"])
        XCTAssertTrue(evaluation.stdout.contains("\"samples\":10"), evaluation.transcript)
    }

    /// Whether `directory`'s metrics.jsonl has `lines` lines within 60 s (training reached a step).
    private func waitForLines(_ directory: URL, _ lines: Int) -> Bool {
        let deadline = Date().addingTimeInterval(60)
        let path = directory.appendingPathComponent("metrics.jsonl").path
        while Date() < deadline {
            if let text = try? String(contentsOfFile: path, encoding: .utf8), text.split(separator: "\n").count >= lines { return true }
            usleep(5_000)  // polling a file written by another process, under a deadline
        }
        return false
    }
}

/// Kills `pid` (SIGKILL) at a moment when one of its `ChunkThreads` helpers (threads named
/// `ChunkThreads.helperName`) is computing: stops the process (SIGSTOP), waits until every thread is stopped,
/// and reads each helper's /proc/PID/task/TID/syscall — "-1 …" when it was stopped in user code rather than
/// in a system call (a helper waiting for work is in futex, 202). Caught computing: killed while stopped;
/// otherwise let go on (SIGCONT) and looked at again, until `seconds` have passed. Returns whether it killed.
/// (Reading another process's syscall file takes ptrace access: the test's own descendants have it.)
func killWhileChunkThreadsCompute(_ pid: pid_t, seconds: Double) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    let tasks = "/proc/\(pid)/task"
    func read(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
    /// A thread's state letter, after the last ')' of its stat line ("T"/"t": stopped).
    func state(_ thread: String) -> Character? {
        let stat = read("\(tasks)/\(thread)/stat")
        guard let close = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).first
    }
    while Date() < deadline {
        guard SyncBNProcessTestCase.isAlive(pid) else { return false }
        let threads = (try? FileManager.default.contentsOfDirectory(atPath: tasks)) ?? []
        let helpers = threads.filter { read("\(tasks)/\($0)/comm").trimmingCharacters(in: .newlines) == ChunkThreads.helperName }
        if !helpers.isEmpty {
            guard kill(pid, SIGSTOP) == 0 else { return false }
            let stopDeadline = Date().addingTimeInterval(2)
            while threads.contains(where: { !["T", "t", nil].contains(state($0)) }) && Date() < stopDeadline { sched_yield() }
            if helpers.contains(where: { read("\(tasks)/\($0)/syscall").hasPrefix("-1 ") }) {
                return kill(pid, SIGKILL) == 0
            }
            kill(pid, SIGCONT)
        }
        usleep(2_000)  // let it compute a little further before looking again
    }
    return false
}

/// Removes the data sets and model file this test process wrote (named after its pid) when it exits.
private func removeAtExit() {
    enum Once { static let registered: Void = { atexit {
        for name in ["syncbn-conv-data-\(getpid())", "syncbn-cifar-data-\(getpid())", "syncbn-residual-\(getpid()).json"] {
            try? FileManager.default.removeItem(atPath: (NSTemporaryDirectory() as NSString).appendingPathComponent(name))
        }
    } }() }
    Once.registered
}

/// A safetensors file's data section: every tensor's bytes, after the 8-byte length and the JSON header.
func tensorBytes(_ file: Data) -> Data {
    guard file.count >= 8 else { return Data() }
    let headerLength = file.prefix(8).enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
    return file.dropFirst(8 + headerLength)
}

/// Writes an unsigned-byte IDX file (magic 00 00 08 rank, big-endian dimensions, data).
func writeIDX(_ bytes: [UInt8], shape: [Int], to path: String) {
    var out: [UInt8] = [0, 0, 8, UInt8(shape.count)]
    for d in shape { out += [UInt8(d >> 24 & 0xFF), UInt8(d >> 16 & 0xFF), UInt8(d >> 8 & 0xFF), UInt8(d & 0xFF)] }
    writeFixture(Data(out + bytes), to: path)
}
