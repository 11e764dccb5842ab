@testable import HarmonyRuntime
import Testing

/// A fetch asks for as many messages as fit its byte limit at the sizes seen lately, so the server ends a request by
/// its count: one that runs out of bytes makes nats-server drop a redelivery it had taken for it (sent again only
/// after the 30 s ack wait).
@Suite("Fetch: requests end by count, not by bytes")
struct FetchCountTests {
    @Test func aRequestOfTheRecentLargestMessagesFitsTheByteLimit() {
        for size in [0, 1, 200, 13_000, 14_000, 100_000, 500_000, 1 << 20, 3 << 20] {
            let count = LiveNode.fetchCount(largestRecent: size)
            #expect(count >= 1 && count <= 256, "\(count) for \(size) bytes")
            if count > 1 {
                #expect(count * (size + LiveNode.fetchOverheadBytes) <= LiveNode.fetchBytesMax, "\(count) messages of \(size) bytes")
            }
        }
        // Small messages still come 256 at a time, and a bulk load's (13 KB each) about 80 at a time, as before.
        #expect(LiveNode.fetchCount(largestRecent: 200) == 256)
        #expect((70...80).contains(LiveNode.fetchCount(largestRecent: 13_000)))
    }
}
