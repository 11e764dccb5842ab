import HarmonyCodec
import HarmonySQLite

/// A message that could not be applied, as an operator sees it (`harmonylite -parked`).
public struct ParkedMessage: Sendable, Equatable {
    public var id: Int64
    public var stream: String
    public var sequence: UInt64
    /// The first record's table and key, when the payload decodes.
    public var table: String?
    public var key: String?
    public var records: Int
    public var reason: String
}

/// What retrying one parked message did.
public enum ParkedRetryOutcome: Sendable, Equatable {
    /// Applied now (or found older than the row's version); the parked row is gone.
    case applied
    /// Still cannot be applied: the parked row stays, with this reason.
    case stillFails(reason: String)
    /// Needs a schema this node does not have yet: the parked row stays.
    case waitsForSchema(table: String)
    /// A local change refused for its size, back in the queue: the running node publishes it (or refuses it
    /// again if it is still above its `max_row_bytes`).
    case requeued
}

extension ReplicationNode {
    /// How many messages wait in the parked table (the `harmonylite_parked_messages` gauge).
    public func parkedCount() throws -> Int64 {
        try requireDatabase().scalar("SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.parkedTable))")?.int64 ?? 0
    }

    /// Every parked message, oldest first, with its table and key decoded where possible.
    public static func parkedMessages(_ db: Database) throws -> [ParkedMessage] {
        try db.query("SELECT id, stream, seq, payload, error FROM \(quoteIdentifier(Bookkeeping.parkedTable)) ORDER BY id").map { row in
            let records = (try? EnvelopeCodec.decodeAll(row[3].bytes ?? [])) ?? []
            let first = records.first
            return ParkedMessage(id: row[0].int64 ?? 0, stream: row[1].string ?? "", sequence: UInt64(max(0, row[2].int64 ?? 0)),
                                 table: first?.table, key: first?.keyDescription,
                                 records: records.count, reason: row[4].string ?? "")
        }
    }

    /// Applies parked messages again (all, or those in `ids`), each in its own transaction with last-writer-wins,
    /// as if it had just arrived: a message whose cause is gone (a constraint relaxed, a column added) applies,
    /// and an old one loses to newer versions as any late change does. Checkpoints do not move.
    public func retryParked(ids: Set<Int64>? = nil) throws -> [(id: Int64, outcome: ParkedRetryOutcome)] {
        let db = requireDatabase()
        try refreshCaptureIfSchemaChanged()
        let parked = quoteIdentifier(Bookkeeping.parkedTable), clock = quoteIdentifier(Bookkeeping.clockTable)
        var results: [(id: Int64, outcome: ParkedRetryOutcome)] = []
        for row in try db.query("SELECT id, stream, seq, payload FROM \(parked) ORDER BY id") {
            guard let id = row[0].int64, ids?.contains(id) ?? true else { continue }
            if row[1].string == Bookkeeping.localParkedStream {
                try requeueLocal(db, parkedID: id, changeID: row[2].int64 ?? 0)
                results.append((id, .requeued))
                continue
            }
            let shard = router.shards.first { router.streamName(shard: $0) == row[1].string } ?? 1
            let message = IncomingMessage(sequence: UInt64(max(0, row[2].int64 ?? 0)), payload: row[3].bytes ?? [])
            let outcome: ParkedRetryOutcome = try writeTransaction(db) {
                try db.execute("SAVEPOINT harmonylite_retry", [])
                var events: [ReplicationEvent] = []
                var maxHLC: Int64 = 0
                let applied = try applyOne(db, shard: shard, message, maxHLC: &maxHLC, events: &events)
                let outcome: ParkedRetryOutcome
                if case .paused(let table, _) = applied {
                    outcome = .waitsForSchema(table: table)
                } else if let reason = events.lazy.compactMap({ if case .parked(_, _, let r) = $0 { return r } else { return nil } }).first {
                    outcome = .stillFails(reason: reason)
                } else {
                    outcome = .applied
                }
                if outcome == .applied {
                    try db.execute("RELEASE harmonylite_retry", [])
                    try db.execute("DELETE FROM \(parked) WHERE id = ?", [.integer(id)])
                } else {
                    // Undo whatever the attempt did (a second parked row included); keep the original with the new reason.
                    try db.execute("ROLLBACK TO harmonylite_retry", [])
                    try db.execute("RELEASE harmonylite_retry", [])
                    if case .stillFails(let reason) = outcome {
                        try db.execute("UPDATE \(parked) SET error = ? WHERE id = ?", [.text(reason), .integer(id)])
                    }
                }
                try db.execute("UPDATE \(clock) SET hlc = max(hlc, ?)", [.integer(outcome == .applied ? maxHLC : 0)])
                return outcome
            }
            results.append((id, outcome))
        }
        precondition(ids == nil || results.allSatisfy { ids!.contains($0.id) }, "retried a parked message that was not asked for")
        return results
    }

    /// Puts a refused local change back under a fresh change-log id, so a running node's scan (already past the
    /// old id) finds it.
    func requeueLocal(_ db: Database, parkedID: Int64, changeID: Int64) throws {
        let global = quoteIdentifier(Bookkeeping.globalLog)
        try db.transaction(.immediate) {
            try db.execute("""
                INSERT INTO \(global) (change_table_id, table_name, state)
                SELECT change_table_id, table_name, 0 FROM \(global) WHERE id = ? AND state = 2
                """, [.integer(changeID)])
            try db.execute("DELETE FROM \(global) WHERE id = ? AND state = 2", [.integer(changeID)])
            try db.execute("DELETE FROM \(quoteIdentifier(Bookkeeping.parkedTable)) WHERE id = ?", [.integer(parkedID)])
        }
    }

    /// Removes parked messages for good; returns how many there were. A refused local change is let go too:
    /// its change-log row counts as published, so cleanup removes it.
    public static func discardParked(_ db: Database, ids: Set<Int64>) throws -> Int {
        try db.transaction(.immediate) {
            var removed = 0
            for id in ids.sorted() {
                try db.execute("""
                    UPDATE \(quoteIdentifier(Bookkeeping.globalLog)) SET state = 1 WHERE state = 2 AND id = (
                        SELECT seq FROM \(quoteIdentifier(Bookkeeping.parkedTable)) WHERE id = ? AND stream = ?)
                    """, [.integer(id), .text(Bookkeeping.localParkedStream)])
                try db.execute("DELETE FROM \(quoteIdentifier(Bookkeeping.parkedTable)) WHERE id = ?", [.integer(id)])
                removed += db.changes
            }
            return removed
        }
    }
}
