import HarmonyCodec
import HarmonySQLite

/// Which user tables are captured and replicated.
public struct TableFilter: Sendable, Equatable {
    /// When non-empty, only these tables are captured.
    public var include: [String]
    public var exclude: [String]

    public init(include: [String] = [], exclude: [String] = []) {
        self.include = include
        self.exclude = exclude
    }

    public func admits(_ table: String) -> Bool {
        if exclude.contains(table) { return false }
        return include.isEmpty || include.contains(table)
    }
}

/// Where rows sent to a renamed table's old name go now.
public struct TableAlias: Sendable, Equatable {
    public var current: String
    /// The old name's generation when it was renamed; nil when not known (no replicated DDL, or an older alias).
    public var generation: Int64?
    /// The generation `current` had when the rows went into it; nil when not known.
    public var targetGeneration: Int64? = nil

    /// Whether the table the rename filled was dropped since: the new name now has a later generation (`generation`
    /// of its state here). What still comes for the old name went with that table.
    public func filledTableIsGone(currentGeneration: Int64?) -> Bool {
        guard let filled = targetGeneration, let currentGeneration else { return false }
        return currentGeneration > filled
    }
}

/// One captured table at one schema epoch.
public struct CapturedTable: Sendable, Equatable {
    public var schema: TableSchema
    public var epoch: Int64
    /// The hash of the epoch before this one, accepted from peers still on it during a rolling upgrade.
    public var previousHash: String?
    /// Every earlier epoch's hash: changes written under any of them apply (mapped onto the current columns).
    public var olderHashes: Set<String> = []
    /// Earlier names of columns renamed since (RENAME COLUMN), old name -> current name, over every epoch.
    public var currentNameOf: [String: String] = [:]
    /// Rows this install found without a version whose primary key holds NULL: left out, never replicated.
    public var nullKeyRows = 0
}

/// Installs and removes the change-data-capture triggers and bookkeeping tables.
///
/// The triggers use only built-in SQL (no application functions), so the stock `sqlite3` shell writes
/// through them with default settings. Each local write adds one row to the capture queue (table, kind, schema
/// epoch, key, wall-clock millisecond) inside the writer's own transaction; the sidecar stamps versions on the
/// queue later and moves it into the change logs (`stampCaptured`). They name key columns only, so every `ALTER TABLE` SQLite allows (DROP and
/// RENAME COLUMN included) goes through them; the publisher reads the row as it is when it sends it
/// (last-writer-wins only needs a row's latest state and version). The sidecar's own connection runs with triggers
/// switched off (`Database.setTriggersEnabled`), so its writes are never captured and the triggers test nothing per
/// row. The clock row's `applying` column is kept for databases installed by older versions and no longer read.
public enum ChangeCapture {
    static func q(_ s: String) -> String { quoteIdentifier(s) }

    /// SQLite's 'now' in milliseconds since the Unix epoch, computed with built-in functions only. `julianday()` with
    /// no argument is 'now' without parsing the string: a capture trigger runs this for every row written.
    static let nowMsSQL = "CAST((julianday() - 2440587.5) * 86400000.0 AS INTEGER)"

