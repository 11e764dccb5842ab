import HarmonyCodec
import HarmonySQLite

extension ReplicationNode {
    /// What the lane ahead of the stamp knows of the capture queue: it has looked at every queue id up to `through`,
    /// and `candidateMax` is the largest `(ms << 16) - id` among them (the term `ChangeCapture.hlcRuns` takes the
    /// maximum of), so a look reads only what was queued since.
    struct AheadLane: Equatable {
        var through: Int64
        var candidateMax: Int64?
        /// Where the writer stretches stood at `through` (`WriterStretches`).
        var writerTail: WriterStretches.Tail?
    }

    /// The most queued writes one look reads one by one, the newest: reading a whole huge import that way would hold
    /// up the core.
    static let aheadLookWritesMax: Int64 = 100_000

    /// While a large stamp backlog keeps new commits unstamped (a bulk import stamped a batch at a time, with pauses
    /// for the applications), sends the commits made since the last look ahead of their stamp, so a single-row commit
    /// is visible elsewhere without waiting for the whole import to be stamped first.
    ///
    /// Safe because a queued write's version is a pure function of the clock row and the queue up to it
    /// (`ChangeCapture.hlcRuns`), and every transaction that moves the clock stamps the queue first: one read
    /// transaction computes exactly the version the stamp writes later. The scan sends the write again once it is
    /// stamped, with the same version, and receivers resolve either copy by last-writer-wins (the later one changes
    /// nothing). Only the newest change of each row goes, and only if no later write of that row is queued; an older
    /// one still queued loses to it everywhere.
    ///
    /// Everything committed since the last look goes when it fits in `room`. A look that finds more (the bulk itself
    /// still being written, or the first look at a backlog) sends only the writes that look like small commits of
    /// another connection (`WriterStretches`). Nothing here counts as in flight or is marked published; a copy the
    /// log refuses is simply sent again by the scan. Returns how many changes went out.
    @discardableResult
    func sendAheadOfStamp(room: Int) throws -> Int {
        // No stamp stopped short since the queue was last emptied: no backlog (the common case costs nothing here).
        // Or the stamp keeps missing the lock (an application writing back to back): the queue waits, however small.
        let lockedOut = lockMissedSinceMs != nil
        guard room > 0, config.publish, queueNewestAtPartialStamp != nil || lockedOut, queueRecordsWriters,
              !(config.replicateDDL && definitionsToPublish) else { return 0 }
        let db = requireDatabase()
        guard try db.tableExists(Bookkeeping.captureQueue) else { return 0 }
        let queue = quoteIdentifier(Bookkeeping.captureQueue)
        // The queue's milliseconds as `hlcRuns` reads them: outside 1970...~4200, no time at all.
        let candidate = "((CASE WHEN typeof(ms) = 'integer' AND ms >= 0 AND ms < \(Int64(1) << 46) THEN ms ELSE 0 END) << \(RowVersion.logicalBits)) - id"
        let found: [(queueID: Int64, record: ChangeRecord)]? = try db.transaction(.deferred) {
            guard try db.scalar("PRAGMA schema_version")?.int64 == schemaVersion,
                  // One min or max per SELECT: with both in one, SQLite reads the whole queue.
                  let ends = try db.query("SELECT (SELECT min(id) FROM \(queue)), (SELECT max(id) FROM \(queue))").first,
                  let oldest = ends[0].int64, let newest = ends[1].int64 else { return nil }
            // Queue ids start again at 1 once the queue was emptied: what the lane knew is gone with it.
            if let lane = aheadLane, lane.through > newest || lane.through < oldest - 1 { aheadLane = nil }
            // A small queue is stamped whole by the next stamp, pause or not; nothing to go ahead of.
            guard newest - oldest + 1 > Int64(config.lockBatchRows) || lockedOut else { return nil }
            // The first look reads the whole queue, from where the stamps' stretches stood: the stamps took every write
            // before the oldest queued one.
            let lane = aheadLane ?? AheadLane(through: oldest - 1, candidateMax: nil, writerTail: stampWriterTail)
            guard newest > lane.through else { return nil }
            // The first look's window is the whole backlog, not commits made since a look.
            let everything = aheadLane != nil && newest - lane.through <= Int64(room)
            // A candidate left over from writes stamped since never exceeds `clock - oldest + 1`, which the stamp
            // starts from, so the remembered maximum stands for everything below the new entries.
            var running = lane.candidateMax
            let rangeMax = try db.cached("SELECT max(\(candidate)) FROM \(queue) WHERE id > ? AND id <= ?")
            func runUp(_ low: Int64, _ high: Int64) throws {
                guard high > low else { return }
                if let m = try rangeMax.query([.integer(low), .integer(high)]).first?[0].int64 { running = max(running ?? m, m) }
            }
            // Only the newest `aheadLookWritesMax` are read one by one (a small commit made now is among them); older
            // ones (the first look at a huge import) count only toward the versions, and are left to the stamp.
            var from = lane.through, tail = lane.writerTail
            if newest - from > Self.aheadLookWritesMax {
                try runUp(from, newest - Self.aheadLookWritesMax)
                from = newest - Self.aheadLookWritesMax
                tail = nil
            }
            var stretches = WriterStretches(after: tail)
            var ids: [Int64] = []
            do {
                let read = try db.cached("SELECT id, writer_changes FROM \(queue) WHERE id > ? AND id <= ? ORDER BY id")
                try read.bind([.integer(from), .integer(newest)])
                defer { read.reset() }
                while try read.step() {
                    guard let id = read.column(0).int64 else { continue }
                    if everything { ids.append(id) }
                    stretches.add(queueID: id, writerChanges: read.column(1).int64)
                }
            }
            let chosen = everything ? ids : stretches.finish()
            // Each chosen entry's version, as the stamp will write it: the largest candidate up to the entry.
            var hlcOf: [Int64: Int64] = [:]
            guard let clock = try db.query("SELECT hlc, node_id FROM \(quoteIdentifier(Bookkeeping.clockTable))").first,
                  let clockNow = clock[0].int64, let originNode = clock[1].int64 else { return nil }
            let start = clockNow - oldest + 1
            var low = from
            for id in chosen {
                // One by one when they are all taken (a few at most): each is the candidate itself plus what is before.
                try runUp(low, id)
                low = id
                let offset = config.plantedBugs.contains(.aheadOfStampFromClockOnly) ? start : max(start, running ?? start)
                hlcOf[id] = id + offset
            }
            try runUp(low, newest)
            aheadLane = AheadLane(through: newest, candidateMax: running, writerTail: stretches.tail)
            guard !chosen.isEmpty else { return [] }
            return try changesAhead(db, chosen: chosen, hlcOf: hlcOf, originNode: originNode, room: room, checkLater: !everything)
        }
        guard let found, !found.isEmpty else { return 0 }
        try sendAhead(found)
        var sent: [Int64: Int64] = [:]
        for (queueID, record) in found { sent[queueID] = record.version.hlc }
        env.events?.record(.sentAheadOfStamp(versions: sent))
        return found.count
    }

