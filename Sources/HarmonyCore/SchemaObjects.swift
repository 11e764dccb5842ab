import HarmonyCodec
import HarmonySQLite

/// One user schema object (table, index, view or trigger) as DDL replication sees it: its latest definition and
/// the version that set it. Every node keeps the last known state of every object and resolves concurrent DDL per
/// object by `rank`, so every node ends with the same definition whatever order the DDL arrived in.
public struct SchemaObject: Sendable, Equatable {
    public var type: String
    public var name: String
    public var tableName: String
    /// The exact `CREATE` text as `sqlite_schema` holds it; nil once dropped.
    public var sql: String?
    /// How many times an object of this name was dropped before this one was created. Nodes that create the same
    /// name concurrently (the same migration run everywhere) make one object, whose definition the later version sets.
    public var generation: Int64
    /// The version of the latest CREATE, ALTER or DROP.
    public var version: RowVersion
    /// A table renamed with `ALTER TABLE ... RENAME TO`: on the new name, the old one; on the dropped old name, the new one.
    public var renamed: String?
    /// Columns renamed over the table's life, old name -> current name.
    public var columnRenames: [String: String] = [:]
    /// Every column name this node has seen in any definition of this table's generation (local knowledge, not
    /// sent): a row naming a column outside it was written under a definition that has not reached this node.
    public var knownColumns: Set<String> = []
    /// The version of the definition this one replaced on its author's node: a winning definition based on another
    /// than the one a node has was made concurrently with it (nil from senders that do not say).
    public var basedOn: RowVersion?
    /// For an index or trigger: the generation of the table (or view) it was made on. It goes with that generation:
    /// one made on a table another node had meanwhile dropped never lands on the table made again under that name.
    /// Nil from senders that do not say, read as zero.
    public var tableGeneration: Int64?

    /// A later generation beats everything of an earlier one (for an index or trigger, its table's generation first);
    /// within one generation a DROP is final (an ALTER that raced it loses whatever its version), and otherwise the
    /// later version wins.
    public var rank: (Int64, Int64, Int, RowVersion) {
        (isDependent ? tableGeneration ?? 0 : generation, isDependent ? generation : 0, sql == nil ? 1 : 0, version)
    }

    /// An index or trigger: it belongs to a table (`tableName`) and goes with it.
    public var isDependent: Bool { type == "index" || type == "trigger" }

    public static func outranks(_ a: SchemaObject, _ b: SchemaObject) -> Bool { a.rank > b.rank }

    public var definition: TableDefinitionVersion { TableDefinitionVersion(generation: generation, version: version) }
    public var description: String { "\(type) \(quoteIdentifier(name))" }
}

/// Reads and records user schema objects, and finds the DDL the application ran since the last look.
public enum SchemaObjects {
    static var table: String { quoteIdentifier(Bookkeeping.ddlTable) }
    /// ORDER BY terms for making recorded objects from scratch: tables, then views, then the indexes and triggers made
    /// on them, each in id order (an index made before its table's rename comes before the new name's entry).
    static let madeInDependencyOrder = "CASE type WHEN 'table' THEN 0 WHEN 'view' THEN 1 ELSE 2 END, id"

    /// Creates the state table; true when it did not exist (every object present then counts as pre-existing).
    static func ensureTable(_ db: Database) throws -> Bool {
        if try db.tableExists(Bookkeeping.ddlTable) {
            // State tables made before these columns existed gain them (empty: each definition fills them again).
            let present = Set(try db.query("SELECT name FROM pragma_table_info(?)", [.text(Bookkeeping.ddlTable)]).compactMap { $0[0].string })
            for (name, type) in laterColumns where !present.contains(name) {
                try db.execute("ALTER TABLE \(table) ADD COLUMN \(name) \(type)")
            }
            return false
        }
        try db.execute("""
            CREATE TABLE \(table) (
                id INTEGER PRIMARY KEY,
                type TEXT NOT NULL,
                name TEXT NOT NULL,
                tbl_name TEXT NOT NULL,
                sql TEXT,
                local_sql TEXT,
                generation INTEGER NOT NULL,
                hlc INTEGER NOT NULL,
                node INTEGER NOT NULL,
                renamed TEXT,
                column_renames BLOB,
                known_columns BLOB,
                based_hlc INTEGER,
                based_node INTEGER,
                table_generation INTEGER,
                UNIQUE (type, name)
            )
            """)
        return true
    }

