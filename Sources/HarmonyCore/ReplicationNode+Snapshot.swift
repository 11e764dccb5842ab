import HarmonyCodec
import HarmonySQLite

/// What one snapshot covers: for every stream, the last sequence whose effects it contains.
public struct SnapshotInfo: Sendable, Hashable {
    /// Sorts by the taker's clock, so the newest snapshot is the greatest name.
    public var name: String
    public var sequences: [String: UInt64]
    public var hlc: Int64
    public var node: Int64

    /// `harmonylite-snapshot-<hlc as 16 hex digits>-<node>`: fixed-width, so name order is time order.
    public static func name(hlc: Int64, node: Int64) -> String {
        let hex = String(UInt64(bitPattern: hlc), radix: 16)
        return "harmonylite-snapshot-" + String(repeating: "0", count: max(0, 16 - hex.count)) + hex + "-\(node)"
    }
}

public enum SnapshotOutcome: Sendable, Hashable {
    case taken(SnapshotInfo)
    /// Nothing was produced because this node's own changes are not all acknowledged yet: try again once they are.
    case waitingForAcknowledgements(pending: Int64)
    /// Nothing was produced (the file at the path may exist and should be deleted); try again later.
    case skipped(reason: String)
}

/// Why a snapshot could not be restored; the node keeps its database and asks again later.
public struct RestoreRefused: Error, CustomStringConvertible, Sendable {
    public var description: String
}

extension ReplicationNode {
    static let snapshotSchema = "harmonylite_snapshot"

    /// Writes a consistent copy of the database to `path` (which must not exist) for other nodes to restore.
    ///
    /// `VACUUM INTO` reads one transaction-consistent state without blocking the application's writers.
    /// The copy keeps user tables, row versions (so replay after a restore still resolves conflicts) and the
    /// checkpoints, which are exactly the sequences it covers. It is only kept if it holds no unpublished local
    /// change: everything in it is then already durable in the log, so a restore can never resurrect a write
    /// this node later loses to a crash. Change logs and parked messages are emptied, and every table this node
    /// does not replicate (excluded, keyless, virtual) is dropped: the file goes to a shared store.
    public func takeSnapshot(to path: String) throws -> SnapshotOutcome {
        guard isRunning else { return .skipped(reason: "node is not running") }
        if let reason = snapshotBlocker() { return .skipped(reason: reason) }
        // Its tables miss whatever the stream dropped: a snapshot of them would spread the hole. Decide on the
        // ranges the log last reported (ask again for the next attempt); a range never reported means wait.
        checkLogStart()
        for shard in router.shards {
            guard let state = streamStates[shard] else {
                return .skipped(reason: "the range of \(router.streamName(shard: shard)) is not known yet")
            }
            precondition(state.firstSequence <= checkpoint(shard) + 1, "node takes a snapshot while behind on shard \(shard)")
        }
        // Cheap check first: a copy taken now would be thrown away.
        let pendingNow = try pendingChangeCount()
        if pendingNow > 0 && !config.plantedBugs.contains(.snapshotWithPendingChanges) { return .waitingForAcknowledgements(pending: pendingNow) }
        let db = requireDatabase()
        try db.execute("VACUUM INTO \(quoteLiteral(path))")
        let copy = try env.opener.open(path: path)
        let pending = try ChangeCapture.unpublishedChanges(copy) ?? 0
        if pending > 0 && !config.plantedBugs.contains(.snapshotWithPendingChanges) {
            return .waitingForAcknowledgements(pending: pending)
        }
        if let reason = try dropUnreplicatedTables(copy) { return .skipped(reason: reason) }
        try copy.setTriggersEnabled(false)  // the copy's triggers stay silent
        try copy.transaction(.immediate) {
            try dropRefusedRows(copy)
            let logs = try copy.query("SELECT name FROM sqlite_schema WHERE type = 'table' AND name LIKE '\(Bookkeeping.prefix)%_change_log' ESCAPE '\\'")
            for row in logs { if let name = row[0].string { try copy.execute("DELETE FROM \(quoteIdentifier(name))") } }
            try copy.execute("DELETE FROM \(quoteIdentifier(Bookkeeping.globalLog))")
            if try copy.tableExists(Bookkeeping.captureQueue) { try copy.execute("DELETE FROM \(quoteIdentifier(Bookkeeping.captureQueue))") }
            try copy.execute("DELETE FROM \(quoteIdentifier(Bookkeeping.parkedTable))")
        }
        var sequences: [String: UInt64] = [:]
        for row in try copy.query("SELECT stream, seq FROM \(quoteIdentifier(Bookkeeping.checkpointTable))") {
            if let stream = row[0].string, let seq = row[1].int64 { sequences[stream] = UInt64(seq) }
        }
        let hlc = try copy.scalar("SELECT hlc FROM \(quoteIdentifier(Bookkeeping.clockTable))")?.int64 ?? 0
        // One self-contained file: fold any WAL back in and leave rollback-journal mode.
        try copy.execute("PRAGMA journal_mode=DELETE")
        try copy.execute("VACUUM")
        let info = SnapshotInfo(name: SnapshotInfo.name(hlc: hlc, node: config.nodeID), sequences: sequences, hlc: hlc, node: config.nodeID)
        return .taken(info)
    }

