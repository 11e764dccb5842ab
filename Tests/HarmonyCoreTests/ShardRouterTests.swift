import HarmonyCodec
import HarmonyCore
import HarmonySQLite
import Testing

@Suite("Shard routing")
struct ShardRouterTests {
    /// Golden values: the hash must never change between releases, or rows would move streams mid-flight.
    @Test func routingIsStableAcrossReleases() {
        let r = ShardRouter(shardCount: 8)
        #expect(StableHash().hex == "cbf29ce484222325")
        var h = StableHash(); h.combine("users"); h.combine(DatabaseValue.integer(42))
        #expect(h.hex == "7d7aa9529d976892")
        #expect(r.shard(table: "users", primaryKey: [.integer(42)]) == Int(h.value % 8) + 1)
        #expect(r.streamName(shard: 3) == "harmonylite-changes-3")
    }

    @Test func keysSpreadOverAllShardsAndTypesAreDistinguished() {
        let r = ShardRouter(shardCount: 4)
        var counts = [Int: Int]()
        for k in 0..<4000 { counts[r.shard(table: "t", primaryKey: [.integer(Int64(k))]), default: 0] += 1 }
        #expect(counts.keys.sorted() == [1, 2, 3, 4])
        #expect(counts.values.allSatisfy { $0 > 800 })
        var a = StableHash(); a.combine(DatabaseValue.integer(1))
        var b = StableHash(); b.combine(DatabaseValue.text("1"))
        #expect(a.value != b.value)
    }
}
