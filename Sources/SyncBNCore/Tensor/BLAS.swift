import Foundation
import CBLAS

/// The few OpenBLAS calls SyncBN needs, row-major throughout.
public enum BLAS {
    /// One BLAS thread per process: workers already fill the cores, and one thread keeps results
    /// independent of scheduling.
    public static func useSingleThread() { openblas_set_num_threads(1) }

    /// The CPU kernels OpenBLAS chose (e.g. "Haswell"). Processes whose kernels differ round differently, so
    /// bit-identical results across hosts need the same kernels (set `OPENBLAS_CORETYPE` to force them).
    public static var kernelName: String {
        guard let name = openblas_get_corename() else { return "unknown" }
        return String(cString: name).trimmingCharacters(in: .whitespaces)
    }

    /// While true, `gemm` adds the time of every sgemm call to `measuredNanoseconds` (a benchmark's profile of
    /// a step's matrix products; one thread only).
    nonisolated(unsafe) public static var measuring = false
    nonisolated(unsafe) public static var measuredNanoseconds: UInt64 = 0

    /// C ← α·op(A)·op(B) + β·C, with op(A) m×k, op(B) k×n and C m×n, all row-major.
    @inline(__always)
    public static func gemm(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
        alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        guard m > 0, n > 0 else { return }
        if k == 0 {
            for i in 0..<m { for j in 0..<n { c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j] } }
            return
        }
        let start = measuring ? DispatchTime.now().uptimeNanoseconds : 0
        cblas_sgemm(CblasRowMajor,
                    transposeA ? CblasTrans : CblasNoTrans,
                    transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
        if measuring { measuredNanoseconds += DispatchTime.now().uptimeNanoseconds - start }
    }
}