    /// A row whose latest change was refused for its size (above max_row_bytes) is in no log: the snapshot leaves
    /// it out, row and version, like any write the log does not have. (Once the application overwrites it, the
    /// newer version is published and the row is in later snapshots again.)
    func dropRefusedRows(_ copy: Database) throws {
        for entry in try copy.query("SELECT change_table_id, table_name FROM \(quoteIdentifier(Bookkeeping.globalLog)) WHERE state = 2 ORDER BY id") {
            guard let changeID = entry[0].int64, let table = entry[1].string, let schema = captured[table]?.schema else { continue }
            let keyColumns = schema.primaryKey.map { quoteIdentifier(Bookkeeping.valueColumn($0)) }.joined(separator: ", ")
            guard let logged = try copy.query("SELECT hlc, node, \(keyColumns) FROM \(quoteIdentifier(Bookkeeping.changeLog(table))) WHERE id = ?",
                                              [.integer(changeID)]).first else { continue }
            let key = Array(logged.dropFirst(2))
            let sql = rowReadSQL(schema)
            guard let current = try copy.query(sql.version, key).first, current[0] == logged[0], current[1] == logged[1] else { continue }
            try copy.execute("DELETE FROM \(quoteIdentifier(table)) WHERE \(schema.rowKeyMatch)", key)
            try copy.execute("DELETE FROM \(quoteIdentifier(Bookkeeping.versionTable(table))) WHERE \(schema.versionKeyMatch)", key)
        }
    }

    /// Drops from the snapshot copy every user table that is not captured here: virtual tables first (with their
    /// shadow tables), then the rest. Returns why the copy cannot be cleaned (a virtual table whose module is
    /// missing), or nil once only replicated tables are left.
    func dropUnreplicatedTables(_ copy: Database) throws -> String? {
        let prefix = Bookkeeping.prefix
        let userTables = try copy.query("""
            SELECT name, coalesce(sql, '') LIKE 'CREATE VIRTUAL TABLE%' FROM sqlite_schema
            WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND substr(name, 1, ?) <> ? ORDER BY name
            """, [.integer(Int64(prefix.utf8.count)), .text(prefix)])
        let unreplicated = userTables.compactMap { row -> (name: String, virtual: Bool)? in
            guard let name = row[0].string, captured[name] == nil else { return nil }
            return (name, row[1].int64 == 1)
        }
        for table in unreplicated.filter(\.virtual) {
            do { try copy.execute("DROP TABLE IF EXISTS \(quoteIdentifier(table.name))") } catch {
                return "cannot leave the unreplicated virtual table \(quoteIdentifier(table.name)) out of the snapshot: \(error)"
            }
        }
        for table in unreplicated where !table.virtual {
            try copy.execute("DROP TABLE IF EXISTS \(quoteIdentifier(table.name))")
        }
        let left = try copy.scalar("SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN (\(unreplicated.map { quoteLiteral($0.name) }.joined(separator: ", ")))")
        precondition(unreplicated.isEmpty || left?.int64 == 0, "an unreplicated table is still in the snapshot copy")
        return nil
    }

