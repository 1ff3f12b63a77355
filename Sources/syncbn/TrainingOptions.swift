import ArgumentParser
import Foundation
import SyncBNCore
import SyncBNCluster

extension BatchNormMode: ExpressibleByArgument {}
extension BatchNormBackward: ExpressibleByArgument {}
extension LearningRateSchedule: ExpressibleByArgument {}
extension DataFormat: ExpressibleByArgument {}

/// The settings that decide a training run, shared by `train`, `launch` and `coordinator`.
struct TrainingOptions: ParsableArguments {
    @Option(help: "Data directory: MNIST-format IDX files (plain or .gz), CIFAR-10 binary batches, or NumPy .npy files.")
    var data = ImageDataset.defaultDirectory

    @Option(help: "Data format (idx, cifar10, npy); detected from the directory's files when not given.")
    var dataFormat: DataFormat?

    @Option(help: "Per-channel normalization of the input, MEAN,…,STD,… (e.g. 0.2860,0.3530 for Fashion-MNIST).")
    var normalize: String?

    @Option(help: "Deterministic augmentation of training samples: crop4 (pad 4, random crop), flip (horizontal), or crop4,flip.")
    var augment: String?

    @Option(name: .customLong("model"), help: ArgumentHelp("Built-in network: \(ModelSpec.presetNames.joined(separator: ", ")) (default bn-mlp).",
                               discussion: ModelSpec.presetSummaries.joined(separator: "\n")))
    var modelOption: String?
    var model: String { modelOption ?? "bn-mlp" }

    @Option(help: "A model file (JSON mirroring torch.nn, see Examples/models) instead of --model.")
    var modelFile: String?

    @Option(name: .customLong("classes"), help: "Classes of a preset's last layer: a number, or auto (the data's largest label + 1); default 10. A label at or above it is an error. A model file sets its own.")
    var classesOption: String?
    var classes: String { classesOption ?? "10" }

    @Option(name: .customLong("bn"), help: "BatchNorm: sync (global batch statistics; the default), local (each worker's slice), none (no BN layers).")
    var bnOption: BatchNormMode?
    var bn: BatchNormMode { bnOption ?? .sync }

    @Option(name: .customLong("bn-backward"), help: ArgumentHelp("BatchNorm's backward pass: full (through the batch mean and variance; the default) or no-stats.",
                                                              discussion: "no-stats is an ablation: it treats the batch statistics as constants, which the BatchNorm paper (§2) shows makes a bias before BatchNorm grow without bound. Scripts/bn-backward-ablation.sh plots it."))
    var bnBackwardOption: BatchNormBackward?

    @Option(help: ArgumentHelp("BatchNorm statistics over consecutive groups of G samples of the global batch (default: the whole batch).",
                               discussion: "A multiple of --chunk-size that divides --batch-size. G equal to each worker's slice reproduces per-device BN deterministically; values in between are sync groups and ghost BN."))
    var bnGroupSize: Int?

    @Option(name: .customLong("batch-size"), help: "Global mini-batch size, split across workers (default 60).")
    var batchSizeOption: Int?
    var batchSize: Int { batchSizeOption ?? 60 }

    @Option(name: .customLong("chunk-size"), help: "Samples per micro-chunk, the unit of deterministic reduction; independent of the worker count (default 15).")
    var chunkSizeOption: Int?
    var chunkSize: Int { chunkSizeOption ?? 15 }

    @Option(help: "Training steps (global batches). Overrides --epochs.")
    var steps: Int?

    @Option(help: "Passes over the training set (default 1 when --steps is not given).")
    var epochs: Double?

    @Option(name: .customLong("lr"), parsing: .unconditional, help: "Learning rate (default 0.1).")
    var lrOption: Float?
    var lr: Float { lrOption ?? 0.1 }

    @Option(name: .customLong("lr-schedule"), help: "Learning-rate schedule over the run: constant, linear (to 0; the default) or cosine (to 0).")
    var lrScheduleOption: LearningRateSchedule?
    var lrSchedule: LearningRateSchedule { lrScheduleOption ?? .linear }

