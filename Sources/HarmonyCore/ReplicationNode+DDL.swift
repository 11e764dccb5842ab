import HarmonyCodec
import HarmonySQLite

/// Replicated DDL: publishing the schema state's changes, and applying other nodes' with per-object
/// last-writer-wins (see `SchemaObject.rank`).
extension ReplicationNode {
    static let definitionSchemaHash = "ddl-1"

    /// The message for one entry of the schema state, as it is now (only the latest definition matters).
    func definitionRecord(id: Int64) throws -> ChangeRecord? {
        guard let o = try SchemaObjects.load(requireDatabase(), id: id) else { return nil }
        func text(_ s: String?) -> DatabaseValue { s.map { .text($0) } ?? .null }
        let renames = SchemaObjects.encodeRenames(o.columnRenames)
        let key = [ChangeRecord.Column("type", .text(o.type)), ChangeRecord.Column("name", .text(o.name))]
        return ChangeRecord(originNode: config.nodeID, table: Bookkeeping.ddlTable, operation: .upsert, primaryKey: key,
                            row: key + [ChangeRecord.Column("tbl_name", .text(o.tableName)), ChangeRecord.Column("sql", text(o.sql)),
                                        ChangeRecord.Column("generation", .integer(o.generation)),
                                        ChangeRecord.Column("renamed", text(o.renamed)), ChangeRecord.Column("column_renames", renames)],
                            version: o.version, schemaHash: Self.definitionSchemaHash)
    }

    static func schemaObject(_ r: ChangeRecord) throws -> SchemaObject {
        func value(_ name: String) -> DatabaseValue { r.row.first { $0.name == name }?.value ?? .null }
        guard let type = value("type").string, ["table", "index", "view", "trigger"].contains(type),
              let name = value("name").string, !name.isEmpty, !name.hasPrefix(Bookkeeping.prefix),
              let table = value("tbl_name").string, let generation = value("generation").int64, generation >= 0
        else { throw ShapeMismatch(description: "schema change without a valid type, name, table or generation") }
        let sql = value("sql").string
        if let sql, !sql.uppercased().hasPrefix("CREATE ") { throw ShapeMismatch(description: "schema change for \(quoteIdentifier(name)) is not a CREATE statement") }
        let renames = try SchemaObjects.decodeRenames(value("column_renames"))
        return SchemaObject(type: type, name: name, tableName: table, sql: sql, generation: generation,
                            version: r.version, renamed: value("renamed").string, columnRenames: renames)
    }

    /// One schema change from another node, inside the apply transaction. It runs only if it outranks what this
    /// node has for the object (DDL the application ran here meanwhile is recorded first, so it competes too).
    /// DDL that SQLite refuses here is reported and recorded as this node's state of the object, never retried
    /// forever; the stream moves on.
    func applyDefinition(_ db: Database, shard: Int, _ message: IncomingMessage, _ record: ChangeRecord,
                         events: inout [ReplicationEvent]) throws -> ApplyOutcome {
        guard config.replicateDDL else { return .consumed }
        let incoming: SchemaObject
        do {
            incoming = try Self.schemaObject(record)
        } catch {
            try park(db, shard: shard, message, reason: "\(error)", events: &events)
            return .consumed
        }
        if try db.scalar("PRAGMA schema_version")?.int64 != schemaVersion { try refreshCapture() }
        let local = try SchemaObjects.load(db, type: incoming.type, name: incoming.name)
        let wins = local.map { local in
            config.plantedBugs.contains(.ddlDropNotFinal) ? (incoming.generation, incoming.version) > (local.object.generation, local.object.version)
                : SchemaObject.outranks(incoming, local.object)
        } ?? true
        guard wins || config.plantedBugs.contains(.ddlLastArrivalWins) else {
            events.append(.applied(shard: shard, sequence: message.sequence, table: Bookkeeping.ddlTable, version: record.version, won: false))
            return .consumed
        }
        let attempted = try attempt(db, incoming)
        let now = attempted.now
        var failure = attempted.failure
        var stored = incoming
        if failure != nil, ["index", "trigger"].contains(incoming.type), incoming.sql != nil, try !db.tableExists(incoming.tableName) {
            // Made on a table that was dropped here meanwhile: it went with that table, as on the nodes that had it.
            stored.sql = nil
            failure = nil
        }
        try SchemaObjects.store(db, stored, localSQL: now)
        if incoming.type == "table" && incoming.sql == nil {
            // Its indexes and triggers went with it, in the same version.
            try db.execute("""
                UPDATE \(SchemaObjects.table) SET sql = NULL, local_sql = NULL, hlc = ?, node = ?
                WHERE type IN ('index', 'trigger') AND tbl_name = ? AND sql IS NOT NULL
                """, [.integer(incoming.version.hlc), .integer(incoming.version.node), .text(incoming.name)])
        }
        if failure == nil { try retryUnappliedDefinitions(db) }
        // Side effects on other objects (a view that named a renamed table, rewritten by SQLite) are found by the
        // re-install as DDL of this node's and published: every node that saw the same side effect publishes the
        // same text, and a node that did not (the object was made elsewhere after the rename) receives it.
        try refreshCapture()
        if let failure, now != stored.sql {
            events.append(.schemaChangeFailed(shard: shard, sequence: message.sequence, object: incoming.description, error: failure))
        } else {
            events.append(.schemaChangeApplied(shard: shard, sequence: message.sequence, object: incoming.description,
                                               dropped: incoming.sql == nil, version: incoming.version))
        }
        return .consumed
    }

