import Foundation

#if FUZZING

/// libFuzzer's glue, shared by the fuzz targets: each target's `main` calls `runFuzzer` with its check, and
/// libFuzzer calls `LLVMFuzzerTestOneInput` with every input it tries.
nonisolated(unsafe) private var check: ([UInt8]) -> Void = { _ in }

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    check(size == 0 ? [] : Array(UnsafeBufferPointer(start: data!, count: size)))
    return 0
}

/// libFuzzer's entry point when the program has its own `main` (SwiftPM gives every executable one).
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<Int32>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32

/// Hands the command line to libFuzzer, which feeds `body` until a crash or its time limit.
public func runFuzzer(_ body: @escaping ([UInt8]) -> Void) -> Never {
    check = body
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(runFuzzerDriver(&argc, &argv, fuzzOne))
}
#else
/// Replays the files given as arguments (or every file of the directories given) through `body`, in name
/// order, and prints how many: what a fuzz target does when built without libFuzzer (the committed corpus).
/// Exits with status 2 for a missing path.
public func replayInputs(_ arguments: ArraySlice<String>, through body: ([UInt8]) -> Void, what: String) throws {
    var count = 0
    for argument in arguments {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: argument, isDirectory: &isDirectory) else {
            fputs("no such file or directory: \(argument)\n", stderr)
            exit(2)
        }
        let files = isDirectory.boolValue
            ? try FileManager.default.contentsOfDirectory(atPath: argument).sorted().map { (argument as NSString).appendingPathComponent($0) }
            : [argument]
        for file in files {
            body(Array(try Data(contentsOf: URL(fileURLWithPath: file))))
            count += 1
        }
    }
    print("replayed \(count) inputs through \(what)")
}
#endif
