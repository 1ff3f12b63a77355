import ArgumentParser
import SyncBNCluster
import SyncBNCore

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train in one process: the reference every distributed run must match bit for bit.")

    @OptionGroup var options: TrainingOptions

    func run() throws {
        let logger = makeLogger("syncbn.train")
        BLAS.useSingleThread()
        try reportingErrors(logger) {
            let (config, dataset) = try options.resolve()
            let network = config.makeNetwork()
            try options.loadInitialModel(into: network)
            let runner = LocalStepRunner(network: network, data: dataset.train, config: config)
            logger.info("training \(config.model.name) (--bn \(config.model.batchNorm.rawValue)) for \(config.steps) steps of \(config.plan.batchSize) samples in one process")
            let summary = try TrainingRun(config: config, dataset: dataset, runner: runner, outputDirectory: options.outputDirectory(), logger: logger).run()
            logger.info("\(summary.report())")
        }
    }
}
