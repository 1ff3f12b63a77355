// swift-tools-version:5.9
// A Swift program that uses SyncBN as a library: defines a small residual conv net in code and trains it
// in one process, then again as a coordinator with two workers on threads, and checks that both runs
// give the same bits. Built and run by the test suite (Scripts/test.sh).
import PackageDescription

// SwiftPM names a path dependency after its folder, which is whatever the clone was called.
let syncbnFolder = String(#filePath).split(separator: "/").dropLast(3).last.map(String.init) ?? "SyncBN"

let package = Package(
    name: "LibraryExample",
    platforms: [.macOS(.v13)],
    dependencies: [.package(path: "../..")],
    targets: [
        .executableTarget(name: "LibraryExample", dependencies: [.product(name: "SyncBN", package: syncbnFolder)]),
    ]
)
