// Oracles:
// - `--init FILE` restores a saved model exactly: continuing from it advances BatchNorm's
//   num_batches_tracked from the saved count, differs from training from scratch, and `launch` (which ships
//   the initial model to its workers in the welcome message) saves the same bytes as `train`.
// - A checkpoint that does not fit the model is refused before training, with exit status ≠ 0 and one error
//   line naming the offending tensor. The checkpoints are written here by hand, in the safetensors format
//   (8-byte little-endian header length, JSON header, raw little-endian data), independently of SyncBNCore.
// - Missing data and invalid flags exit non-zero, without a crash, with a message that says what to do.

import Foundation
import SyncBNCluster
import XCTest

final class CommandLineErrorTests: SyncBNProcessTestCase {
    // MARK: --init

    func testInitContinuesFromASavedModelInTrainAndLaunchAlike() throws {
        try requireDataSet()
        let first = try makeTemporaryDirectory("first")
        try runSuccessfully(["train", "--steps", "30", "--no-shuffle", "--out", first.path])
        let initial = first.appendingPathComponent("model.safetensors").path
        let saved = try SafetensorsFile(model(in: first))
        XCTAssertEqual(saved.int64("1.num_batches_tracked"), 30)

        let flags = ["--steps", "5", "--no-shuffle", "--init", initial]
        let continued = try makeTemporaryDirectory("continued"), launched = try makeTemporaryDirectory("launched"), scratch = try makeTemporaryDirectory("scratch")
        try runSuccessfully(["train"] + flags + ["--out", continued.path])
        try runSuccessfully(["launch", "--workers", "2"] + flags + ["--out", launched.path])
        try runSuccessfully(["train", "--steps", "5", "--no-shuffle", "--out", scratch.path])

        let continuedModel = try model(in: continued)
        let parsed = try SafetensorsFile(continuedModel)
        for norm in ["1", "4", "7"] {
            XCTAssertEqual(parsed.int64("\(norm).num_batches_tracked"), 35, "BatchNorm \(norm) did not continue from the saved count")
        }
        XCTAssertNotEqual(continuedModel, try model(in: scratch), "--init had no effect: same model as training from scratch")
        XCTAssertEqual(try model(in: launched), continuedModel, "launch --init saved a different model than train --init")
    }

    func testInitWithAModelWithBatchNormIsRefusedWithoutBatchNorm() throws {
        try requireDataSet()
        let first = try makeTemporaryDirectory("bn")
        try runSuccessfully(["train", "--steps", "2", "--no-shuffle", "--out", first.path])
        let out = try makeTemporaryDirectory("refused")
        let result = try run(["train", "--steps", "2", "--bn", "none", "--init", first.appendingPathComponent("model.safetensors").path, "--out", out.path], seconds: 60)
        assertRefused(result, mentioning: ["2.weight"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.appendingPathComponent("model.safetensors").path), "a refused run saved a model")
    }

    func testInitWithAMisshapedTensorIsRefusedNamingTheTensor() throws {
        try requireDataSet()
        let first = try makeTemporaryDirectory("good")
        try runSuccessfully(["train", "--steps", "2", "--no-shuffle", "--out", first.path])
        var file = try SafetensorsFile(model(in: first))
        XCTAssertEqual(file.tensors["4.running_var"]?.shape, [100])
        file.tensors["4.running_var"] = SafetensorsFile.Tensor(dtype: "F32", shape: [99], bytes: [UInt8](repeating: 0, count: 99 * 4))
        let bad = first.appendingPathComponent("misshaped.safetensors")
        try file.encoded().write(to: bad)

        // The file we wrote must itself be valid: only the shape is wrong.
        XCTAssertEqual(try SafetensorsFile(Data(contentsOf: bad)).tensors["4.running_var"]?.shape, [99])
        for command in [["train"], ["launch", "--workers", "2"]] {
            let out = try makeTemporaryDirectory("misshaped")
            let result = try run(command + ["--steps", "2", "--init", bad.path, "--out", out.path], seconds: 60)
            assertRefused(result, mentioning: ["4.running_var", "[99]"])
            XCTAssertFalse(result.stderr.contains("joined as worker"), "launch started training with a bad checkpoint\n\(result.transcript)")
        }
    }