    /// Creates the bookkeeping tables (idempotent) and records this node's id in the clock row.
    public static func installBookkeeping(_ db: Database, nodeID: Int64) throws {
        try db.execute("""
            CREATE TABLE IF NOT EXISTS \(q(Bookkeeping.clockTable)) (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                hlc INTEGER NOT NULL,
                node_id INTEGER NOT NULL,
                applying INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS \(q(Bookkeeping.globalLog)) (
                id INTEGER PRIMARY KEY,
                change_table_id INTEGER NOT NULL,
                table_name TEXT NOT NULL,
                state INTEGER NOT NULL DEFAULT 0
            );
            CREATE TABLE IF NOT EXISTS \(q(Bookkeeping.captureQueue)) (
                id INTEGER PRIMARY KEY,
                table_name TEXT NOT NULL,
                type TEXT NOT NULL,
                epoch INTEGER NOT NULL,
                ms INTEGER NOT NULL,
                hlc INTEGER,
                k1,
                writer_changes INTEGER
            );
            CREATE TABLE IF NOT EXISTS \(q(Bookkeeping.checkpointTable)) (
                stream TEXT PRIMARY KEY,
                seq INTEGER NOT NULL
            );
            CREATE TABLE IF NOT EXISTS \(q(Bookkeeping.schemaTable)) (
                table_name TEXT NOT NULL,
                epoch INTEGER NOT NULL,
                hash TEXT NOT NULL,
                columns BLOB NOT NULL,
                primary_key BLOB NOT NULL,
                PRIMARY KEY (table_name, epoch)
            );
            CREATE TABLE IF NOT EXISTS \(q(Bookkeeping.parkedTable)) (
                id INTEGER PRIMARY KEY,
                stream TEXT NOT NULL,
                seq INTEGER NOT NULL,
                payload BLOB,
                error TEXT NOT NULL
            );
            CREATE TABLE IF NOT EXISTS \(q(Bookkeeping.aliasTable)) (
                old_name TEXT PRIMARY KEY,
                table_name TEXT NOT NULL,
                generation INTEGER,
                target_generation INTEGER
            );
            CREATE TABLE IF NOT EXISTS \(q(Bookkeeping.partsTable)) (
                stream TEXT NOT NULL,
                group_id TEXT NOT NULL,
                part INTEGER NOT NULL,
                count INTEGER NOT NULL,
                total INTEGER NOT NULL,
                seq INTEGER NOT NULL,
                bytes BLOB NOT NULL,
                PRIMARY KEY (stream, group_id, part)
            );
            """)
        try db.execute("""
            INSERT INTO \(q(Bookkeeping.clockTable)) (id, hlc, node_id, applying) VALUES (1, 0, ?1, 0)
            ON CONFLICT (id) DO UPDATE SET node_id = ?1, applying = 0
            """, [.integer(nodeID)])
        // Alias tables made before aliases named the renamed table's generation gain the column (NULL: any).
        try addColumnIfMissing(db, table: Bookkeeping.aliasTable, column: "generation", type: "INTEGER")
        // ... and the generation of the table the rows went into (NULL: not known, any).
        try addColumnIfMissing(db, table: Bookkeeping.aliasTable, column: "target_generation", type: "INTEGER")
        // Queues made before writes named their connection's count gain it (NULL: written by the older triggers).
        try addColumnIfMissing(db, table: Bookkeeping.captureQueue, column: "writer_changes", type: "INTEGER")
    }

    static func addColumnIfMissing(_ db: Database, table: String, column: String, type: String) throws {
        guard try db.query("SELECT 1 FROM pragma_table_info(?) WHERE name = ?", [.text(table), .text(column)]).isEmpty else { return }
        try db.execute("ALTER TABLE \(q(table)) ADD COLUMN \(q(column)) \(type)")
    }

    /// Installs or refreshes capture on every admitted table, in one transaction.
    /// A table whose schema changed gets a new epoch; its change log gains the new columns and keeps pending rows.
    ///
    /// Tables without a primary key are refused: with `refuseKeyless` the whole install fails with
    /// `SchemaError.noPrimaryKey` (what an operator starting the sidecar should see); without it they are
    /// left uncaptured and reported through `skippedKeyless`, so a keyless table created at run time does
    /// not stop replication of the others.
    ///
    /// With `replicateDDL`, DDL the application ran since the last install is recorded for publishing (see
    /// `SchemaObjects.detect`), and a dropped table's version table and change log go with it (a table created again
    /// under that name starts afresh). Runs inside the caller's transaction if there is one (the apply path
    /// re-installs after applying remote DDL).
    @discardableResult
    public static func install(_ db: Database, nodeID: Int64, filter: TableFilter, refuseKeyless: Bool = true,
                               replicateDDL: Bool = false, findRecreated: Bool = true, plantedBugs: PlantedBugs = [],
                               sentChanges: Set<Int64> = [],
                               skippedKeyless: ((Set<String>) -> Void)? = nil) throws -> [String: CapturedTable] {
        let body = { () throws -> [String: CapturedTable] in
            // Renaming bookkeeping tables and columns must not re-check the user's views and triggers: one view that
            // names a missing table would otherwise make every rename fail (see `ReplicationNode.execute`).
            try db.execute("PRAGMA legacy_alter_table = ON")
            defer { try? db.execute("PRAGMA legacy_alter_table = OFF") }
            try installBookkeeping(db, nodeID: nodeID)
            // Writes captured under the triggers being replaced get their versions first, with the keys and change
            // logs they were written for (a rename or a new epoch below must not meet them unstamped). A running node
            // has stamped (and reported) them already; this is for the command line and other callers.
            try stampCaptured(db)
            let (schemas, keyless) = try SchemaReader.admittedSchemas(db, filter: filter)
            if refuseKeyless && !keyless.isEmpty { throw SchemaError.noPrimaryKey(keyless) }
            skippedKeyless?(Set(keyless))  // empty too: a table given a key since is reported again if it loses it
            var renamedTables: [String: String] = [:]
            for schema in schemas {
                for old in try adoptRenamedTable(db, schema.name) { renamedTables[old] = schema.name }
            }
            // A captured table without its capture triggers was dropped and created again since the last install (the
            // DROP took the triggers; an ALTER never does): a new table, whose old versions and history must go.
            var recreated = Set<String>()
            if replicateDDL && findRecreated && !plantedBugs.contains(.recreatedTableSeenAsAlter) {
                for schema in schemas where !renamedTables.values.contains(schema.name) {
                    guard try db.tableExists(Bookkeeping.versionTable(schema.name)),
                          try db.scalar("SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND name = ? AND tbl_name = ?",
                                        [.text(Bookkeeping.trigger(schema.name, "insert")), .text(schema.name)])?.int64 == 0 else { continue }
                    recreated.insert(schema.name)
                    try forgetChangeLog(db, schema.name)
                }
            }
            try dropTriggers(db, except: Set(schemas.map(\.name)))
            var captured: [String: CapturedTable] = [:]
            for schema in schemas {
                captured[schema.name] = try installTable(db, schema, plantedBugs: plantedBugs)
            }
            if replicateDDL {
                for table in Set(renamedTables.values).sorted() where !plantedBugs.contains(.renameKeepsRowsLocal) {
                    if let c = captured[table] { try sendRowsAgain(db, c.schema, epoch: c.epoch) }
                }
                try SchemaObjects.detect(db, captured: captured, renamedTables: renamedTables, recreated: recreated, filter: filter,
                                         plantedBugs: plantedBugs, sentChanges: sentChanges)
                try forgetDroppedTables(db)
            }
            db.clearStatementCache()
            return captured
        }
        return db.isInTransaction ? try body() : try db.transaction(.immediate, body)
    }

