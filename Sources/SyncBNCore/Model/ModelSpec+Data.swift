extension ModelSpec {
    /// Whether samples of shape `shape` fit this model's input: the same shape, or the same number of values
    /// for a model whose input is a flat vector (an MLP flattens its images).
    public func accepts(sampleShape shape: [Int]) -> Bool {
        shape == input.dimensions || (input.dimensions.count == 1 && shape.reduce(1, *) == input.count)
    }

    /// Checks that `dataset` fits this model: sample shape, and every label below the model's classes.
    /// - Throws: `ModelError` naming the data set (`source`), the split and sample index, and the fix.
    public func check(against dataset: ImageDataset, source: String) throws {
        for (split, data) in [("training", dataset.train), ("test", dataset.test)] {
            guard accepts(sampleShape: data.sampleShape) else {
                throw ModelError("\(name) takes samples of shape \(input), but the \(split) images in \(source) are \(TensorShape(checked: data.sampleShape)): use a model whose input matches the data")
            }
            if let index = data.labels.firstIndex(where: { Int($0) >= classes }) {
                throw ModelError("\(source): \(split) sample \(index) has label \(data.labels[index]), but \(name) has \(classes) classes (labels 0…\(classes - 1)): fix the label or give the model's last layer more outputs")
            }
        }
    }
}
