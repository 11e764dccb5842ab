import HarmonyCodec
import HarmonySQLite

/// Picks the shard for a row from its table and primary key, so every change to one row lands in one stream, in order.
public struct ShardRouter: Sendable {
    public let shardCount: Int
    public let streamPrefix: String

    public init(shardCount: Int, streamPrefix: String = "harmonylite-changes") {
        precondition(shardCount >= 1, "shard count must be at least 1")
        self.shardCount = shardCount
        self.streamPrefix = streamPrefix
    }

    /// Shards are numbered 1...shardCount, as HarmonyLite's stream names are.
    public func shard(table: String, primaryKey: [DatabaseValue]) -> Int {
        var h = StableHash()
        h.combine(table)
        for v in primaryKey { h.combine(v) }
        let shard = Int(h.value % UInt64(shardCount)) + 1
        precondition(shards.contains(shard), "shard \(shard) outside 1...\(shardCount)")
        return shard
    }

    public func streamName(shard: Int) -> String { "\(streamPrefix)-\(shard)" }

    public var shards: ClosedRange<Int> { 1...shardCount }
}
