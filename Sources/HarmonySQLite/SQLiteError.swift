import CSQLite

/// A failed SQLite call, carrying the result code, SQLite's message and the statement that failed.
public struct SQLiteError: Error, CustomStringConvertible, Sendable {
    public let code: Int32
    public let message: String
    public let sql: String?

    public init(code: Int32, message: String, sql: String? = nil) {
        self.code = code
        self.message = message
        self.sql = sql
    }

    /// The primary result code (low byte), e.g. SQLITE_CONSTRAINT for all constraint failures.
    public var primaryCode: Int32 { code & 0xFF }
    public var isBusy: Bool { primaryCode == SQLITE_BUSY || primaryCode == SQLITE_LOCKED }
    public var isConstraint: Bool { primaryCode == SQLITE_CONSTRAINT }
    public var isDiskFull: Bool { primaryCode == SQLITE_FULL }
    /// The operating system reported an I/O error (read, write, fsync...); the extended code says which.
    public var isIOError: Bool { primaryCode == SQLITE_IOERR }
    /// Busy, disk full or I/O: the database itself is fine and the same work may succeed later.
    public var isTransientStorageFailure: Bool { isBusy || isDiskFull || isIOError }
    /// A few words for logs and health: what kind of failure this is.
    public var storageFailureSummary: String {
        if isBusy { return "database busy (another connection holds the lock)" }
        if isDiskFull { return "disk full" }
        if isIOError { return "I/O error" }
        return "SQLite error \(code)"
    }

    public var description: String {
        var s = "SQLite error \(code) (\(String(cString: sqlite3_errstr(code)))): \(message)"
        if let sql { s += " — while executing: \(sql)" }
        return s
    }
}