    /// The user's objects as `sqlite_schema` has them now, tables first: no harmonylite objects, no `sqlite_`
    /// internals, no automatic indexes, no virtual or shadow tables, and only tables `filter` admits (with
    /// their indexes and triggers).
    static func current(_ db: Database, filter: TableFilter) throws -> [(type: String, name: String, tableName: String, sql: String)] {
        let tables = Set(try SchemaReader.userTables(db))
        let rows = try db.query("""
            SELECT type, name, tbl_name, sql FROM sqlite_schema
            WHERE sql IS NOT NULL AND type IN ('table', 'index', 'view', 'trigger')
            ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END, name
            """)
        return rows.compactMap { row in
            guard let type = row[0].string, let name = row[1].string, let tbl = row[2].string, let sql = row[3].string else { return nil }
            if name.hasPrefix(Bookkeeping.prefix) || tbl.hasPrefix(Bookkeeping.prefix) || name.hasPrefix("sqlite_") || tbl.hasPrefix("sqlite_") { return nil }
            switch type {
            case "table": guard tables.contains(name), filter.admits(name) else { return nil }
            case "index", "trigger": guard tables.contains(tbl), filter.admits(tbl) else { return nil }
            default: break
            }
            return (type, name, tbl, sql)
        }
    }

    static func object(_ row: [DatabaseValue]) throws -> (id: Int64, object: SchemaObject, localSQL: String?) {
        let renames = try decodeRenames(row[10])
        let object = SchemaObject(type: row[1].string ?? "", name: row[2].string ?? "", tableName: row[3].string ?? "", sql: row[4].string,
                                  generation: row[6].int64 ?? 0,
                                  version: RowVersion(hlc: row[7].int64 ?? 0, node: row[8].int64 ?? 0),
                                  renamed: row[9].string, columnRenames: renames)
        var known = object
        if row.count > 11, case .blob = row[11] { known.knownColumns = Set(try ChangeCapture.decodeNames(row[11])) }
        if row.count > 13, let hlc = row[12].int64, let node = row[13].int64 { known.basedOn = RowVersion(hlc: hlc, node: node) }
        if row.count > 14 { known.tableGeneration = row[14].int64 }
        return (row[0].int64 ?? 0, known, row[5].string)
    }

    /// Column renames as stored and sent: old, new, old, new... in old-name order (null when none).
    static func encodeRenames(_ renames: [String: String]) -> DatabaseValue {
        renames.isEmpty ? .null : ChangeCapture.encodeNames(renames.keys.sorted().flatMap { [$0, renames[$0]!] })
    }

    static func decodeRenames(_ value: DatabaseValue) throws -> [String: String] {
        guard case .blob = value else { return [:] }
        let names = try ChangeCapture.decodeNames(value)
        var renames: [String: String] = [:]
        for i in stride(from: 0, to: names.count - 1, by: 2) { renames[names[i]] = names[i + 1] }
        return renames
    }

    /// Every name a column has had under `renames` (old -> current name), its own included.
    static func lineage(of column: String, _ renames: [String: String]) -> Set<String> {
        Set(renames.compactMap { $0.value == column ? $0.key : nil }).union([column])
    }

    /// Columns `from` has that `to` lacks, paired with the column of `to` that shares a past name with each:
    /// the same column renamed differently on two nodes (concurrent renames, one of which lost), old -> new.
    static func sameColumns(_ from: [String], _ fromRenames: [String: String], as to: [String], _ toRenames: [String: String]) -> [String: String] {
        var out: [String: String] = [:]
        for column in from where !to.contains(column) {
            let past = lineage(of: column, fromRenames)
            if let match = to.first(where: { !from.contains($0) && !out.values.contains($0) && !lineage(of: $0, toRenames).isDisjoint(with: past) }) {
                out[column] = match
            }
        }
        return out
    }

    /// The winning definition's column renames, plus every name the losing definition gave one of its columns,
    /// mapped to that column's name in the winner: a row written under the loser then applies with its values.
    static func mergedRenames(winner: SchemaObject, loser: SchemaObject) -> [String: String] {
        guard winner.type == "table", loser.type == "table", winner.generation == loser.generation,
              let winnerSQL = winner.sql, let loserSQL = loser.sql,
              let winning = CreateTableText.columnDefinitions(winnerSQL)?.map(\.name),
              let losing = CreateTableText.columnDefinitions(loserSQL)?.map(\.name) else { return winner.columnRenames }
        var out = winner.columnRenames
        var pairs = sameColumns(losing, loser.columnRenames, as: winning, winner.columnRenames)
        for column in losing where winning.contains(column) { pairs[column] = column }
        for (column, current) in pairs.sorted(by: { $0.key < $1.key }) {
            for name in lineage(of: column, loser.columnRenames).sorted() where name != current && !winning.contains(name) && out[name] == nil {
                out[name] = current
            }
        }
        return out
    }

    /// The object's `CREATE` text in this database now; nil when it does not exist.
    static func currentSQL(_ db: Database, type: String, name: String) throws -> String? {
        try db.scalar("SELECT sql FROM sqlite_schema WHERE type = ? AND name = ?", [.text(type), .text(name)])?.string
    }