    /// A stream no longer holds the message after our checkpoint: only a snapshot can bring this node back.
    /// Until one is restored, deliveries are refused (nothing after the hole may apply).
    func needRestore() {
        precondition(config.replicate, "a node with replicate = false never needs a snapshot")
        guard !restoreNeeded else { return }
        restoreNeeded = true
        restoreNeededSinceMs = env.clock.nowMs
        requestSnapshot()
    }

    /// Asks for the newest snapshot, and for fresh stream ranges to check it against when it arrives. Without a
    /// snapshot store nothing answers: the retry timer alone keeps the hole repair's deadline in view.
    func requestSnapshot() {
        for shard in router.shards { requestStreamState(shard) }
        guard let source = env.snapshots else {
            env.clock.schedule(.restoreRetry, afterMs: config.restoreRetryMs)
            return
        }
        env.events?.record(.restoreRequested)
        source.requestNewestSnapshot()
    }

    /// The environment found no usable snapshot (none yet, store unreachable): ask again after a while.
    public func snapshotUnavailable(reason: String) {
        guard isRunning, restoreNeeded else { return }
        env.events?.record(.restoreFailed(reason: reason))
        env.clock.schedule(.restoreRetry, afterMs: config.restoreRetryMs)
    }

    /// Restores the snapshot at `path` (a local file the environment downloaded) and replays from its sequences.
    ///
    /// Everything happens in one transaction on the node's own database, so a crash at any point leaves either
    /// the old contents or the restored ones. User tables and row versions are replaced by the snapshot's; then
    /// every local change still in the change log (in particular those never published) is applied again on
    /// top with last-writer-wins and stays queued for publishing, so nothing written here is silently dropped.
    /// The checkpoints become the snapshot's, and every shard resubscribes from there.
    public func snapshotReady(at path: String) throws {
        defer { env.snapshots?.discard(path: path) }
        guard isRunning, restoreNeeded else { return }
        do {
            try restore(from: path)
        } catch let refused as RestoreRefused {
            snapshotUnavailable(reason: refused.description)
            return
        } catch let error as SQLiteError {
            snapshotUnavailable(reason: "restore failed: \(error)")
            return
        }
        precondition(router.shards.allSatisfy { checkpoints[$0] != nil }, "a restore left a shard without a checkpoint")
        try resumeAfterHole()
    }

    /// The hole is behind this node (a snapshot restored, or the hole repaired): every shard resubscribes from
    /// its checkpoint, and publishing goes on.
    func resumeAfterHole() throws {
        restoreNeeded = false
        restoreNeededSinceMs = nil
        pausedShards.removeAll()
        for shard in router.shards { env.log.subscribe(shard: shard, fromSequence: checkpoint(shard) + 1) }
        try publishPending()
    }