    /// Version tables and change logs of tables that no longer exist: a table created again under the name must not
    /// meet the old rows' versions and tombstones. (Unsent entries in the change log are moot: the rows are gone.)
    static func forgetDroppedTables(_ db: Database) throws {
        let gone = try db.query("""
            SELECT DISTINCT table_name FROM \(q(Bookkeeping.schemaTable))
            WHERE table_name NOT IN (SELECT name FROM sqlite_schema WHERE type = 'table') ORDER BY table_name
            """).compactMap { $0[0].string }
        for table in gone { try forgetChangeLog(db, table) }
    }

    /// Drops a table's version table and change log, and detaches its global-log entries from the change-log ids:
    /// a change log made again under the name counts from 1, and an old entry must never name (and let the
    /// cleanup delete, or the publisher skip) a new row.
    static func forgetChangeLog(_ db: Database, _ table: String) throws {
        for name in [Bookkeeping.versionTable(table), Bookkeeping.changeLog(table)] where try db.tableExists(name) {
            try db.execute("DROP TABLE \(q(name))")
        }
        try detachGlobalLog(db, table)
    }

    static func detachGlobalLog(_ db: Database, _ table: String) throws {
        try db.execute("UPDATE \(q(Bookkeeping.globalLog)) SET state = 1, change_table_id = 0 WHERE table_name = ?", [.text(table)])
    }

    /// After `ALTER TABLE old RENAME TO new`, SQLite moved old's triggers onto new (names unchanged): the table's
    /// capture moves with it. The old triggers go, the change log and version table are renamed (versions and
    /// tombstones kept), schema history and pending changes follow, and old -> new is recorded as an alias.
    /// Returns the old names adopted.
    @discardableResult
    static func adoptRenamedTable(_ db: Database, _ table: String) throws -> [String] {
        let triggers = try db.query("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ? AND substr(name, 1, ?) = ? ORDER BY name",
                                    [.text(table), .integer(Int64(Bookkeeping.prefix.utf8.count)), .text(Bookkeeping.prefix)]).compactMap { $0[0].string }
        let own = Set(["insert", "update", "update_key", "delete"].map { Bookkeeping.trigger(table, $0) })
        var previousNames: [String] = []
        for name in triggers where !own.contains(name) {
            try db.execute("DROP TRIGGER \(q(name))")
            let rest = String(name.dropFirst(Bookkeeping.prefix.utf8.count))
            if let kind = ["_on_update_key", "_on_insert", "_on_update", "_on_delete"].first(where: rest.hasSuffix) {
                previousNames.append(String(rest.dropLast(kind.utf8.count)))
            }
        }
        var adopted: [String] = []
        for old in Set(previousNames).sorted() where old != table {
            guard try !db.tableExists(old), try !db.tableExists(Bookkeeping.versionTable(table)) else { continue }
            adopted.append(old)
            // History and unsent entries under the new name belong to an earlier table of that name, dropped since.
            try db.execute("DELETE FROM \(q(Bookkeeping.schemaTable)) WHERE table_name = ?", [.text(table)])
            try detachGlobalLog(db, table)
            for (from, to) in [(Bookkeeping.changeLog(old), Bookkeeping.changeLog(table)), (Bookkeeping.versionTable(old), Bookkeeping.versionTable(table))]
            where try db.tableExists(from) && !db.tableExists(to) {
                try db.execute("ALTER TABLE \(q(from)) RENAME TO \(q(to))")
            }
            try db.execute("UPDATE \(q(Bookkeeping.schemaTable)) SET table_name = ? WHERE table_name = ?", [.text(table), .text(old)])
            try db.execute("UPDATE \(q(Bookkeeping.globalLog)) SET table_name = ? WHERE table_name = ?", [.text(table), .text(old)])
            try recordAlias(db, old: old, current: table)
        }
        return adopted
    }