    /// Objects whose winning definition SQLite refused earlier (an index that arrived before its table's rename, a
    /// view over a table not here yet) are tried again after each schema change applied here.
    func retryUnappliedDefinitions(_ db: Database) throws {
        let unapplied = try db.query("""
            SELECT \(SchemaObjects.columns) FROM \(SchemaObjects.table)
            WHERE sql IS NOT NULL AND local_sql IS NOT sql ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, id
            """).map(SchemaObjects.object)
        for entry in unapplied {
            let (now, failure) = try attempt(db, entry.object)
            if failure == nil { try SchemaObjects.store(db, entry.object, localSQL: now) }
        }
    }

    /// Runs one definition inside a savepoint (undone if SQLite refuses it); returns the object's `sqlite_schema`
    /// text afterwards and SQLite's reason when it refused.
    func attempt(_ db: Database, _ o: SchemaObject) throws -> (now: String?, failure: String?) {
        try db.execute("SAVEPOINT harmonylite_ddl", [])
        var failure: String?
        do {
            try execute(db, o)
        } catch {
            try db.execute("ROLLBACK TO harmonylite_ddl", [])
            failure = (error as? SQLiteError)?.message ?? "\(error)"
        }
        try db.execute("RELEASE harmonylite_ddl", [])
        let now = try SchemaObjects.currentSQL(db, type: o.type, name: o.name)
        return (now, failure)
    }

    /// Makes this database's object match `o`'s definition exactly (`sqlite_schema` text included).
    ///
    /// With `legacy_alter_table` on: SQLite then neither rewrites nor re-checks views and trigger bodies elsewhere in
    /// the schema, so one view broken here (naming a table another node dropped) cannot make every later ALTER fail.
    /// The node that ran the DDL publishes what it did to its views and triggers; those arrive as their own changes.
    func execute(_ db: Database, _ o: SchemaObject) throws {
        try db.execute("PRAGMA legacy_alter_table = ON")
        defer { try? db.execute("PRAGMA legacy_alter_table = OFF") }
        try executeDefinition(db, o)
    }

    func executeDefinition(_ db: Database, _ o: SchemaObject) throws {
        let q = quoteIdentifier
        let existing = try SchemaObjects.currentSQL(db, type: o.type, name: o.name)
        guard let sql = o.sql else {
            if o.type == "table", let to = o.renamed, existing != nil, try !db.tableExists(to) {
                try db.execute("ALTER TABLE \(q(o.name)) RENAME TO \(q(to))")  // the rename's other half may not be here yet
            } else if existing != nil {
                try db.execute("DROP \(o.type.uppercased()) \(q(o.name))")
            }
            return
        }
        if existing == sql { return }
        guard o.type == "table" else {
            if existing != nil { try db.execute("DROP \(o.type.uppercased()) \(q(o.name))") }
            try db.execute(sql)
            return
        }
        if existing == nil {
            if let from = o.renamed, try db.tableExists(from) {
                try db.execute("ALTER TABLE \(q(from)) RENAME TO \(q(o.name))")
            } else {
                try db.execute(sql)
                return
            }
        }
        try transformTable(db, o.name, to: sql, columnRenames: o.columnRenames)
    }

