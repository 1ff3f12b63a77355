/// Float64 reference implementations of the image layers, written from the `torch.nn` definitions with
/// direct loops (no im2col, no chunks, no BLAS), and the harness that runs one real layer the way a
/// network step does. The references are the oracles of ConvLayerTests, BatchNorm2dTests, PoolingTests,
/// ResidualTests and ConvNetworkTests; the harness is test machinery.
///
/// Layouts are PyTorch's: a batch is n samples of [C, H, W] one after another (NCHW), a Conv2d weight is
/// [Cout, Cin, k, k], a Linear weight [outputs, inputs]. Parameters are read from a store-shaped array
/// `p` at the offsets the layer was given (reading a layer's configuration, not its arithmetic).
import Foundation
import XCTest
@testable import SyncBNCore

enum Reference {
    /// ⌊(n + 2p − k)/s⌋ + 1.
    static func slide(_ n: Int, k: Int, s: Int, p: Int) -> Int { (n + 2 * p - k) / s + 1 }

    /// y[n, o, i, j] = b[o] + Σ_{c,a,b} W[o, c, a, b]·x[n, c, i·s − p + a, j·s − p + b] (zero padding), and
    /// for each output Σ|terms| (the scale of its Float32 rounding error).
    static func conv2d(_ x: [Double], n: Int, input: TensorShape, p: [Double], weight: Int, bias: Int?, outChannels: Int,
                       k: Int, stride: Int, padding: Int) -> (y: [Double], scale: [Double]) {
        let (c, h, w) = (input.channels, input.height, input.width)
        let oh = slide(h, k: k, s: stride, p: padding), ow = slide(w, k: k, s: stride, p: padding)
        var y = [Double](repeating: 0, count: n * outChannels * oh * ow), scale = y
        for s in 0..<n {
            for o in 0..<outChannels {
                for i in 0..<oh {
                    for j in 0..<ow {
                        var sum = bias.map { p[$0 + o] } ?? 0, total = abs(sum)
                        for ci in 0..<c {
                            for a in 0..<k {
                                let row = i * stride - padding + a
                                if row < 0 || row >= h { continue }
                                for b in 0..<k {
                                    let col = j * stride - padding + b
                                    if col < 0 || col >= w { continue }
                                    let term = p[weight + ((o * c + ci) * k + a) * k + b] * x[((s * c + ci) * h + row) * w + col]
                                    sum += term
                                    total += abs(term)
                                }
                            }
                        }
                        let index = ((s * outChannels + o) * oh + i) * ow + j
                        y[index] = sum
                        scale[index] = total
                    }
                }
            }
        }
        return (y, scale)
    }

    /// Mean and biased variance of each channel over the rows `group` × H·W.
    static func channelMoments(_ x: [Double], rows group: Range<Int>, shape: TensorShape) -> (mean: [Double], variance: [Double]) {
        let (c, plane) = shape.isImage ? (shape.channels, shape.spatialSize) : (shape.count, 1)
        let count = Double(group.count * plane)
        var mean = [Double](repeating: 0, count: c), variance = mean
        for f in 0..<c {
            var sum = 0.0
            for r in group { for i in 0..<plane { sum += x[(r * c + f) * plane + i] } }
            mean[f] = sum / count
            var squares = 0.0
            for r in group { for i in 0..<plane { let d = x[(r * c + f) * plane + i] - mean[f]; squares += d * d } }
            variance[f] = squares / count
        }
        return (mean, variance)
    }

    /// Training-mode BatchNorm (1d or 2d): per channel, statistics over each group's rows × H·W (one group:
    /// the whole batch), y = γ·(x − μ)/√(σ² + ε) + β.
    static func batchNorm(_ x: [Double], n: Int, shape: TensorShape, p: [Double], gamma: Int, beta: Int, eps: Double,
                          groups: [Range<Int>]? = nil) -> [Double] {
        let (c, plane) = shape.isImage ? (shape.channels, shape.spatialSize) : (shape.count, 1)
        var y = x
        for group in groups ?? [0..<n] where !group.isEmpty {
            let (mean, variance) = channelMoments(x, rows: group, shape: shape)
            for f in 0..<c {
                let inverse = 1 / (variance[f] + eps).squareRoot()
                for r in group {
                    for i in 0..<plane {
                        let index = (r * c + f) * plane + i
                        y[index] = p[gamma + f] * (x[index] - mean[f]) * inverse + p[beta + f]
                    }
                }
            }
        }
        return y
    }