    /// Rows still sent to `old` go to `current` from now on; names that pointed at `old` follow (a table renamed twice).
    /// With replicated DDL the alias holds for the generation `old` had when it was renamed: a table made again
    /// under the old name later is another table, and rows of that one must not follow.
    /// The generation of `current` the rows went into is kept too: once that table is dropped, what still comes for
    /// the old name (an index made on it) went with it, even if a table of the new name was made again since.
    static func recordAlias(_ db: Database, old: String, current: String) throws {
        var generation: DatabaseValue = .null, target: DatabaseValue = .null
        if try db.tableExists(Bookkeeping.ddlTable) {
            generation = try db.scalar("SELECT generation FROM \(q(Bookkeeping.ddlTable)) WHERE type = 'table' AND name = ?", [.text(old)]) ?? .null
            // The new name's state may not be this rename's yet (a local rename is recorded by the look after this):
            // a dropped state is followed by the next generation, as the look will give it; none means the first.
            target = try db.scalar("""
                SELECT coalesce((SELECT CASE WHEN sql IS NULL THEN generation + 1 ELSE generation END FROM \(q(Bookkeeping.ddlTable))
                                 WHERE type = 'table' AND name = ?), 0)
                """, [.text(current)]) ?? .integer(0)
        }
        try db.execute("""
            INSERT INTO \(q(Bookkeeping.aliasTable)) (old_name, table_name, generation, target_generation) VALUES (?, ?, ?, ?)
            ON CONFLICT (old_name) DO UPDATE SET table_name = excluded.table_name, generation = excluded.generation,
                target_generation = excluded.target_generation
            """, [.text(old), .text(current), generation, target])
        try db.execute("UPDATE \(q(Bookkeeping.aliasTable)) SET table_name = ?, target_generation = ? WHERE table_name = ?",
                       [.text(current), target, .text(old)])
    }

    /// Old name -> current name (and the old name's generation when it was renamed, if known) of every table
    /// renamed here.
    public static func tableAliases(_ db: Database) throws -> [String: TableAlias] {
        var out: [String: TableAlias] = [:]
        for row in try db.query("SELECT old_name, table_name, generation, target_generation FROM \(q(Bookkeeping.aliasTable)) ORDER BY old_name") {
            if let old = row[0].string, let current = row[1].string {
                out[old] = TableAlias(current: current, generation: row[2].int64, targetGeneration: row[3].int64)
            }
        }
        return out
    }

    /// Epochs recorded for a table, newest first.
    static func epochs(_ db: Database, table: String) throws -> [(epoch: Int64, hash: String, columns: [String], primaryKey: [String])] {
        try db.query("SELECT epoch, hash, columns, primary_key FROM \(q(Bookkeeping.schemaTable)) WHERE table_name = ? ORDER BY epoch DESC",
                     [.text(table)]).map { row in
            (row[0].int64 ?? 0, row[1].string ?? "", try decodeNames(row[2]), try decodeNames(row[3]))
        }
    }

    static func installTable(_ db: Database, _ schema: TableSchema, plantedBugs: PlantedBugs = []) throws -> CapturedTable {
        precondition(!schema.primaryKey.isEmpty && db.isInTransaction, "capture is installed for keyed tables, in one transaction")
        var known = try epochs(db, table: schema.name)
        if !known.isEmpty, try !db.tableExists(Bookkeeping.changeLog(schema.name)) {
            // Made again after a drop (its change log went with it): a new table. Linking its columns to the dropped
            // one's last epoch would invent renames.
            try db.execute("DELETE FROM \(q(Bookkeeping.schemaTable)) WHERE table_name = ?", [.text(schema.name)])
            known = []
        }
        let latest = known.first
        var epoch = latest?.epoch ?? 0
        var previousHash = known.count > 1 ? known[1].hash : nil
        if latest?.hash != schema.hash {
            epoch += 1
            previousHash = latest?.hash
            try db.execute("INSERT INTO \(q(Bookkeeping.schemaTable)) (table_name, epoch, hash, columns, primary_key) VALUES (?, ?, ?, ?, ?)",
                           [.text(schema.name), .integer(epoch), .text(schema.hash),
                            encodeNames(schema.columns), encodeNames(schema.primaryKey)])
        }
        try ensureChangeLog(db, schema)
        try ensureQueueKeys(db, count: schema.primaryKey.count)
        let versionsRebuilt = try ensureVersionTable(db, schema)
        try createTriggers(db, schema, epoch: epoch, plantedBugs: plantedBugs)
        // Rows written while no trigger was there to see them: before the first install, after a -cleanup, or
        // between CREATE TABLE and this install. Never lost, never newer than the cluster's (see `backfill`).
        let nullKeyRows = known.isEmpty || versionsRebuilt ? try backfill(db, schema, epoch: epoch, plantedBugs: plantedBugs) : 0
        precondition(epoch >= 1 && epoch >= (latest?.epoch ?? 0), "schema epoch of \(schema.name) went from \(latest?.epoch ?? 0) to \(epoch)")
        // Oldest first, ending with the current schema: follow each column's names through every rename.
        let history = known.reversed().map(\.columns) + (latest?.hash == schema.hash ? [] : [schema.columns])
        return CapturedTable(schema: schema, epoch: epoch, previousHash: previousHash,
                             olderHashes: Set(known.map(\.hash)).subtracting([schema.hash]),
                             currentNameOf: currentNames(through: history), nullKeyRows: nullKeyRows)
    }

