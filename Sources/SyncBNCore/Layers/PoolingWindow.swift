/// The geometry shared by `MaxPool2d` and `AvgPool2d`: a k×k window sliding with `stride` over an image
/// padded by `padding` on every side. Output position (i, j) of a channel covers input rows
/// i·stride − padding ..< i·stride − padding + k (and columns alike), clipped to the image: the padding
/// holds no input.
struct PoolingWindow {
    let kernelSize: Int
    let stride: Int
    let padding: Int
    let input: TensorShape
    let output: TensorShape

    /// The input rows under output row `i`, clipped to the image.
    @inline(__always)
    func rows(_ i: Int) -> Range<Int> {
        max(0, i * stride - padding)..<min(input.height, i * stride - padding + kernelSize)
    }

    /// The input columns under output column `j`, clipped to the image.
    @inline(__always)
    func columns(_ j: Int) -> Range<Int> {
        max(0, j * stride - padding)..<min(input.width, j * stride - padding + kernelSize)
    }

    /// Calls `body(output index, rows, columns, plane)` for every output value of a sample, in scan order:
    /// its index in the output sample, the input rows and columns its window covers, and the offset of its
    /// channel's plane in the input sample.
    @inline(__always)
    func forEachOutput(_ body: (Int, Range<Int>, Range<Int>, Int) -> Void) {
        let (oh, ow) = (output.height, output.width)
        let planeSize = input.height * input.width
        for channel in 0..<input.channels {
            for i in 0..<oh {
                let rows = rows(i)
                for j in 0..<ow { body((channel * oh + i) * ow + j, rows, columns(j), channel * planeSize) }
            }
        }
    }
}