    @Option(name: .customLong("momentum"), parsing: .unconditional, help: "SGD momentum (torch.optim.SGD's form: v ← μv + g; p ← p − lr·v; default 0.9).")
    var momentumOption: Float?
    var momentum: Float { momentumOption ?? 0.9 }

    @Option(name: .customLong("seed"), help: "Seed of the initial weights and of the data order (default 1).")
    var seedOption: UInt64?
    var seed: UInt64 { seedOption ?? 1 }

    @Flag(help: "Use training samples in file order: step k uses samples [kB, (k+1)B).")
    var noShuffle = false

    @Option(help: "Start from this safetensors model instead of random weights.")
    var `init`: String?

    @Option(help: "Write model.safetensors, metrics.jsonl and checkpoints to this directory (default runs/latest; with --resume, that directory).")
    var out: String?

    /// The flags that say where the data is: a resumed run needs them again (they are not in the checkpoint).
    var dataArguments: [String] {
        var words: [String] = []
        if data != ImageDataset.defaultDirectory { words += ["--data", data] }
        if let dataFormat { words += ["--data-format", dataFormat.rawValue] }
        return words
    }

    /// Where results go: `--out`, or `fallback`.
    func outputDirectory(or fallback: String = "runs/latest") -> String { out ?? fallback }

    @Option(name: .customLong("log-every"), help: "Compute and log the training loss every N steps (default 50).")
    var logEveryOption: Int?
    var logEvery: Int { logEveryOption ?? 50 }

    @Option(help: "Evaluate on the test set every N steps (default: once per epoch, and at the end).")
    var evalEvery: Int?

    func validate() throws {
        guard classes == "auto" || Int(classes).map({ (2...65_536).contains($0) }) == true else {
            throw ValidationError("--classes \(classes) is neither auto nor a number from 2 to 65536")
        }
        guard ModelSpec.presetNames.contains(model) else { throw ValidationError("unknown --model \(model): choose one of \(ModelSpec.presetNames.joined(separator: ", ")), or give --model-file FILE") }
        guard batchSize >= 1, batchSize <= Self.maximumBatchSize else { throw ValidationError("--batch-size must be from 1 to \(Self.maximumBatchSize)") }
        guard bn == .none || batchSize >= 2 else { throw ValidationError("--batch-size must be at least 2 with BatchNorm: the variance of one sample is undefined (or use --bn none)") }
        guard chunkSize >= 1 else { throw ValidationError("--chunk-size must be at least 1") }
        if let bnGroupSize {
            guard bn == .sync else { throw ValidationError("--bn-group-size groups synchronized BatchNorm: use it with --bn sync (the default)") }
            guard bnGroupSize >= 1, bnGroupSize % min(chunkSize, batchSize) == 0, batchSize % bnGroupSize == 0 else {
                throw ValidationError("--bn-group-size \(bnGroupSize) must be a multiple of --chunk-size \(chunkSize) that divides --batch-size \(batchSize)")
            }
        }
        if let steps { guard steps >= 1, steps <= Self.maximumSteps else { throw ValidationError("--steps must be from 1 to \(Self.maximumSteps)") } }
        if let epochs { guard epochs > 0, epochs <= Self.maximumEpochs else { throw ValidationError("--epochs must be a positive number up to \(Int(Self.maximumEpochs))") } }
        guard lr.isFinite, lr > 0 else { throw ValidationError("--lr must be a positive number") }
        guard momentum.isFinite, momentum >= 0, momentum < 1 else { throw ValidationError("--momentum must be in [0, 1)") }
        guard logEvery >= 1 else { throw ValidationError("--log-every must be at least 1") }
        if let evalEvery { guard evalEvery >= 1 else { throw ValidationError("--eval-every must be at least 1") } }
        var isDirectory: ObjCBool = false
        if let out, FileManager.default.fileExists(atPath: out, isDirectory: &isDirectory), !isDirectory.boolValue {
            throw ValidationError("--out \(out) is a file: give a directory for model.safetensors and metrics.jsonl")
        }
    }