    /// The ALTERs that turn the local table into the target, as the node that changed it ran them: renamed columns,
    /// dropped columns, then added ones with their definition text cut from the target (SQLite edits the CREATE text
    /// the same way on every node). If the result is not the target's exact text, the table is rebuilt.
    func transformTable(_ db: Database, _ table: String, to target: String, columnRenames: [String: String]) throws {
        let q = quoteIdentifier
        func localSQL() throws -> String? { try SchemaObjects.currentSQL(db, type: "table", name: table) }
        if try localSQL() == target { return }
        if let definitions = CreateTableText.columnDefinitions(target) {
            try db.execute("SAVEPOINT harmonylite_alter", [])
            do {
                let wanted = definitions.map(\.name)
                var local = try db.query("SELECT name FROM pragma_table_info(?)", [.text(table)]).compactMap { $0[0].string }
                for old in columnRenames.keys.sorted() {
                    let new = columnRenames[old]!
                    guard local.contains(old), !local.contains(new), wanted.contains(new), !wanted.contains(old) else { continue }
                    try db.execute("ALTER TABLE \(q(table)) RENAME COLUMN \(q(old)) TO \(q(new))")
                    local = local.map { $0 == old ? new : $0 }
                }
                for column in local where !wanted.contains(column) {
                    try db.execute("ALTER TABLE \(q(table)) DROP COLUMN \(q(column))")
                }
                for d in definitions where !local.contains(d.name) {
                    try db.execute("ALTER TABLE \(q(table)) ADD COLUMN \(d.text)")
                }
                if try localSQL() == target {
                    try db.execute("RELEASE harmonylite_alter", [])
                    return
                }
            } catch let error as SQLiteError where !error.isTransientStorageFailure {
                // A column SQLite cannot drop or add this way (indexed, a key, NOT NULL without default): rebuild.
            }
            try db.execute("ROLLBACK TO harmonylite_alter", [])
            try db.execute("RELEASE harmonylite_alter", [])
        }
        if config.plantedBugs.contains(.ddlWithoutRebuild) { return }
        try rebuildTable(db, table, as: target, columnRenames: columnRenames)
    }

    /// Creates the table anew from the target's exact text and copies the rows across (columns with the same name,
    /// after renames). Its indexes and triggers are made again where they still fit; their own replicated state
    /// decides the rest. Versions and tombstones stay: they live in the version table, keyed like the rows.
    func rebuildTable(_ db: Database, _ table: String, as target: String, columnRenames: [String: String]) throws {
        let q = quoteIdentifier
        let aside = Bookkeeping.prefix + "_rebuild"
        let dependents = try db.query("""
            SELECT sql FROM sqlite_schema WHERE tbl_name = ? AND type IN ('index', 'trigger') AND sql IS NOT NULL
            AND substr(name, 1, ?) <> ? ORDER BY type, name
            """, [.text(table), .integer(Int64(Bookkeeping.prefix.utf8.count)), .text(Bookkeeping.prefix)]).compactMap { $0[0].string }
        let oldColumns = try db.query("SELECT name FROM pragma_table_xinfo(?) WHERE hidden = 0", [.text(table)]).compactMap { $0[0].string }
        // (Under legacy_alter_table, see `execute`: views and triggers elsewhere keep naming the table.)
        try db.execute("ALTER TABLE \(q(table)) RENAME TO \(q(aside))")
        try db.execute(target)
        let newColumns = Set(try db.query("SELECT name FROM pragma_table_xinfo(?) WHERE hidden = 0", [.text(table)]).compactMap { $0[0].string })
        let copied = oldColumns.compactMap { old -> (String, String)? in
            let new = columnRenames[old] ?? old
            return newColumns.contains(new) ? (old, new) : nil
        }
        if !copied.isEmpty {
            try db.execute("INSERT INTO \(q(table)) (\(copied.map { q($0.1) }.joined(separator: ", "))) SELECT \(copied.map { q($0.0) }.joined(separator: ", ")) FROM \(q(aside))")
        }
        try db.execute("DROP TABLE \(q(aside))")
        for sql in dependents {
            try db.execute("SAVEPOINT harmonylite_dependent", [])
            do { try db.execute(sql) } catch { try db.execute("ROLLBACK TO harmonylite_dependent", []) }
            try db.execute("RELEASE harmonylite_dependent", [])
        }
    }

    /// With replicated DDL, where a row written under another definition of its table stands. `.current`: apply as
    /// usual. `.older`: written under a definition this node has since replaced (a later ALTER, or one that won a
    /// race): apply, leaving out columns the table no longer has. `.newer`: its definition has not reached this node
    /// yet; wait for it. `.gone`: the table it was written to was dropped (an earlier generation, or this one dropped): discard.
    enum DefinitionStanding { case current, older, newer, gone }

    func standing(of record: ChangeRecord, in table: String) -> DefinitionStanding {
        guard config.replicateDDL, let theirs = record.definition, let ours = tableStates[table] else { return .current }
        if theirs.generation < ours.generation { return .gone }
        if theirs.generation > ours.generation { return .newer }
        if ours.sql == nil { return .gone }
        if theirs.version == ours.version { return .current }
        if config.plantedBugs.contains(.applyNewerDefinitionStripped) { return .older }
        return theirs.version < ours.version ? .older : .newer
    }
}