    static let columns = "id, type, name, tbl_name, sql, local_sql, generation, hlc, node, renamed, column_renames, known_columns, based_hlc, based_node, table_generation"
    /// Columns added to the state table after its first release, in order at the end of `columns`.
    static let laterColumns = [("known_columns", "BLOB"), ("based_hlc", "INTEGER"), ("based_node", "INTEGER"), ("table_generation", "INTEGER")]

    /// The same list for a state table that may predate `laterColumns` (one in an older snapshot): NULL for each missing.
    static func columns(in db: Database, schema: String) throws -> String {
        let present = Set(try db.query("SELECT name FROM \(schema).pragma_table_info(?)", [.text(Bookkeeping.ddlTable)]).compactMap { $0[0].string })
        return columns.split(separator: ",").map { String($0).trimmingWhitespace() }
            .map { name in laterColumns.contains { $0.0 == name } && !present.contains(name) ? "NULL" : name }
            .joined(separator: ", ")
    }

    /// Column names of a CREATE TABLE text (none for other objects or a dropped one).
    static func columnNames(_ sql: String?) -> [String] {
        sql.flatMap { CreateTableText.columnDefinitions($0)?.map(\.name) } ?? []
    }

    /// Every recorded object, in id order.
    public static func all(_ db: Database) throws -> [(id: Int64, object: SchemaObject, localSQL: String?)] {
        guard try db.tableExists(Bookkeeping.ddlTable) else { return [] }
        return try db.query("SELECT \(columns) FROM \(table) ORDER BY id").map(object)
    }

    static func load(_ db: Database, type: String, name: String) throws -> (id: Int64, object: SchemaObject, localSQL: String?)? {
        try db.query("SELECT \(columns) FROM \(table) WHERE type = ? AND name = ?", [.text(type), .text(name)]).first.map(object)
    }

    static func load(_ db: Database, id: Int64) throws -> SchemaObject? {
        try db.query("SELECT \(columns) FROM \(table) WHERE id = ?", [.integer(id)]).first.map(object)?.object
    }

    /// The generation of the table or view `name` in the schema state (nil: none recorded), for the indexes and
    /// triggers on it.
    static func generation(ofTableOrView name: String, _ db: Database) throws -> Int64? {
        try (load(db, type: "table", name: name) ?? load(db, type: "view", name: name))?.object.generation
    }

    /// Writes an object's state; returns its row id.
    @discardableResult
    static func store(_ db: Database, _ o: SchemaObject, localSQL: String?) throws -> Int64 {
        let renames = encodeRenames(o.columnRenames)
        var known = o.knownColumns.union(columnNames(o.sql)).union(columnNames(localSQL)).union(o.columnRenames.keys)
        if o.type == "table", let before = try load(db, type: o.type, name: o.name)?.object, before.generation == o.generation {
            known.formUnion(before.knownColumns)
        }
        try db.execute("""
            INSERT INTO \(table) (type, name, tbl_name, sql, local_sql, generation, hlc, node, renamed, column_renames, known_columns, based_hlc, based_node, table_generation)
            VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
            ON CONFLICT (type, name) DO UPDATE SET tbl_name = ?3, sql = ?4, local_sql = ?5, generation = ?6,
                hlc = ?7, node = ?8, renamed = ?9, column_renames = ?10, known_columns = ?11, based_hlc = ?12, based_node = ?13,
                table_generation = ?14
            """, [.text(o.type), .text(o.name), .text(o.tableName), o.sql.map { .text($0) } ?? .null, localSQL.map { .text($0) } ?? .null,
                  .integer(o.generation), .integer(o.version.hlc), .integer(o.version.node),
                  o.renamed.map { .text($0) } ?? .null, renames, known.isEmpty ? .null : ChangeCapture.encodeNames(known.sorted()),
                  o.basedOn.map { .integer($0.hlc) } ?? .null, o.basedOn.map { .integer($0.node) } ?? .null,
                  o.tableGeneration.map { .integer($0) } ?? .null])
        return try db.scalar("SELECT id FROM \(table) WHERE type = ? AND name = ?", [.text(o.type), .text(o.name)])?.int64 ?? 0
    }

    /// Advances the node's clock for one DDL and returns its version (the same rule local writes are stamped by).
    static func nextVersion(_ db: Database) throws -> RowVersion {
        let clock = quoteIdentifier(Bookkeeping.clockTable)
        try db.execute("UPDATE \(clock) SET hlc = max(hlc + 1, \(ChangeCapture.nowMsSQL) << \(RowVersion.logicalBits))", [])
        guard let row = try db.query("SELECT hlc, node_id FROM \(clock)").first, let hlc = row[0].int64, let node = row[1].int64 else {
            throw CorruptBookkeeping(description: "the clock row is missing")
        }
        return RowVersion(hlc: hlc, node: node)
    }