    /// Limits that keep every size computed from the flags far from overflow and from absurd allocations.
    static let maximumSteps = TrainingConfig.maximumSteps
    static let maximumEpochs = 1_000_000.0
    static let maximumBatchSize = TrainingConfig.maximumBatchSize

    /// Loads the data and turns the options into a job's settings.
    func resolve() throws -> (TrainingConfig, ImageDataset) {
        let dataset = try ImageDataset.load(directory: data, format: dataFormat)
        let pipeline = InputPipeline(normalization: try normalize.map { try Normalization(parsing: $0, sampleShape: dataset.train.sampleShape) },
                                     augmentation: try augment.map { try Augmentation(parsing: $0) })
        try pipeline.check(sampleShape: dataset.train.sampleShape)
        guard dataset.train.count >= batchSize else {
            throw ValidationError("--batch-size \(batchSize) is larger than the \(dataset.train.count) training samples in \(data)")
        }
        let spec = try resolveModel(for: dataset)
        let stepsPerEpoch = dataset.train.count / batchSize
        let totalSteps = steps ?? max(1, Int((Double(stepsPerEpoch) * (epochs ?? 1)).rounded()))
        guard totalSteps <= Self.maximumSteps else {
            throw ValidationError("--epochs \(epochs ?? 1) is \(totalSteps) steps of \(batchSize) samples; at most \(Self.maximumSteps) steps")
        }
        var config = TrainingConfig(
            model: spec, plan: ChunkPlan(batchSize: batchSize, chunkSize: chunkSize),
            optimizer: SGD(learningRate: lr, momentum: momentum), seed: seed, steps: totalSteps,
            shuffle: !noShuffle, logEvery: logEvery, evaluateEvery: evalEvery ?? stepsPerEpoch, schedule: lrSchedule)
        config.inputPipeline = pipeline
        config.batchNormGroupSize = bnGroupSize.flatMap { $0 < batchSize ? $0 : nil }
        try config.check()
        return (config, dataset)
    }

    /// The architecture to train: `--model-file`'s, or the preset `--model` sized for the data's samples
    /// (classes: at least 10, more if the labels need them). Checked against the data before any step.
    func resolveModel(for dataset: ImageDataset) throws -> ModelSpec {
        let sampleShape = try TensorShape(dataset.train.sampleShape)
        var spec: ModelSpec
        if let modelFile {
            spec = try ModelSpec.load(modelFile: modelFile, batchNorm: bn)
        } else {
            let count = classes == "auto" ? max(2, Int(max(dataset.train.labels.max() ?? 0, dataset.test.labels.max() ?? 0)) + 1) : Int(classes)!
            spec = try ModelSpec.preset(model, input: sampleShape, classes: count, batchNorm: bn)!
        }
        spec.batchNormBackward = bnBackwardOption ?? .full
        try spec.check(against: dataset, source: data)
        return spec
    }

    /// What a run starts from, shared by `train` and the coordinator: the settings and data (a checkpoint's
    /// settings with `--resume DIR`, see `settings(resuming:dataset:)`), that checkpoint, and the locked
    /// output directory (`--out`, or DIR, or runs/latest) — all checked before anything is built.
    func start(resuming resume: String?) throws -> RunStart {
        var (config, dataset) = try resolve()
        var checkpoint: TrainingCheckpoint?
        if let resume {
            checkpoint = try TrainingCheckpoint.load(directory: resume)
            config = try settings(resuming: checkpoint!, dataset: dataset)
        }
        let output = try OutputDirectory(outputDirectory(or: resume ?? "runs/latest"))
        return RunStart(config: config, dataset: dataset, checkpoint: checkpoint, checkpointPath: resume.map(TrainingCheckpoint.path(in:)), output: output)
    }