    /// Old name -> current name for every column renamed somewhere along `history` (column lists, oldest first).
    static func currentNames(through history: [[String]]) -> [String: String] {
        guard let current = history.last else { return [:] }
        // For each column of the epoch at hand, every name it has had.
        var lineage = Dictionary(uniqueKeysWithValues: (history.first ?? []).map { ($0, [$0]) })
        for (old, new) in zip(history, history.dropFirst()) {
            let renamed = renames(from: old, to: new)
            lineage = Dictionary(new.map { name in (name, (lineage[renamed[name] ?? name] ?? []) + [name]) }, uniquingKeysWith: { a, _ in a })
        }
        var out: [String: String] = [:]
        for name in current {
            for earlier in lineage[name] ?? [] where earlier != name && !current.contains(earlier) { out[earlier] = name }
        }
        return out
    }

    /// Columns renamed between two epochs, new name -> old name. ALTER TABLE never moves a column: the columns
    /// both epochs have keep their order, and between two of them (or after the last) the ones only the old
    /// epoch has and the ones only the new epoch has, if equally many, were renamed one to one (an ADD COLUMN
    /// appends, a DROP COLUMN leaves a gap with nothing new). Common columns in another order mean the table was
    /// rebuilt: no renames are assumed. (A DROP of the last column plus an ADD reads as a rename; replicated DDL
    /// will carry the intent.)
    static func renames(from old: [String], to new: [String]) -> [String: String] {
        let common = Set(old).intersection(new)
        var out: [String: String] = [:]
        var i = 0, j = 0
        while true {
            var gone: [String] = [], came: [String] = []
            while i < old.count && !common.contains(old[i]) { gone.append(old[i]); i += 1 }
            while j < new.count && !common.contains(new[j]) { came.append(new[j]); j += 1 }
            if gone.count == came.count { for (o, n) in zip(gone, came) { out[n] = o } }
            guard i < old.count, j < new.count else { return out }
            guard old[i] == new[j] else { return [:] }
            i += 1
            j += 1
        }
    }

    /// Records every row that has no version as an insert with a version below any real write's: the
    /// physical milliseconds unshifted (about 2^41) where a trigger's version has them above bit 16 (about
    /// 2^57). Such a row fills a gap where the cluster has no row for its key and loses every conflict, so a row
    /// written while capture was absent is never lost and never overrides newer cluster state; a later backfill
    /// (another -cleanup) still beats an earlier one.
    /// Returns how many rows were left out because their primary key holds NULL (see `nullKeyFree`).
    @discardableResult
    static func backfill(_ db: Database, _ schema: TableSchema, epoch: Int64, plantedBugs: PlantedBugs = []) throws -> Int {
        let log = q(Bookkeeping.changeLog(schema.name)), versions = q(Bookkeeping.versionTable(schema.name))
        let clock = q(Bookkeeping.clockTable)
        let firstNew = (try db.scalar("SELECT coalesce(max(id), 0) FROM \(log)")?.int64 ?? 0) + 1
        let unversioned = "NOT EXISTS (SELECT 1 FROM \(versions) v WHERE "
            + schema.primaryKey.map { "v.\(q(Bookkeeping.keyColumn($0))) IS t.\(q($0))" }.joined(separator: " AND ") + ")"
        // Key order, not rowid: WITHOUT ROWID tables have no rowid.
        let keyOrder = schema.primaryKey.map { "t." + q($0) }.joined(separator: ", ")
        let base = plantedBugs.contains(.backfillAtCurrentTime) ? "(SELECT max(hlc, \(nowMsSQL) << \(RowVersion.logicalBits)) FROM \(clock))" : nowMsSQL
        try db.execute("""
            INSERT INTO \(log) (type, hlc, node, epoch\(schema.primaryKey.map { ", " + q(Bookkeeping.valueColumn($0)) }.joined()))
            SELECT 'insert', \(base) + row_number() OVER (ORDER BY \(keyOrder)), (SELECT node_id FROM \(clock)), \(epoch)\(schema.primaryKey.map { ", t." + q($0) }.joined())
            FROM \(q(schema.name)) t WHERE \(unversioned) AND \(nullKeyFree(schema.primaryKey.map { "t." + q($0) })) ORDER BY \(keyOrder)
            """)
        try linkAndStamp(db, schema, firstNewID: firstNew)
        let nullKey = schema.primaryKey.map { "t.\(q($0)) IS NULL" }.joined(separator: " OR ")
        return Int(try db.scalar("SELECT count(*) FROM \(q(schema.name)) t WHERE \(nullKey)")?.int64 ?? 0)
    }

