import HarmonyCodec
import HarmonySQLite

/// Applying a message's new rows of one table in multi-row statements.
///
/// One change at a time costs two statements (the version, then the row), and SQLite's fixed cost of a statement
/// (bind, step, halt, reset) was a sixth of what a receiving node spent applying a bulk load. A bulk load's messages
/// carry new rows: keys none of which the table has a version for. Such a run cannot conflict with a row here, so it
/// goes as one multi-row INSERT of versions and one of rows, and every change in it wins (a key no version names is
/// new here, as the per-change upsert would find).
///
/// The statements are `INSERT OR FAIL`, not upserts: an upsert's DO UPDATE, or any statement that could fail part
/// way, makes SQLite copy each page a multi-row statement touches into a statement journal first (beyond 64 KiB, into
/// a file), which cost more than it saved. If a row does conflict (one without a version, which capture never
/// leaves) or breaks a constraint, the message is applied again a change at a time (`ConstraintFailedWithoutSavepoint`).
extension ReplicationNode {
    /// The most rows one statement carries: runs are cut into powers of two up to this, so a table has at most
    /// nine statement shapes of each kind.
    static let batchApplyRowsMax = 256
    /// The most parameters one statement binds: a prepared statement's program grows with its rows times columns,
    /// and each table keeps up to nine sizes of each, so wide tables get fewer rows a statement (a wide row's own
    /// work outweighs a statement's fixed cost anyway).
    static let batchApplyParametersMax = 2_048

    struct BatchApplySQL {
        var insertVersions: String
        var insertRows: String
        /// Whether any of `rows` keys has a version (`keysAreNew`).
        var probeKeys: String
        /// Whether any key between two has a version (the same for every row count).
        var probeRange: String
    }

    struct BatchApplyKey: Hashable {
        var table: String
        var rows: Int
    }

    /// The change a record makes if it may join a run: an upsert of exactly this node's shape and current definition
    /// (what `applyRecord` would apply straight away: no alias, pause, park or mapping), keyed by one column. Nil:
    /// the record takes `applyRecord`.
    func appendableChange(_ record: ChangeRecord) -> ResolvedChange? {
        let bugs = config.plantedBugs
        guard record.operation == .upsert, record.primaryKey.count == 1, !record.table.hasPrefix(Bookkeeping.prefix),
              !bugs.contains(.applyInArrivalOrder), !bugs.contains(.dropTombstones), !bugs.contains(.dropSchemaHashOnDecode),
              !(bugs.contains(.skipOwnMessages) && record.originNode == config.nodeID),
              let table = captured[record.table], record.schemaHash == table.schema.hash,
              standing(of: record, in: record.table) == .current
        else { return nil }
        return try? resolveExactShape(record, against: table.schema)
    }

    /// Applies a run of `appendableChange`s of one table, in order, and records each outcome as `applyRecord` does.
    /// New keys go in multi-row statements (`keysAreNew`); any other run, a change at a time. Only inside a message's
    /// own savepoint (see the type's comment).
    func applyRun(_ db: Database, shard: Int, _ message: IncomingMessage, _ run: [ResolvedChange],
                  events: inout [ReplicationEvent]) throws {
        guard !run.isEmpty else { return }
        do {
            if run.count > 1, try keysAreNew(db, run) {
                try insertAppended(db, run)
                for change in run {
                    events.append(.applied(shard: shard, sequence: message.sequence, table: change.table.name, version: change.version, won: true))
                }
                return
            }
            for change in run {
                let won = try applyLWW(db, change)
                events.append(.applied(shard: shard, sequence: message.sequence, table: change.table.name, version: change.version, won: won))
            }
        } catch let error as SQLiteError where error.isConstraint || error.primaryCode == 20 /* SQLITE_MISMATCH */ {
            throw ConstraintFailedWithoutSavepoint()
        }
    }

