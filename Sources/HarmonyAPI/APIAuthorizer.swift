import CSQLite
import HarmonySQLite

/// What SQL from remote clients (the HTTP API, later the PostgreSQL front end) may not do, decided while SQLite
/// compiles each statement. Each refusal carries the sentence the client gets back.
public enum APIAuthorizer {
    /// harmonylite's own tables, triggers and indexes all start with this (compared case-insensitively).
    static let reservedPrefix = "__harmonylite"

    /// PRAGMAs that take an argument and only read: everything else that sets a PRAGMA is refused.
    static let readingPragmas: Set<String> = [
        "table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list",
        "foreign_key_check", "integrity_check", "quick_check", "wal_checkpoint", "optimize",
    ]
    /// PRAGMAs whose new value would stop or corrupt replication for every client, not just this one.
    static let replicationPragmas: Set<String> = [
        "journal_mode", "writable_schema", "schema_version", "locking_mode", "legacy_alter_table", "trusted_schema",
        "ignore_check_constraints", "temp_store_directory", "data_store_directory",
    ]

    /// What the statement being compiled has asked so far.
    public struct Context {
        /// true while the client's own statement compiles (false for those SQLite runs inside it, like VACUUM's).
        public var topLevel = false
        /// The table a DROP TABLE removes: its capture triggers go with it.
        var droppedTable: String?
        /// The statement makes a trigger, whose body SQLite authorizes only when it fires (`GuardedConnection.prepareFirst`).
        public var createsTrigger = false
        /// The client owns the connection for its whole session (the PostgreSQL front end): transactions, temporary
        /// objects and per-connection PRAGMAs are its own business; the HTTP API's pooled connections are not.
        public var ownsConnection = false
        public init(ownsConnection: Bool = false) { self.ownsConnection = ownsConnection }
        public mutating func startStatement() {
            topLevel = true
            droppedTable = nil
            createsTrigger = false
        }
    }

    /// nil allows; otherwise the reason the statement is refused.
    public static func refusal(_ r: AuthorizerRequest, _ context: inout Context) -> String? {
        // harmonylite's capture triggers write its change logs when a client writes a table.
        if let trigger = r.trigger, isReserved(trigger) { return nil }
        let topLevel = context.topLevel
        switch r.action {
        case SQLITE_ATTACH where (r.first ?? "").isEmpty:
            // Plain VACUUM attaches a nameless scratch database; it was refused as "ATTACH ... open other files".
            return "VACUUM is refused through the API: it rewrites the whole database while holding its lock, so every "
                + "writer (the replicator too) would wait until it ends; run it from the sqlite3 shell when the node is quiet"
        case SQLITE_ATTACH, SQLITE_DETACH:
            return "ATTACH, DETACH and VACUUM INTO are refused through the API: they open other files on the server"
        case SQLITE_FUNCTION where r.second?.lowercased() == "load_extension":
            return "load_extension() is refused through the API: it would run native code in the server"
        case SQLITE_FUNCTION where r.second?.lowercased() == "fts3_tokenizer":
            // Its two-argument form registers a tokenizer from a pointer the caller gives (bound parameters pass even
            // with the library's switch off); its one-argument form tells a pointer into the server's memory.
            return "fts3_tokenizer() is refused through the API: it reads and registers pointers into the server's memory"
        case SQLITE_TRANSACTION where topLevel && !context.ownsConnection, SQLITE_SAVEPOINT where topLevel && !context.ownsConnection:
            return "BEGIN, COMMIT, ROLLBACK and SAVEPOINT are refused: each request is its own transaction; send an array of statements to run them in one"
        case SQLITE_CREATE_TEMP_TABLE where !context.ownsConnection, SQLITE_CREATE_TEMP_INDEX where !context.ownsConnection,
             SQLITE_CREATE_TEMP_TRIGGER where !context.ownsConnection, SQLITE_CREATE_TEMP_VIEW where !context.ownsConnection:
            return "temporary tables, views, indexes and triggers are refused: the API's connections are pooled, so they would outlive the request"
        case SQLITE_PRAGMA:
            return pragmaRefusal(name: (r.first ?? "").lowercased(), argument: r.second, ownsConnection: context.ownsConnection)
        case SQLITE_DROP_TABLE:
            context.droppedTable = r.first
            return reservedRefusal(r.first)
        case SQLITE_DROP_TRIGGER where r.second != nil && r.second == context.droppedTable:
            return nil
        case SQLITE_INSERT, SQLITE_UPDATE, SQLITE_DELETE, SQLITE_CREATE_TABLE, SQLITE_CREATE_VIEW, SQLITE_DROP_VIEW:
            return reservedRefusal(r.first)
        case SQLITE_CREATE_TRIGGER, SQLITE_CREATE_TEMP_TRIGGER:
            if topLevel { context.createsTrigger = true }
            return reservedRefusal(r.first) ?? reservedRefusal(r.second)
        case SQLITE_CREATE_INDEX, SQLITE_DROP_INDEX, SQLITE_DROP_TRIGGER:
            return reservedRefusal(r.first) ?? reservedRefusal(r.second)
        case SQLITE_ALTER_TABLE:
            return reservedRefusal(r.second)
        default:
            return nil
        }
    }

    /// Thrown when a statement is refused after SQLite compiled it; the connection's `refusal` says why.
    public struct Refused: Error {}

    static func isReserved(_ name: String) -> Bool { name.lowercased().hasPrefix(reservedPrefix) }

    static func reservedRefusal(_ name: String?) -> String? {
        guard let name, isReserved(name) else { return nil }
        return "\(name) belongs to harmonylite's replication bookkeeping; it cannot be written, altered or dropped through the API"
    }

    static func pragmaRefusal(name: String, argument: String?, ownsConnection: Bool) -> String? {
        guard argument != nil, !readingPragmas.contains(name) else { return nil }
        if replicationPragmas.contains(name) {
            return "PRAGMA \(name) cannot be set through the API: it would break replication for every client"
        }
        if ownsConnection { return nil }
        return "PRAGMA \(name) cannot be set through the API: connections are pooled, so the setting would leak into other requests"
    }
}
