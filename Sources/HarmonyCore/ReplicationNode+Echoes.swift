import HarmonySQLite

/// This node's own messages, remembered by their bytes from the moment they are sent until the log delivers them
/// back, so the copy each node also receives of its own writes is consumed without being decoded or applied.
///
/// Safe because such a message carries rows read from this database at publish time, at their current versions;
/// last-writer-wins can only have kept them or something newer since, so applying it would change nothing. The one
/// step that can take a row back to something older is a snapshot restore, which forgets every entry (`removeAll`);
/// a new core starts with none. Messages of user rows are remembered, and this node's definitions, those only to
/// move the checkpoint at the head of what an import holds back (`leadingEchoes`): applied, a definition still takes
/// the full path. Requests, and messages sent in parts, are not remembered. Before this, applying its own rows a
/// second time cost a node 3.5–5.8 µs a row on the core alone, and while an import was stamped it held them
/// (fetched again every `retryDelayMs`).
struct OwnEchoes {
    /// Length and two independent 64-bit mixes of a payload: never stored, compared only within one process.
    struct Key: Hashable {
        var bytes: Int
        var a: UInt64
        var b: UInt64
    }

    /// Entries kept at most; beyond that the oldest half is forgotten (those messages are then applied as before).
    static let capacity = 65_536

    private var serials: [Key: Int] = [:]
    /// The entries that are this node's definitions.
    private var definitions: Set<Key> = []
    /// How many entries have each payload length: a delivery of another length is not hashed at all.
    private var lengths: [Int: Int] = [:]
    private var nextSerial = 0

    var count: Int { serials.count }

    static func key(_ payload: [UInt8]) -> Key {
        var a: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(payload.count)
        var b: UInt64 = 0xC2B2_AE3D_27D4_EB4F &+ UInt64(payload.count)
        payload.withUnsafeBytes { raw in
            var i = 0
            while i + 8 <= raw.count {
                let word = raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                a = (a ^ word) &* 0x0000_0100_0000_01B3
                a ^= a >> 29
                b = (b &+ word) &* 0xFF51_AFD7_ED55_8CCD
                b ^= b >> 33
                i += 8
            }
            var tail: UInt64 = 0x80
            while i < raw.count {
                tail = tail << 8 | UInt64(raw[i])
                i += 1
            }
            a = (a ^ tail) &* 0x0000_0100_0000_01B3
            a ^= a >> 31
            b = (b &+ tail) &* 0xFF51_AFD7_ED55_8CCD
            b ^= b >> 33
        }
        return Key(bytes: payload.count, a: a, b: b)
    }

    mutating func insert(_ payload: [UInt8], definition: Bool = false) {
        let key = Self.key(payload)
        if definition { definitions.insert(key) }
        if serials.updateValue(nextSerial, forKey: key) == nil { lengths[key.bytes, default: 0] += 1 }
        nextSerial += 1
        if serials.count > Self.capacity {
            let oldestKept = nextSerial - Self.capacity / 2
            for (key, serial) in serials where serial < oldestKept { remove(key) }
        }
    }

    /// The payload's key if this node sent exactly these bytes and has not seen them back yet (its definitions
    /// only with `definitions`).
    func match(_ payload: [UInt8], definitions includingDefinitions: Bool = false) -> Key? {
        guard lengths[payload.count] != nil else { return nil }
        let key = Self.key(payload)
        guard serials[key] != nil, includingDefinitions || !definitions.contains(key) else { return nil }
        return key
    }

    mutating func remove(_ key: Key) {
        guard serials.removeValue(forKey: key) != nil else { return }
        definitions.remove(key)
        if let n = lengths[key.bytes], n > 1 { lengths[key.bytes] = n - 1 } else { lengths[key.bytes] = nil }
    }

    mutating func removeAll() {
        serials.removeAll()
        definitions.removeAll()
        lengths.removeAll()
    }
}