    /// Whether the run's keys are distinct and none of them has a version here: integer keys with no version between
    /// the smallest and the largest, or else one probe of the version table's key index per statement's worth of keys
    /// (the shards interleave a bulk load's keys, so a message's key range often holds other messages' rows). Both
    /// compare as the index does: a real key there equal to an integer one numerically is found; text under the
    /// key's collation too.
    func keysAreNew(_ db: Database, _ run: [ResolvedChange]) throws -> Bool {
        var seen = Set<DatabaseValue>(minimumCapacity: run.count)
        for change in run {
            guard change.key[0] != .null, seen.insert(change.key[0]).inserted else { return false }
        }
        let table = run[0].table
        let sizes = Self.statementSizes(run.count, parametersPerRow: 1, limit: parameterLimit(db))
        // One shard's bulk load: nothing at all between the run's smallest and largest integer key, one index seek.
        let integers = run.compactMap { change -> Int64? in if case .integer(let k) = change.key[0] { k } else { nil } }
        if integers.count == run.count, let low = integers.min(), let high = integers.max() {
            let range = try db.cached(batchApplySQL(table, rows: sizes[0]).probeRange)
            try range.bind([.integer(low), .integer(high)])
            let found = try range.step()
            range.reset()
            if !found { return true }
        }
        var start = 0
        for rows in sizes {
            let probe = try db.cached(batchApplySQL(table, rows: rows).probeKeys)
            try probe.bind(run[start..<(start + rows)].map { $0.key[0] })
            let found = try probe.step()
            probe.reset()
            if found { return false }
            start += rows
        }
        return true
    }

    /// The run's versions, then its rows, in statements of `statementSizes` rows.
    func insertAppended(_ db: Database, _ run: [ResolvedChange]) throws {
        let schema = run[0].table
        var start = 0
        for rows in Self.statementSizes(run.count, parametersPerRow: max(schema.columns.count, 4), limit: parameterLimit(db)) {
            let sql = batchApplySQL(schema, rows: rows)
            var versions: [DatabaseValue] = [], values: [DatabaseValue] = []
            versions.reserveCapacity(rows * 4)
            values.reserveCapacity(rows * schema.columns.count)
            for change in run[start..<(start + rows)] {
                versions.append(change.key[0])
                versions.append(.integer(change.version.hlc))
                versions.append(.integer(change.version.node))
                versions.append(.integer(0))
                for column in change.row { values.append(column.value) }
            }
            try db.cached(sql.insertVersions).execute(versions)
            try db.cached(sql.insertRows).execute(values)
            start += rows
        }
    }

    func parameterLimit(_ db: Database) -> Int { min(db.variableLimit, Self.batchApplyParametersMax) }

    /// `count` rows as statement sizes: as many of the largest that fits SQLite's limit on parameters as count
    /// allows, then the remainder's powers of two.
    static func statementSizes(_ count: Int, parametersPerRow: Int, limit: Int) -> [Int] {
        var largest = batchApplyRowsMax
        while largest > 1 && largest * parametersPerRow > limit { largest /= 2 }
        var sizes = Array(repeating: largest, count: count / largest)
        var rest = count % largest, size = largest / 2
        while rest > 0 {
            if rest >= size { sizes.append(size); rest -= size }
            size /= 2
        }
        return sizes
    }

    /// The multi-row inserts and key probes for `rows` changes of the table's exact shape.
    func batchApplySQL(_ schema: TableSchema, rows: Int) -> BatchApplySQL {
        let key = BatchApplyKey(table: schema.name, rows: rows)
        if let cached = batchApplySQLCache[key] { return cached }
        func values(_ count: Int) -> String {
            let row = "(" + Array(repeating: "?", count: count).joined(separator: ", ") + ")"
            return Array(repeating: row, count: rows).joined(separator: ", ")
        }
        let versions = quoteIdentifier(Bookkeeping.versionTable(schema.name))
        let keyColumn = quoteIdentifier(Bookkeeping.keyColumn(schema.primaryKey[0]))
        let sql = BatchApplySQL(
            insertVersions: """
                INSERT OR FAIL INTO \(versions) (\(keyColumn), hlc, node, deleted) VALUES \(values(4))
                """,
            insertRows: """
                INSERT OR FAIL INTO \(quoteIdentifier(schema.name)) (\(schema.columns.map(quoteIdentifier).joined(separator: ", ")))
                VALUES \(values(schema.columns.count))
                """,
            probeKeys: "SELECT 1 FROM \(versions) WHERE \(keyColumn) IN (\(Array(repeating: "?", count: rows).joined(separator: ", "))) LIMIT 1",
            probeRange: "SELECT 1 FROM \(versions) WHERE \(keyColumn) BETWEEN ? AND ? LIMIT 1")
        batchApplySQLCache[key] = sql
        return sql
    }
}
