extension LabeledImages {
    /// TEMPORARY until the data-format work lands: the per-sample shape guessed from the feature count.
    public var sampleShape: [Int] {
        let side = Int(Double(featureSize).squareRoot())
        if side * side == featureSize { return [1, side, side] }
        if featureSize == 3072 { return [3, 32, 32] }
        return [featureSize]
    }
}