    /// Max (padding = −∞) or average (count_include_pad: sum / k², padding as zeros) over k×k windows.
    static func pool2d(_ x: [Double], n: Int, input: TensorShape, k: Int, stride: Int, padding: Int, max: Bool) -> [Double] {
        let (c, h, w) = (input.channels, input.height, input.width)
        let oh = slide(h, k: k, s: stride, p: padding), ow = slide(w, k: k, s: stride, p: padding)
        var y = [Double](repeating: 0, count: n * c * oh * ow)
        for s in 0..<n {
            for ch in 0..<c {
                for i in 0..<oh {
                    for j in 0..<ow {
                        var best = -Double.infinity, sum = 0.0
                        for a in 0..<k {
                            for b in 0..<k {
                                let row = i * stride - padding + a, col = j * stride - padding + b
                                if row < 0 || row >= h || col < 0 || col >= w { continue }
                                let v = x[((s * c + ch) * h + row) * w + col]
                                best = Swift.max(best, v)
                                sum += v
                            }
                        }
                        y[((s * c + ch) * oh + i) * ow + j] = max ? best : sum / Double(k * k)
                    }
                }
            }
        }
        return y
    }

    /// Each channel's mean over H·W.
    static func globalAveragePool(_ x: [Double], n: Int, input: TensorShape) -> [Double] {
        let (c, plane) = (input.channels, input.spatialSize)
        return (0..<(n * c)).map { nc in (0..<plane).reduce(0.0) { $0 + x[nc * plane + $1] } / Double(plane) }
    }

    /// y = x·Wᵀ + b.
    static func linear(_ x: [Double], n: Int, inputs: Int, outputs: Int, p: [Double], weight: Int, bias: Int?) -> [Double] {
        var y = [Double](repeating: 0, count: n * outputs)
        for r in 0..<n {
            for o in 0..<outputs {
                var sum = bias.map { p[$0 + o] } ?? 0
                for i in 0..<inputs { sum += p[weight + o * inputs + i] * x[r * inputs + i] }
                y[r * outputs + o] = sum
            }
        }
        return y
    }

    /// The training-mode output of `layers` (as built by `LayerBuilder`) for `n` samples, BatchNorm
    /// normalizing over each of `groups` (one group: the whole batch). Dropout is not modelled.
    static func forward(_ layers: [Layer], _ x: [Double], n: Int, p: [Double], groups: [Range<Int>]? = nil) -> [Double] {
        var h = x
        for layer in layers {
            switch layer {
            case let conv as Conv2d:
                h = conv2d(h, n: n, input: conv.inputShape, p: p, weight: conv.weight.offset, bias: conv.bias?.offset,
                           outChannels: conv.outChannels, k: conv.kernelSize, stride: conv.stride, padding: conv.padding).y
            case let norm as BatchNorm:
                h = batchNorm(h, n: n, shape: norm.inputShape, p: p, gamma: norm.gammaOffset, beta: norm.betaOffset, eps: norm.instanceEpsilon, groups: groups)
            case let activation as Activation:
                switch activation.kind {
                case .relu: h = h.map { Swift.max($0, 0) }
                case .sigmoid: h = h.map { 1 / (1 + Foundation.exp(-$0)) }
                case .tanh: h = h.map { Foundation.tanh($0) }
                }
            case let pool as MaxPool2d:
                h = pool2d(h, n: n, input: pool.inputShape, k: pool.kernelSize, stride: pool.stride, padding: pool.padding, max: true)
            case let pool as AvgPool2d:
                h = pool2d(h, n: n, input: pool.inputShape, k: pool.kernelSize, stride: pool.stride, padding: pool.padding, max: false)
            case let pool as AdaptiveAvgPool2d:
                h = globalAveragePool(h, n: n, input: pool.inputShape)
            case is Flatten:
                break
            case let linear as Linear:
                h = Reference.linear(h, n: n, inputs: linear.inputs, outputs: linear.outputs, p: p, weight: linear.weightOffset, bias: linear.bias?.offset)
            case let residual as Residual:
                let body = forward(residual.body, h, n: n, p: p, groups: groups)
                let shortcut = forward(residual.shortcut, h, n: n, p: p, groups: groups)
                h = zip(body, shortcut).map { $0 + $1 }
            default:
                preconditionFailure("the reference has no \(type(of: layer))")
            }
        }
        return h
    }

    /// Mean softmax cross-entropy over the n rows of `logits`.
    static func crossEntropy(_ logits: [Double], labels: [Int32], classes: Int) -> Double {
        var total = 0.0
        for (r, label) in labels.enumerated() {
            let row = logits[(r * classes)..<((r + 1) * classes)]
            let top = row.max()!
            total += Foundation.log(row.reduce(0) { $0 + Foundation.exp($1 - top) }) + top - row[r * classes + Int(label)]
        }
        return total / Double(labels.count)
    }

    /// Central differences (h = 1e-6, Float64) of L = Σ w⊙f(x, p) with respect to every x and every p
    /// listed in `parameters` (default: all).
    static func finiteDifferences(x: [Double], p: [Double], w: [Double], parameters: [Int]? = nil,
                                  _ f: ([Double], [Double]) -> [Double]) -> (dx: [Double], dp: [Double]) {
        let h = 1e-6
        func loss(_ x: [Double], _ p: [Double]) -> Double { zip(w, f(x, p)).reduce(0) { $0 + $1.0 * $1.1 } }
        var dx = [Double](repeating: 0, count: x.count), dp = [Double](repeating: 0, count: p.count)
        for i in 0..<x.count {
            var plus = x, minus = x
            plus[i] += h; minus[i] -= h
            dx[i] = (loss(plus, p) - loss(minus, p)) / (2 * h)
        }
        for i in parameters ?? Array(0..<p.count) {
            var plus = p, minus = p
            plus[i] += h; minus[i] -= h
            dp[i] = (loss(x, plus) - loss(x, minus)) / (2 * h)
        }
        return (dx, dp)
    }
}