    /// Compares `sqlite_schema` with what this node last saw and records every difference as DDL of this node's,
    /// linked from the global log so it is published in order with the data written around it. `renamedTables`:
    /// old name -> new name for the tables this install found renamed. On the first look (no state yet) every
    /// object is recorded as pre-existing, with version zero: each node has its own copy. Tables are sent only on
    /// request (see `ReplicationNode+PreExisting`); views, indexes and triggers go out once, at version zero.
    /// `recreated`: tables dropped and created again since the last look (a new generation even if the text matches).
    /// `sentChanges`: global log ids this node has handed to the log, not yet marked published (`valuesCarried`).
    static func detect(_ db: Database, captured: [String: CapturedTable], renamedTables: [String: String], recreated: Set<String> = [],
                       filter: TableFilter, plantedBugs: PlantedBugs = [], sentChanges: Set<Int64> = []) throws {
        let sent = plantedBugs.contains(.sentRowsTellNothing) ? [] : sentChanges
        let fresh = try ensureTable(db)
        let now = try current(db, filter: filter)
        var known: [String: (id: Int64, object: SchemaObject, localSQL: String?)] = [:]
        for entry in try all(db) { known["\(entry.object.type)\u{0}\(entry.object.name)"] = entry }
        var changed: [Int64] = []
        var seen = Set<String>()
        for o in now {
            let key = "\(o.type)\u{0}\(o.name)"
            seen.insert(key)
            var before = known[key]
            if o.type == "table", recreated.contains(o.name), var dropped = before, dropped.localSQL != nil {
                // Seen as the DROP it was: what follows is a CREATE of the next generation.
                if dropped.object.sql != nil { dropped.object.sql = nil }
                dropped.localSQL = nil
                before = dropped
            }
            // An index or trigger of a table made again since the last look (SQLite's 12-step table rebuild, as
            // Django and Alembic run it: the same index made again on the new table in the same text) is on the
            // table's new generation: every other node drops the old generation's dependents with the old table, so
            // it is recorded again, or it would exist on this node only.
            let remadeWithItsTable = (o.type == "index" || o.type == "trigger") && recreated.contains(o.tableName)
                && !plantedBugs.contains(.rebuiltTableLosesDependents)
            if let before, before.localSQL == o.sql, !remadeWithItsTable { continue }
            if let before, before.object.sql == o.sql, !remadeWithItsTable {
                try store(db, before.object, localSQL: o.sql)  // now matches the replicated state (a restore created it)
                continue
            }
            var object = SchemaObject(type: o.type, name: o.name, tableName: o.tableName, sql: o.sql, generation: 0, version: .zero)
            if !fresh {
                object.version = try nextVersion(db)
                object.basedOn = before?.object.version
                if let before, before.localSQL != nil, before.object.sql != nil {
                    // Existing before and not dropped since: an ALTER.
                    object.generation = before.object.generation
                    object.renamed = before.object.renamed
                } else {
                    // A CREATE: after a drop, of the next generation.
                    object.generation = before.map { $0.object.sql == nil ? $0.object.generation + 1 : $0.object.generation } ?? 0
                    object.renamed = renamedTables.first { $0.value == o.name }?.key
                    // A RENAME TO replaced the old name's definition: a node that changed that table meanwhile tells
                    // by it that the rename was made without its change (`keepConcurrentDrops`).
                    if let from = object.renamed, let was = known["table\u{0}\(from)"]?.object, was.sql != nil,
                       !plantedBugs.contains(.concurrentDropUndone) {
                        object.basedOn = was.version
                    }
                }
            }
            if object.isDependent {
                // Tables and views come first in this look, so the table's state is already this look's.
                object.tableGeneration = try generation(ofTableOrView: o.tableName, db)
            }
            if o.type == "table" {
                object.columnRenames = captured[o.name]?.currentNameOf ?? [:]
                if let before, let old = before.localSQL {
                    // The schema history reads a column gone from the end and one added after it as a rename; RENAME
                    // COLUMN never changes the definition, so a "rename" that did is a DROP and an ADD seen together.
                    // Nor does it rename onto a column the last text had: the history is taken at installs, and can
                    // pair a column dropped again here with one another node's winning definition added meanwhile.
                    let was = Dictionary(CreateTableText.columnDefinitions(old)?.map { ($0.name, CreateTableText.body($0)) } ?? [], uniquingKeysWith: { a, _ in a })
                    let now = Dictionary(CreateTableText.columnDefinitions(o.sql)?.map { ($0.name, CreateTableText.body($0)) } ?? [], uniquingKeysWith: { a, _ in a })
                    // Older names the state holds are followed through this step below, not taken from the history:
                    // it is this node's alone, and reads a winning definition applied here as renames of its own.
                    object.columnRenames = object.columnRenames.filter { from, to in
                        if before.object.columnRenames[from] != nil, plantedBugs.contains(.historyOverridesStateRenames) { return true }
                        return was[from] != nil && now[from] == nil && was[to] == nil && was[from] == now[to]
                    }
                }
                if let old = before?.localSQL {
                    let key = captured[o.name]?.schema.primaryKey ?? []  // to tell rows with a change still to send
                    for (from, to) in CreateTableText.renamedColumns(from: old, to: o.sql) where object.columnRenames[from] == nil {
                        object.columnRenames[from] = to
                    }
                    // A column gone from the end and one of the same definition added are a rename only if values came
                    // along: a DROP plus an ADD seen together (the sidecar was down, or both ran between two looks)
                    // leave the new column at its default in every row not written since. Taken for a rename, the
                    // other nodes would keep the dropped column's values under the new name while this node has none.
                    if !plantedBugs.contains(.dropAndAddReadAsRename) {
                        let wasColumns = Set(columnNames(old))
                        for (from, to) in object.columnRenames.sorted(by: { $0.key < $1.key }) where wasColumns.contains(from) && !wasColumns.contains(to) {
                            if try valuesCarried(db, table: o.name, column: to, primaryKey: key, sent: sent) == false { object.columnRenames[from] = nil }
                        }
                    }
                    // Several new columns with the gone one's definition (RENAME COLUMN a TO b plus ADD COLUMN c of the
                    // same type, seen in one look): the renamed one kept its values, an added one holds only its
                    // default. When exactly one holds anything else, that is the rename; when none does, a rename and
                    // a DROP plus ADD leave the same rows.
                    for (from, candidates) in CreateTableText.ambiguousRenames(from: old, to: o.sql)
                    where object.columnRenames[from] == nil && !object.columnRenames.values.contains(where: candidates.contains) {
                        let holding = try candidates.filter { try valuesCarried(db, table: o.name, column: $0, primaryKey: key, sent: sent) == true }
                        if holding.count == 1, !plantedBugs.contains(.ambiguousRenameDropsValues) { object.columnRenames[from] = holding[0] }
                    }
                }
                if let before, let old = before.localSQL, before.object.sql != nil, object.generation == before.object.generation,
                   !plantedBugs.contains(.alterForgetsMergedRenames) {
                    // Renames the state holds that this node's schema history never saw (other nodes' DDL, a losing
                    // rename's names) stay, following what this ALTER renamed.
                    let oldColumns = Set(columnNames(old)), newColumns = Set(columnNames(o.sql))
                    let step = object.columnRenames.filter { oldColumns.contains($0.key) && !newColumns.contains($0.key) }
                    for (from, to) in before.object.columnRenames where object.columnRenames[from] == nil && !newColumns.contains(from) {
                        let current = step[to] ?? to
                        if newColumns.contains(current) { object.columnRenames[from] = current }  // gone with a dropped column otherwise
                    }
                }
                if let before, let old = before.localSQL, before.object.sql != nil, object.generation == before.object.generation,
                   let table = captured[o.name], !plantedBugs.contains(.addedValuesKeptLocal) {
                    // Values in an added column came from a column gone in the same look (written after the ADD, a
                    // row goes out whole): with none gone, there is nothing to look for, and no table to read.
                    let oldColumns = Set(columnNames(old)), newColumns = columnNames(o.sql)
                    let renamedTo = Set(object.columnRenames.filter { oldColumns.contains($0.key) }.values)
                    let added = newColumns.filter { !oldColumns.contains($0) && !renamedTo.contains($0) }
                    let gone = oldColumns.subtracting(newColumns).filter { object.columnRenames[$0] == nil }
                    if !gone.isEmpty { try sendAddedValues(db, table, columns: added) }
                }
                if let from = object.renamed, let was = known["table\u{0}\(from)"]?.object, was.sql != nil,
                   !plantedBugs.contains(.renameToForgetsMergedNames) {
                    // RENAME TO: the table keeps every name its columns had under the old name (losing renames' names
                    // included), so rows still written under them, sent to the old name, apply here.
                    let newColumns = Set(columnNames(o.sql))
                    for (old, current) in was.columnRenames where object.columnRenames[old] == nil && !newColumns.contains(old) && newColumns.contains(current) {
                        object.columnRenames[old] = current
                    }
                    object.knownColumns.formUnion(was.knownColumns)
                }
            }
            let id = try store(db, object, localSQL: o.sql)
            if !fresh {
                changed.append(id)
            } else if o.type != "table", !plantedBugs.contains(.preExistingDependentsKept) {
                // A view, index or trigger made before the first install goes out once, at version zero: it loses to
                // every recorded state and ties with every node's own copy, so it only fills gaps. Unlike a table's,
                // nothing would ever ask for it (no rows name it) when the application made it on this node alone
                // (before the sidecar first ran, while the others already replicated).
                changed.append(id)
            }
        }
        for (key, before) in known.sorted(by: { $0.value.id < $1.value.id }) where !seen.contains(key) && before.localSQL != nil {
            // Out of sight through the filter (a table listed in exclude_tables since, or an index on one) is not
            // dropped: recorded so, the DROP would take the table from every node that replicates it.
            let table = before.object.type == "view" ? before.object.name : before.object.tableName
            if !filter.admits(table), !plantedBugs.contains(.filteredDefinitionsApplied),
               try currentSQL(db, type: before.object.type, name: before.object.name) != nil { continue }
            var object = before.object
            object.sql = nil
            object.basedOn = object.version
            object.version = try nextVersion(db)
            object.renamed = object.type == "table" ? renamedTables[object.name] : nil
            changed.append(try store(db, object, localSQL: nil))
        }
        for id in changed { try queueForPublishing(db, id: id) }
    }