    func restore(from path: String) throws {
        precondition(restoreNeeded && isRunning, "restore without need")
        let db = requireDatabase()
        let snap = Self.snapshotSchema
        try db.execute("ATTACH DATABASE \(quoteLiteral(path)) AS \(snap)")
        defer { try? db.execute("DETACH DATABASE \(snap)") }
        // What the snapshot covers, checked against what the log still holds: an older snapshot cannot help.
        var sequences: [Int: UInt64] = [:]
        for row in try db.query("SELECT stream, seq FROM \(snap).\(quoteIdentifier(Bookkeeping.checkpointTable))") {
            guard let stream = row[0].string, let seq = row[1].int64,
                  let shard = router.shards.first(where: { router.streamName(shard: $0) == stream }) else { continue }
            sequences[shard] = UInt64(seq)
        }
        for shard in router.shards {
            guard let state = streamStates[shard] else {
                throw RestoreRefused(description: "the range of \(router.streamName(shard: shard)) is not known yet to check the snapshot against it")
            }
            let covered = sequences[shard] ?? 0
            if covered + 1 < state.firstSequence {
                throw RestoreRefused(description: "snapshot covers \(router.streamName(shard: shard)) up to \(covered), but the stream starts at \(state.firstSequence); "
                                     + "take a newer one on a node that is caught up (kill -USR1 <its pid>, or POST /snapshot on its HTTP API) and this node restores it at its next try")
            }
        }
        if config.replicateDDL { try mergeDefinitions(db) }
        let tables = try createMissingTables(db, try snapshotTables(db))
        var restored = sequences
        if config.plantedBugs.contains(.restoreWithoutCheckpoints) {
            // Resume at the stream's head, as if the snapshot were current: what came after it is skipped.
            for shard in router.shards { restored[shard] = streamStates[shard]?.lastSequence ?? 0 }
        }
        for shard in router.shards {
            // Paired with the refusal above: replay starts where the stream still holds the next message.
            precondition((restored[shard] ?? 0) + 1 >= streamStates[shard]!.firstSequence,
                         "restore of shard \(shard) would resume before the stream's first sequence")
        }
        var rowsRestored = 0
        try writeTransaction(db) {
            // Read under the write lock, before the snapshot replaces the rows they describe.
            let local = try localChanges()
            for table in tables { rowsRestored += try copyFromSnapshot(db, table) }
            try reapply(local, db)
            try restoreParts(db)
            try db.execute("DELETE FROM \(quoteIdentifier(Bookkeeping.checkpointTable))", [])
            for shard in router.shards { try saveCheckpoint(db, shard: shard, sequence: restored[shard] ?? 0) }
            // Causality: every write made here from now on must be newer than every version the snapshot brought.
            let clockSource = config.plantedBugs.contains(.restoreWithoutClockAdvance)
                ? "0" : "(SELECT max(hlc) FROM \(snap).\(quoteIdentifier(Bookkeeping.clockTable)))"
            try db.execute("""
                UPDATE \(quoteIdentifier(Bookkeeping.clockTable)) SET hlc = max(hlc, coalesce(\(clockSource), 0))
                """, [])
            try crashPoint(.beforeRestoreCommit)
        }
        checkpoints = restored
        echoCheckpointsUnsaved.removeAll()
        forgetStreamPositions()  // the log may have been made again: its sequences start over
        // Rows may now be older than what this node sent before: its own messages coming back must apply again.
        if !config.plantedBugs.contains(.echoesSurviveRestore) { ownEchoes.removeAll() }
        // Reported before the crash point after the commit: the restore happened even if the process dies next.
        env.events?.record(.restored(sequences: router.shards.map { restored[$0] ?? 0 }, rows: rowsRestored, tables: tables.count))
        try crashPoint(.afterRestoreCommit)
    }

    /// The snapshot's replicated schema state joins this node's as if its DDL had arrived from the log, object by
    /// object with the same rule, so the node's schema is at least as new as the snapshot's before its rows come in
    /// (and a table the snapshot's taker created keeps that incarnation here).
    func mergeDefinitions(_ db: Database) throws {
        let snap = Self.snapshotSchema
        guard try db.tableExists(Bookkeeping.ddlTable, in: snap) else { return }
        // Tables first, then views, then what is made on them: an index made on a table before a rename gave the table
        // its current name comes earlier in id order than that name's definition, and made first it was refused here
        // for good ("no such table"; harmonysim swarm seed 492).
        let order = config.plantedBugs.contains(.snapshotDependentsBeforeTables) ? "id" : SchemaObjects.madeInDependencyOrder
        let theirs = try db.query("SELECT \(try SchemaObjects.columns(in: db, schema: snap)) FROM \(snap).\(SchemaObjects.table) ORDER BY \(order)")
            .map(SchemaObjects.object)
        var events: [ReplicationEvent] = []
        // A write transaction of the core's: the re-install below stamps whatever the applications queued, and those
        // stamps must be reported (in a bare transaction they went out unreported, and the oracle and the priority
        // lane lost track of them: harmonysim swarm seed 1165, a restore refused after a disk full).
        try writeTransaction(db) {
            for entry in theirs {
                let o = entry.object
                guard config.tables.admits(o.type == "view" ? o.name : o.tableName) else { continue }
                if let local = try SchemaObjects.load(db, type: o.type, name: o.name), !SchemaObject.outranks(o, local.object) { continue }
                let (now, failure) = try attempt(db, o)
                if let failure { events.append(.schemaChangeFailed(shard: 0, sequence: 0, object: o.description, error: failure)) }
                try SchemaObjects.store(db, o, localSQL: now)
            }
            try refreshCapture(afterOwnDDL: true)
        }
        for e in events { env.events?.record(e) }
    }

