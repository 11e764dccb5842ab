import HarmonyCodec
import HarmonySQLite

extension ReplicationNode {
    /// A small message the log already stored (at `sequence` on `shard`), offered over a best-effort channel ahead
    /// of its turn, so a single-row commit made during a bulk load is visible here without waiting behind the
    /// backlog in front of it on its stream.
    ///
    /// Safe to apply early because every row change resolves by last-writer-wins against the row's stored version
    /// (tombstones included): the in-order copy later finds the same version and changes nothing, and older
    /// changes to the row still in the backlog lose to it. The checkpoint does not move and nothing is
    /// acknowledged; the stream stays the only source of truth. A hint that is not plainly safe is ignored (its
    /// in-order copy handles it): definitions and requests, rows under any schema or definition other than this
    /// node's current one, renamed or dropped tables, tables with a unique index besides the key (which of two
    /// rows wins such a constraint depends on apply order), a stream held back for a schema or a node waiting for
    /// a snapshot. A hint that fails to apply (busy, a constraint, a full disk) is dropped the same way.
    public func hintArrived(shard: Int, sequence: UInt64, payload: [UInt8]) throws {
        guard isRunning, config.replicate, config.hints, !restoreNeeded, router.shards.contains(shard),
              pausedShards[shard] == nil, payload.count <= config.hintBytesMax, !EnvelopeCodec.isPart(payload)
        else { return }
        // Close behind the checkpoint its in-order copy is about to arrive; at or below it, it already did.
        guard sequence > checkpoint(shard) + config.hintLeadMin else { return }
        let db = requireDatabase()
        try refreshCaptureIfSchemaChanged()
        // Applying stamps the whole queue first; during a bulk import that is the in-order copy's job, later.
        guard try !stampBacklogIsLarge(db) else { return }
        guard let records = try? EnvelopeCodec.decodeAll(payload, decompressedLimit: messageBytesAccepted), !records.isEmpty else { return }
        var changes: [ResolvedChange] = []
        for record in records {
            guard let change = hintedChange(db, record) else { return }
            changes.append(change)
        }
        var won: [RowVersion] = []
        do {
            // Waiting out the busy timeout for a hint would hold the node's queue, and everything behind it, for
            // seconds per hint while an application keeps the lock (ten hints held it 50 s, and /health answered
            // from before the lock); its in-order copy waits instead.
            try waitingBrieflyForTheLock(db, if: true) {
                try writeTransaction(db) {
                    for change in changes where try applyHinted(db, change) { won.append(change.version) }
                    let maxHLC = changes.map(\.version.hlc).max() ?? 0
                    try db.execute("UPDATE \(quoteIdentifier(Bookkeeping.clockTable)) SET hlc = max(hlc, ?)", [.integer(maxHLC)])
                }
            }
        } catch is SQLiteError {
            return  // its in-order copy applies it (or parks it, with the reason) in its turn
        }
        env.events?.record(.hintApplied(shard: shard, sequence: sequence, changes: changes.count, won: won))
    }

    /// The change a hinted record makes, or nil when only its in-order copy may apply it (see `hintArrived`).
    func hintedChange(_ db: Database, _ record: ChangeRecord) -> ResolvedChange? {
        guard !record.table.hasPrefix(Bookkeeping.prefix), let table = captured[record.table], tableAliases[record.table] == nil,
              !droppedTables.contains(record.table), record.schemaHash == table.schema.hash,
              standing(of: record, in: record.table) == .current,
              (try? hasUniqueIndexBesidesKey(db, record.table)) == false  // unreadable: the in-order copy decides
        else { return nil }
        return try? resolveExactShape(record, against: table.schema)
    }

    /// Last-writer-wins, as the in-order path applies a change (a failure rolls back the whole hint).
    func applyHinted(_ db: Database, _ change: ResolvedChange) throws -> Bool {
        if config.plantedBugs.contains(.hintIgnoresVersion) {
            try db.execute(applySQL(change).write, change.operation == .delete ? change.key : change.row.map(\.value))
            return true
        }
        return try applyLWW(db, change)
    }

    /// Whether some other unique index on `table` could make a change's fate depend on the order changes arrive in.
    /// Read once per schema version (any DDL here changes it and empties the cache).
    func hasUniqueIndexBesidesKey(_ db: Database, _ table: String) throws -> Bool {
        if let known = uniqueIndexTables[table] { return known }
        let count = try db.scalar("""
            SELECT count(*) FROM pragma_index_list(?) WHERE "unique" = 1 AND origin <> 'pk'
            """, [.text(table)])?.int64 ?? 0
        uniqueIndexTables[table] = count > 0
        return count > 0
    }
}
