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

/// One captured table at one schema epoch.
public struct CapturedTable: Sendable, Equatable {
    public var schema: TableSchema
    public var epoch: Int64
    /// The hash of the epoch before this one, accepted from peers still on it during a rolling upgrade.
    public var previousHash: String?
}

/// Installs and removes the change-data-capture triggers and bookkeeping tables.
///
/// The triggers use only built-in SQL (no application functions), so the stock `sqlite3` shell writes
/// through them with default settings. Each local write bumps the hybrid-logical clock, records the full
/// row in the table's change log, links it from the global log, and stamps the row's version, all inside
/// the writer's own transaction. While the sidecar applies remote changes it sets `applying = 1` in its
/// own transaction, which no other connection can observe, so its writes are never captured.
public enum ChangeCapture {
    static func q(_ s: String) -> String { quoteIdentifier(s) }

    /// SQLite's 'now' in milliseconds since the Unix epoch, computed with built-in functions only.
    static let nowMsSQL = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"

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
    }

    /// Installs or refreshes capture on every admitted table, in one transaction.
    /// A table whose schema changed gets a new epoch; its change log gains the new columns and keeps pending rows.
    ///
    /// Tables without a primary key are refused: with `refuseKeyless` the whole install fails with
    /// `SchemaError.noPrimaryKey` (what an operator starting the sidecar should see); without it they are
    /// left uncaptured and reported through `skippedKeyless`, so a keyless table created at run time does
    /// not stop replication of the others.
    @discardableResult
    public static func install(_ db: Database, nodeID: Int64, filter: TableFilter, refuseKeyless: Bool = true,
                               plantedBugs: PlantedBugs = [],
                               skippedKeyless: ((Set<String>) -> Void)? = nil) throws -> [String: CapturedTable] {
        try db.transaction(.immediate) {
            try installBookkeeping(db, nodeID: nodeID)
            let (schemas, keyless) = try SchemaReader.admittedSchemas(db, filter: filter)
            if refuseKeyless && !keyless.isEmpty { throw SchemaError.noPrimaryKey(keyless) }
            if !keyless.isEmpty { skippedKeyless?(Set(keyless)) }
            try dropTriggers(db, except: Set(schemas.map(\.name)))
            var captured: [String: CapturedTable] = [:]
            for schema in schemas {
                captured[schema.name] = try installTable(db, schema, plantedBugs: plantedBugs)
            }
            db.clearStatementCache()
            return captured
        }
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
        let known = try epochs(db, table: schema.name)
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
        try ensureVersionTable(db, schema)
        try createTriggers(db, schema, epoch: epoch, plantedBugs: plantedBugs)
        // Rows written while no trigger was there to see them: before the first install, after a -cleanup, or
        // between CREATE TABLE and this install. Never lost, never newer than the cluster's (see `backfill`).
        if known.isEmpty { try backfill(db, schema, epoch: epoch) }
        // Rows written between ALTER TABLE ADD COLUMN and now went through the old triggers, which did not
        // record the new columns: capture again every row whose new columns are not at their default.
        if let latest, latest.hash != schema.hash {
            let added = zip(schema.columns, schema.defaults).filter { !latest.columns.contains($0.0) }
            if !added.isEmpty { try recaptureAddedColumns(db, schema, epoch: epoch, added: added) }
        }
        precondition(epoch >= 1 && epoch >= (latest?.epoch ?? 0), "schema epoch of \(schema.name) went from \(latest?.epoch ?? 0) to \(epoch)")
        return CapturedTable(schema: schema, epoch: epoch, previousHash: previousHash)
    }

    /// Completes writes made through the old triggers after ALTER TABLE ADD COLUMN: a row whose last write was
    /// local and whose new columns are not at their default is captured again with version (that write's hlc + 1),
    /// so it supersedes the incomplete message but still loses to any newer write from another node.
    static func recaptureAddedColumns(_ db: Database, _ schema: TableSchema, epoch: Int64, added: [(String, String)]) throws {
        let log = q(Bookkeeping.changeLog(schema.name)), versions = q(Bookkeeping.versionTable(schema.name))
        let firstNew = (try db.scalar("SELECT coalesce(max(id), 0) FROM \(log)")?.int64 ?? 0) + 1
        let join = schema.primaryKey.map { "v.\(q(Bookkeeping.keyColumn($0))) IS t.\(q($0))" }.joined(separator: " AND ")
        let notDefault = "NOT (" + added.map { "t.\(q($0.0)) IS (\($0.1))" }.joined(separator: " AND ") + ")"
        let keyOrder = schema.primaryKey.map { "t." + q($0) }.joined(separator: ", ")
        try db.execute("""
            INSERT INTO \(log) (type, hlc, node, epoch\(schema.columns.map { ", " + q(Bookkeeping.valueColumn($0)) }.joined()))
            SELECT 'update', v.hlc + 1, v.node, \(epoch)\(schema.columns.map { ", t." + q($0) }.joined())
            FROM \(q(schema.name)) t JOIN \(versions) v ON \(join)
            WHERE v.deleted = 0 AND v.node = (SELECT node_id FROM \(q(Bookkeeping.clockTable))) AND \(notDefault)
            ORDER BY \(keyOrder)
            """)
        try linkAndStamp(db, schema, firstNewID: firstNew)
    }

    /// Records every row that has no version as an insert with a version below any real write's: the
    /// physical milliseconds unshifted (about 2^41) where a trigger's version has them above bit 16 (about
    /// 2^57). Such a row fills a gap where the cluster has no row for its key and loses every conflict, so a row
    /// written while capture was absent is never lost and never overrides newer cluster state; a later backfill
    /// (another -cleanup) still beats an earlier one.
    static func backfill(_ db: Database, _ schema: TableSchema, epoch: Int64) throws {
        let log = q(Bookkeeping.changeLog(schema.name)), versions = q(Bookkeeping.versionTable(schema.name))
        let clock = q(Bookkeeping.clockTable)
        let firstNew = (try db.scalar("SELECT coalesce(max(id), 0) FROM \(log)")?.int64 ?? 0) + 1
        let unversioned = "NOT EXISTS (SELECT 1 FROM \(versions) v WHERE "
            + schema.primaryKey.map { "v.\(q(Bookkeeping.keyColumn($0))) IS t.\(q($0))" }.joined(separator: " AND ") + ")"
        // Key order, not rowid: WITHOUT ROWID tables have no rowid.
        let keyOrder = schema.primaryKey.map { "t." + q($0) }.joined(separator: ", ")
        let base = nowMsSQL
        try db.execute("""
            INSERT INTO \(log) (type, hlc, node, epoch\(schema.columns.map { ", " + q(Bookkeeping.valueColumn($0)) }.joined()))
            SELECT 'insert', \(base) + row_number() OVER (ORDER BY \(keyOrder)), (SELECT node_id FROM \(clock)), \(epoch)\(schema.columns.map { ", t." + q($0) }.joined())
            FROM \(q(schema.name)) t WHERE \(unversioned) ORDER BY \(keyOrder)
            """)
        try linkAndStamp(db, schema, firstNewID: firstNew)
    }

    /// For change-log rows written directly (not by triggers): link them from the global log, stamp the
    /// rows' versions, and move the clock past them.
    static func linkAndStamp(_ db: Database, _ schema: TableSchema, firstNewID firstNew: Int64) throws {
        let log = q(Bookkeeping.changeLog(schema.name)), versions = q(Bookkeeping.versionTable(schema.name))
        let clock = q(Bookkeeping.clockTable)
        try db.execute("""
            INSERT INTO \(q(Bookkeeping.globalLog)) (change_table_id, table_name)
            SELECT id, \(quoteLiteral(schema.name)) FROM \(log) WHERE id >= ? ORDER BY id
            """, [.integer(firstNew)])
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

    /// Creates the change log, or adds value columns for new table columns. Columns are never dropped,
    /// so rows written under an older epoch keep their values until published.
    static func ensureChangeLog(_ db: Database, _ schema: TableSchema) throws {
        let log = Bookkeeping.changeLog(schema.name)
        let existing = Set(try db.query("SELECT name FROM pragma_table_info(?, 'main')", [.text(log)]).compactMap { $0[0].string })
        if existing.isEmpty {
            let vals = schema.columns.map { ", " + q(Bookkeeping.valueColumn($0)) }.joined()
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
        for column in schema.columns where !existing.contains(Bookkeeping.valueColumn(column)) {
            try db.execute("ALTER TABLE \(q(log)) ADD COLUMN \(q(Bookkeeping.valueColumn(column)))")
        }
    }

    /// The version table holds each row's current version and tombstones. It is keyed like the user table;
    /// if the key itself changed it is rebuilt (tombstones of the old key shape cannot apply any more).
    static func ensureVersionTable(_ db: Database, _ schema: TableSchema) throws {
        let table = Bookkeeping.versionTable(schema.name)
        let wanted = schema.primaryKey.map(Bookkeeping.keyColumn) + ["hlc", "node", "deleted"]
        let existing = try db.query("SELECT name FROM pragma_table_info(?, 'main')", [.text(table)]).compactMap { $0[0].string }
        if existing == wanted { return }
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
    }

    static func dropTriggers(_ db: Database, except keep: Set<String> = []) throws {
        let rows = try db.query("SELECT name, tbl_name FROM sqlite_schema WHERE type = 'trigger' AND substr(name, 1, ?) = ?",
                                [.integer(Int64(Bookkeeping.prefix.utf8.count)), .text(Bookkeeping.prefix)])
        for row in rows {
            guard let name = row[0].string, let table = row[1].string, !keep.contains(table) else { continue }
            try db.execute("DROP TRIGGER IF EXISTS \(q(name))")
        }
    }

    /// The statements one captured change runs: bump the clock, log the row, link it globally, stamp its version.
    static func captureBody(_ schema: TableSchema, epoch: Int64, type: String, source: String, deleted: Bool) -> String {
        let clock = q(Bookkeeping.clockTable)
        let logColumns = deleted ? schema.primaryKey : schema.columns
        let valNames = logColumns.map { ", " + q(Bookkeeping.valueColumn($0)) }.joined()
        let valValues = logColumns.map { ", \(source).\(q($0))" }.joined()
        let keyNames = schema.primaryKey.map { q(Bookkeeping.keyColumn($0)) }.joined(separator: ", ")
        let keyValues = schema.primaryKey.map { "\(source).\(q($0))" }.joined(separator: ", ")
        return """
              UPDATE \(clock) SET hlc = max(hlc + 1, \(nowMsSQL) << \(RowVersion.logicalBits));
              INSERT INTO \(q(Bookkeeping.changeLog(schema.name))) (type, hlc, node, epoch\(valNames))
                SELECT '\(type)', hlc, node_id, \(epoch)\(valValues) FROM \(clock);
              INSERT INTO \(q(Bookkeeping.globalLog)) (change_table_id, table_name) VALUES (last_insert_rowid(), \(quoteLiteral(schema.name)));
              INSERT INTO \(q(Bookkeeping.versionTable(schema.name))) (\(keyNames), hlc, node, deleted)
                SELECT \(keyValues), hlc, node_id, \(deleted ? 1 : 0) FROM \(clock) WHERE true
                ON CONFLICT DO UPDATE SET hlc = excluded.hlc, node = excluded.node, deleted = excluded.deleted;
            """
    }

    static func createTriggers(_ db: Database, _ schema: TableSchema, epoch: Int64, plantedBugs: PlantedBugs = []) throws {
        let t = q(schema.name)
        let notApplying = "(SELECT applying FROM \(q(Bookkeeping.clockTable))) = 0"
        let sameKey = schema.primaryKey.map { "OLD.\(q($0)) IS NEW.\(q($0))" }.joined(separator: " AND ")
        for kind in ["insert", "update", "update_key", "delete"] {
            try db.execute("DROP TRIGGER IF EXISTS \(q(Bookkeeping.trigger(schema.name, kind)))")
        }
        try db.execute("""
            CREATE TRIGGER \(q(Bookkeeping.trigger(schema.name, "insert"))) AFTER INSERT ON \(t)
            WHEN \(notApplying)
            BEGIN
            \(captureBody(schema, epoch: epoch, type: "insert", source: "NEW", deleted: false))
            END
            """)
        try db.execute("""
            CREATE TRIGGER \(q(Bookkeeping.trigger(schema.name, "update"))) AFTER UPDATE ON \(t)
            WHEN \(notApplying) AND (\(sameKey))
            BEGIN
            \(captureBody(schema, epoch: epoch, type: "update", source: "NEW", deleted: false))
            END
            """)
        // A primary-key change is a delete of the old key followed by a write of the new one.
        try db.execute("""
            CREATE TRIGGER \(q(Bookkeeping.trigger(schema.name, "update_key"))) AFTER UPDATE ON \(t)
            WHEN \(notApplying) AND NOT (\(sameKey))
            BEGIN
            \(plantedBugs.contains(.keyChangeWithoutDelete) ? "" : captureBody(schema, epoch: epoch, type: "delete", source: "OLD", deleted: true))
            \(captureBody(schema, epoch: epoch, type: "update", source: "NEW", deleted: false))
            END
            """)
        try db.execute("""
            CREATE TRIGGER \(q(Bookkeeping.trigger(schema.name, "delete"))) AFTER DELETE ON \(t)
            WHEN \(notApplying)
            BEGIN
            \(captureBody(schema, epoch: epoch, type: "delete", source: "OLD", deleted: true))
            END
            """)
    }

    /// Removes every harmonylite trigger and bookkeeping table; user tables and their rows are untouched.
    public static func removeAll(_ db: Database) throws {
        try db.transaction(.immediate) {
            try dropTriggers(db)
            let tables = try db.query("SELECT name FROM sqlite_schema WHERE type = 'table' AND substr(name, 1, ?) = ?",
                                      [.integer(Int64(Bookkeeping.prefix.utf8.count)), .text(Bookkeeping.prefix)])
            for row in tables {
                if let name = row[0].string { try db.execute("DROP TABLE IF EXISTS \(q(name))") }
            }
        }
        db.clearStatementCache()
    }
}
