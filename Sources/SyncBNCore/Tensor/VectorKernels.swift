/// Inner loops over contiguous runs of values, written with SIMD lanes so that they vectorize. Each is
/// deterministic: the same input gives the same bits, and a run of one value gives exactly what the plain
/// scalar expression gives (so BatchNorm1d, whose runs are one value long, is unchanged by them).
enum VectorKernels {
    private static let lanes = 8

    /// Σ Double(x[i]) over `count` values: eight running sums, added pairwise, then the tail in order.
    @inline(__always)
    static func sum(_ x: UnsafePointer<Float>, count: Int) -> Double {
        var i = 0, total = 0.0
        if count >= lanes {
            var acc = SIMD8<Double>(repeating: 0)
            while i + lanes <= count {
                acc += SIMD8<Double>(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self))
                i += lanes
            }
            total = acc.sum()
        }
        while i < count { total += Double(x[i]); i += 1 }
        return total
    }

    /// min, max, Σx and Σx² of `count` values (Float64 sums, eight lanes as `sum`): a logged step's summary
    /// of a layer's input. NaN propagates to the sums; min and max skip it.
    @inline(__always)
    static func summary(_ x: UnsafePointer<Float>, count: Int) -> (min: Float, max: Float, sum: Double, sumOfSquares: Double) {
        var i = 0, low = Float.infinity, high = -Float.infinity, total = 0.0, squares = 0.0
        if count >= lanes {
            var lows = SIMD8<Float>(repeating: .infinity), highs = SIMD8<Float>(repeating: -.infinity)
            var sums = SIMD8<Double>(repeating: 0), squareSums = SIMD8<Double>(repeating: 0)
            while i + lanes <= count {
                let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
                lows = pointwiseMin(lows, v)
                highs = pointwiseMax(highs, v)
                let d = SIMD8<Double>(v)
                sums += d
                squareSums += d * d
                i += lanes
            }
            (low, high, total, squares) = (lows.min(), highs.max(), sums.sum(), squareSums.sum())
        }
        while i < count {
            let v = x[i], d = Double(v)
            low = Swift.min(low, v)
            high = Swift.max(high, v)
            total += d
            squares += d * d
            i += 1
        }
        return (low, high, total, squares)
    }

    /// Σ (Double(x[i]) − mean)² over `count` values, grouped as `sum`.
    @inline(__always)
    static func squaredDeviations(_ x: UnsafePointer<Float>, count: Int, mean: Double) -> Double {
        var i = 0, total = 0.0
        if count >= lanes {
            var acc = SIMD8<Double>(repeating: 0)
            let m = SIMD8<Double>(repeating: mean)
            while i + lanes <= count {
                let d = SIMD8<Double>(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)) - m
                acc += d * d
                i += lanes
            }
            total = acc.sum()
        }
        while i < count { let d = Double(x[i]) - mean; total += d * d; i += 1 }
        return total
    }

    /// The gradient through a ReLU fused into the BatchNorm before it (`BatchNorm.rectifiesOutput`): g where that
    /// ReLU's input γ·x̂ + β (recomputed as the forward pass computed it) is above 0, else 0 — what the ReLU's own
    /// backward pass gives (its y ≤ 0 exactly where γ·x̂ + β ≤ 0; a NaN keeps g, as in its lanes).
    @inline(__always)
    static func reluMasked(_ g: SIMD8<Float>, xhat h: SIMD8<Float>, gamma: SIMD8<Float>, beta: SIMD8<Float>) -> SIMD8<Float> {
        g.replacing(with: 0, where: gamma * h + beta .<= 0)
    }

    @inline(__always)
    static func reluMasked(_ g: Float, xhat h: Float, gamma: Float, beta: Float) -> Float { gamma * h + beta <= 0 ? 0 : g }

    /// (Σ Double(g[i]), Σ Double(g[i])·Double(h[i])) over `count` values, grouped as `sum`; with `relu`, g masked
    /// first (`reluMasked`, γ and β of the feature).
    @inline(__always)
    static func sumAndDot(_ g: UnsafePointer<Float>, _ h: UnsafePointer<Float>, count: Int, relu: (gamma: Float, beta: Float)? = nil) -> (Double, Double) {
        var i = 0, s = 0.0, d = 0.0
        if count >= lanes {
            var sv = SIMD8<Double>(repeating: 0), dv = SIMD8<Double>(repeating: 0)
            let rg = SIMD8<Float>(repeating: relu?.gamma ?? 0), rb = SIMD8<Float>(repeating: relu?.beta ?? 0)
            while i + lanes <= count {
                var gf = UnsafeRawPointer(g + i).loadUnaligned(as: SIMD8<Float>.self)
                let hf = UnsafeRawPointer(h + i).loadUnaligned(as: SIMD8<Float>.self)
                if relu != nil { gf = reluMasked(gf, xhat: hf, gamma: rg, beta: rb) }
                let gv = SIMD8<Double>(gf), hv = SIMD8<Double>(hf)
                sv += gv
                dv += gv * hv
                i += lanes
            }
            s = sv.sum(); d = dv.sum()
        }
        while i < count {
            let gi = relu.map { reluMasked(g[i], xhat: h[i], gamma: $0.gamma, beta: $0.beta) } ?? g[i]
            s += Double(gi); d += Double(gi) * Double(h[i]); i += 1
        }
        return (s, d)
    }

    /// x̂ = Float((Double(x) − mean)·inverseStd), y = γ·x̂ + β, for `count` values; with `rectify`, y = max(γ·x̂ + β, 0)
    /// as `relu` computes it (a ReLU fused into the pass).
    @inline(__always)
    static func normalize(_ x: UnsafePointer<Float>, xhat: UnsafeMutablePointer<Float>, y: UnsafeMutablePointer<Float>, count: Int,
                          mean: Double, inverseStd: Double, gamma: Float, beta: Float, rectify: Bool = false) {
        var i = 0
        let m = SIMD8<Double>(repeating: mean), inv = SIMD8<Double>(repeating: inverseStd)
        let g = SIMD8<Float>(repeating: gamma), b = SIMD8<Float>(repeating: beta)
        while i + lanes <= count {
            let xv = SIMD8<Double>(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self))
            let h = SIMD8<Float>((xv - m) * inv)
            UnsafeMutableRawPointer(xhat + i).storeBytes(of: h, as: SIMD8<Float>.self)
            let v = g * h + b
            UnsafeMutableRawPointer(y + i).storeBytes(of: rectify ? v.replacing(with: 0, where: v .< 0) : v, as: SIMD8<Float>.self)
            i += lanes
        }
        while i < count {
            let h = Float((Double(x[i]) - mean) * inverseStd)
            xhat[i] = h
            let v = gamma * h + beta
            y[i] = rectify && v < 0 ? 0 : v
            i += 1
        }
    }

    /// BatchNorm1d's row: x̂[f] = Float((Double(x[f]) − mean[f])·inverseStd[f]), y[f] = γ[f]·x̂[f] + β[f], for
    /// `count` features (the scalar loop's operations, eight features at a time); `rectify` as in `normalize`.
    @inline(__always)
    static func normalizeRow(_ x: UnsafePointer<Float>, xhat: UnsafeMutablePointer<Float>, y: UnsafeMutablePointer<Float>, count: Int,
                             mean: UnsafePointer<Double>, inverseStd: UnsafePointer<Double>, gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>,
                             rectify: Bool = false) {
        var i = 0
        while i + lanes <= count {
            let xv = SIMD8<Double>(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self))
            let m = UnsafeRawPointer(mean + i).loadUnaligned(as: SIMD8<Double>.self)
            let inv = UnsafeRawPointer(inverseStd + i).loadUnaligned(as: SIMD8<Double>.self)
            let h = SIMD8<Float>((xv - m) * inv)
            let g = UnsafeRawPointer(gamma + i).loadUnaligned(as: SIMD8<Float>.self)
            let b = UnsafeRawPointer(beta + i).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(xhat + i).storeBytes(of: h, as: SIMD8<Float>.self)
            let v = g * h + b
            UnsafeMutableRawPointer(y + i).storeBytes(of: rectify ? v.replacing(with: 0, where: v .< 0) : v, as: SIMD8<Float>.self)
            i += lanes
        }
        while i < count {
            let h = Float((Double(x[i]) - mean[i]) * inverseStd[i])
            xhat[i] = h
            let v = gamma[i] * h + beta[i]
            y[i] = rectify && v < 0 ? 0 : v
            i += 1
        }
    }

    /// sums[f] += Double(g[f]), dots[f] += Double(g[f])·Double(h[f]) for `count` features (one row's share of
    /// BatchNorm1d's backward sums, eight features at a time, each feature's sums in the same order); with
    /// `relu`, g masked first (`reluMasked`, per feature).
    @inline(__always)
    static func accumulateSumAndDot(_ g: UnsafePointer<Float>, _ h: UnsafePointer<Float>, sums: UnsafeMutablePointer<Double>,
                                    dots: UnsafeMutablePointer<Double>, count: Int,
                                    relu: (gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>)? = nil) {
        var i = 0
        while i + lanes <= count {
            var gf = UnsafeRawPointer(g + i).loadUnaligned(as: SIMD8<Float>.self)
            let hf = UnsafeRawPointer(h + i).loadUnaligned(as: SIMD8<Float>.self)
            if let relu {
                gf = reluMasked(gf, xhat: hf, gamma: UnsafeRawPointer(relu.gamma + i).loadUnaligned(as: SIMD8<Float>.self),
                                beta: UnsafeRawPointer(relu.beta + i).loadUnaligned(as: SIMD8<Float>.self))
            }
            let gv = SIMD8<Double>(gf), hv = SIMD8<Double>(hf)
            let sv = UnsafeRawPointer(sums + i).loadUnaligned(as: SIMD8<Double>.self)
            let dv = UnsafeRawPointer(dots + i).loadUnaligned(as: SIMD8<Double>.self)
            UnsafeMutableRawPointer(sums + i).storeBytes(of: sv + gv, as: SIMD8<Double>.self)
            UnsafeMutableRawPointer(dots + i).storeBytes(of: dv + gv * hv, as: SIMD8<Double>.self)
            i += lanes
        }
        while i < count {
            let gi = relu.map { reluMasked(g[i], xhat: h[i], gamma: $0.gamma[i], beta: $0.beta[i]) } ?? g[i]
            sums[i] += Double(gi)
            dots[i] += Double(gi) * Double(h[i])
            i += 1
        }
    }

    /// BatchNorm1d's row: dx[f] = scale[f]·(dy[f] − meanDy[f] − x̂[f]·meanDyXhat[f]), for `count` features; with
    /// `relu`, dy masked first (`reluMasked`, per feature).
    @inline(__always)
    static func batchNormInputGradientRow(_ dy: UnsafePointer<Float>, xhat: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, count: Int,
                                          scale: UnsafePointer<Float>, meanDy: UnsafePointer<Float>, meanDyXhat: UnsafePointer<Float>,
                                          relu: (gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>)? = nil) {
        var i = 0
        while i + lanes <= count {
            var g = UnsafeRawPointer(dy + i).loadUnaligned(as: SIMD8<Float>.self)
            let h = UnsafeRawPointer(xhat + i).loadUnaligned(as: SIMD8<Float>.self)
            if let relu {
                g = reluMasked(g, xhat: h, gamma: UnsafeRawPointer(relu.gamma + i).loadUnaligned(as: SIMD8<Float>.self),
                               beta: UnsafeRawPointer(relu.beta + i).loadUnaligned(as: SIMD8<Float>.self))
            }
            let s = UnsafeRawPointer(scale + i).loadUnaligned(as: SIMD8<Float>.self)
            let md = UnsafeRawPointer(meanDy + i).loadUnaligned(as: SIMD8<Float>.self)
            let mx = UnsafeRawPointer(meanDyXhat + i).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(dx + i).storeBytes(of: s * (g - md - h * mx), as: SIMD8<Float>.self)
            i += lanes
        }
        while i < count {
            let g = relu.map { reluMasked(dy[i], xhat: xhat[i], gamma: $0.gamma[i], beta: $0.beta[i]) } ?? dy[i]
            dx[i] = scale[i] * (g - meanDy[i] - xhat[i] * meanDyXhat[i])
            i += 1
        }
    }

    /// sums[f] += Double(x[f]) for `count` features (eight at a time; each feature's sum in the same order).
    @inline(__always)
    static func accumulate(_ x: UnsafePointer<Float>, into sums: UnsafeMutablePointer<Double>, count: Int) {
        var i = 0
        while i + lanes <= count {
            let xv = SIMD8<Double>(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self))
            let sv = UnsafeRawPointer(sums + i).loadUnaligned(as: SIMD8<Double>.self)
            UnsafeMutableRawPointer(sums + i).storeBytes(of: sv + xv, as: SIMD8<Double>.self)
            i += lanes
        }
        while i < count { sums[i] += Double(x[i]); i += 1 }
    }

    /// m2[f] += (Double(x[f]) − mean[f])² for `count` features.
    @inline(__always)
    static func accumulateSquaredDeviations(_ x: UnsafePointer<Float>, mean: UnsafePointer<Double>, into m2: UnsafeMutablePointer<Double>, count: Int) {
        var i = 0
        while i + lanes <= count {
            let d = SIMD8<Double>(UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)) - UnsafeRawPointer(mean + i).loadUnaligned(as: SIMD8<Double>.self)
            let mv = UnsafeRawPointer(m2 + i).loadUnaligned(as: SIMD8<Double>.self)
            UnsafeMutableRawPointer(m2 + i).storeBytes(of: mv + d * d, as: SIMD8<Double>.self)
            i += lanes
        }
        while i < count { let d = Double(x[i]) - mean[i]; m2[i] += d * d; i += 1 }
    }

    /// dx = scale·(dy − meanDy − x̂·meanDyXhat), for `count` values; with `relu`, dy masked first (`reluMasked`).
    @inline(__always)
    static func batchNormInputGradient(_ dy: UnsafePointer<Float>, xhat: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, count: Int,
                                       scale: Float, meanDy: Float, meanDyXhat: Float, relu: (gamma: Float, beta: Float)? = nil) {
        var i = 0
        let s = SIMD8<Float>(repeating: scale), md = SIMD8<Float>(repeating: meanDy), mx = SIMD8<Float>(repeating: meanDyXhat)
        let rg = SIMD8<Float>(repeating: relu?.gamma ?? 0), rb = SIMD8<Float>(repeating: relu?.beta ?? 0)
        while i + lanes <= count {
            var g = UnsafeRawPointer(dy + i).loadUnaligned(as: SIMD8<Float>.self)
            let h = UnsafeRawPointer(xhat + i).loadUnaligned(as: SIMD8<Float>.self)
            if relu != nil { g = reluMasked(g, xhat: h, gamma: rg, beta: rb) }
            UnsafeMutableRawPointer(dx + i).storeBytes(of: s * (g - md - h * mx), as: SIMD8<Float>.self)
            i += lanes
        }
        while i < count {
            let g = relu.map { reluMasked(dy[i], xhat: xhat[i], gamma: $0.gamma, beta: $0.beta) } ?? dy[i]
            dx[i] = scale * (g - meanDy - xhat[i] * meanDyXhat)
            i += 1
        }
    }

    /// v ← μ·v + g, p ← p − lr·v for `count` parameters (SGD with momentum), sixteen lanes at a time: the same
    /// two roundings per operation as the scalar loop (no fused multiply-add), which the compiler left scalar
    /// because the three buffers might overlap.
    @inline(__always)
    static func momentumStep(values p: UnsafeMutablePointer<Float>, gradients g: UnsafePointer<Float>, velocity v: UnsafeMutablePointer<Float>,
                             count: Int, learningRate: Float, momentum: Float) {
        typealias Lanes = SIMD16<Float>
        let width = 16, lr = Lanes(repeating: learningRate), mu = Lanes(repeating: momentum)
        var i = 0
        while i + width <= count {
            let velocity = mu * UnsafeRawPointer(v + i).loadUnaligned(as: Lanes.self) + UnsafeRawPointer(g + i).loadUnaligned(as: Lanes.self)
            UnsafeMutableRawPointer(v + i).storeBytes(of: velocity, as: Lanes.self)
            let value = UnsafeRawPointer(p + i).loadUnaligned(as: Lanes.self) - lr * velocity
            UnsafeMutableRawPointer(p + i).storeBytes(of: value, as: Lanes.self)
            i += width
        }
        while i < count {
            v[i] = momentum * v[i] + g[i]
            p[i] -= learningRate * v[i]
            i += 1
        }
    }

    /// y = max(x, 0) for `count` values.
    @inline(__always)
    static func relu(_ x: UnsafePointer<Float>, _ y: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        let zero = SIMD8<Float>(repeating: 0)
        while i + lanes <= count {
            let v = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(y + i).storeBytes(of: v.replacing(with: zero, where: v .< zero), as: SIMD8<Float>.self)
            i += lanes
        }
        while i < count { y[i] = x[i] < 0 ? 0 : x[i]; i += 1 }  // as the lanes do (−0 stays −0), so the split never shows
    }
}