    func testInitWithAFileThatIsNotSafetensorsIsRefused() throws {
        try requireDataSet()
        let directory = try makeTemporaryDirectory("junk")
        let junk = directory.appendingPathComponent("junk.safetensors")
        try Data([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3]).write(to: junk)
        let result = try run(["train", "--steps", "2", "--init", junk.path, "--out", directory.path], seconds: 60)
        assertRefused(result, mentioning: ["not a valid safetensors file"])

        let missing = try run(["train", "--steps", "2", "--init", directory.appendingPathComponent("absent.safetensors").path, "--out", directory.path], seconds: 60)
        assertRefused(missing, mentioning: ["absent.safetensors"])
    }

    // MARK: Data

    func testMissingDataDirectoryTellsHowToInstallIt() throws {
        let out = try makeTemporaryDirectory("nodata")
        let nowhere = out.appendingPathComponent("no-such-dataset").path
        for command in [["train"], ["launch", "--workers", "2"]] {
            let result = try run(command + ["--data", nowhere, "--steps", "2", "--out", out.path], seconds: 60)
            assertRefused(result, mentioning: ["apt-get install dataset-fashion-mnist", nowhere])
            XCTAssertFalse(result.stderr.contains("started 2 worker"), "launch started workers without data\n\(result.transcript)")
        }
    }

    func testBatchLargerThanTheTrainingSetIsRefused() throws {
        try requireDataSet()
        let out = try makeTemporaryDirectory("huge")
        let result = try run(["train", "--batch-size", "70000", "--steps", "1", "--out", out.path], seconds: 60)
        assertRefused(result, mentioning: ["--batch-size 70000", "60000"])
    }

    func testOutputDirectoryThatIsAFileIsRefused() throws {
        try requireDataSet()
        let directory = try makeTemporaryDirectory("outfile")
        let file = directory.appendingPathComponent("not-a-directory")
        try Data("x".utf8).write(to: file)
        let result = try run(["train", "--steps", "2", "--out", file.path], seconds: 60)
        assertRefused(result, mentioning: ["not-a-directory"])
        XCTAssertEqual(try Data(contentsOf: file), Data("x".utf8), "the file given as --out was changed")
    }

    // MARK: Flags

    func testGradientExchangeAmongWorkersIsRefusedWithKeys() throws {
        // Peer links are not encrypted: a job with keys must not send gradients over them.
        let keys = try makeTemporaryDirectory("keys")
        let coordinator = keys.appendingPathComponent("coordinator").path, worker = keys.appendingPathComponent("worker").path
        try runSuccessfully(["keygen", "--out", coordinator])
        try runSuccessfully(["keygen", "--out", worker])
        let publicKey = try String(contentsOfFile: worker + ".pub", encoding: .utf8).split(separator: "\n").first { !$0.hasPrefix("#") } ?? ""
        let authorized = keys.appendingPathComponent("authorized_keys").path
        try (publicKey + "\n").write(toFile: authorized, atomically: true, encoding: .utf8)
        let result = try run(["coordinator", "--bind", "tcp://127.0.0.1:0", "--workers", "1", "--gradient-exchange", "peers",
                              "--secret-key", coordinator + ".key", "--authorized-keys", authorized,
                              "--out", try makeTemporaryDirectory("refused").path], seconds: 30)
        guard case .exited(let status) = result.termination else { return XCTFail("crashed: \(result.transcript)") }
        XCTAssertNotEqual(status, 0, result.transcript)
        XCTAssertTrue(result.stderr.contains("--gradient-exchange peers") && result.stderr.contains("keys"), result.transcript)
    }

