import HarmonyCodec
import HarmonySQLite

extension ReplicationNode {
    /// What the lane ahead of the stamp knows of the capture queue: it has looked at every queue id up to `through`,
    /// and `candidateMax` is the largest `(ms << 16) - id` among them (the term `ChangeCapture.hlcRuns` takes the
    /// maximum of), so a look reads only what was queued since.
    struct AheadLane: Equatable {
        var through: Int64
        var candidateMax: Int64?
    }

    /// While a large stamp backlog keeps new commits unstamped (a bulk import stamped a batch at a time, with pauses
    /// for the applications), sends the commits made since the last look ahead of their stamp, so a single-row commit
    /// is visible elsewhere without waiting for the whole import to be stamped first.
    ///
    /// Safe because a queued write's version is a pure function of the clock row and the queue up to it
    /// (`ChangeCapture.hlcRuns`), and every transaction that moves the clock stamps the queue first: one read
    /// transaction computes exactly the version the stamp writes later. The scan sends the write again once it is
    /// stamped, with the same version, and receivers resolve either copy by last-writer-wins (the later one changes
    /// nothing). Only the newest change of each row goes; an older one still
    /// queued loses to it everywhere.
    ///
    /// Only when everything committed since the last look fits in `room`: a look that finds more (the bulk itself
    /// still being written) only moves past it, and so does the first look at a backlog. Nothing here counts as in flight or is marked published; a copy the
    /// log refuses is simply sent again by the scan. Returns how many changes went out.
    @discardableResult
    func sendAheadOfStamp(room: Int) throws -> Int {
        // No stamp stopped short since the queue was last emptied: no backlog (the common case costs nothing here).
        guard room > 0, config.publish, queueNewestAtPartialStamp != nil, !(config.replicateDDL && definitionsToPublish) else { return 0 }
        let db = requireDatabase()
        guard try db.tableExists(Bookkeeping.captureQueue) else { return 0 }
        let queue = quoteIdentifier(Bookkeeping.captureQueue)
        // The queue's milliseconds as `hlcRuns` reads them: outside 1970...~4200, no time at all.
        let candidate = "((CASE WHEN typeof(ms) = 'integer' AND ms >= 0 AND ms < \(Int64(1) << 46) THEN ms ELSE 0 END) << \(RowVersion.logicalBits)) - id"
        let found: (records: [(queueID: Int64, record: ChangeRecord)], versions: [Int64: Int64])? = try db.transaction(.deferred) {
            guard try db.scalar("PRAGMA schema_version")?.int64 == schemaVersion,
                  // One min or max per SELECT: with both in one, SQLite reads the whole queue.
                  let ends = try db.query("SELECT (SELECT min(id) FROM \(queue)), (SELECT max(id) FROM \(queue))").first,
                  let oldest = ends[0].int64, let newest = ends[1].int64 else { return nil }
            // Queue ids start again at 1 once the queue was emptied: what the lane knew is gone with it.
            if let lane = aheadLane, lane.through > newest || lane.through < oldest - 1 { aheadLane = nil }
            // A small queue is stamped whole by the next stamp, pause or not; nothing to go ahead of.
            guard newest - oldest + 1 > Int64(config.lockBatchRows) else { return nil }
            func remember(_ through: Int64, _ max: Int64?) { aheadLane = AheadLane(through: through, candidateMax: max) }
            // The first look takes the whole queue as the backlog: it reads its largest candidate once, sends nothing.
            guard let lane = aheadLane else {
                remember(newest, try db.scalar("SELECT max(\(candidate)) FROM \(queue)")?.int64)
                return nil
            }
            let from = lane.through
            guard newest > from else { return nil }
            // A candidate left over from writes stamped since never exceeds `clock - oldest + 1`, which the stamp
            // starts from, so the remembered maximum stands for everything below the new entries.
            var running = lane.candidateMax
            if newest - from > Int64(room) {
                let newMax = try db.scalar("SELECT max(\(candidate)) FROM \(queue) WHERE id > ?", [.integer(from)])?.int64
                remember(newest, [running, newMax].compactMap { $0 }.max())
                return nil
            }
            guard let clock = try db.query("SELECT hlc, node_id FROM \(quoteIdentifier(Bookkeeping.clockTable))").first,
                  let clockNow = clock[0].int64, let originNode = clock[1].int64 else { return nil }
            let read = try db.cached("SELECT *, \(candidate) AS candidate FROM \(queue) WHERE id > ? ORDER BY id")
            let entries = try read.query([.integer(from)])
            let columns = (0..<read.columnCount).map { read.columnName($0) }
            func column(_ name: String) -> Int? { columns.firstIndex(of: name) }
            guard let idAt = column("id"), let tableAt = column("table_name"), let typeAt = column("type"),
                  let epochAt = column("epoch"), let candidateAt = column("candidate") else { return nil }
            // Each entry's version, in commit order, as the stamp will write it.
            var versions: [Int64: Int64] = [:]
            let start = clockNow - oldest + 1
            for entry in entries {
                guard let id = entry[idAt].int64 else { continue }
                let own = entry[candidateAt].int64 ?? Int64.min
                running = max(running ?? own, own)
                let offset = config.plantedBugs.contains(.aheadOfStampFromClockOnly) ? start : max(start, running!)
                versions[id] = id + offset
            }
            remember(newest, running)
            // Newest first, one change per row: the row as it is now, under the version of its newest write.
            var seen: Set<String> = []
            var records: [(queueID: Int64, record: ChangeRecord)] = []
            for entry in entries.reversed() {
                guard let id = entry[idAt].int64, let hlc = versions[id], let table = entry[tableAt].string,
                      let type = entry[typeAt].string, let epoch = entry[epochAt].int64,
                      !table.hasPrefix(Bookkeeping.prefix), let captured = captured[table],
                      let entryKey = try primaryKey(table: table, epoch: epoch),
                      entryKey.map({ captured.currentNameOf[$0] ?? $0 }) == captured.schema.primaryKey
                else { continue }
                let schema = captured.schema
                let keyValues = (1...entryKey.count).map { n in column("k\(n)").map { entry[$0] } ?? .null }
                guard seen.insert(rowIdentity(table, keyValues)).inserted else { continue }
                let key = zip(schema.primaryKey, keyValues).map { ChangeRecord.Column($0, $1) }
                let version = RowVersion(hlc: hlc, node: originNode)
                var record: ChangeRecord
                if type == "delete" {
                    record = ChangeRecord(originNode: config.nodeID, table: table, operation: .delete, primaryKey: key, row: [],
                                          version: version, schemaHash: schema.hash)
                } else {
                    let sql = rowReadSQLCache[table] ?? rowReadSQL(schema)
                    rowReadSQLCache[table] = sql
                    let read = try db.cached(sql.row)
                    try read.bind(keyValues)
                    defer { read.reset() }
                    guard try read.step() else { continue }
                    let row = schema.columns.enumerated().map { ChangeRecord.Column($1, read.column($0)) }
                    record = ChangeRecord(originNode: config.nodeID, table: table, operation: .upsert, primaryKey: key,
                                          row: row, version: version, schemaHash: schema.hash)
                }
                record.definition = tableStates[table].map(\.definition)
                records.append((id, record))
            }
            return (records, versions)
        }
        guard let found, !found.records.isEmpty else { return 0 }
        try sendAhead(found.records)
        var sent: [Int64: Int64] = [:]
        for (queueID, record) in found.records { sent[queueID] = record.version.hlc }
        env.events?.record(.sentAheadOfStamp(versions: sent))
        return found.records.count
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
            env.log.publish(OutgoingMessage(shard: shard, messageID: "\(messageID)-ahead", payload: payload, token: lastPartToken, hint: hint))
            try crashPoint(.afterPublishHandoff)
        }
    }
}
