import Foundation

/// Element-wise non-linearities. Each backward overwrites the incoming gradient in place.
public enum Activation: String, Codable, Sendable, CaseIterable {
    /// σ(x) = 1 / (1 + e^(−x));  ∂σ/∂x = σ(x)·(1 − σ(x)).
    case sigmoid
    /// relu(x) = max(x, 0);  ∂relu/∂x = 1 if x > 0, else 0.
    case relu

    /// y = f(x), element by element.
    public func forward(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        switch self {
        case .sigmoid:
            for i in 0..<count { y[i] = 1 / (1 + expf(-x[i])) }
        case .relu:
            for i in 0..<count { y[i] = max(x[i], 0) }
        }
    }

    /// dy ← dy · f′, computed from the forward output y.
    public func backward(output y: UnsafePointer<Float>, gradient dy: UnsafeMutablePointer<Float>, count: Int) {
        switch self {
        case .sigmoid:
            for i in 0..<count { dy[i] *= y[i] * (1 - y[i]) }
        case .relu:
            for i in 0..<count where y[i] <= 0 { dy[i] = 0 }
        }
    }
}
