import HarmonyCodec
import HarmonySQLite

/// A replicated table's shape as the capture triggers and the apply path see it.
public struct TableSchema: Sendable, Equatable {
    public var name: String
    /// Writable columns in declaration order (generated and hidden columns are left out).
    public var columns: [String]
    /// Primary-key columns in key order.
    public var primaryKey: [String]
    /// Collation of each primary-key column, copied onto the version table's key.
    public var primaryKeyCollations: [String]
    /// Each column's declared DEFAULT as SQL text ("NULL" when none), aligned with `columns`.
    public var defaults: [String] = []
    /// Hash of columns, declared types, NOT NULL and key positions: two nodes with the same hash can exchange rows.
    public var hash: String

    public var nonKeyColumns: [String] { columns.filter { !primaryKey.contains($0) } }

    /// `WHERE` clause matching one row of the table by its key, one `?` per key column in key order.
    var rowKeyMatch: String { primaryKey.map { "\(quoteIdentifier($0)) IS ?" }.joined(separator: " AND ") }
    /// The same row's entry in its version table.
    var versionKeyMatch: String { primaryKey.map { "\(quoteIdentifier(Bookkeeping.keyColumn($0))) IS ?" }.joined(separator: " AND ") }
}

public enum SchemaError: Error, CustomStringConvertible, Equatable {
    case noPrimaryKey([String])
    case noSuchTable(String)

    public var description: String {
        switch self {
        case .noPrimaryKey(let tables):
            let list = tables.map { quoteIdentifier($0) }.joined(separator: ", ")
            return "table(s) \(list) have no PRIMARY KEY. harmonylite identifies a row on every node by its "
                + "primary key (rowids differ from node to node), so it refuses to replicate these tables. "
                + "Add a PRIMARY KEY, or list the tables under exclude_tables."
        case .noSuchTable(let t): return "table \(quoteIdentifier(t)) does not exist"
        }
    }
}

/// Reads user tables and their schemas from a connection.
public enum SchemaReader {
    /// Ordinary user tables, sorted by name: virtual, shadow, `sqlite_*` and bookkeeping tables are skipped.
    public static func userTables(_ db: Database) throws -> [String] {
        let rows = try db.query("SELECT name, type FROM pragma_table_list WHERE schema = 'main'")
        return rows.compactMap { row -> String? in
            guard case .text(let name) = row[0], case .text(let type) = row[1], type == "table" else { return nil }
            if name.hasPrefix("sqlite_") || name.hasPrefix(Bookkeeping.prefix) { return nil }
            return name
        }.sorted()
    }

    /// Virtual tables (FTS, R*Tree...), sorted by name: their modules keep their own storage, which is not captured.
    public static func virtualTables(_ db: Database) throws -> [String] {
        try db.query("SELECT name FROM pragma_table_list WHERE schema = 'main' AND type = 'virtual' ORDER BY name").compactMap { row in
            guard case .text(let name) = row[0], !name.hasPrefix("sqlite_"), !name.hasPrefix(Bookkeeping.prefix) else { return nil }
            return name
        }
    }

    /// What `filter` admits, read once: the tables with a primary key (the ones that can replicate), sorted by
    /// name, and the names of the keyless ones.
    public static func admittedSchemas(_ db: Database, filter: TableFilter) throws -> (keyed: [TableSchema], keyless: [String]) {
        let all = try userTables(db).filter(filter.admits).map { try schema(db, table: $0) }
        return (all.filter { !$0.primaryKey.isEmpty }, all.filter { $0.primaryKey.isEmpty }.map(\.name))
    }

    /// `schema` names the attached database to read (`main` unless reading a snapshot being restored).
    public static func schema(_ db: Database, table: String, schema: String = "main") throws -> TableSchema {
        let rows = try db.query("SELECT cid, name, type, \"notnull\", pk, hidden, dflt_value FROM pragma_table_xinfo(?, ?)",
                                [.text(table), .text(schema)])
        guard !rows.isEmpty else { throw SchemaError.noSuchTable(table) }
        var columns: [String] = []
        var defaults: [String] = []
        var keyed: [(Int64, String)] = []
        var hash = StableHash()
        hash.combine(table)
        for row in rows {
            guard case .text(let name) = row[1], let hidden = row[5].int64, hidden == 0 else { continue }
            let type = row[2].string?.uppercased() ?? ""
            let notNull = row[3].int64 ?? 0
            let pk = row[4].int64 ?? 0
            columns.append(name)
            defaults.append(row[6].string ?? "NULL")
            if pk > 0 { keyed.append((pk, name)) }
            hash.combine(name)
            hash.combine(type)
            hash.combine(notNull)
            hash.combine(pk)
        }
        let primaryKey = keyed.sorted { $0.0 < $1.0 }.map(\.1)
        let collations = try primaryKey.map { try db.collation(table: table, column: $0, schema: schema) }
        for c in collations { hash.combine(c) }
        return TableSchema(name: table, columns: columns, primaryKey: primaryKey,
                           primaryKeyCollations: collations, defaults: defaults, hash: hash.hex)
    }
}
