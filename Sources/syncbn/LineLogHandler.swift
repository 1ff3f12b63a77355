import Foundation
import Logging

/// One line per event on standard error: `HH:MM:SS.mmm LEVEL label [key=value]: message`.
struct LineLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let level = event.level, message = event.message
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        let tags = all.isEmpty ? "" : " " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        var now = timeval()
        gettimeofday(&now, nil)
        var parts = tm()
        var seconds = now.tv_sec
        localtime_r(&seconds, &parts)
        let stamp = String(format: "%02d:%02d:%02d.%03d", parts.tm_hour, parts.tm_min, parts.tm_sec, Int(now.tv_usec / 1000))
        FileHandle.standardError.write(Data("\(stamp) \(level.rawValue.uppercased()) \(label)\(tags): \(message)\n".utf8))
    }
}
