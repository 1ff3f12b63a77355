import Foundation

/// Per-channel standardization of samples, as `--normalize MEAN,…,STD,…` asks: value v of channel c becomes
///
///     Float((Double(v) − Double(mean[c])) / Double(std[c]))
///
/// computed in Float64 from the Float32 operands and rounded once to Float32, so every process and every
/// machine gets the same bits. Channels are C of a [C, H, W] sample; any other sample shape is one channel.
///
/// The text form lists the means, then the standard deviations, one of each per channel: `0.5,0.25` for one
/// channel, `0.49,0.48,0.45,0.25,0.24,0.26` for three. Each is rounded to Float32 when parsed.
public struct Normalization: Codable, Equatable, Sendable, CustomStringConvertible {
    public let mean: [Float]
    public let std: [Float]

    /// - Throws: `DataError` unless there are as many means as standard deviations (at least one), every
    ///   value is finite and every standard deviation is positive.
    public init(mean: [Float], std: [Float]) throws {
        guard !mean.isEmpty, mean.count == std.count else {
            throw DataError("normalization needs one mean and one standard deviation per channel, found \(mean.count) means and \(std.count) standard deviations")
        }
        guard mean.allSatisfy(\.isFinite), std.allSatisfy(\.isFinite) else {
            throw DataError("normalization \(Self.text(mean + std)): every mean and standard deviation must be a finite number")
        }
        guard std.allSatisfy({ $0 > 0 }) else {
            throw DataError("normalization \(Self.text(mean + std)): every standard deviation must be greater than 0")
        }
        self.mean = mean
        self.std = std
    }

    /// Parses `MEAN1,…,MEANc,STD1,…,STDc` (spaces around the numbers allowed).
    /// - Parameter sampleShape: if given, the number of channels must be that of samples of this shape.
    /// - Throws: `DataError` with the text, what is wrong and an example.
    public init(parsing text: String, sampleShape: [Int]? = nil) throws {
        let example = "expected MEAN,…,STD,… with one of each per channel, e.g. 0.5,0.25 for one channel or 0.49,0.48,0.45,0.25,0.24,0.26 for three"
        let words = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        var values: [Float] = []
        for word in words {
            guard let value = Double(word) else { throw DataError("--normalize \(text): “\(word)” is not a number; \(example)") }
            values.append(Float(value))
        }
        guard values.count % 2 == 0 else { throw DataError("--normalize \(text): \(values.count) numbers cannot be split into means and standard deviations; \(example)") }
        try self.init(mean: Array(values.prefix(values.count / 2)), std: Array(values.suffix(values.count / 2)))
        if let sampleShape { try check(sampleShape: sampleShape) }
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        do {
            try self.init(mean: container.decode([Float].self, forKey: .mean), std: container.decode([Float].self, forKey: .std))
        } catch let error as DataError {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: error.description))
        }
    }

    public var channels: Int { mean.count }

    /// The text form, which `init(parsing:)` reads back to the same values.
    public var description: String { Self.text(mean + std) }

    private static func text(_ values: [Float]) -> String { values.map { "\($0)" }.joined(separator: ",") }

    /// - Throws: `DataError` unless samples of `sampleShape` have `channels` channels.
    public func check(sampleShape: [Int]) throws {
        let expected = LabeledImages.channels(of: sampleShape)
        guard expected == channels else {
            throw DataError("--normalize \(description) gives \(channels) channel\(channels == 1 ? "" : "s"), but the images of shape \(sampleShape) have \(expected); pass \(expected) means then \(expected) standard deviations")
        }
    }

    /// Normalizes one sample of `shape` (CHW) in place with the formula above.
    /// - Precondition: `check(sampleShape: shape)` passes.
    public func apply(to row: UnsafeMutablePointer<Float>, shape: [Int]) {
        precondition(LabeledImages.channels(of: shape) == channels, "normalization of \(channels) channels applied to samples of shape \(shape)")
        let plane = shape.reduce(1, *) / channels
        for c in 0..<channels {
            let mean = Double(mean[c]), std = Double(std[c])
            let values = row + c * plane
            for i in 0..<plane { values[i] = Float((Double(values[i]) - mean) / std) }
        }
    }
}