/// One layer built by `LayerBuilder` from its spec, with its own store, run through forward and backward
/// the way a network step runs it (a `StepContext` over a slice, per-chunk gradient rows).
final class LayerUnderTest {
    let plan: ChunkPlan
    let layer: Layer
    let norms: [BatchNorm]
    let store: ParameterStore

    init(_ spec: LayerSpec, input: TensorShape, plan: ChunkPlan, seed: UInt64 = 5) {
        self.plan = plan
        var builder = LayerBuilder(capacity: plan.batchSize, plan: plan)
        layer = builder.build([spec], input: input)[0]
        norms = builder.norms
        store = ParameterStore(count: builder.allocator.count)
        var random = SplitMix64(seed: seed)
        layer.initialize(store, random: &random)
    }

    var inputWidth: Int { layer.inputShape.count }
    var outputWidth: Int { layer.outputShape.count }

    var parameters: [Float] {
        get { Array(UnsafeBufferPointer(start: store.values, count: store.count)) }
        set { for i in 0..<store.count { store.values[i] = newValue[i] } }
    }

    /// A collective over the whole plan that counts H·W values per row for each BatchNorm2d, as the
    /// training run's `LocalCollective` does.
    func collective() -> LocalCollective { LocalCollective(plan: plan, valuesPerRow: norms.map(\.spatialSize)) }

    struct Result {
        var y: [Float], dx: [Float]
        /// Each chunk's gradient row (store-wide), in the slice's chunk order.
        var chunkGradients: [[Float]]
        /// The layer's whole parameter gradient: the store's gradients (synchronized BatchNorm writes there)
        /// plus the chunk rows summed in chunk order.
        var gradients: [Float]
    }

    /// forward(x) then backward(dy) over `slice` (default: the whole batch); x and dy hold the slice's rows.
    func run(x: [Float], dy: [Float], slice: BatchSlice? = nil, mode: BatchNormMode = .sync, collective: Collective? = nil,
             step: Int = 0, seed: UInt64 = 1) throws -> Result {
        let slice = slice ?? .whole(plan)
        let rows = slice.rowCount, width = max(1, store.count)
        store.gradients.update(repeating: 0, count: store.count)
        var rowsBuffer = [Float](repeating: 0, count: plan.chunkCount * width)
        let (y, dx) = try rowsBuffer.withUnsafeMutableBufferPointer { buffer in
            let context = StepContext.forTest(slice: slice, store: store, mode: mode, collective: collective ?? self.collective(),
                                              gradients: buffer.baseAddress!, gradientWidth: width, step: step, seed: seed)
            let input = makeMatrix(x, rows: rows, columns: inputWidth)
            let y = try layer.forward(input, context).toArray()
            let dx = try layer.backward(makeMatrix(dy, rows: rows, columns: outputWidth), context).toArray()
            return (y, dx)
        }
        let chunkGradients = (0..<slice.chunks.count).map { Array(rowsBuffer[($0 * width)..<($0 * width + store.count)]) }
        var gradients = Array(UnsafeBufferPointer(start: store.gradients, count: store.count))
        for row in chunkGradients { for i in 0..<store.count { gradients[i] += row[i] } }
        return Result(y: y, dx: dx, chunkGradients: chunkGradients, gradients: gradients)
    }
}

/// Fails unless every `actual[i]` is within `absolute + relative·|expected[i]|` (plus `scaled·scale[i]`) of `expected[i]`.
func assertAllClose(_ actual: [Float], _ expected: [Double], absolute: Double = 0, relative: Double = 0, scale: [Double]? = nil,
                    scaled: Double = 0, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(actual.count, expected.count, "\(what): count", file: file, line: line)
    var failures = 0
    for i in 0..<min(actual.count, expected.count) {
        let tolerance = absolute + relative * abs(expected[i]) + scaled * (scale?[i] ?? 0)
        if !(abs(Double(actual[i]) - expected[i]) <= tolerance) {
            failures += 1
            if failures <= 5 {
                XCTFail("\(what)[\(i)]: \(actual[i]) is not within \(tolerance) of \(expected[i])", file: file, line: line)
            }
        }
    }
    if failures > 5 { XCTFail("\(what): \(failures) values out of tolerance in all", file: file, line: line) }
}

extension BatchNorm {
    /// The layer's ε (LayerCallSupport's static `BatchNorm.epsilon` hides the instance property by name).
    var instanceEpsilon: Double { Mirror(reflecting: self).children.first { $0.label == "epsilon" }!.value as! Double }
}
