import CSQLite

/// How connections are opened, so the simulator can substitute a VFS whose time, randomness and fsync it owns.
public protocol DatabaseOpener: Sendable {
    func open(path: String) throws -> Database
}

/// Opens connections through SQLite's default VFS (or a named one), in WAL mode with a busy timeout.
public struct SQLiteOpener: DatabaseOpener {
    public var vfsName: String?
    public var busyTimeoutMs: Int32
    public var journalModeWAL: Bool

    public init(vfsName: String? = nil, busyTimeoutMs: Int32 = 5_000, journalModeWAL: Bool = true) {
        self.vfsName = vfsName
        self.busyTimeoutMs = busyTimeoutMs
        self.journalModeWAL = journalModeWAL
    }

    public func open(path: String) throws -> Database {
        let db = try Database(path: path, vfsName: vfsName)
        try db.setBusyTimeout(ms: busyTimeoutMs)
        if journalModeWAL { try db.execute("PRAGMA journal_mode=WAL") }
        return db
    }
}

/// One SQLite connection. Not thread-safe: owned by a single executor, like the core that uses it.
public final class Database {
    let handle: OpaquePointer
    public let path: String
    private var statementCache: [String: Statement] = [:]
    /// The statements used last, checked before the dictionary: the apply path runs the same few statements for
    /// every change, and comparing a string with the one it was copied from is cheaper than hashing it.
    private var recentStatements: [(sql: String, statement: Statement)] = []
    private var recentNext = 0
    private static let recentMax = 8
    /// Keeps the authorizer and progress closures alive while SQLite holds pointers to them.
    var authorizerBox: AnyObject?
    var progressBox: AnyObject?

    public init(path: String, vfsName: String? = nil,
                flags: Int32 = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX) throws {
        var db: OpaquePointer?
        let rc = sqlite3_open_v2(path, &db, flags | SQLITE_OPEN_EXRESCODE, vfsName)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
            if let db { sqlite3_close_v2(db) }
            throw SQLiteError(code: rc, message: "cannot open database at \(path): \(message)")
        }
        self.handle = db
        self.path = path
        sqlite3_extended_result_codes(db, 1)
    }

    /// Opens an existing database for reading only: never creates the file, never changes its journal mode.
    /// - throws: `SQLiteError` (SQLITE_CANTOPEN) when there is no database at `path`.
    public static func readOnly(path: String) throws -> Database {
        try Database(path: path, flags: SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX)
    }

    deinit {
        recentStatements.removeAll()
        statementCache.removeAll()
        sqlite3_close_v2(handle)
    }

    func error(_ rc: Int32, sql: String?) -> SQLiteError {
        SQLiteError(code: sqlite3_extended_errcode(handle), message: String(cString: sqlite3_errmsg(handle)), sql: sql)
    }

    public func setBusyTimeout(ms: Int32) throws {
        let rc = sqlite3_busy_timeout(handle, ms)
        guard rc == SQLITE_OK else { throw error(rc, sql: nil) }
    }

    /// Runs one or more statements with no arguments (DDL, pragmas, BEGIN/COMMIT).
    public func execute(_ sql: String) throws {
        var errmsg: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &errmsg)
        if rc != SQLITE_OK {
            let message = errmsg.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_free(errmsg)
            throw SQLiteError(code: sqlite3_extended_errcode(handle), message: message, sql: sql)
        }
    }

    /// The most parameters one statement may take (`SQLITE_LIMIT_VARIABLE_NUMBER`: 32766 by default, 999 in
    /// builds before 3.32 or configured lower).
    public var variableLimit: Int { Int(sqlite3_limit(handle, SQLITE_LIMIT_VARIABLE_NUMBER, -1)) }

    /// A fresh prepared statement, owned by the caller.
    public func prepare(_ sql: String) throws -> Statement { try Statement(database: self, sql: sql) }

    /// A prepared statement kept for the connection's lifetime: use for SQL that runs repeatedly.
    public func cached(_ sql: String) throws -> Statement {
        for entry in recentStatements where entry.sql == sql { return entry.statement }
        let s: Statement
        if let known = statementCache[sql] {
            s = known
        } else {
            s = try Statement(database: self, sql: sql)
            statementCache[sql] = s
        }
        if recentStatements.count < Self.recentMax {
            recentStatements.append((sql, s))
        } else {
            recentStatements[recentNext] = (sql, s)
            recentNext = (recentNext + 1) % Self.recentMax
        }
        return s
    }

    /// Drops cached statements; needed after DDL that the cached SQL depends on.
    public func clearStatementCache() {
        statementCache.removeAll()
        recentStatements.removeAll()
        recentNext = 0
    }

    public func execute(_ sql: String, _ arguments: [DatabaseValue]) throws {
        try cached(sql).execute(arguments)
    }

    public func query(_ sql: String, _ arguments: [DatabaseValue] = []) throws -> [[DatabaseValue]] {
        try cached(sql).query(arguments)
    }

    /// Whether `schema` (main, or an attached database) holds a table of this name.
    public func tableExists(_ name: String, in schema: String = "main") throws -> Bool {
        try scalar("SELECT count(*) FROM \(quoteIdentifier(schema)).sqlite_schema WHERE type = 'table' AND name = ?", [.text(name)])?.int64 == 1
    }

    /// First column of the first row, or nil when there is no row.
    public func scalar(_ sql: String, _ arguments: [DatabaseValue] = []) throws -> DatabaseValue? {
        let stmt = try cached(sql)
        try stmt.bind(arguments)
        defer { sqlite3_reset(stmt.handle) }
        return try stmt.step() ? stmt.column(0) : nil
    }

    public var changes: Int { Int(sqlite3_changes64(handle)) }
    public var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(handle) }
    public var isInTransaction: Bool { sqlite3_get_autocommit(handle) == 0 }

    public enum TransactionKind: String { case deferred = "DEFERRED", immediate = "IMMEDIATE", exclusive = "EXCLUSIVE" }

    /// Runs `body` in a transaction: commits if it returns, rolls back if it throws.
    public func transaction<T>(_ kind: TransactionKind = .immediate, _ body: () throws -> T) throws -> T {
        precondition(!isInTransaction, "nested transaction on \(path)")
        try execute("BEGIN \(kind.rawValue)")
        do {
            let result = try body()
            try execute("COMMIT")
            return result
        } catch {
            if isInTransaction { try? execute("ROLLBACK") }
            throw error
        }
    }
}