    /// After a RENAME TO (this node's, or another's applied here), every row and tombstone of the table is sent
    /// again under its new name, with the version it has. A node whose old table was gone when the new name's
    /// definition arrived (dropped there, or renamed there to another name at the same time) made the new name
    /// empty; this fills it, and every other node already has these versions and skips them. Each node that
    /// renames sends what it has, so a row written to the old name just before the rename reached its node is
    /// not lost either. The cost is one message per row per node, once per RENAME TO.
    static func sendRowsAgain(_ db: Database, _ schema: TableSchema, epoch: Int64) throws {
        let log = q(Bookkeeping.changeLog(schema.name)), versions = q(Bookkeeping.versionTable(schema.name))
        let firstNew = (try db.scalar("SELECT coalesce(max(id), 0) FROM \(log)")?.int64 ?? 0) + 1
        let keys = schema.primaryKey.map { q(Bookkeeping.keyColumn($0)) }
        try db.execute("""
            INSERT INTO \(log) (type, hlc, node, epoch\(schema.primaryKey.map { ", " + q(Bookkeeping.valueColumn($0)) }.joined()))
            SELECT CASE deleted WHEN 1 THEN 'delete' ELSE 'insert' END, hlc, node, \(epoch)\(keys.map { ", " + $0 }.joined())
            FROM \(versions) ORDER BY hlc, node
            """)
        try linkToGlobalLog(db, schema, firstNewID: firstNew)
    }

    /// Logs one change applied here for sending on, as if written here (its version kept): a row that reached this
    /// node under a renamed table's old name (see `sendRowsAgain`).
    static func logChange(_ db: Database, _ schema: TableSchema, epoch: Int64, key: [DatabaseValue], version: RowVersion, deleted: Bool) throws {
        let log = q(Bookkeeping.changeLog(schema.name))
        let columns = schema.primaryKey.map { ", " + q(Bookkeeping.valueColumn($0)) }.joined()
        try db.execute("INSERT INTO \(log) (type, hlc, node, epoch\(columns)) VALUES (?, ?, ?, ?\(String(repeating: ", ?", count: key.count)))",
                       [.text(deleted ? "delete" : "insert"), .integer(version.hlc), .integer(version.node), .integer(epoch)] + key)
        try db.execute("INSERT INTO \(q(Bookkeeping.globalLog)) (change_table_id, table_name) VALUES (last_insert_rowid(), ?)", [.text(schema.name)])
    }

    /// Queues change-log rows written directly (from `firstNew` on) for publishing, in id order.
    static func linkToGlobalLog(_ db: Database, _ schema: TableSchema, firstNewID firstNew: Int64) throws {
        try db.execute("""
            INSERT INTO \(q(Bookkeeping.globalLog)) (change_table_id, table_name)
            SELECT id, \(quoteLiteral(schema.name)) FROM \(q(Bookkeeping.changeLog(schema.name))) WHERE id >= ? ORDER BY id
            """, [.integer(firstNew)])
    }

    /// For change-log rows written directly (not by triggers): link them from the global log, stamp the
    /// rows' versions, and move the clock past them.
    static func linkAndStamp(_ db: Database, _ schema: TableSchema, firstNewID firstNew: Int64) throws {
        let log = q(Bookkeeping.changeLog(schema.name)), versions = q(Bookkeeping.versionTable(schema.name))
        let clock = q(Bookkeeping.clockTable)
        try linkToGlobalLog(db, schema, firstNewID: firstNew)
        try db.execute("""
            INSERT INTO \(versions) (\(schema.primaryKey.map { q(Bookkeeping.keyColumn($0)) }.joined(separator: ", ")), hlc, node, deleted)
            SELECT \(schema.primaryKey.map { q(Bookkeeping.valueColumn($0)) }.joined(separator: ", ")), hlc, node, 0 FROM \(log) WHERE id >= ? AND true
            ON CONFLICT DO UPDATE SET hlc = excluded.hlc, node = excluded.node, deleted = 0
            """, [.integer(firstNew)])
        try db.execute("UPDATE \(clock) SET hlc = max(hlc, coalesce((SELECT max(hlc) FROM \(log)), 0))", [])
    }