extension ReplicationNode {
    /// The run of this node's own messages that starts right after the checkpoint. While a bulk import holds every
    /// other delivery back (`messagesArrived`), these are consumed in the import's next stamp transaction, or alone
    /// when no stamp runs (`checkpointPastEchoes`): they need no comparison with the queued writes, and holding them
    /// made the runtime fetch them again every `retryDelayMs` while the log moved on. The node's own definitions
    /// count too: one it sent just before an import (its CREATE TABLE) held every own message behind it, and the
    /// import's messages passed `max_entries`. Skipping one changes nothing here: this node has that definition, or
    /// a later one of its own made from it (whose state kept its columns and renames), or one that outranks both.
    func leadingEchoes(shard: Int, _ ordered: [IncomingMessage], from start: UInt64) -> [(sequence: UInt64, key: OwnEchoes.Key)] {
        guard pausedShards[shard] == nil, ownEchoes.count > 0 else { return [] }
        var run: [(sequence: UInt64, key: OwnEchoes.Key)] = []
        for message in ordered where message.sequence > start {
            guard message.sequence == start + UInt64(run.count) + 1, let key = ownEchoes.match(message.payload, definitions: true) else { break }
            run.append((message.sequence, key))
        }
        return run
    }

    /// Consumes the run of own messages at the head of what an import holds back; returns the new checkpoint (nil: no
    /// run). Saved with the stamp, or alone (`checkpointPastEchoes`); failing both, it moves in memory only and the
    /// node's next write transaction saves it (`echoCheckpointsUnsaved`). A loader committing back to back leaves the
    /// lock free for microseconds at a time: waiting `lock_pause_ms` for it per delivery, the node consumed its own
    /// messages at about 250 a second while a 300,000-row import sent 2,300 on one stream in under two seconds, and
    /// fell behind the stream's start (default `max_entries` 1024). Nothing is lost if the process dies first: it
    /// resumes from the saved checkpoint, and its own messages still on the stream apply again and change nothing.
    func consumeLeadingEchoes(_ db: Database, shard: Int, _ run: [(sequence: UInt64, key: OwnEchoes.Key)],
                              savedWithTheStamp: Bool) throws -> UInt64? {
        guard let last = run.last?.sequence else { return nil }
        // Once one save missed the lock, the next write transaction saves this one too: no further wait per delivery.
        var saved = savedWithTheStamp
        if !saved, echoCheckpointsUnsaved.isEmpty { saved = try checkpointPastEchoes(db, shard: shard, through: last) }
        if !saved { echoCheckpointsUnsaved.insert(shard) }
        consumedEchoes(shard: shard, run)
        return last
    }

    /// Moves a shard's checkpoint past a run of this node's own messages alone, when an import's stamp did not run
    /// (its bookkeeping paused for the applications, or the lock missed). Held back instead, for `retry_delay` each
    /// time, they fell behind the log: a 300,000-row import on a node with the default `max_entries` (1024) left it
    /// 20-40 of its own messages short of a stream's start in five runs of six, needing a snapshot. A checkpoint alone
    /// needs no stamp (nothing is compared or applied) and holds the lock for one row's update; it waits for the lock
    /// only `lock_pause_ms`, and a miss leaves the run held back as before. Returns whether it committed.
    func checkpointPastEchoes(_ db: Database, shard: Int, through sequence: UInt64) throws -> Bool {
        do {
            try waitingBrieflyForTheLock(db, if: true) {
                try writeTransaction(db, stamp: false) { try saveCheckpoint(db, shard: shard, sequence: sequence) }
            }
            return true
        } catch let error as SQLiteError where error.isTransientStorageFailure {
            return false
        }
    }

    /// After the transaction that saved the checkpoint past `run` committed.
    func consumedEchoes(shard: Int, _ run: [(sequence: UInt64, key: OwnEchoes.Key)]) {
        guard let last = run.last?.sequence else { return }
        checkpoints[shard] = last
        echoesConsumedCount += run.count
        for entry in run { ownEchoes.remove(entry.key) }
        env.events?.record(.echoesConsumed(shard: shard, messages: run.count))
        for entry in run { env.log.ack(shard: shard, sequence: entry.sequence) }
    }
}