    /// Links one object's state (row `id`) into the global log, so it is published in order with the data around it.
    static func queueForPublishing(_ db: Database, id: Int64) throws {
        try db.execute("INSERT INTO \(quoteIdentifier(Bookkeeping.globalLog)) (change_table_id, table_name) VALUES (?, ?)",
                       [.integer(id), .text(Bookkeeping.ddlTable)])
    }

    /// Whether a column's values were carried over from another column (RENAME COLUMN) or left at its default (ADD
    /// COLUMN), told by the rows that have no change of this node's still to publish: true when one of them holds
    /// something other than the declared default (NULL when it declares none), false when all of them hold the default,
    /// nil when there are none. A pending row goes out with everything it holds now, whichever way the DDL is read, so
    /// it tells nothing; and with no other row either reading leaves every node the same values. A row whose change
    /// was sent already (`sent`, handed to the log and not yet acknowledged or marked) is not pending: its message
    /// names the old column, and read as a DROP, every other node loses the value this node keeps (harmonysim
    /// swarm seed 165: a rename seen while the row's message waited for the server).
    static func valuesCarried(_ db: Database, table: String, column: String, primaryKey: [String], sent: Set<Int64> = []) throws -> Bool? {
        let q = quoteIdentifier
        let declared = try db.scalar("SELECT dflt_value FROM pragma_table_info(?) WHERE name = ?", [.text(table), .text(column)])?.string
        let nonDefault = "t.\(q(column)) IS NOT (\(declared ?? "NULL"))"
        let log = Bookkeeping.changeLog(table), versions = Bookkeeping.versionTable(table)
        var settled = "1", arguments: [DatabaseValue] = []
        if !primaryKey.isEmpty, try db.tableExists(log), try db.tableExists(versions) {
            let logKey = primaryKey.map { "cl." + q(Bookkeeping.valueColumn($0)) }
            let sameVersion = primaryKey.map { "v.\(q(Bookkeeping.keyColumn($0))) IS cl.\(q(Bookkeeping.valueColumn($0)))" }.joined(separator: " AND ")
            settled = """
                (\(primaryKey.map { "t." + q($0) }.joined(separator: ", "))) NOT IN (
                    SELECT \(logKey.joined(separator: ", ")) FROM \(q(log)) AS cl
                    JOIN \(q(Bookkeeping.globalLog)) AS g ON g.change_table_id = cl.id AND g.table_name = ?1 AND g.state = 0
                        AND g.id NOT IN (SELECT value FROM json_each(?2))
                    JOIN \(q(versions)) AS v ON \(sameVersion) AND v.hlc = cl.hlc AND v.node = cl.node
                    WHERE \(logKey.map { "\($0) IS NOT NULL" }.joined(separator: " AND ")))
                """
            arguments = [.text(table), .text("[" + sent.sorted().map(String.init).joined(separator: ",") + "]")]
        }
        let row = try db.query("""
            SELECT EXISTS (SELECT 1 FROM \(q(table)) AS t WHERE \(settled) AND \(nonDefault)),
                   EXISTS (SELECT 1 FROM \(q(table)) AS t WHERE \(settled))
            """, arguments).first
        if row?[0].int64 == 1 { return true }
        return row?[1].int64 == 1 ? false : nil
    }

