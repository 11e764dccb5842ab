import CSQLite
import Dispatch
import HarmonySQLite
import Synchronization

/// Settings the SQL front ends share (`[http]` today).
public struct SQLGatewayConfig: Sendable {
    public var databasePath: String
    /// Longest a request's statements may run, and how long a writer waits for the write lock.
    public var statementTimeoutMs: Int
    /// Largest JSON answer a query may build; beyond it the request fails instead of filling memory.
    public var maxResultBytes: Int
    public init(databasePath: String, statementTimeoutMs: Int = 5_000, maxResultBytes: Int = 64 << 20) {
        self.databasePath = databasePath
        self.statementTimeoutMs = statementTimeoutMs
        self.maxResultBytes = maxResultBytes
    }
}

/// Runs SQL from remote clients against the node's database: queries on read-only connections (WAL lets them
/// read while the replicator writes), writes on read-write ones that wait on a busy timeout; each request is
/// one transaction with a deadline, under the authorizer. Thread-safe; each call blocks its thread.
public final class SQLGateway: Sendable {
    public let config: SQLGatewayConfig
    private let idle = Mutex<(readers: [GuardedConnection], writers: [GuardedConnection])>(([], []))
    /// API writes take turns here: SQLite has one writer at a time anyway, and a writer waiting on this wakes the
    /// moment the previous one ends, where SQLite's busy handler would sleep (1, 2, 5 ... 100 ms) between tries.
    private let writerTurn = DispatchSemaphore(value: 1)

    public init(config: SQLGatewayConfig) { self.config = config }

    /// Answers a request: status and JSON body.
    public func execute(_ request: SQLRequest) -> (status: Int, body: [UInt8]) {
        do {
            return (200, try request.isBatch ? runBatch(request.commands) : runSingle(request.commands[0]))
        } catch {
            return (error.status, error.body)
        }
    }

    private func checkout(readOnly: Bool) throws(APIError) -> GuardedConnection {
        let reused = idle.withLock { pools in readOnly ? pools.readers.popLast() : pools.writers.popLast() }
        if let reused { return reused }
        do {
            return try GuardedConnection(path: config.databasePath, readOnly: readOnly, busyTimeoutMs: config.statementTimeoutMs)
        } catch {
            throw APIError(status: 503, "cannot open the database for the API: \(error)")
        }
    }

    private func checkin(_ c: GuardedConnection) {
        if c.database.isInTransaction { try? c.database.execute("ROLLBACK") }
        c.refusal = nil
        c.deadlineNs = .max
        idle.withLock { pools in if c.readOnly { pools.readers.append(c) } else { pools.writers.append(c) } }
    }

    /// Runs `body` on a pooled connection under the request's deadline. Statements made in `body` die with it,
    /// before the connection goes back to the pool for another thread.
    private func withConnection<T>(readOnly: Bool, _ body: (GuardedConnection) throws(APIError) -> T) throws(APIError) -> T {
        if !readOnly {
            guard writerTurn.wait(timeout: .now() + .milliseconds(config.statementTimeoutMs)) == .success else {
                throw APIError(status: 503, "other API writes kept the database busy for statement_timeout_ms (\(config.statementTimeoutMs) ms); nothing was written, retry")
            }
        }
        defer { if !readOnly { writerTurn.signal() } }
        let c = try checkout(readOnly: readOnly)
        defer { checkin(c) }
        c.deadlineNs = DispatchTime.now().uptimeNanoseconds + UInt64(config.statementTimeoutMs) * 1_000_000
        return try body(c)
    }

    /// A single statement: one that looks like a read is compiled on a reader, and runs there if SQLite agrees it
    /// only reads; everything else runs on a writer.
    private func runSingle(_ command: SQLCommand) throws(APIError) -> [UInt8] {
        let answered: [UInt8]? = !Self.looksLikeARead(command.sql) ? nil : try withConnection(readOnly: true) { reader throws(APIError) in
            let statement = try prepare(command.sql, on: reader, index: nil)
            guard statement.isReadOnly else { return nil }
            var w = JSONWriter()
            try run(statement, command, on: reader, index: nil, into: &w)
            return w.bytes
        }
        if let answered { return answered }
        return try withConnection(readOnly: false) { writer throws(APIError) in
            let statement = try prepare(command.sql, on: writer, index: nil)
            var w = JSONWriter()
            try run(statement, command, on: writer, index: nil, into: &w)
            return w.bytes
        }
    }