    /// Parts held with the snapshot belong to its checkpoints (their last parts come after them); parts held here
    /// belong to ours, which the restore abandons, and come again with the replay.
    func restoreParts(_ db: Database) throws {
        let parts = quoteIdentifier(Bookkeeping.partsTable)
        try db.execute("DELETE FROM main.\(parts)", [])
        if try db.tableExists(Bookkeeping.partsTable, in: Self.snapshotSchema) {
            try db.execute("INSERT INTO main.\(parts) SELECT * FROM \(Self.snapshotSchema).\(parts)", [])
        }
    }

    /// One user table as the snapshot has it: its columns and key, and the SQL that created it.
    struct SnapshotTable {
        var name: String
        var columns: [String]
        var primaryKey: [String]
        var hash: String
        var createSQL: [String]
        /// Snapshot column -> local column, for the columns both have (a column renamed here since maps to its new
        /// name; one dropped here since has none). Filled in by `createMissingTables`.
        var localNames: [String: String] = [:]
    }

    /// The snapshot's replicated tables (those with a version table) that this node admits.
    func snapshotTables(_ db: Database) throws -> [SnapshotTable] {
        let snap = Self.snapshotSchema
        let names = try db.query("SELECT name FROM \(snap).sqlite_schema WHERE type = 'table' ORDER BY name").compactMap { $0[0].string }
        let all = Set(names)
        var out: [SnapshotTable] = []
        for name in names where !name.hasPrefix("sqlite_") && !name.hasPrefix(Bookkeeping.prefix) && config.tables.admits(name) {
            guard all.contains(Bookkeeping.versionTable(name)) else { continue }
            let schema = try SchemaReader.schema(db, table: name, schema: snap)
            let createSQL = try db.query("""
                SELECT sql FROM \(snap).sqlite_schema
                WHERE tbl_name = ? AND type IN ('table', 'index') AND sql IS NOT NULL AND substr(name, 1, ?) <> ?
                ORDER BY type = 'table' DESC, name
                """, [.text(name), .integer(Int64(Bookkeeping.prefix.utf8.count)), .text(Bookkeeping.prefix)]).compactMap { $0[0].string }
            out.append(SnapshotTable(name: name, columns: schema.columns, primaryKey: schema.primaryKey, hash: schema.hash, createSQL: createSQL))
        }
        return out
    }

