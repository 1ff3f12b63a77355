// swift-tools-version:5.9
// The package reads like the architecture, bottom to top:
//   C shims (libzmq, OpenBLAS, zlib, a few syscalls)
//   → ZeroMQ (a safe wrapper that knows nothing of training)
//   → SyncBNCore (tensors, layers, BatchNorm, data, checkpoints; knows nothing of sockets)
//   → SyncBNCluster (wire protocol, coordinator, worker, the collective BatchNorm calls)
//   → SyncBNBench (the measurement suite behind `syncbn bench`: ZeroMQ baselines, all-reduce, training, memory)
//   → syncbn (the command-line tool), and SyncBN (the library: `import SyncBN`)
import PackageDescription

/// Our Swift targets are compiled for x86-64-v3 (AVX2, FMA, BMI2: Intel Haswell and AMD Excavator, 2013–15, and
/// every CPU since, every EPYC among them): their SIMD loops (BatchNorm, activations, the optimizer) then run on
/// 256-bit lanes instead of SSE2's 128 (bn-mlp's step: 0.40 → 0.37 ms, the same bits: Swift never fuses a
/// multiply and an add into an FMA). `syncbn` checks the CPU before anything else and names this setting when
/// the CPU lacks those features. SYNCBN_TARGET_CPU=x86-64 when building (e.g. `SYNCBN_TARGET_CPU=x86-64 swift
/// build -c release`) targets any x86-64; other values are LLVM's CPU names. Only our targets: dependencies
/// are built for the baseline. (Applied to every target at the end of this file.)
let targetCPU: [SwiftSetting] = {
    #if arch(x86_64)
    let cpu = Context.environment["SYNCBN_TARGET_CPU"] ?? "haswell"
    guard cpu != "x86-64" else { return [] }
    return [.unsafeFlags(["-target-cpu", cpu])] + (cpu == "haswell" ? [.define("SYNCBN_NEEDS_X86_64_V3")] : [])
    #else
    return []
    #endif
}()

let package = Package(
    name: "SyncBN",
    // macOS 15: the Synchronization module's `Atomic` (ChunkThreads). Linux is what the project builds and tests on.
    platforms: [.macOS("15.0")],
    products: [
        .executable(name: "syncbn", targets: ["syncbn"]),
        .library(name: "SyncBN", targets: ["SyncBN"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(name: "CZeroMQ",
                       providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"])]),
        .target(name: "CSystemShims"),

        .target(name: "ZeroMQ", dependencies: ["CZeroMQ"]),
        // TensorBoard event files (TFRecord + the few protobuf messages needed), no dependencies.
        .target(name: "TensorBoardEvents"),
        .target(name: "SyncBNCore", dependencies: ["CBLAS", "CZlib", "TensorBoardEvents"]),
        .target(name: "SyncBNCluster", dependencies: [
            "ZeroMQ", "SyncBNCore", "CSystemShims", "TensorBoardEvents",
            .product(name: "Logging", package: "swift-log"),
        ], exclude: ["Protocol/WireProtocol.md"]),
        // `import SyncBN`: the library for Swift programs (Examples/LibraryExample).
        .target(name: "SyncBN", dependencies: ["SyncBNCore", "SyncBNCluster"]),
        // The benchmark suite; `syncbn bench` is its command-line front end and its child processes.
        .target(name: "SyncBNBench", dependencies: ["SyncBNCore", "SyncBNCluster", "ZeroMQ", "CSystemShims"]),
        .executableTarget(name: "syncbn", dependencies: [
            "SyncBNBench", "SyncBNCluster", "SyncBNCore", "ZeroMQ", "CSystemShims",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        // The deterministic simulation: the coordinator's and workers' state machines on a simulated network
        // and clock under a seeded scheduler, with faults at message boundaries (Tests/SyncBNSimulationTests,
        // Scripts/swarm.sh).
        .target(name: "SyncBNSimulation", dependencies: [
            "SyncBNCluster", "SyncBNCore", .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "syncbn-swarm", dependencies: ["SyncBNSimulation"], path: "Sources/SyncBNSwarm"),

        // libFuzzer's glue, shared by the fuzz targets (built with -D FUZZING by Scripts/fuzz.sh).
        .target(name: "FuzzDriver", path: "Fuzz/Driver"),
        // The wire decoder's fuzz target (Scripts/fuzz.sh); built normally, it replays the corpus.
        .executableTarget(name: "syncbn-fuzz-wire", dependencies: ["SyncBNCluster", "FuzzDriver"], path: "Fuzz/WireDecoder",
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
        // The data readers' fuzz target (Scripts/fuzz.sh); built normally, it replays its corpus.
        .executableTarget(name: "syncbn-fuzz-data", dependencies: ["SyncBNCore", "FuzzDriver"], path: "Fuzz/DataParsers",
                          exclude: ["corpus"], swiftSettings: [.unsafeFlags(["-parse-as-library"])]),

        .testTarget(name: "ZeroMQTests", dependencies: ["ZeroMQ"]),
        .testTarget(name: "SyncBNCoreTests", dependencies: ["SyncBNCore", "TensorBoardEvents"]),
        .testTarget(name: "SyncBNClusterTests", dependencies: ["SyncBNCluster", "SyncBNCore", "ZeroMQ"]),
        .testTarget(name: "SyncBNEndToEndTests", dependencies: ["SyncBNCore", "SyncBNCluster", "ZeroMQ"]),
        .testTarget(name: "SyncBNMultiHostTests"),
        .testTarget(name: "SyncBNSimulationTests", dependencies: ["SyncBNSimulation", "SyncBNCluster", "SyncBNCore"]),
        .testTarget(name: "TensorBoardEventsTests", dependencies: ["TensorBoardEvents"]),
    ]
)

// Every Swift target of ours is built for `targetCPU` (a system library or C target has no Swift settings).
for target in package.targets where target.type != .system {
    target.swiftSettings = (target.swiftSettings ?? []) + targetCPU
}