    /// An array: one IMMEDIATE transaction on a writer; the first failure rolls everything back.
    private func runBatch(_ commands: [SQLCommand]) throws(APIError) -> [UInt8] {
        try withConnection(readOnly: false) { writer throws(APIError) in
            do { try writer.database.execute("BEGIN IMMEDIATE") } catch { throw failure(error, on: writer, index: 0) }
            var w = JSONWriter()
            w.raw(#"{"results":["#)
            for (i, command) in commands.enumerated() {
                if i > 0 { w.raw(",") }
                let statement = try prepare(command.sql, on: writer, index: i)
                try run(statement, command, on: writer, index: i, into: &w)
            }
            w.raw("]}")
            do { try writer.database.execute("COMMIT") } catch { throw failure(error, on: writer, index: commands.count - 1) }
            return w.bytes
        }
    }

    /// The first keyword of `sql` (after spaces and comments) is one that starts a query. Only a guess, to pick a
    /// connection: SQLite's `isReadOnly` decides.
    static func looksLikeARead(_ sql: String) -> Bool {
        ["SELECT", "WITH", "PRAGMA", "EXPLAIN", "VALUES"].contains(SQLText.firstKeyword(sql))
    }

    /// Compiles exactly one statement (or reuses it); more than one in a `sql` string is refused rather than half
    /// run.
    private func prepare(_ sql: String, on c: GuardedConnection, index: Int?) throws(APIError) -> Statement {
        if let cached = c.statements[sql] {
            cached.reset()
            cached.clearBindings()
            return cached
        }
        let fresh = try compile(sql, on: c, index: index)
        if c.statements.count >= GuardedConnection.statementCacheSize { c.statements.removeAll() }
        c.statements[sql] = fresh
        return fresh
    }

    private func compile(_ sql: String, on c: GuardedConnection, index: Int?) throws(APIError) -> Statement {
        c.startStatement()
        defer { c.authorizing.topLevel = false }
        let first: Statement?
        let rest: String
        do { (first, rest) = try c.prepareFirst(sql) } catch { throw failure(error, on: c, index: index) }
        guard let first else { throw APIError(status: 400, "\(prefix(index))\"sql\" holds no statement", statement: index) }
        let more: Statement?
        do { more = try c.database.prepareFirst(rest).statement } catch { more = first }
        guard more == nil else {
            throw APIError(status: 400, "\(prefix(index))\"sql\" holds more than one statement; send an array of statements to run several in one transaction", statement: index)
        }
        return first
    }

    private func prefix(_ index: Int?) -> String { index.map { "statement \($0): " } ?? "" }

    private func bind(_ s: Statement, _ parameters: SQLParameters, index: Int?) throws(APIError) {
        let count = s.parameterCount
        do {
            switch parameters {
            case .none:
                guard count == 0 else {
                    throw APIError(status: 400, "\(prefix(index))the statement has \(count) parameter(s) and the request gives no \"params\"", statement: index)
                }
            case .positional(let values):
                guard values.count == count else {
                    throw APIError(status: 400, "\(prefix(index))the statement has \(count) parameter(s) and \"params\" gives \(values.count)", statement: index)
                }
                for (i, v) in values.enumerated() { try s.bind(v, index: i + 1) }
            case .named(let values):
                var used = Set<String>()
                for i in stride(from: 1, through: count, by: 1) {
                    guard let name = s.parameterName(i), !name.hasPrefix("?") else {
                        throw APIError(status: 400, "\(prefix(index))parameter \(i) is a bare ?; send \"params\" as an array for ? parameters", statement: index)
                    }
                    let bare = String(name.dropFirst())
                    guard let key = [name, bare].first(where: { values[$0] != nil }) else {
                        throw APIError(status: 400, "\(prefix(index))parameter \(name) has no value in \"params\"", statement: index)
                    }
                    used.insert(key)
                    try s.bind(values[key]!, index: i)
                }
                if let extra = values.keys.sorted().first(where: { !used.contains($0) }) {
                    throw APIError(status: 400, "\(prefix(index))\"params\" names \(extra), which the statement does not use", statement: index)
                }
            }
        } catch let e as APIError {
            throw e
        } catch {
            throw APIError(status: 400, "\(prefix(index))cannot bind parameters: \(error)", statement: index)
        }
    }

    /// Runs a compiled statement and writes its result: columns and rows for a query, or rows_affected and
    /// last_insert_id for a statement that returns no columns.
    private func run(_ s: Statement, _ command: SQLCommand, on c: GuardedConnection, index: Int?, into w: inout JSONWriter) throws(APIError) {
        // A query stopped early (a result over the limit) would otherwise keep its read transaction open.
        defer { s.reset() }
        try bind(s, command.parameters, index: index)
        let db = c.database
        db.setLastInsertRowID(0)
        let changesBefore = db.totalChanges
        // The columns only after the first step: a cached statement prepared before another connection changed the
        // table is prepared again by SQLite on that step, and its new columns (names and count) exist only then.
        // Read before, `SELECT *` answered the old names over the new values after an ALTER.
        var hasRow: Bool
        do { hasRow = try s.step() } catch { throw failure(error, on: c, index: index) }
        let columns = s.columnCount
        w.raw(#"{"columns":["#)
        if columns == 0 {
            w.raw(#""rows_affected","last_insert_id""#)
        } else {
            for i in 0..<columns {
                if i > 0 { w.raw(",") }
                w.string(s.columnName(i))
            }
        }
        w.raw(#"],"rows":["#)
        var rows = 0
        do {
            while hasRow {
                if rows > 0 { w.raw(",") }
                w.raw("[")
                for i in 0..<columns {
                    if i > 0 { w.raw(",") }
                    w.sqlValue(s.column(i))
                }
                w.raw("]")
                rows += 1
                guard w.bytes.count <= config.maxResultBytes else {
                    throw APIError(status: 400, "\(prefix(index))the result is larger than max_result_bytes (\(config.maxResultBytes)); add a LIMIT or page with WHERE", statement: index)
                }
                hasRow = try s.step()
            }
        } catch let e as APIError {
            throw e
        } catch {
            throw failure(error, on: c, index: index)
        }
        if columns == 0 {
            let affected = db.totalChanges == changesBefore ? 0 : db.changes
            w.raw("[\(affected),\(db.lastInsertRowID)]")
        }
        w.raw("]}")
    }

    /// SQLite's error as the client sees it: refusals 403, a timeout 408, a lock held too long 503, a full disk
    /// 507, everything else (syntax, constraints, types) 400.
    private func failure(_ error: any Error, on c: GuardedConnection, index: Int?) -> APIError {
        let at = prefix(index)
        if let refusal = c.refusal { return APIError(status: 403, at + refusal, statement: index) }
        guard let e = error as? SQLiteError else { return APIError(status: 500, "\(at)\(error)", statement: index) }
        switch e.primaryCode {
        case SQLITE_AUTH:
            return APIError(status: 403, at + e.message, statement: index)
        case SQLITE_INTERRUPT:
            return APIError(status: 408, "\(at)the request ran longer than statement_timeout_ms (\(config.statementTimeoutMs) ms) and was rolled back", statement: index)
        case SQLITE_BUSY, SQLITE_LOCKED:
            return APIError(status: 503, "\(at)the database stayed locked by another writer for statement_timeout_ms (\(config.statementTimeoutMs) ms); nothing was written, retry", statement: index)
        case SQLITE_FULL:
            return APIError(status: 507, "\(at)the disk is full; nothing was written", statement: index)
        case SQLITE_READONLY where c.readOnly:
            return APIError(status: 400, "\(at)\(e.message)", statement: index)
        case SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_NOMEM, SQLITE_CANTOPEN:
            return APIError(status: 500, "\(at)\(e.message)", statement: index)
        default:
            return APIError(status: 400, "\(at)\(e.message)", statement: index)
        }
    }
}