    /// A new node has no tables yet: create them (and their indexes) as the snapshot has them, then capture them.
    /// A table that exists must be able to hold the snapshot's rows: same key, and every snapshot column present
    /// here, renamed here, or dropped here since (the snapshot was taken at a schema this node had before, so this
    /// node is the newer one). Extra local columns, from a later ADD COLUMN, take their defaults as they would
    /// have on the taker. A snapshot at a schema this node never had is newer: refused, with what to run.
    /// A table this node's schema state has dropped (the drop outranked the snapshot's definition in
    /// `mergeDefinitions`) is not made again, and its snapshot rows went with it: made again, the install read it as a
    /// CREATE of this node's, a new table every node made empty while only this node had the rows (harmonysim swarm
    /// seed 267: a node after `-cleanup` restored a snapshot older than another node's DROP TABLE). Returns the tables
    /// to copy, with `localNames` filled in.
    func createMissingTables(_ db: Database, _ snapshotTables: [SnapshotTable]) throws -> [SnapshotTable] {
        var created = false
        var tables = snapshotTables
        var droppedHere = Set<Int>()
        for i in tables.indices {
            let table = tables[i]
            if let local = captured[table.name] {
                guard local.schema.primaryKey == table.primaryKey else {
                    throw RestoreRefused(description: "table \(quoteIdentifier(table.name)) has primary key \(local.schema.primaryKey) here but \(table.primaryKey) in the snapshot")
                }
                for column in table.columns {
                    if local.schema.columns.contains(column) { tables[i].localNames[column] = column }
                    else if let now = local.currentNameOf[column] { tables[i].localNames[column] = now }
                }
                let missing = table.columns.filter { tables[i].localNames[$0] == nil }
                if !missing.isEmpty {
                    let older = try ChangeCapture.epochs(db, table: table.name).contains { $0.hash == table.hash }
                    guard older else {
                        throw RestoreRefused(description: """
                            the snapshot's \(quoteIdentifier(table.name)) has column(s) \(missing.map(quoteIdentifier).joined(separator: ", ")) that \
                            this node's lacks, at a schema this node never had: the snapshot is newer. Run the same migration here \
                            (e.g. ALTER TABLE \(quoteIdentifier(table.name)) ADD COLUMN ...); the restore is retried by itself. If this \
                            node dropped them on purpose, take a snapshot on a node at this node's schema (harmonylite -save-snapshot)
                            """)
                    }
                }
                continue
            }
            if config.replicateDDL, try !db.tableExists(table.name),
               let state = try SchemaObjects.load(db, type: "table", name: table.name)?.object, state.sql == nil {
                droppedHere.insert(i)
                continue
            }
            if try db.tableExists(table.name) { throw RestoreRefused(description: "table \(quoteIdentifier(table.name)) exists here but is not captured") }
            try db.transaction(.immediate) {
                for sql in table.createSQL { try db.execute(sql) }
            }
            for column in table.columns { tables[i].localNames[column] = column }
            created = true
        }
        if created { try refreshCapture(afterOwnDDL: true) }
        return tables.indices.filter { !droppedHere.contains($0) }.map { tables[$0] }
    }

    /// Replaces one table's rows and versions with the snapshot's, inside the restore transaction.
    /// Returns how many rows the snapshot brought into the table.
    @discardableResult
    func copyFromSnapshot(_ db: Database, _ table: SnapshotTable) throws -> Int {
        precondition(db.isInTransaction && !table.primaryKey.isEmpty, "rows are replaced inside the restore transaction, by key")
        let snap = Self.snapshotSchema
        let copied = table.columns.filter { table.localNames[$0] != nil }
        let localColumns = copied.map { quoteIdentifier(table.localNames[$0]!) }.joined(separator: ", ")
        let snapshotColumns = copied.map(quoteIdentifier).joined(separator: ", ")
        let versions = quoteIdentifier(Bookkeeping.versionTable(table.name))
        let versionColumns = (table.primaryKey.map(Bookkeeping.keyColumn) + ["hlc", "node", "deleted"]).map(quoteIdentifier).joined(separator: ", ")
        try db.execute("DELETE FROM main.\(quoteIdentifier(table.name))", [])
        try db.execute("INSERT INTO main.\(quoteIdentifier(table.name)) (\(localColumns)) SELECT \(snapshotColumns) FROM \(snap).\(quoteIdentifier(table.name))", [])
        let rows = db.changes
        try db.execute("DELETE FROM main.\(versions)", [])
        try db.execute("INSERT INTO main.\(versions) (\(versionColumns)) SELECT \(versionColumns) FROM \(snap).\(versions)", [])
        return rows
    }

    /// Every change still in the local change log, as its row is now (entries a later write superseded give none).
    func localChanges() throws -> [ChangeRecord] {
        let rows = try requireDatabase().query("SELECT change_table_id, table_name FROM \(quoteIdentifier(Bookkeeping.globalLog)) ORDER BY id")
        return try rows.compactMap { row in
            guard let changeID = row[0].int64, let table = row[1].string else { return nil }
            return try changeRecord(table: table, changeID: changeID)
        }
    }

    /// This node's changes go back on top of the restored rows where they win (stamping their versions again,
    /// so their change-log entries still match and unpublished ones are published afterwards).
    func reapply(_ changes: [ChangeRecord], _ db: Database) throws {
        for record in changes {
            guard let table = captured[record.table], let change = try? resolve(record, against: table.schema, strict: true) else { continue }
            _ = try applyLWW(db, change)
        }
    }
}