    func testWorkersWhoseKeysDoNotFitTheCoordinatorAreToldWhyAtOnce() throws {
        let keys = try makeTemporaryDirectory("keyed")
        for name in ["coordinator", "worker", "stranger", "other"] {
            try runSuccessfully(["keygen", "--out", keys.appendingPathComponent(name).path])
        }
        let key = { (name: String) in keys.appendingPathComponent(name).path }
        try FileManager.default.copyItem(atPath: key("worker.pub"), toPath: key("authorized"))
        let endpoint = "tcp://127.0.0.1:\(try Self.freeLoopbackPort())"
        let coordinator = try start(["coordinator", "--workers", "1", "--bind", endpoint, "--secret-key", key("coordinator.key"),
                                     "--authorized-keys", key("authorized"), "--join-timeout", "60", "--data", ConvDeterminismTests.dataSet,
                                     "--model", "bn-cnn", "--steps", "2", "--batch-size", "8", "--chunk-size", "2",
                                     "--out", try makeTemporaryDirectory("keyed-out").path])
        XCTAssertTrue(coordinator.waitForStandardError(containing: "waiting for 1 worker", seconds: 30), coordinator.transcript)
        let cases: [([String], String)] = [
            ([], "requires keys (CurveZMQ): give this worker --secret-key and --server-key"),
            (["--secret-key", key("worker.key"), "--server-key", key("other.pub")], "--server-key is not the coordinator's public key"),
            (["--secret-key", key("stranger.key"), "--server-key", key("coordinator.pub")], "did not authorize this worker"),
        ]
        for (flags, message) in cases {
            let started = Date()
            assertRefused(try run(["worker", "--connect", endpoint, "--connect-timeout", "20"] + flags, seconds: 30), mentioning: [endpoint, message])
            XCTAssertLessThan(Date().timeIntervalSince(started), 10, "the worker should be told at once, not at its connect timeout")
        }
        try runSuccessfully(["worker", "--connect", endpoint, "--secret-key", key("worker.key"), "--server-key", key("coordinator.pub")], seconds: 60)
        let log = try finish(coordinator, seconds: 60)
        XCTAssertTrue(log.succeeded, log.transcript)
        // The coordinator says once that handshakes failed (no keys, another server key), and names the refused key once.
        XCTAssertEqual(log.stderr.components(separatedBy: "failed the CurveZMQ handshake").count - 1, 1, log.transcript)
        XCTAssertEqual(log.stderr.components(separatedBy: "is not in --authorized-keys").count - 1, 1, log.transcript)
    }

    func testLaunchBindsTcpLocalhost() throws {
        // libzmq reads a bind address's host as an interface name; localhost is bound as 127.0.0.1.
        let port = try Self.freeLoopbackPort()
        let out = try makeTemporaryDirectory("localhost")
        let result = try runSuccessfully(["launch", "--workers", "1", "--bind", "tcp://localhost:\(port)", "--data", ConvDeterminismTests.dataSet,
                                          "--model", "bn-cnn", "--steps", "2", "--batch-size", "8", "--chunk-size", "2", "--out", out.path])
        XCTAssertTrue(result.stderr.contains("tcp://127.0.0.1:\(port)"), result.transcript)
    }

    func testVersionNamesTheReleaseAndTheWireProtocol() throws {
        let result = try runSuccessfully(["--version"])
        XCTAssertTrue(result.stdout.hasPrefix("syncbn ") && result.stdout.contains("wire protocol \(WireProtocol.version)"), result.transcript)
    }

