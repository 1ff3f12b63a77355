import Foundation
import Logging

/// Live progress: one line redrawn in place on a terminal (step, loss, samples/s, ETA), or a plain log line
/// every so often when standard error is not a terminal.
final class ProgressDisplay {
    private let logger: Logger
    private let isTerminal = isatty(STDERR_FILENO) == 1
    private var lastLoss: Double?
    private var lastDraw = 0.0
    private var lastLogged = 0.0
    private var drawn = false

    init(logger: Logger) { self.logger = logger }

    func update(step: Int, of total: Int, loss: Double?, samplesPerSecond: Double, elapsed: Double) {
        if let loss { lastLoss = loss }
        // The line is built only when it is shown (a few times a second at most): steps allocate nothing here.
        var line: String {
            let eta = Double(total - step) * elapsed / Double(max(1, step))
            let lossText = lastLoss.map { format($0) } ?? "—"
            return "step \(step)/\(total)  loss \(lossText)  \(Int(samplesPerSecond)) samples/s  ETA \(duration(eta))"
        }
        if isTerminal {
            guard elapsed - lastDraw >= 0.1 || step == total else { return }
            lastDraw = elapsed
            FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8))
            drawn = true
        } else if loss != nil, elapsed - lastLogged >= 5 || step == total {
            lastLogged = elapsed
            logger.info("\(line)")
        }
    }

    /// A line that stays (evaluation results), printed above the live line.
    func log(_ text: String) {
        if isTerminal && drawn { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        logger.info("\(text)")
    }

    func finish() {
        if isTerminal && drawn { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    private func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return String(format: "%d:%02d", s / 60, s % 60)
    }
}