    /// Rows holding something other than the default in a column this look reads as added are queued again as this
    /// node's writes, newer than the DDL: every other node makes the column with its default, and a value this node
    /// holds there reached it otherwise (a RENAME COLUMN whose source one look cannot name, as `DROP COLUMN b; RENAME
    /// COLUMN a TO c` of two columns of one type; or a write already delivered under the old name, when a crash lost
    /// its acknowledgement and the row looked unsent). Sent with the versions it has, a row is skipped where that
    /// version is: harmonysim ddl-races seed 275 and swarm seed 464 kept a value on one node only.
    /// `writtenBefore`: only rows whose version is older (the rows another node may have applied without the columns).
    static func sendAddedValues(_ db: Database, _ table: CapturedTable, columns: [String], writtenBefore: RowVersion? = nil) throws {
        let key = table.schema.primaryKey
        guard !key.isEmpty, !columns.isEmpty else { return }
        let name = table.schema.name, q = quoteIdentifier
        let info = Dictionary(try db.query("SELECT name, dflt_value, hidden FROM pragma_table_xinfo(?)", [.text(name)]).compactMap { row in
            row[0].string.map { ($0, (declared: row[1].string, generated: (row[2].int64 ?? 0) >= 2)) }
        }, uniquingKeysWith: { a, _ in a })
        let holding = columns.compactMap { c in info[c].flatMap { $0.generated ? nil : "t.\(q(c)) IS NOT (\($0.declared ?? "NULL"))" } }
        guard !holding.isEmpty else { return }
        let keyValues = key.map { ", t.\(q($0))" }.joined()
        var older = ""
        if let writtenBefore {
            let sameKey = key.map { "v.\(q(Bookkeeping.keyColumn($0))) IS t.\(q($0))" }.joined(separator: " AND ")
            older = " AND EXISTS (SELECT 1 FROM \(q(Bookkeeping.versionTable(name))) AS v WHERE \(sameKey) AND v.hlc < \(writtenBefore.hlc))"
        }
        try db.execute("""
            INSERT INTO \(ChangeCapture.queueInsertTarget(keyCount: key.count))
            SELECT ?, 'update', ?, \(ChangeCapture.nowMsSQL), total_changes()\(keyValues) FROM \(q(name)) AS t
            WHERE (\(holding.joined(separator: " OR ")))\(older) ORDER BY \(key.map { "t." + q($0) }.joined(separator: ", "))
            """, [.text(name), .integer(table.epoch)])
    }