    static func encodeNames(_ names: [String]) -> DatabaseValue {
        .blob(CBOREncoder.encode(.array(names.map { .text($0) })))
    }

    static func decodeNames(_ v: DatabaseValue) throws -> [String] {
        guard case .blob(let b) = v, case .array(let items) = try CBORDecoder.decode(b) else {
            throw EnvelopeError.malformed("schema column list is not a CBOR array")
        }
        return items.compactMap { if case .text(let s) = $0 { return s } else { return nil } }
    }

    /// Creates the change log (one `val_` column per key column), or adds the columns of a new key. Columns are
    /// never dropped, so rows logged under an older key keep their key until published. (Logs made by earlier
    /// versions carry every column's value; those extra columns stay, unused.)
    static func ensureChangeLog(_ db: Database, _ schema: TableSchema) throws {
        let log = Bookkeeping.changeLog(schema.name)
        let existing = Set(try db.query("SELECT name FROM pragma_table_info(?, 'main')", [.text(log)]).compactMap { $0[0].string })
        if existing.isEmpty {
            let vals = schema.primaryKey.map { ", " + q(Bookkeeping.valueColumn($0)) }.joined()
            try db.execute("""
                CREATE TABLE \(q(log)) (
                    id INTEGER PRIMARY KEY,
                    type TEXT NOT NULL,
                    hlc INTEGER NOT NULL,
                    node INTEGER NOT NULL,
                    epoch INTEGER NOT NULL\(vals)
                )
                """)
            return
        }
        for column in schema.primaryKey where !existing.contains(Bookkeeping.valueColumn(column)) {
            try db.execute("ALTER TABLE \(q(log)) ADD COLUMN \(q(Bookkeeping.valueColumn(column)))")
        }
    }

    /// The version table holds each row's current version and tombstones. It is keyed like the user table: a
    /// renamed key column is renamed here too; a different key rebuilds it (tombstones of the old key shape
    /// cannot apply any more), and the caller then captures the rows again as versionless. Returns whether it
    /// was created or rebuilt.
    @discardableResult
    static func ensureVersionTable(_ db: Database, _ schema: TableSchema) throws -> Bool {
        let table = Bookkeeping.versionTable(schema.name)
        let wanted = schema.primaryKey.map(Bookkeeping.keyColumn) + ["hlc", "node", "deleted"]
        let existing = try db.query("SELECT name FROM pragma_table_info(?, 'main')", [.text(table)]).compactMap { $0[0].string }
        if existing == wanted { return false }
        if existing.count == wanted.count && existing.suffix(3) == wanted.suffix(3) {
            for (old, new) in zip(existing, wanted) where old != new {
                try db.execute("ALTER TABLE \(q(table)) RENAME COLUMN \(q(old)) TO \(q(new))")
            }
            return false
        }
        if !existing.isEmpty { try db.execute("DROP TABLE \(q(table))") }
        let keyDefs = zip(schema.primaryKey, schema.primaryKeyCollations).map { column, collation in
            "\(q(Bookkeeping.keyColumn(column))) COLLATE \(q(collation))"
        }
        let keyList = schema.primaryKey.map { q(Bookkeeping.keyColumn($0)) }.joined(separator: ", ")
        try db.execute("""
            CREATE TABLE \(q(table)) (
                \(keyDefs.joined(separator: ",\n    ")),
                hlc INTEGER NOT NULL,
                node INTEGER NOT NULL,
                deleted INTEGER NOT NULL,
                PRIMARY KEY (\(keyList))
            ) WITHOUT ROWID
            """)
        return true
    }

    static func dropTriggers(_ db: Database, except keep: Set<String> = []) throws {
        let rows = try db.query("SELECT name, tbl_name FROM sqlite_schema WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
                                [.integer(Int64(Bookkeeping.prefix.utf8.count)), .text(Bookkeeping.prefix)])
        for row in rows {
            guard let name = row[0].string, let table = row[1].string, !keep.contains(table) else { continue }
            try db.execute("DROP TRIGGER IF EXISTS \(q(name))")
        }
    }

