import HarmonyCodec
import HarmonySQLite

extension ReplicationNode {
    /// The largest message this node accepts, joined or decompressed: its own `max_row_bytes` plus room for a batch.
    var messageBytesAccepted: Int { config.rowBytesMax + max(2 * config.publishBatchBytesMax, 1 << 20) }

    /// One part of a split message. Parts are kept in the apply transaction, so the checkpoint never passes a part
    /// that is not stored; the message applies when its last part arrives, at that part's place in the stream,
    /// and atomically (a pause for schema undoes this part's storing, so the redelivery completes it again).
    func applyPart(_ db: Database, shard: Int, _ message: IncomingMessage, maxHLC: inout Int64,
                   events: inout [ReplicationEvent]) throws -> ApplyOutcome {
        let part: MessagePart
        do {
            part = try EnvelopeCodec.decodePart(message.payload, totalBytesMax: messageBytesAccepted)
        } catch {
            try park(db, shard: shard, message, reason: "undecodable: \(error)", events: &events)
            return .consumed
        }
        let stream = router.streamName(shard: shard)
        try db.execute("SAVEPOINT harmonylite_parts", [])
        func finish(_ outcome: ApplyOutcome) throws -> ApplyOutcome {
            if case .paused = outcome { try db.execute("ROLLBACK TO harmonylite_parts", []) }
            try db.execute("RELEASE harmonylite_parts", [])
            return outcome
        }
        let parts = PartStore(node: self, db: db, stream: stream)
        if let known = try parts.shape(of: part.groupID), known.count != part.count || known.total != part.totalBytes {
            try parts.forget(part.groupID)
            try park(db, shard: shard, message, reason: "undecodable: parts of split message \(part.groupID) disagree on its size", events: &events)
            return try finish(.consumed)
        }
        try parts.store(part, sequence: message.sequence)
        guard let chunks = try parts.complete(part.groupID, count: part.count) else { return try finish(.consumed) }
        try parts.forget(part.groupID)
        let joined = Array(chunks.joined())
        guard joined.count == part.totalBytes, !EnvelopeCodec.isPart(joined) else {
            try park(db, shard: shard, message, reason: "undecodable: the \(part.count) parts of split message \(part.groupID) do not add up to one message", events: &events)
            return try finish(.consumed)
        }
        return try finish(try applyOne(db, shard: shard, IncomingMessage(sequence: message.sequence, payload: joined),
                                       maxHLC: &maxHLC, events: &events))
    }
}

/// The parts table of one stream, or (planted bug `partsInMemory`) a dictionary that a crash forgets.
struct PartStore {
    let node: ReplicationNode
    let db: Database
    let stream: String
    var table: String { quoteIdentifier(Bookkeeping.partsTable) }
    var inMemory: Bool { node.config.plantedBugs.contains(.partsInMemory) }

    func shape(of group: String) throws -> (count: Int, total: Int)? {
        if inMemory { return node.memoryParts[group].flatMap { $0.first.map { ($0.value.count, $0.value.total) } } }
        guard let row = try db.query("SELECT count, total FROM \(table) WHERE stream = ? AND group_id = ? LIMIT 1",
                                     [.text(stream), .text(group)]).first else { return nil }
        return (Int(row[0].int64 ?? 0), Int(row[1].int64 ?? 0))
    }

    func store(_ part: MessagePart, sequence: UInt64) throws {
        if inMemory { node.memoryParts[part.groupID, default: [:]][part.index] = (part.count, part.totalBytes, part.bytes); return }
        try db.execute("""
            INSERT INTO \(table) (stream, group_id, part, count, total, seq, bytes) VALUES (?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (stream, group_id, part) DO UPDATE SET seq = excluded.seq, bytes = excluded.bytes
            """, [.text(stream), .text(part.groupID), .integer(Int64(part.index)), .integer(Int64(part.count)),
                  .integer(Int64(part.totalBytes)), .integer(Int64(sequence)), .blob(part.bytes)])
    }

    /// Every part's bytes in order once all `count` are here; nil while some are missing.
    func complete(_ group: String, count: Int) throws -> [[UInt8]]? {
        if inMemory {
            guard let held = node.memoryParts[group], held.count == count else { return nil }
            return (0..<count).compactMap { held[$0]?.bytes }
        }
        let rows = try db.query("SELECT bytes FROM \(table) WHERE stream = ? AND group_id = ? ORDER BY part", [.text(stream), .text(group)])
        guard rows.count == count else { return nil }
        return rows.map { $0[0].bytes ?? [] }
    }

    func forget(_ group: String) throws {
        if inMemory { node.memoryParts[group] = nil; return }
        try db.execute("DELETE FROM \(table) WHERE stream = ? AND group_id = ?", [.text(stream), .text(group)])
    }
}
