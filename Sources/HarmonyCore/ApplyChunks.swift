/// How a fetched batch is handed to the core: in chunks, each its own transaction, so a hint (or the node's other
/// work) waits for one chunk at most, not a whole batch of bulk messages. The live runtime splits batches so, and the
/// simulator's cost model splits them the same way.
public enum ApplyChunks {
    /// Payload bytes applied in one transaction at most (always at least one message): about 500 small rows, some
    /// 4 ms of CPU plus one commit's fsync, which is what a hint may have to wait for. 32 KiB made the commit
    /// (writing the WAL, fsync) 16% of a receiver's CPU in a bulk load; 64 KiB took receivers from 7.2-7.6 to
    /// 6.7-7.2 µs per row (`harmonybench live --shards 4 --rows 200000`, four alternating pairs).
    public static let bytesMax = 64 * 1024

    /// The order a fetched batch is applied in: by stream sequence (stable for a message delivered twice).
    /// Redeliveries come in any order, and the chunks after one the core holds back are sent back to the log unseen;
    /// with the message the core waits for in a later chunk, it saw only later ones, took that message for missing
    /// and recreated the consumer, though it came every 400 ms (after a million-row import, 1 to 4 times a run).
    public static func applyOrder(_ sequences: [UInt64]) -> [Int] {
        sequences.indices.sorted { (sequences[$0], $0) < (sequences[$1], $1) }
    }

    /// Consecutive index ranges of at most `bytesMax` bytes each (a larger message alone).
    public static func ranges(_ sizes: [Int], bytesMax: Int = bytesMax) -> [Range<Int>] {
        var chunks: [Range<Int>] = []
        var start = 0
        var bytes = 0
        for (i, size) in sizes.enumerated() {
            if i > start && bytes + size > bytesMax {
                chunks.append(start..<i)
                start = i
                bytes = 0
            }
            bytes += size
        }
        if start < sizes.count { chunks.append(start..<sizes.count) }
        return chunks
    }
}