    /// The capture queue and the columns every write queued into it fills, in order: the triggers and the sidecar's
    /// own resends (`SchemaObjects.sendAddedValues`) name them from here so the two cannot drift apart.
    static func queueInsertTarget(keyCount: Int) -> String {
        "\(q(Bookkeeping.captureQueue)) (table_name, type, epoch, ms, writer_changes\((0..<keyCount).map { ", k\($0 + 1)" }.joined()))"
    }

    /// The one statement a captured change runs: queue its table, kind, epoch, key and wall-clock time. Versions, the
    /// change log and the global order are the sidecar's work (`stampCaptured`), done in bulk and off the
    /// application's commit path.
    static func captureBody(_ schema: TableSchema, epoch: Int64, type: String, source: String) -> String {
        let keyValues = schema.primaryKey.map { ", \(source).\(q($0))" }.joined()
        return """
              INSERT INTO \(queueInsertTarget(keyCount: schema.primaryKey.count))
                VALUES (\(quoteLiteral(schema.name)), '\(type)', \(epoch), \(nowMsSQL), total_changes()\(keyValues));
            """
    }

    static func createTriggers(_ db: Database, _ schema: TableSchema, epoch: Int64, plantedBugs: PlantedBugs = []) throws {
        let t = q(schema.name)
        let sameKey = schema.primaryKey.map { "OLD.\(q($0)) IS NEW.\(q($0))" }.joined(separator: " AND ")
        for kind in ["insert", "update", "update_key", "delete"] {
            try db.execute("DROP TRIGGER IF EXISTS \(q(Bookkeeping.trigger(schema.name, kind)))")
        }
        try db.execute("""
            CREATE TRIGGER \(q(Bookkeeping.trigger(schema.name, "insert"))) AFTER INSERT ON \(t)
            BEGIN
            \(captureBody(schema, epoch: epoch, type: "insert", source: "NEW"))
            END
            """)
        try db.execute("""
            CREATE TRIGGER \(q(Bookkeeping.trigger(schema.name, "update"))) AFTER UPDATE ON \(t)
            WHEN \(sameKey)
            BEGIN
            \(captureBody(schema, epoch: epoch, type: "update", source: "NEW"))
            END
            """)
        // A primary-key change is a delete of the old key followed by a write of the new one.
        try db.execute("""
            CREATE TRIGGER \(q(Bookkeeping.trigger(schema.name, "update_key"))) AFTER UPDATE ON \(t)
            WHEN NOT (\(sameKey))
            BEGIN
            \(plantedBugs.contains(.keyChangeWithoutDelete) ? "" : captureBody(schema, epoch: epoch, type: "delete", source: "OLD"))
            \(captureBody(schema, epoch: epoch, type: "update", source: "NEW"))
            END
            """)
        try db.execute("""
            CREATE TRIGGER \(q(Bookkeeping.trigger(schema.name, "delete"))) AFTER DELETE ON \(t)
            BEGIN
            \(captureBody(schema, epoch: epoch, type: "delete", source: "OLD"))
            END
            """)
    }

    /// Local changes captured but not yet acknowledged by the log; nil when capture was never installed.
    public static func unpublishedChanges(_ db: Database) throws -> Int64? {
        guard try db.tableExists(Bookkeeping.globalLog) else { return nil }
        let queued = try db.tableExists(Bookkeeping.captureQueue) ? db.scalar("SELECT count(*) FROM \(q(Bookkeeping.captureQueue))")?.int64 ?? 0 : 0
        return try queued + (db.scalar("SELECT count(*) FROM \(q(Bookkeeping.globalLog)) WHERE state = 0")?.int64 ?? 0)
    }

    /// Removes every harmonylite trigger and bookkeeping table; user tables and their rows are untouched.
    ///
    /// The one-row clock stays (`keepClock`, the default for `-cleanup`): a node's versions must keep increasing
    /// across a cleanup and reinstall, or with a clock behind its peers' its next writes would lose to its own
    /// earlier ones and to what it had applied. So does the replicated schema state: DDL run while the sidecar is
    /// away (the seeds' procedure: stop, -cleanup, ALTER, start) is then found and replicated at the next start.
    /// `keepClock: false` removes every trace.
    public static func removeAll(_ db: Database, keepClock: Bool = true) throws {
        try db.transaction(.immediate) {
            try dropTriggers(db)
            let tables = try db.query("SELECT name FROM sqlite_schema WHERE type = 'table' AND substr(name, 1, ?) = ?",
                                      [.integer(Int64(Bookkeeping.prefix.utf8.count)), .text(Bookkeeping.prefix)])
            for row in tables {
                guard let name = row[0].string, !(keepClock && [Bookkeeping.clockTable, Bookkeeping.ddlTable].contains(name)) else { continue }
                try db.execute("DROP TABLE IF EXISTS \(q(name))")
            }
        }
        db.clearStatementCache()
    }
}
