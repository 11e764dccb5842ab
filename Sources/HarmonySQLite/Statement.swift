import CSQLite

// SQLITE_TRANSIENT is a macro casting -1 to a function pointer; Swift cannot import it.
let sqliteTransient = unsafeBitCast(OpaquePointer(bitPattern: -1), to: sqlite3_destructor_type.self)
/// What empty text binds from: any valid pointer with length 0 (SQLite copies nothing from it).
nonisolated(unsafe) let emptyText = UnsafeRawPointer(("" as StaticString).utf8Start).assumingMemoryBound(to: CChar.self)

/// A prepared statement owned by one connection; reset and rebound for each use.
public final class Statement {
    let handle: OpaquePointer
    unowned let database: Database
    public let sql: String

    init(database: Database, sql: String) throws {
        self.database = database
        self.sql = sql
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v3(database.handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &stmt, nil)
        guard rc == SQLITE_OK, let stmt else {
            throw database.error(rc, sql: sql)
        }
        self.handle = stmt
    }

    init(database: Database, sql: String, handle: OpaquePointer) {
        self.database = database
        self.sql = sql
        self.handle = handle
    }

    deinit { sqlite3_finalize(handle) }

    public var columnCount: Int { Int(sqlite3_column_count(handle)) }
    public func columnName(_ i: Int) -> String { String(cString: sqlite3_column_name(handle, Int32(i))) }

    /// Binds positional arguments (1-based in SQLite, 0-based here).
    public func bind(_ values: [DatabaseValue]) throws {
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
        for (i, value) in values.enumerated() {
            try bind(value, at: Int32(i + 1))
        }
    }

    func bind(_ value: DatabaseValue, at index: Int32) throws {
        let rc: Int32
        switch value {
        case .null: rc = sqlite3_bind_null(handle, index)
        case .integer(let v): rc = sqlite3_bind_int64(handle, index, v)
        case .real(let v): rc = sqlite3_bind_double(handle, index, v)
        case .text(let v):
            // Bind by byte count so text containing NUL characters survives intact, from the string's own UTF-8
            // (no copy into a C string). Empty text needs a non-nil pointer, or SQLite binds NULL.
            var text = v
            rc = text.withUTF8 { buf in
                sqlite3_bind_text64(handle, index, buf.isEmpty ? emptyText : UnsafeRawPointer(buf.baseAddress!).assumingMemoryBound(to: CChar.self),
                                    sqlite3_uint64(buf.count), sqliteTransient, UInt8(SQLITE_UTF8))
            }
        case .blob(let v):
            rc = v.withUnsafeBytes { buf in
                // A zero-length blob must bind as a blob, not NULL: pass a non-nil pointer.
                sqlite3_bind_blob64(handle, index, buf.baseAddress ?? UnsafeRawPointer(bitPattern: 1),
                                    sqlite3_uint64(buf.count), sqliteTransient)
            }
        }
        guard rc == SQLITE_OK else { throw database.error(rc, sql: sql) }
    }

    /// Steps once; returns true when a row is available.
    public func step() throws -> Bool {
        let rc = sqlite3_step(handle)
        switch rc {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default:
            let err = database.error(rc, sql: sql)
            sqlite3_reset(handle)
            throw err
        }
    }

    public func column(_ i: Int) -> DatabaseValue {
        let idx = Int32(i)
        switch sqlite3_column_type(handle, idx) {
        case SQLITE_INTEGER: return .integer(sqlite3_column_int64(handle, idx))
        case SQLITE_FLOAT: return .real(sqlite3_column_double(handle, idx))
        case SQLITE_TEXT:
            let n = Int(sqlite3_column_bytes(handle, idx))
            guard let p = sqlite3_column_text(handle, idx) else { return .text("") }
            return .text(String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self))
        case SQLITE_BLOB:
            let n = Int(sqlite3_column_bytes(handle, idx))
            guard n > 0, let p = sqlite3_column_blob(handle, idx) else { return .blob([]) }
            return .blob(Array(UnsafeRawBufferPointer(start: p, count: n)))
        default: return .null
        }
    }

    /// Whether column `i` holds exactly this text, compared in place (no String made): for row-by-row scans that
    /// only need to notice when a value changes.
    public func columnTextEquals(_ i: Int, _ text: String) -> Bool {
        let idx = Int32(i)
        guard sqlite3_column_type(handle, idx) == SQLITE_TEXT else { return false }
        let n = Int(sqlite3_column_bytes(handle, idx))
        guard let p = sqlite3_column_text(handle, idx) else { return text.isEmpty }
        return text.utf8.count == n && UnsafeBufferPointer(start: p, count: n).elementsEqual(text.utf8)
    }

    public func row() -> [DatabaseValue] { (0..<columnCount).map { column($0) } }

    /// Runs to completion, ignoring rows.
    public func execute(_ values: [DatabaseValue] = []) throws {
        try bind(values)
        while try step() {}
        sqlite3_reset(handle)
    }

    /// Runs and collects every row.
    public func query(_ values: [DatabaseValue] = []) throws -> [[DatabaseValue]] {
        try bind(values)
        var rows: [[DatabaseValue]] = []
        while try step() { rows.append(row()) }
        sqlite3_reset(handle)
        return rows
    }
}
