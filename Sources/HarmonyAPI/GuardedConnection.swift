import CSQLite
import Dispatch
import HarmonySQLite

/// A connection that runs SQL from remote clients: defensive mode, the authorizer (its last refusal kept, so the
/// client is told why), a busy timeout, and a deadline the progress handler enforces. Both front ends use it:
/// the HTTP API pools them, a PostgreSQL session owns one (`ownsConnection`).
public final class GuardedConnection: @unchecked Sendable {
    public let database: Database
    public let readOnly: Bool
    public var authorizing: APIAuthorizer.Context
    /// Why the authorizer refused the statement being compiled, if it did.
    public var refusal: String?
    /// The running request stops with SQLITE_INTERRUPT past this (`.max`: no deadline).
    public var deadlineNs: UInt64 = .max
    /// Compiled statements by SQL text: clients send the same statements over and over (HTTP API).
    var statements: [String: Statement] = [:]
    static let statementCacheSize = 64

    public init(path: String, readOnly: Bool, busyTimeoutMs: Int, ownsConnection: Bool = false) throws {
        database = readOnly ? try Database.readOnly(path: path)
            : try Database(path: path, flags: SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX)
        self.readOnly = readOnly
        authorizing = APIAuthorizer.Context(ownsConnection: ownsConnection)
        try database.setBusyTimeout(ms: Int32(clamping: busyTimeoutMs))
        try database.harden()
        // A REPLACE (or UPSERT OR REPLACE) that removes a row through another UNIQUE constraint deletes it without
        // firing delete triggers unless recursive triggers are on: the capture trigger never saw the delete, the
        // other nodes kept the row, and the new row broke their UNIQUE constraint (parked there). PostgreSQL's
        // triggers always fire so.
        try database.execute("PRAGMA recursive_triggers = ON")
        database.setAuthorizer { [unowned self] request in
            guard let why = APIAuthorizer.refusal(request, &self.authorizing) else { return .allow }
            self.refusal = why
            return .deny
        }
        database.setProgressHandler { [unowned self] in DispatchTime.now().uptimeNanoseconds > self.deadlineNs }
    }

    /// Compiles a client's first statement (`Database.prepareFirst`). A trigger whose text names harmonylite's
    /// bookkeeping is refused here: SQLite checks the tables a trigger body writes only when it fires, and it fires on
    /// every node the trigger replicates to, for every connection that writes there (the sqlite3 shell too), where
    /// nothing would stop it emptying a checkpoint table.
    public func prepareFirst(_ sql: String) throws -> (statement: Statement?, rest: String) {
        let (statement, rest) = try database.prepareFirst(sql)
        if authorizing.createsTrigger, String(decoding: sql.utf8.prefix(sql.utf8.count - rest.utf8.count), as: UTF8.self)
            .lowercased().contains(APIAuthorizer.reservedPrefix) {
            refusal = "a trigger that names harmonylite's replication bookkeeping (\(APIAuthorizer.reservedPrefix)...) is refused through the API: it would write that bookkeeping on every node it replicates to"
            throw APIAuthorizer.Refused()
        }
        return (statement, rest)
    }

    /// Call before compiling a client's statement: its refusals, not an earlier one's, are what it is told.
    public func startStatement() {
        authorizing.startStatement()
        refusal = nil
    }
}