/// Quotes an SQL identifier so names like `order`, `my table` or `"quoted"` are safe everywhere.
public func quoteIdentifier(_ name: String) -> String {
    "\"" + doubling("\"", in: name) + "\""
}

/// Quotes an SQL string literal.
public func quoteLiteral(_ text: String) -> String {
    "'" + doubling("'", in: text) + "'"
}

extension Database {
    /// The collating sequence declared for a column (BINARY when none), so shadow keys compare like the original.
    public func collation(table: String, column: String, schema: String = "main") throws -> String {
        var dataType: UnsafePointer<CChar>?
        var collSeq: UnsafePointer<CChar>?
        var notNull: Int32 = 0, primaryKey: Int32 = 0, autoinc: Int32 = 0
        let rc = sqlite3_table_column_metadata(handle, schema, table, column, &dataType, &collSeq,
                                               &notNull, &primaryKey, &autoinc)
        guard rc == SQLITE_OK else { throw error(rc, sql: "column metadata for \(table).\(column)") }
        return collSeq.map { String(cString: $0) } ?? "BINARY"
    }
}

/// Doubles every occurrence of a quote character, SQL's escape for quotes inside quotes.
func doubling(_ quote: Character, in text: String) -> String {
    // Nearly every name has no quote in it, and quoting runs for every statement built: skip the copy then.
    guard text.utf8.contains(quote.asciiValue!) else { return text }
    var out = ""
    out.reserveCapacity(text.utf8.count + 2)
    for ch in text {
        out.append(ch)
        if ch == quote { out.append(ch) }
    }
    return out
}

extension Database {
    /// Switches every trigger on or off for this connection only (other connections to the file are unaffected).
    public func setTriggersEnabled(_ enabled: Bool) throws {
        let rc = harmony_sqlite_enable_triggers(handle, enabled ? 1 : 0)
        guard rc == SQLITE_OK else { throw error(rc, sql: "SQLITE_DBCONFIG_ENABLE_TRIGGER") }
    }

    /// Runs `body` with SQLite's legacy reading of a double-quoted name that matches no column as a string literal
    /// switched on or off for DDL on this connection, then puts the setting back.
    public func withDoubleQuotedStringsInDDL<T>(_ enabled: Bool, _ body: () throws -> T) throws -> T {
        var before: Int32 = 0
        var rc = harmony_sqlite_dqs_ddl(handle, -1, &before)
        guard rc == SQLITE_OK else { throw error(rc, sql: "SQLITE_DBCONFIG_DQS_DDL") }
        rc = harmony_sqlite_dqs_ddl(handle, enabled ? 1 : 0, nil)
        guard rc == SQLITE_OK else { throw error(rc, sql: "SQLITE_DBCONFIG_DQS_DDL") }
        defer { _ = harmony_sqlite_dqs_ddl(handle, before, nil) }
        return try body()
    }

    /// Closing the last connection normally checkpoints the WAL into the database and fsyncs it. The simulator
    /// turns that off so a simulated power loss finds the files as a real one would.
    public func disableCheckpointOnClose() throws {
        let rc = harmony_sqlite_no_checkpoint_on_close(handle)
        guard rc == SQLITE_OK else { throw error(rc, sql: "SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE") }
    }
}