    /// The settings of a run continued from `checkpoint`: its own, with what the command line can change
    /// applied — more (or fewer, but not fewer than done) steps through --steps or --epochs, --log-every and
    /// --eval-every. A flag that would change anything else is refused, naming both values: the resumed run
    /// would otherwise silently ignore it.
    func settings(resuming checkpoint: TrainingCheckpoint, dataset: ImageDataset) throws -> TrainingConfig {
        var config = checkpoint.config
        guard `init` == nil else { throw ValidationError("--init and --resume do not go together: a resumed run continues from its checkpoint") }
        func refuse(_ flag: String, _ given: String, _ kept: String) throws {
            guard given != kept else { return }
            throw ValidationError("\(flag) \(given) differs from the checkpoint's \(kept): a resumed run keeps its settings (only --steps, --epochs, --log-every and --eval-every change); drop \(flag), or start a new run")
        }
        if let modelOption { try refuse("--model", modelOption, config.model.name) }
        if let modelFile { try refuse("--model-file", modelFile, config.model.name) }
        if let bnOption { try refuse("--bn", bnOption.rawValue, config.model.batchNorm.rawValue) }
        if let bnBackwardOption { try refuse("--bn-backward", bnBackwardOption.rawValue, config.model.batchNormBackward.rawValue) }
        if let batchSizeOption { try refuse("--batch-size", "\(batchSizeOption)", "\(config.plan.batchSize)") }
        if let chunkSizeOption { try refuse("--chunk-size", "\(chunkSizeOption)", "\(config.plan.chunkSize)") }
        if let lrOption { try refuse("--lr", "\(lrOption)", "\(config.optimizer.learningRate)") }
        if let momentumOption { try refuse("--momentum", "\(momentumOption)", "\(config.optimizer.momentum)") }
        if let lrScheduleOption { try refuse("--lr-schedule", lrScheduleOption.rawValue, config.schedule.rawValue) }
        if let seedOption { try refuse("--seed", "\(seedOption)", "\(config.seed)") }
        if noShuffle { try refuse("--no-shuffle", "given", config.shuffle ? "shuffled order" : "given") }
        if let bnGroupSize { try refuse("--bn-group-size", "\(bnGroupSize)", "\(config.batchNormGroupSize ?? config.plan.batchSize)") }
        if let normalize, try Normalization(parsing: normalize) != config.pipeline.normalization {
            try refuse("--normalize", normalize, config.pipeline.normalization?.description ?? "none")
        }
        if let augment, try InputPipeline(augmentation: Augmentation(parsing: augment)).augmentation != config.pipeline.augmentation {
            try refuse("--augment", augment, config.pipeline.augmentation?.description ?? "none")
        }
        if steps != nil || epochs != nil {
            let stepsPerEpoch = max(1, dataset.train.count / config.plan.batchSize)
            let total = steps ?? max(1, Int((Double(stepsPerEpoch) * (epochs ?? 1)).rounded()))
            guard total > checkpoint.nextStep, total <= Self.maximumSteps else {
                throw ValidationError("the checkpoint has done \(checkpoint.nextStep) steps: --steps/--epochs must ask for more (from \(checkpoint.nextStep + 1) to \(Self.maximumSteps) steps in all)")
            }
            config.steps = total
        }
        if let logEveryOption { config.logEvery = logEveryOption }
        if let evalEvery { config.evaluateEvery = evalEvery }
        try config.model.check(against: dataset, source: data)
        try config.check()
        return config
    }

    /// Replaces the network's random weights with `--init`'s, if given.
    func loadInitialModel(into network: Network) throws {
        if let path = `init` { try network.loadModel(from: path) }
    }
}

extension TrainingRun.Summary {
    /// The closing lines every training command prints.
    func report() -> String {
        var text = "finished \(steps) steps: test accuracy \(String(format: "%.4f", test.accuracy)), test loss \(String(format: "%.4f", test.loss)), median step \(String(format: "%.3f", medianStepSeconds * 1000)) ms"
        if let modelPath {
            text += "; model saved to \(modelPath); curves: tensorboard --logdir \((modelPath as NSString).deletingLastPathComponent)"
        }
        return text
    }
}