    /// The changes for the chosen queue entries, newest first and at most `room`: one per row, the row as it is now
    /// under the version of its newest write. `checkLater`: the chosen entries are not all that was queued after
    /// them, so an entry whose row has a later write queued is left to the stamp (sent now, it would carry that
    /// later write's row under its own, older version).
    private func changesAhead(_ db: Database, chosen: [Int64], hlcOf: [Int64: Int64], originNode: Int64, room: Int,
                              checkLater: Bool) throws -> [(queueID: Int64, record: ChangeRecord)] {
        let queue = quoteIdentifier(Bookkeeping.captureQueue)
        let entryRead = try db.cached("SELECT * FROM \(queue) WHERE id = ?")
        var seen: Set<String> = []
        var records: [(queueID: Int64, record: ChangeRecord)] = []
        for id in chosen.reversed() where records.count < room {
            guard let hlc = hlcOf[id], let entry = try entryRead.query([.integer(id)]).first else { continue }
            let columns = (0..<entryRead.columnCount).map { entryRead.columnName($0) }
            func column(_ name: String) -> DatabaseValue { columns.firstIndex(of: name).map { entry[$0] } ?? .null }
            guard let table = column("table_name").string, let type = column("type").string, let epoch = column("epoch").int64,
                  !table.hasPrefix(Bookkeeping.prefix), let captured = captured[table],
                  let entryKey = try primaryKey(table: table, epoch: epoch),
                  entryKey.map({ captured.currentNameOf[$0] ?? $0 }) == captured.schema.primaryKey
            else { continue }
            let schema = captured.schema
            let keyValues = (1...entryKey.count).map { column("k\($0)") }
            guard seen.insert(rowIdentity(table, keyValues)).inserted else { continue }
            if checkLater && !config.plantedBugs.contains(.aheadLaneIgnoresLaterWrites) {
                let sameKey = (1...entryKey.count).map { "k\($0) IS ?" }.joined(separator: " AND ")
                let later = try db.cached("SELECT 1 FROM \(queue) WHERE id > ? AND table_name = ? AND \(sameKey) LIMIT 1")
                guard try later.query([.integer(id), .text(table)] + keyValues).isEmpty else { continue }
            }
            let key = zip(schema.primaryKey, keyValues).map { ChangeRecord.Column($0, $1) }
            guard let record = try currentChange(table: table, schema: schema, key: key, keyValues: keyValues,
                                                 version: RowVersion(hlc: hlc, node: originNode), deleted: type == "delete",
                                                 rowSQL: capturedRowReadSQL(schema).row) else { continue }
            records.append((id, record))
        }
        return records
    }

    /// A row's identity within one look: its table and key values.
    private func rowIdentity(_ table: String, _ key: [DatabaseValue]) -> String {
        "\(table)\u{0}\(key.map { "\($0)" }.joined(separator: "\u{0}"))"
    }

    /// Hands changes sent ahead of their stamp to the log, in per-shard messages as `sendPage` would, offered as
    /// hints. Their tokens are fresh negative ones that no part or change-log row has: acknowledgements and failures
    /// of them change nothing (`messageToken(acking:)`, `publishFailed`). A change too large for one message, or
    /// above `max_row_bytes`, waits for the scan, which parts or parks it.
    func sendAhead(_ records: [(queueID: Int64, record: ChangeRecord)]) throws {
        _ = try inShardBatches(records.map { ($0.queueID, $0.record) }) { batch, shard in
            let (payload, messageID) = try encodedMessage(batch.records)
            guard payload.count <= partBytesMax else { return }
            if config.replicate { ownEchoes.insert(payload) }
            lastPartToken -= 1
            let hint = config.hints && payload.count <= config.hintBytesMax
            // An id of its own: the scan's copy may be in flight at the same time, and the runtime matches the log's
            // answers to publishes by message id.
            noteUnacked(token: lastPartToken, shard: shard)
            env.log.publish(OutgoingMessage(shard: shard, messageID: "\(messageID)-ahead", payload: payload, token: lastPartToken, hint: hint))
            try crashPoint(.afterPublishHandoff)
        }
    }
}
