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
        database.setAuthorizer { [unowned self] request in
            guard let why = APIAuthorizer.refusal(request, &self.authorizing) else { return .allow }
            self.refusal = why
            return .deny
        }
        database.setProgressHandler { [unowned self] in DispatchTime.now().uptimeNanoseconds > self.deadlineNs }
    }

    /// Call before compiling a client's statement: its refusals, not an earlier one's, are what it is told.
    public func startStatement() {
        authorizing.startStatement()
        refusal = nil
    }
}
