import HarmonyCore
import Testing
@testable import HarmonyRuntime

@Suite("Hints on the wire, and fetched batches cut into apply chunks")
struct HintWireTests {
    @Test func aHintSurvivesTheWire() {
        let hint = LiveNode.Hint(shard: 3, sequence: 0x0102_0304_0506_0708, origin: 42, payload: [9, 8, 7])
        let back = LiveNode.Hint.decode(subject: "harmonylite.hints.3", hint.encoded(), shards: 1...4)
        #expect(back == hint)
    }

    /// Stray or hostile publishes on the hint subjects: never a hint, never a crash.
    @Test(arguments: [
        ("harmonylite.hints.3", [UInt8]()),                                        // empty
        ("harmonylite.hints.3", [UInt8](repeating: 1, count: 16)),                  // header only
        ("harmonylite.hints.9", [UInt8](repeating: 1, count: 20)),                  // a shard this node does not have
        ("harmonylite.hints.x", [UInt8](repeating: 1, count: 20)),                  // not a shard number
        ("harmonylite.hints.-1", [UInt8](repeating: 1, count: 20)),
        ("harmonylite.hints.3", [UInt8](repeating: 0, count: 8) + [UInt8](repeating: 1, count: 12)),  // sequence 0
        ("other.subject", [UInt8](repeating: 1, count: 20)),
    ])
    func strayBytesAreNoHint(subject: String, bytes: [UInt8]) {
        #expect(LiveNode.Hint.decode(subject: subject, bytes, shards: 1...4) == nil)
    }

    /// Redeliveries of held-back messages come in any order; the message the core waits for goes in the first chunk.
    @Test func aFetchedBatchIsAppliedInSequenceOrder() {
        let fetched: [UInt64] = [472, 73, 51, 76, 51, 9_000]
        let order = ApplyChunks.applyOrder(fetched)
        #expect(order.map { fetched[$0] } == [51, 51, 73, 76, 472, 9_000])
        #expect(order == [2, 4, 1, 3, 0, 5])
        let firstChunk = ApplyChunks.ranges(order.map { _ in 30_000 }).first
        #expect(firstChunk.map { order[$0].map { fetched[$0] } } == [51, 51])
    }

    @Test func chunksStayUnderTheLimitAndKeepOrder() {
        #expect(ApplyChunks.ranges([], bytesMax: 100) == [])
        #expect(ApplyChunks.ranges([10, 20, 30], bytesMax: 100) == [0..<3])
        #expect(ApplyChunks.ranges([60, 50, 40, 10, 200, 1], bytesMax: 100) == [0..<1, 1..<4, 4..<5, 5..<6])
        // A message larger than the limit goes alone.
        #expect(ApplyChunks.ranges([500], bytesMax: 100) == [0..<1])
    }
}
