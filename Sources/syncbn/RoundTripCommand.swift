import ArgumentParser
import Foundation
import ZeroMQ

/// The floor the benchmarks compare against: a ROUTER/DEALER round trip between two processes.
struct RoundTripCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-roundtrip",
        abstract: "Measure the raw ZeroMQ ROUTER/DEALER round trip between this process and a child echo process.")

    @Option(help: "Transport: tcp (loopback) or ipc.")
    var transport = "tcp"

    @Option(help: "Round trips to time (after 200 to warm up).")
    var count = 2000

    @Option(help: "Message size in bytes.")
    var size = 64

    @Option(help: .hidden)
    var echo: String?

    func validate() throws {
        guard ["tcp", "ipc"].contains(transport) else { throw ValidationError("--transport \(transport) is not one of tcp, ipc") }
        guard (1...10_000_000).contains(count) else { throw ValidationError("--count must be from 1 to 10,000,000 round trips") }
        guard (1...(64 << 20)).contains(size) else { throw ValidationError("--size must be from 1 byte to 64 MiB") }
    }

    func run() throws {
        let context = try Context()
        if let echo {
            // The child: bounce every message back, until the parent closes.
            let dealer = try Socket(context, .dealer)
            try dealer.connect(echo)
            try dealer.setReceiveTimeout(milliseconds: 10_000)
            try dealer.send([0])  // tells the parent our identity
            while let frames = try dealer.receiveFrames() { try dealer.send(frames: frames) }
            dealer.close()
            return
        }
        let router = try Socket(context, .router)
        try router.setRouterMandatory(true)
        try router.bind(transport == "ipc" ? "ipc:///tmp/syncbn-roundtrip-\(getpid()).sock" : "tcp://127.0.0.1:*")
        let endpoint = try router.lastEndpoint
        let child = Process()
        child.executableURL = URL(fileURLWithPath: Bundle.main.executablePath ?? CommandLine.arguments[0])
        child.arguments = ["bench-roundtrip", "--echo", endpoint]
        try child.run()
        defer { if child.isRunning { kill(child.processIdentifier, SIGKILL) }; child.waitUntilExit() }

        let payload = [UInt8](repeating: 7, count: size)
        // The child's hello: its first echo tells us its identity.
        var identity: [UInt8] = []
        var times: [Double] = []
        for i in 0..<(count + 200) {
            let t0 = DispatchTime.now().uptimeNanoseconds
            if identity.isEmpty {
                guard try router.waitReadable(timeoutMilliseconds: 10_000) else { throw ValidationError("the echo process did not connect") }
            } else {
                try router.send(frames: [identity, payload])
                guard try router.waitReadable(timeoutMilliseconds: 10_000) else { throw ValidationError("the echo process stopped answering") }
            }
            guard let frames = try router.receiveFrames(dontWait: true) else { continue }
            if identity.isEmpty {
                identity = frames[0]
                continue
            }
            if i >= 200 { times.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e3) }
        }
        router.close()
        times.sort()
        let median = times[times.count / 2], p99 = times[times.count * 99 / 100]
        print("roundtrip \(transport) \(size) B: median \(String(format: "%.1f", median)) us, p99 \(String(format: "%.1f", p99)) us over \(times.count)")
    }
}
