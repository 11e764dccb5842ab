import CSQLite

/// One access SQLite asks the authorizer about while it compiles a statement (sqlite3_set_authorizer).
public struct AuthorizerRequest: Sendable {
    /// SQLITE_INSERT, SQLITE_PRAGMA, SQLITE_ATTACH...
    public let action: Int32
    public let first: String?
    public let second: String?
    /// The schema ("main", "temp", an attached name), when the action has one.
    public let schema: String?
    /// The innermost trigger or view whose body makes this access, nil for the statement itself.
    public let trigger: String?
}

public enum AuthorizerVerdict: Sendable {
    case allow
    /// The statement fails to compile with SQLITE_AUTH.
    case deny
}

final class AuthorizerBox {
    let decide: (AuthorizerRequest) -> AuthorizerVerdict
    init(_ decide: @escaping (AuthorizerRequest) -> AuthorizerVerdict) { self.decide = decide }
}

final class ProgressBox {
    let shouldInterrupt: () -> Bool
    init(_ shouldInterrupt: @escaping () -> Bool) { self.shouldInterrupt = shouldInterrupt }
}

extension Database {
    /// Lets `decide` refuse accesses while statements compile on this connection (nil removes it). Used for
    /// connections that run SQL from remote clients, so they cannot touch files or harmonylite's own objects.
    public func setAuthorizer(_ decide: ((AuthorizerRequest) -> AuthorizerVerdict)?) {
        guard let decide else {
            sqlite3_set_authorizer(handle, nil, nil)
            authorizerBox = nil
            return
        }
        let box = AuthorizerBox(decide)
        authorizerBox = box
        sqlite3_set_authorizer(handle, { context, action, a1, a2, a3, a4 in
            guard let context else { return SQLITE_OK }
            let box = Unmanaged<AuthorizerBox>.fromOpaque(context).takeUnretainedValue()
            let request = AuthorizerRequest(action: action, first: a1.map { String(cString: $0) },
                                            second: a2.map { String(cString: $0) },
                                            schema: a3.map { String(cString: $0) }, trigger: a4.map { String(cString: $0) })
            switch box.decide(request) {
            case .allow: return SQLITE_OK
            case .deny: return SQLITE_DENY
            }
        }, Unmanaged.passUnretained(box).toOpaque())
    }

    /// Calls `shouldInterrupt` every `instructions` VM steps; when it answers true the running statement stops
    /// with SQLITE_INTERRUPT (a statement timeout). nil removes the handler.
    public func setProgressHandler(every instructions: Int32 = 1_000, _ shouldInterrupt: (() -> Bool)?) {
        guard let shouldInterrupt else {
            sqlite3_progress_handler(handle, 0, nil, nil)
            progressBox = nil
            return
        }
        let box = ProgressBox(shouldInterrupt)
        progressBox = box
        sqlite3_progress_handler(handle, instructions, { context in
            guard let context else { return 0 }
            return Unmanaged<ProgressBox>.fromOpaque(context).takeUnretainedValue().shouldInterrupt() ? 1 : 0
        }, Unmanaged.passUnretained(box).toOpaque())
    }

    /// Defensive mode, no extension loading and no FTS3 tokenizer pointers: for connections that run SQL written by
    /// remote clients.
    public func harden() throws {
        var rc = harmony_sqlite_defensive(handle)
        guard rc == SQLITE_OK else { throw error(rc, sql: "SQLITE_DBCONFIG_DEFENSIVE") }
        rc = harmony_sqlite_no_load_extension(handle)
        guard rc == SQLITE_OK else { throw error(rc, sql: "SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION") }
        rc = harmony_sqlite_no_fts3_tokenizer(handle)
        guard rc == SQLITE_OK else { throw error(rc, sql: "SQLITE_DBCONFIG_ENABLE_FTS3_TOKENIZER") }
    }

    /// Compiles the first statement of `sql` and returns it with the text after it, so callers can refuse or
    /// run what follows. The statement is nil when `sql` holds only whitespace and comments.
    public func prepareFirst(_ sql: String) throws -> (statement: Statement?, rest: String) {
        var utf8 = Array(sql.utf8)
        utf8.append(0)
        return try utf8.withUnsafeBufferPointer { buffer in
            let start = UnsafeRawPointer(buffer.baseAddress!).assumingMemoryBound(to: CChar.self)
            var stmt: OpaquePointer?
            var tail: UnsafePointer<CChar>?
            let rc = sqlite3_prepare_v3(handle, start, Int32(buffer.count - 1), 0, &stmt, &tail)
            guard rc == SQLITE_OK else { throw error(rc, sql: sql) }
            let used = tail.map { $0 - start } ?? (buffer.count - 1)
            let rest = String(decoding: buffer[used..<(buffer.count - 1)], as: UTF8.self)
            guard let stmt else { return (nil, rest) }
            let text = String(decoding: buffer[0..<used], as: UTF8.self)
            return (Statement(database: self, sql: text, handle: stmt), rest)
        }
    }