    /// The definition version of every table that exists in the replicated schema state, by name.
    static func tableStates(_ db: Database) throws -> [String: SchemaObject] {
        var out: [String: SchemaObject] = [:]
        for entry in try all(db) where entry.object.type == "table" { out[entry.object.name] = entry.object }
        return out
    }
}

/// Just enough of SQLite's lexer to move a CREATE INDEX statement to another table.
enum CreateIndexText {
    /// The statement with the table after its top-level ON replaced by `table`, quoted as `ALTER TABLE ... RENAME TO`
    /// writes it (`CREATE INDEX i ON "new" (c)`); nil when no ON is found.
    static func sql(_ sql: String, onTable table: String) -> String? {
        let chars = Array(sql.unicodeScalars)
        var i = 0, depth = 0, afterOn = false
        func word(at start: Int) -> Int {
            var end = start
            while end < chars.count, chars[end] == "_" || chars[end] == "$" || chars[end].properties.isAlphabetic
                || ("0"..."9").contains(chars[end]) || chars[end].value > 127 { end += 1 }
            return end
        }
        while i < chars.count {
            let c = chars[i]
            var end = i + 1
            switch c {
            case "'", "\"", "`", "[":
                let close: Unicode.Scalar = c == "[" ? "]" : c
                while end < chars.count {
                    if chars[end] == close {
                        if close != "]" && end + 1 < chars.count && chars[end + 1] == close { end += 2; continue }
                        end += 1
                        break
                    }
                    end += 1
                }
            case "-" where i + 1 < chars.count && chars[i + 1] == "-":
                while end < chars.count && chars[end] != "\n" { end += 1 }
                i = end
                continue
            case "/" where i + 1 < chars.count && chars[i + 1] == "*":
                end = i + 2
                while end + 1 < chars.count && !(chars[end] == "*" && chars[end + 1] == "/") { end += 1 }
                i = min(end + 2, chars.count)
                continue
            case "(": depth += 1
            case ")": depth -= 1
            default:
                if c.properties.isWhitespace { i += 1; continue }
                if c == "_" || c.properties.isAlphabetic || c.value > 127 { end = word(at: i) }
            }
            if afterOn {
                guard c != "(" && c != ")" && c != "'" else { return nil }
                let before = String(String.UnicodeScalarView(chars[..<i])), after = String(String.UnicodeScalarView(chars[end...]))
                return before + quoteIdentifier(table) + after
            }
            if depth == 0, end - i == 2, String(String.UnicodeScalarView(chars[i..<end])).uppercased() == "ON" { afterOn = true }
            i = end
        }
        return nil
    }
}

/// Just enough of SQLite's lexer to cut a CREATE TABLE statement into its column definitions.
enum CreateTableText {
    /// Each column's name and definition text as written, in order; nil when the text has no column list.
    static func columnDefinitions(_ sql: String) -> [(name: String, text: String)]? {
        let chars = Array(sql.unicodeScalars)
        var i = 0, depth = 0
        var segments: [String] = []
        var start: Int?
        while i < chars.count {
            let c = chars[i]
            switch c {
            case "'", "\"", "`", "[":
                let close: Unicode.Scalar = c == "[" ? "]" : c
                i += 1
                while i < chars.count {
                    if chars[i] == close {
                        if close != "]" && i + 1 < chars.count && chars[i + 1] == close { i += 2; continue }
                        break
                    }
                    i += 1
                }
            case "-" where i + 1 < chars.count && chars[i + 1] == "-":
                while i < chars.count && chars[i] != "\n" { i += 1 }
            case "/" where i + 1 < chars.count && chars[i + 1] == "*":
                i += 2
                while i + 1 < chars.count && !(chars[i] == "*" && chars[i + 1] == "/") { i += 1 }
                i += 1
            case "(":
                depth += 1
                if depth == 1 { start = i + 1 }
            case ")":
                depth -= 1
                if depth == 0, let s = start {
                    segments.append(String(String.UnicodeScalarView(chars[s..<i])))
                    return definitions(segments)
                }
            case "," where depth == 1:
                if let s = start { segments.append(String(String.UnicodeScalarView(chars[s..<i]))) }
                start = i + 1
            default: break
            }
            i += 1
        }
        return nil
    }

