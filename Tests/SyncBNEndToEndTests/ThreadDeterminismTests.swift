// Oracle: `syncbn train --threads 1` is the reference. `train --threads T` and `launch --workers N --threads T`
// (T threads in every worker) must save the same bytes and log the same metrics, for T = 1, 2, 3 and N = 1 to
// 4: bn-mlp on Fashion-MNIST, and bn-cnn on the 12×12 data set of ConvDeterminismTests in 6 chunks (uneven
// slices; fewer chunks than threads in a worker). The processes run with SYNCBN_INLINE_WORK=0, so that
// they share among their threads even the calls too small to be worth it otherwise: every layer's
// threaded path runs. Runs are a few steps: determinism shows from the first.

import Foundation
import XCTest

final class ThreadDeterminismTests: SyncBNProcessTestCase {
    override func setUpWithError() throws {
        try super.setUpWithError()
        setenv("SYNCBN_INLINE_WORK", "0", 1)  // inherited by every process the test starts
    }

    override func tearDown() {
        unsetenv("SYNCBN_INLINE_WORK")
        super.tearDown()
    }

    func testBNMLPSavesTheSameModelForAnyThreadsAndWorkers() throws {
        try requireDataSet()
        try assertThreadsAndWorkersDoNotChangeTheModel(["--model", "bn-mlp", "--steps", "6", "--log-every", "3", "--no-shuffle"])
    }

    func testBNCNNSavesTheSameModelForAnyThreadsAndWorkers() throws {
        try assertThreadsAndWorkersDoNotChangeTheModel(["--data", ConvDeterminismTests.dataSet, "--model", "bn-cnn", "--steps", "4",
                                                        "--log-every", "2", "--batch-size", "30", "--chunk-size", "5"])
    }

    /// `train` with 1, 2 and 3 threads and with the default (every core), and `launch` with 1 to 4 workers of
    /// 1 to 3 threads each, all save the same model.
    private func assertThreadsAndWorkersDoNotChangeTheModel(_ flags: [String], file: StaticString = #filePath, line: UInt = #line) throws {
        let one = try reference(flags + ["--threads", "1"], file: file, line: line)
        for threads in [nil, 2, 3] as [Int?] {
            let run = try reference(flags + (threads.map { ["--threads", "\($0)"] } ?? []), file: file, line: line)
            let name = threads.map { "train --threads \($0)" } ?? "train (every core)"
            XCTAssertTrue(run.model == one.model, "\(name) saved a different model than train --threads 1", file: file, line: line)
            XCTAssertEqual(run.metrics, one.metrics, "\(name) logged different metrics than train --threads 1", file: file, line: line)
        }
        for workers in 1...4 {
            for threads in 1...3 {
                try assertLaunchMatchesTrain(workers: workers, flags: flags, launchFlags: ["--threads", "\(threads)"],
                                             workerThreads: threads, file: file, line: line)
            }
        }
    }

    func testLaunchGivesEachWorkerItsShareOfTheCores() throws {
        try requireDataSet()
        let cores = ProcessInfo.processInfo.activeProcessorCount
        try assertLaunchMatchesTrain(workers: 2, flags: ["--steps", "2", "--no-shuffle"], workerThreads: max(1, cores / 2))
    }

    func testThreadCountsOutsideOneTo256AreRefused() throws {
        for arguments in [["train", "--threads", "0"], ["train", "--threads", "257"], ["worker", "--connect", "tcp://127.0.0.1:5555", "--threads", "0"],
                          ["launch", "--workers", "2", "--threads", "100000"]] {
            assertRefused(try run(arguments), mentioning: ["--threads", "1 to 256"])
        }
    }
}
