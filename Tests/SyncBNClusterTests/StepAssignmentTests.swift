import SyncBNCluster
import XCTest

/// Oracle: the decoder. A step message encoded once and given another worker's chunks in place must decode
/// to exactly the message encoded with those chunks from the start.
final class StepAssignmentTests: XCTestCase {
    func testPatchingTheAssignmentEqualsEncodingWithIt() throws {
        let batch = BatchData(rows: 2, featureSize: 3, labels: [1, 2], element: .unsignedByte, features: [1, 2, 3, 4, 5, 6])
        var bytes = Message.step(step: 9, firstChunk: 0, chunkCount: 0, computeMetrics: true, batch: batch).encoded()
        for (first, count) in [(UInt32(3), UInt32(2)), (0, 0), (.max, 1)] {
            Message.setStepAssignment(&bytes, firstChunk: first, chunkCount: count)
            let expected = Message.step(step: 9, firstChunk: first, chunkCount: count, computeMetrics: true, batch: batch)
            XCTAssertEqual(bytes, expected.encoded())
            XCTAssertEqual(try Message.decode(bytes), expected)
        }
    }
}