    /// Columns renamed between two CREATE texts of one table, old name -> new name, found by their definitions: a
    /// column only the old text has and one only the new text has, with the same definition after the name (type,
    /// constraints, default) and no other column sharing it. This tells `DROP COLUMN a; RENAME COLUMN b TO c`, run
    /// together, from a drop and an add, where column positions alone cannot.
    static func renamedColumns(from oldSQL: String, to newSQL: String) -> [String: String] {
        guard let old = columnDefinitions(oldSQL), let new = columnDefinitions(newSQL) else { return [:] }
        let oldNames = Set(old.map(\.name)), newNames = Set(new.map(\.name))
        let gone = old.filter { !newNames.contains($0.name) }, came = new.filter { !oldNames.contains($0.name) }
        var out: [String: String] = [:]
        for c in came {
            let b = body(c)
            let candidates = gone.filter { body($0) == b }
            guard candidates.count == 1, came.filter({ body($0) == b }).count == 1 else { continue }
            out[candidates[0].name] = c.name
        }
        return out
    }

    /// Gone columns that `renamedColumns` could not pair because several new columns share their definition (and no
    /// other gone column does): each with those candidates, in column order.
    static func ambiguousRenames(from oldSQL: String, to newSQL: String) -> [(from: String, candidates: [String])] {
        guard let old = columnDefinitions(oldSQL), let new = columnDefinitions(newSQL) else { return [] }
        let oldNames = Set(old.map(\.name)), newNames = Set(new.map(\.name))
        let gone = old.filter { !newNames.contains($0.name) }, came = new.filter { !oldNames.contains($0.name) }
        return gone.compactMap { g in
            let b = body(g)
            let candidates = came.filter { body($0) == b }.map(\.name)
            guard candidates.count > 1, gone.filter({ body($0) == b }).count == 1 else { return nil }
            return (g.name, candidates)
        }
    }

    /// A column's definition after its name (type, constraints, default), as RENAME COLUMN leaves it.
    static func body(_ d: (name: String, text: String)) -> String {
        var rest = Substring(d.text)
        if let first = rest.first, "\"`['".contains(first) {
            let close: Character = first == "[" ? "]" : first
            rest = rest.dropFirst()
            while let ch = rest.first {
                rest = rest.dropFirst()
                if ch == close { if close != "]", rest.first == close { rest = rest.dropFirst(); continue }; break }
            }
        } else {
            rest = rest.drop { !$0.isWhitespace && $0 != "(" }
        }
        return String(rest).trimmingWhitespace().uppercased()
    }

    static func definitions(_ segments: [String]) -> [(name: String, text: String)] {
        var out: [(String, String)] = []
        for raw in segments {
            var text = raw.trimmingWhitespace()
            // Comments before the name (between a comma and the column) are not part of its definition.
            while text.hasPrefix("--") || text.hasPrefix("/*") {
                if text.hasPrefix("--") {
                    text = String(text.drop { $0 != "\n" }).trimmingWhitespace()
                } else {
                    let scalars = Array(text.unicodeScalars)
                    var j = 2
                    while j + 1 < scalars.count && !(scalars[j] == "*" && scalars[j + 1] == "/") { j += 1 }
                    text = j + 2 <= scalars.count ? String(String.UnicodeScalarView(scalars[(j + 2)...])).trimmingWhitespace() : ""
                }
            }
            guard let first = text.unicodeScalars.first else { continue }
            let name: String
            if "\"`[".unicodeScalars.contains(first) || first == "'" {
                let close: Character = first == "[" ? "]" : Character(first)
                var n = "", rest = text.dropFirst()
                while let ch = rest.first {
                    rest = rest.dropFirst()
                    if ch == close {
                        if close != "]", rest.first == close { n.append(ch); rest = rest.dropFirst(); continue }
                        break
                    }
                    n.append(ch)
                }
                name = n
            } else {
                name = String(text.prefix { !$0.isWhitespace && $0 != "(" })
                if ["CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"].contains(name.uppercased()) { break }
            }
            out.append((name, text))
        }
        return out
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s = s.dropFirst() }
        while let l = s.last, l.isWhitespace { s = s.dropLast() }
        return String(s)
    }
}