    /// Copies the whole database, as of one moment, into a new file at `path` (SQLite's online backup), page by
    /// page: nothing close to the database's size is held in memory.
    public func backup(to path: String) throws {
        let destination = try Database(path: path)
        guard let backup = sqlite3_backup_init(destination.handle, "main", handle, "main") else {
            throw destination.error(sqlite3_errcode(destination.handle), sql: "backup to \(path)")
        }
        // One step of every page: the copy holds one read transaction, so it is one point in time even while
        // other connections write (WAL readers do not block them).
        var rc = sqlite3_backup_step(backup, -1)
        let finish = sqlite3_backup_finish(backup)
        if rc == SQLITE_DONE { rc = finish }
        guard rc == SQLITE_OK || rc == SQLITE_DONE else {
            throw SQLiteError(code: rc, message: "backup to \(path) failed: \(String(cString: sqlite3_errstr(rc)))")
        }
    }
}

extension Statement {
    /// True when the statement cannot change the database file (SELECT, most PRAGMA reads, EXPLAIN).
    public var isReadOnly: Bool { sqlite3_stmt_readonly(handle) != 0 }
    public var parameterCount: Int { Int(sqlite3_bind_parameter_count(handle)) }
    /// The name of parameter `index` (1-based) with its prefix (":a", "@a", "$a", "?1"), nil for a bare "?".
    public func parameterName(_ index: Int) -> String? {
        sqlite3_bind_parameter_name(handle, Int32(index)).map { String(cString: $0) }
    }
    /// Binds one parameter, `index` 1-based as in SQLite.
    public func bind(_ value: DatabaseValue, index: Int) throws { try bind(value, at: Int32(index)) }
    /// The type a result column was declared with (nil for expressions), for clients that want column types.
    public func declaredType(_ i: Int) -> String? { sqlite3_column_decltype(handle, Int32(i)).map { String(cString: $0) } }
    /// Makes the statement runnable again from its first row, keeping its bindings.
    public func reset() { sqlite3_reset(handle) }
}

extension Database {
    /// Rows changed by every statement and trigger on this connection since it opened.
    public var totalChanges: Int64 { sqlite3_total_changes64(handle) }
    /// Sets what `lastInsertRowID` answers, so a pooled connection does not report an earlier client's insert.
    public func setLastInsertRowID(_ id: Int64) { sqlite3_set_last_insert_rowid(handle, id) }
}

extension Statement {
    /// Unbinds every parameter (they become NULL), so a reused statement keeps nothing of its last run.
    public func clearBindings() { sqlite3_clear_bindings(handle) }
}

/// What the handle of a connection lets another thread do: only interrupt it.
public struct DatabaseInterrupter: @unchecked Sendable {
    let handle: OpaquePointer
    /// Stops the statement running on the connection with SQLITE_INTERRUPT (sqlite3_interrupt is thread-safe).
    public func interrupt() { sqlite3_interrupt(handle) }
}

final class ConstantBox {
    let value: String
    init(_ value: String) { self.value = value }
}

extension Database {
    /// For a CancelRequest from another connection. Valid while this connection is open.
    public var interrupter: DatabaseInterrupter { DatabaseInterrupter(handle: handle) }

    /// Defines `name(...)` (taking `arguments` arguments, ignored) returning `value`, for clients that call PostgreSQL's version() and the like.
    public func defineConstantFunction(_ name: String, value: String, arguments: Int32 = 0) throws {
        let box = Unmanaged.passRetained(ConstantBox(value)).toOpaque()
        let rc = sqlite3_create_function_v2(handle, name, arguments, SQLITE_UTF8 | SQLITE_DETERMINISTIC, box, { context, _, _ in
            let box = Unmanaged<ConstantBox>.fromOpaque(sqlite3_user_data(context)).takeUnretainedValue()
            sqlite3_result_text(context, box.value, -1, sqliteTransient)
        }, nil, nil, { pointer in
            if let pointer { Unmanaged<ConstantBox>.fromOpaque(pointer).release() }
        })
        guard rc == SQLITE_OK else { throw error(rc, sql: "defining \(name)()") }
    }
}

extension Statement {
    /// The index of the parameter called `name` (with its prefix, e.g. "$1" or ":id"), nil if the statement has none.
    public func parameterIndex(_ name: String) -> Int? {
        let i = sqlite3_bind_parameter_index(handle, name)
        return i > 0 ? Int(i) : nil
    }
}