    func testInvalidFlagsAreRefusedWithAnExplanation() throws {
        let out = try makeTemporaryDirectory("flags").path
        let cases: [(arguments: [String], message: String)] = [
            (["train", "--batch-size", "0"], "--batch-size must be from 1 to"),
            (["train", "--batch-size", "99999999999"], "--batch-size must be from 1 to"),
            (["train", "--batch-size", "1"], "variance of one sample"),
            (["train", "--chunk-size", "0"], "--chunk-size must be at least 1"),
            (["train", "--steps", "0"], "--steps must be from 1 to"),
            (["train", "--steps", "99999999999999"], "--steps must be from 1 to 1000000000"),
            (["train", "--epochs", "1e300"], "--epochs must be a positive number up to"),
            (["train", "--epochs", "999999", "--batch-size", "2", "--chunk-size", "2"], "steps of 2 samples; at most 1000000000 steps"),
            (["train", "--lr", "0"], "--lr must be a positive number"),
            (["train", "--lr", "-1"], "--lr must be a positive number"),
            (["train", "--momentum", "-0.5"], "--momentum must be in [0, 1)"),
            (["train", "--bn-group-size", "7"], "--bn-group-size 7 must be a multiple of --chunk-size 15"),
            (["train", "--bn", "local", "--bn-group-size", "15"], "use it with --bn sync"),
            (["bench-roundtrip", "--count", "0"], "--count must be from 1"),
            (["keygen", "--out", ""], "names no file"),
            (["coordinator", "--workers", "1", "--bind", "tcp://127.0.0.1:99999"], "port 99999 is not a number from 1 to 65535"),
            (["coordinator", "--workers", "1", "--bind", "garbage"], "--bind garbage: it has no tcp:// or ipc:// scheme"),
            (["worker", "--connect", "garbage"], "--connect garbage: it has no tcp:// or ipc:// scheme"),
            (["train", "--classes", "1"], "--classes 1 is neither auto nor a number from 2 to 65536"),
            (["bench-roundtrip", "--transport", "udp"], "--transport udp is not one of tcp, ipc"),
            (["train", "--momentum", "1"], "--momentum must be in [0, 1)"),
            (["train", "--model", "resnet"], "unknown --model resnet"),
            (["train", "--bn", "sometimes"], "sometimes"),
            (["train", "--no-such-flag"], "--no-such-flag"),
            (["launch", "--workers", "0"], "--workers must be at least 1"),
            (["launch", "--workers", "2", "--gradient-exchange", "ring"], "ring"),
            (["launch", "--workers", "2", "--bind", "tcp://0.0.0.0:5555"], "loopback"),
            (["coordinator", "--workers", "2", "--join-timeout", "0"], "timeouts must be positive"),
            (["worker", "--connect", "tcp://127.0.0.1:9", "--connect-timeout", "0"], "timeouts must be positive"),
        ]
        for (arguments, message) in cases {
            let takesOut = !["worker", "bench-roundtrip", "keygen"].contains(arguments.first!)
            let result = try run(arguments + (takesOut ? ["--out", out] : []), seconds: 30)
            guard case .exited(let status) = result.termination else {
                XCTFail("`syncbn \(arguments.joined(separator: " "))` crashed: \(result.termination)\n\(result.transcript)")
                continue
            }
            XCTAssertNotEqual(status, 0, "`syncbn \(arguments.joined(separator: " "))` was accepted\n\(result.transcript)")
            XCTAssertTrue(result.stderr.contains(message), "`syncbn \(arguments.joined(separator: " "))` did not explain itself with \"\(message)\"\n\(result.transcript)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: (out as NSString).appendingPathComponent("model.safetensors")), "a refused command saved a model")
    }

    // MARK: Helpers

    /// Exit status ≠ 0 (not a crash) and exactly one error line, which contains every one of `words`.
    func testSafetensorsWithAnOverflowingShapeAreRefusedInInitAndEvaluate() throws {
        // A header whose shape's element count overflows Int ([2^62, 4]); written by hand.
        let header = #"{"0.weight":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#
        var bytes = withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { Array($0) }
        bytes += Array(header.utf8)
        let path = try makeTemporaryDirectory("overflow").appendingPathComponent("bad.safetensors").path
        writeFixture(Data(bytes), to: path)
        let data = ConvDeterminismTests.dataSet
        assertRefused(try run(["train", "--data", data, "--init", path, "--steps", "1", "--out", try makeTemporaryDirectory("o").path], seconds: 60),
                      mentioning: [path, "shape [4611686018427387904, 4] of 0.weight"])
        // evaluate reads the architecture first: this file has none, which it says without touching the tensors.
        assertRefused(try run(["evaluate", "--model", path, "--data", data], seconds: 60), mentioning: [path, "no syncbn.model metadata"])
    }

    func testEvaluateRefusesAModelWithNaNWeightsNamingTheTensor() throws {
        let data = ConvDeterminismTests.dataSet
        let out = try makeTemporaryDirectory("nan")
        try runSuccessfully(["train", "--data", data, "--model", "bn-cnn", "--steps", "2", "--batch-size", "8", "--chunk-size", "2", "--out", out.path])
        let path = out.appendingPathComponent("model.safetensors")
        XCTAssertTrue(try runSuccessfully(["evaluate", "--model", path.path, "--data", data, "--json"]).stdout.contains("accuracy"))
        var file = try SafetensorsFile(Data(contentsOf: path))
        var weight = try XCTUnwrap(file.tensors["4.weight"])
        withUnsafeBytes(of: Float.nan.bitPattern.littleEndian) { weight.bytes.replaceSubrange(40..<44, with: $0) }
        file.tensors["4.weight"] = weight
        try file.encoded().write(to: path)
        assertRefused(try run(["evaluate", "--model", path.path, "--data", data], seconds: 60), mentioning: ["tensor 4.weight holds NaN"])
    }

    func testASecondRunIntoTheSameOutputDirectoryIsRefusedNamingTheFirst() throws {
        let out = try makeTemporaryDirectory("shared")
        let flags = ["--data", ConvDeterminismTests.dataSet, "--model", "bn-cnn", "--batch-size", "8", "--chunk-size", "2", "--out", out.path]
        let first = try start(["train", "--steps", "100000", "--log-every", "1"] + flags)
        // The first run holds the directory once it writes metrics.
        let metrics = out.appendingPathComponent("metrics.jsonl").path
        let deadline = Date().addingTimeInterval(60)
        while !FileManager.default.fileExists(atPath: metrics) && Date() < deadline { usleep(5_000) }  // a file another process writes, under a deadline
        XCTAssertTrue(FileManager.default.fileExists(atPath: metrics), first.transcript)
        for command in [["train", "--steps", "2"], ["launch", "--workers", "1", "--steps", "2"]] {
            assertRefused(try run(command + flags, seconds: 60), mentioning: ["in use by syncbn process \(first.pid)"])
        }
        first.killAndReap()
        try runSuccessfully(["train", "--steps", "2"] + flags)  // a dead holder's lock is gone with it
    }

    func testALabelOutsideThePresetsClassesIsAnErrorUnlessClassesAreTakenFromTheData() throws {
        // The small conv data set with training sample 5's label set to 200.
        let directory = try makeTemporaryDirectory("labels")
        for name in ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-labels-idx1-ubyte"] {
            try FileManager.default.copyItem(atPath: (ConvDeterminismTests.dataSet as NSString).appendingPathComponent(name),
                                             toPath: directory.appendingPathComponent(name).path)
        }
        let labels = directory.appendingPathComponent("train-labels-idx1-ubyte")
        var bytes = [UInt8](try Data(contentsOf: labels))
        bytes[8 + 5] = 200  // after the 4-byte magic and one 4-byte dimension
        try Data(bytes).write(to: labels)
        let flags = ["--data", directory.path, "--model", "bn-cnn", "--steps", "2", "--batch-size", "8", "--chunk-size", "2"]
        assertRefused(try run(["train"] + flags + ["--out", try makeTemporaryDirectory("l1").path], seconds: 60),
                      mentioning: [directory.path, "training sample 5 has label 200", "10 classes"])
        let out = try makeTemporaryDirectory("l2")
        try runSuccessfully(["train"] + flags + ["--classes", "auto", "--out", out.path])
        let model = try SafetensorsFile(Data(contentsOf: out.appendingPathComponent("model.safetensors")))
        XCTAssertEqual(model.tensors["12.weight"]?.shape, [201, 128], "--classes auto should size the classifier from the labels")
    }

    func testAnOutputDirectoryUnderAFileIsRefusedBeforeTraining() throws {
        let file = try makeTemporaryDirectory("under").appendingPathComponent("a-file")
        writeFixture(Data("x".utf8), to: file.path)
        for command in [["train"], ["launch", "--workers", "2"]] {
            let result = try run(command + ["--data", ConvDeterminismTests.dataSet, "--model", "bn-cnn", "--steps", "2",
                                            "--batch-size", "8", "--chunk-size", "2", "--out", file.path + "/run"], seconds: 60)
            assertRefused(result, mentioning: ["--out \(file.path)/run", "\(file.path) is a file"])
            XCTAssertFalse(result.stderr.contains("step 1/"), "\(command[0]) trained before finding --out unusable\n\(result.transcript)")
        }
    }

    func testACheckpointWithEditedSettingsIsRefusedOnResume() throws {
        let data = ConvDeterminismTests.dataSet
        let flags = ["--data", data, "--model", "bn-cnn", "--batch-size", "8", "--chunk-size", "2", "--steps", "6", "--checkpoint-every", "2"]
        let out = try makeTemporaryDirectory("edited")
        try runSuccessfully(["launch", "--workers", "1"] + flags + ["--out", out.path])
        let path = out.appendingPathComponent("checkpoint.safetensors")
        var file = try SafetensorsFile(Data(contentsOf: path))
        let config = try XCTUnwrap(file.metadata["syncbn.config"])
        for (key, value) in [("logEvery", "0"), ("batchSize", "99999999999")] {
            var settings = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(config.utf8)) as? [String: Any])
            if key == "logEvery" { settings[key] = Int(value) } else {
                var plan = try XCTUnwrap(settings["plan"] as? [String: Any]); plan[key] = Int(value); settings["plan"] = plan
            }
            file.metadata["syncbn.config"] = String(decoding: try JSONSerialization.data(withJSONObject: settings), as: UTF8.self)
            try file.encoded().write(to: path)
            let result = try run(["coordinator", "--workers", "1", "--resume", out.path] + flags, seconds: 60)
            assertRefused(result, mentioning: [path.path, "edited or damaged"])
        }
    }

    // MARK: Model files

    func testModelFilesThatDoNotFitAreRefusedBeforeTrainingNamingLayerAndShapes() throws {
        // The tiny IDX data set of the conv tests (12×12 images), so that nothing waits on Fashion-MNIST.
        let data = ConvDeterminismTests.dataSet
        let directory = try makeTemporaryDirectory("models")
        func refused(_ layers: String, _ words: [String], namesFile: Bool = true, line: UInt = #line) throws {
            let path = directory.appendingPathComponent("m\(line).json").path
            writeFixture(Data("{\"input\": [1, 12, 12], \"layers\": [\(layers)]}".utf8), to: path)
            let out = directory.appendingPathComponent("out\(line)")
            let result = try run(["train", "--data", data, "--model-file", path, "--steps", "1", "--out", out.path], seconds: 60)
            assertRefused(result, mentioning: (namesFile ? [path] : []) + words, line: line)
            XCTAssertFalse(FileManager.default.fileExists(atPath: out.appendingPathComponent("model.safetensors").path), "a refused run saved a model", line: line)
        }
        let conv = #"{"type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3, "padding": 1}"#
        try refused(#"{"type": "Conv2d", "in_channels": 3, "out_channels": 4, "kernel_size": 3}, {"type": "Flatten"}, {"type": "Linear", "in_features": 400, "out_features": 10}"#,
                    ["layer 0 (Conv2d)", "in_channels is 3", "[1, 12, 12]"])
        try refused(conv + #", {"type": "Flatten"}, {"type": "Linear", "in_features": 500, "out_features": 10}"#,
                    ["layer 2 (Linear)", "in_features is 500", "[576]"])
        try refused(conv + #", {"type": "MaxPool2d", "kernel_size": 13}, {"type": "Flatten"}, {"type": "Linear", "in_features": 4, "out_features": 10}"#,
                    ["layer 1 (MaxPool2d)", "kernel_size 13", "[4, 12, 12]"])
        try refused(conv + #", {"type": "Linear", "in_features": 576, "out_features": 10}"#, ["layer 1 (Linear)", "Flatten"])
        try refused(conv + #", {"type": "Conv3d"}"#, ["layers.1", "unknown layer type"])
        try refused(#"{"type": "Flatten"}, {"type": "Linear", "in_features": 144, "out_features": 3}"#, ["training sample 3 has label 3", "3 classes"], namesFile: false)
    }

}

/// A minimal, independent safetensors reader and writer for building test checkpoints.
struct SafetensorsFile {
    struct Tensor: Equatable {
        var dtype: String
        var shape: [Int]
        var bytes: [UInt8]
    }

    struct FormatError: Error, CustomStringConvertible { let description: String }

    var tensors: [String: Tensor] = [:]
    var metadata: [String: String] = [:]
    /// Tensor names in file order (the order `encoded()` writes them back in).
    var order: [String] = []

    init(_ data: Data) throws {
        let bytes = [UInt8](data)
        guard bytes.count >= 8 else { throw FormatError(description: "shorter than 8 bytes") }
        let headerLength = bytes[0..<8].reversed().reduce(0) { $0 << 8 | Int($1) }
        guard headerLength <= bytes.count - 8 else { throw FormatError(description: "header length \(headerLength) too large") }
        guard let header = try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + headerLength)])) as? [String: Any] else {
            throw FormatError(description: "header is not a JSON object")
        }
        metadata = header["__metadata__"] as? [String: String] ?? [:]
        let base = 8 + headerLength
        var entries: [(name: String, start: Int, tensor: Tensor)] = []
        for (name, value) in header where name != "__metadata__" {
            guard let entry = value as? [String: Any], let dtype = entry["dtype"] as? String, let shape = entry["shape"] as? [Int],
                  let offsets = entry["data_offsets"] as? [Int], offsets.count == 2, base + offsets[1] <= bytes.count
            else { throw FormatError(description: "bad entry \(name)") }
            entries.append((name, offsets[0], Tensor(dtype: dtype, shape: shape, bytes: Array(bytes[(base + offsets[0])..<(base + offsets[1])]))))
        }
        for entry in entries.sorted(by: { $0.start < $1.start }) {
            tensors[entry.name] = entry.tensor
            order.append(entry.name)
        }
    }

    func int64(_ name: String) -> Int64? {
        guard let tensor = tensors[name], tensor.dtype == "I64", tensor.bytes.count == 8 else { return nil }
        return tensor.bytes.reversed().reduce(0) { $0 << 8 | Int64($1) }
    }

    func encoded() -> Data {
        var header = "{"
        var offset = 0
        var body: [UInt8] = []
        for name in order {
            guard let tensor = tensors[name] else { continue }
            header += "\"\(name)\":{\"dtype\":\"\(tensor.dtype)\",\"shape\":[\(tensor.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + tensor.bytes.count)]},"
            offset += tensor.bytes.count
            body += tensor.bytes
        }
        var fields = metadata
        fields["format"] = "pt"
        let metadataJSON = String(decoding: try! JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys]), as: UTF8.self)
        header += "\"__metadata__\":\(metadataJSON)}"
        var out = withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { [UInt8]($0) }
        out += Array(header.utf8)
        out += body
        return Data(out)
    }
}
