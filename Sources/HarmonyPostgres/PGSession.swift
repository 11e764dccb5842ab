import CSQLite
import Foundation
import HarmonyAPI
import HarmonySQLite

/// What a session needs to know: the database, the one user and how it must prove itself.
public struct PGSessionConfig: Sendable {
    public var databasePath: String
    public var user: String
    public var password: String
    public var auth: PGAuthMethod
    public var scram: SCRAMVerifier
    public var requireTLS: Bool
    public var busyTimeoutMs: Int
    public var nodeID: Int64

    public init(databasePath: String, user: String, password: String, auth: PGAuthMethod, requireTLS: Bool,
                busyTimeoutMs: Int = 5_000, nodeID: Int64 = 1) {
        self.databasePath = databasePath
        self.user = user
        self.password = password
        self.auth = auth
        self.scram = SCRAMVerifier(password: password)
        self.requireTLS = requireTLS
        self.busyTimeoutMs = busyTimeoutMs
        self.nodeID = nodeID
    }
}

/// One client session of the PostgreSQL front end, as a state machine over protocol messages: authentication,
/// then simple and extended queries on a SQLite connection the session owns. Not thread-safe: the server runs
/// each session's messages in order on its own queue. `emit` receives every reply as it is produced, so a large
/// result streams instead of piling up.
public final class PGSession {
    enum Phase {
        case startup
        case awaitingSASLInitial
        case awaitingSASLFinal(SCRAMExchange)
        case awaitingMD5(salt: [UInt8])
        case awaitingPassword
        case ready
        case closed
    }

    /// What a Parse (or each statement of a Query) compiled to: SQLite, or a command the front end answers itself.
    enum Command {
        case sqlite(Statement, tag: String)
        case empty
        case utility(tag: String)
        case show(String)
        /// immediate: READ WRITE asked (true), READ ONLY (false), or neither: the first statement decides.
        /// serializable: ISOLATION LEVEL SERIALIZABLE or REPEATABLE READ asked.
        case begin(immediate: Bool?, serializable: Bool)
        case commit
        case rollback
        case deallocate(String?)
    }

    final class Prepared {
        let sql: String
        let command: Command
        let parameterTypes: [Int32]
        /// What PostgreSQL would infer for parameters the client left untyped (0 where nothing says): reported by
        /// Describe, and used to read those parameters when they come in binary. Worked out on first need
        /// (`inferredTypes(of:)`), not at every Parse: psycopg parses each execution and needs neither.
        var inferredTypes: [Int32]?
        /// The result types a Describe of the statement told the client: its portals keep them (a driver such as
        /// asyncpg decodes every execution's rows by them), where a portal described alone is typed by its first row.
        var describedTypes: [Int32]?
        init(sql: String, command: Command, parameterTypes: [Int32]) {
            self.sql = sql
            self.command = command
            self.parameterTypes = parameterTypes
        }
    }

    final class Portal {
        let prepared: Prepared
        let resultFormats: [Int16]
        var columns: [PGColumn]?
        var peeked: [DatabaseValue]?
        var exhausted = false
        var rowsSent = 0
        init(prepared: Prepared, resultFormats: [Int16]) {
            self.prepared = prepared
            self.resultFormats = resultFormats
        }
    }

    let config: PGSessionConfig
    public let isTLS: Bool
    public let processID: Int32
    public let secret: Int32
    var phase = Phase.startup
    var user = ""
    var applicationName = ""
    /// The session's own connection, guarded as the HTTP API's are (it may run transactions and temporary objects).
    var connection: GuardedConnection?
    var database: Database? { connection?.database }
    var statements: [String: Prepared] = [:]
    var portals: [String: Portal] = [:]
    /// A statement failed inside a transaction block: everything but ROLLBACK is refused until it ends.
    var failed = false
    /// A BEGIN READ ONLY block is open (SQLite's query_only is on until it ends).
    var readOnlyBlock = false
    /// The client said BEGIN and SQLite's transaction starts with the next statement: IMMEDIATE (the write lock at
    /// once) when that statement writes, DEFERRED when it reads, so a reading transaction never blocks writers.
    var transactionRequested = false
    /// SQLite's transaction began DEFERRED (its first statement read), so a later write may find it stale.
    var transactionReadFirst = false
    /// The block asked for SERIALIZABLE or REPEATABLE READ: a stale snapshot is then the client's 40001, where
    /// READ COMMITTED (PostgreSQL's default) lets the write restart on the newest data.
    var serializableRequested = false
    /// An extended-protocol message failed: the rest up to Sync is skipped.
    var skippingUntilSync = false
    /// The statements up to Sync (or a Query message's statements) run in one implicit transaction, as in
    /// PostgreSQL: opened by their first write outside a block, committed at Sync or the Query's end, rolled back
    /// when any of them failed. Without it psycopg's executemany kept the rows before a failing one.
    var implicitTransaction = false
    /// Whether a write outside a block may open the implicit transaction: always in the extended protocol; in a
    /// Query message, once it has more than one statement (a lone statement is atomic by itself).
    var implicitTransactionAllowed = true
    let emit: (BackendMessage) -> Void
    /// Set when the session must end after its replies are sent.
    public private(set) var closing = false
    /// Called once the database is open, with what a CancelRequest needs.
    public var onReady: ((DatabaseInterrupter) -> Void)?

    public init(config: PGSessionConfig, isTLS: Bool, processID: Int32, secret: Int32, emit: @escaping (BackendMessage) -> Void) {
        self.config = config
        self.isTLS = isTLS
        self.processID = processID
        self.secret = secret
        self.emit = emit
    }

    /// Handles one message; replies go to `emit`.
    public func handle(_ message: FrontendMessage) {
        switch phase {
        case .closed:
            return
        case .startup, .awaitingSASLInitial, .awaitingSASLFinal, .awaitingMD5, .awaitingPassword:
            authenticate(message)
        case .ready:
            if case .terminate = message { close(); return }
            if skippingUntilSync {
                if case .sync = message {
                    skippingUntilSync = false
                    endImplicitTransaction(commit: false)
                    emit(.readyForQuery(status: status))
                }
                return
            }
            serve(message)
        }
    }

    public func close() {
        phase = .closed
        closing = true
        portals.removeAll()
        statements.removeAll()
        connection = nil
    }

    private func fatal(_ code: String, _ message: String) {
        emit(.error(PGError(code, message, severity: "FATAL")))
        close()
    }

    // MARK: Authentication

    private func authenticate(_ message: FrontendMessage) {
        switch (phase, message) {
        case (.startup, .startup(let parameters)):
            user = parameters["user"] ?? ""
            applicationName = parameters["application_name"] ?? ""
            if config.requireTLS && !isTLS {
                return fatal("28000", "this server accepts TLS connections only; connect with sslmode=require")
            }
            switch config.auth {
            case .scramSHA256:
                phase = .awaitingSASLInitial
                emit(.authenticationSASL(mechanisms: ["SCRAM-SHA-256"]))
            case .md5:
                let salt = (0..<4).map { _ in UInt8.random(in: 0...255) }
                phase = .awaitingMD5(salt: salt)
                emit(.authenticationMD5Password(salt: salt))
            case .password:
                guard isTLS else { return fatal("28000", "password authentication is allowed over TLS only; connect with sslmode=require") }
                phase = .awaitingPassword
                emit(.authenticationCleartextPassword)
            }
        case (.awaitingSASLInitial, .password(let body)):
            var rest = body[...]
            guard let zero = rest.firstIndex(of: 0), String(decoding: rest[..<zero], as: UTF8.self) == "SCRAM-SHA-256" else {
                return fatal("28000", "only SCRAM-SHA-256 is offered")
            }
            rest = rest[(zero + 1)...]
            guard rest.count >= 4 else { return fatal("08P01", "malformed SASLInitialResponse") }
            let data = rest.dropFirst(4)
            var exchange = SCRAMExchange(verifier: config.scram)
            do {
                let serverFirst = try exchange.start(clientFirst: String(decoding: data, as: UTF8.self))
                phase = .awaitingSASLFinal(exchange)
                emit(.authenticationSASLContinue(Array(serverFirst.utf8)))
            } catch {
                fatal(error.code, error.message)
            }
        case (.awaitingSASLFinal(let exchange), .password(let body)):
            do {
                let serverFinal = try exchange.finish(clientFinal: String(decoding: body, as: UTF8.self))
                guard constantTimeEquals(Array(user.utf8), Array(config.user.utf8)) else { throw PGError("28P01", "") }
                emit(.authenticationSASLFinal(Array(serverFinal.utf8)))
                authenticated()
            } catch {
                fatal("28P01", "password authentication failed for user \"\(user)\"")
            }
        case (.awaitingMD5(let salt), .password(let body)):
            let answer = Array(body.prefix { $0 != 0 })
            let expected = Array(pgMD5Answer(user: config.user, password: config.password, salt: salt).utf8)
            guard constantTimeEquals(answer, expected), constantTimeEquals(Array(user.utf8), Array(config.user.utf8)) else {
                return fatal("28P01", "password authentication failed for user \"\(user)\"")
            }
            authenticated()
        case (.awaitingPassword, .password(let body)):
            let answer = Array(body.prefix { $0 != 0 })
            guard constantTimeEquals(answer, Array(config.password.utf8)), constantTimeEquals(Array(user.utf8), Array(config.user.utf8)) else {
                return fatal("28P01", "password authentication failed for user \"\(user)\"")
            }
            authenticated()
        case (_, .terminate):
            close()
        default:
            fatal("08P01", "unexpected message during authentication")
        }
    }

    private func authenticated() {
        do {
            let guarded = try GuardedConnection(path: config.databasePath, readOnly: false, busyTimeoutMs: config.busyTimeoutMs,
                                                ownsConnection: true)
            let db = guarded.database
            let sqliteVersion = (try? db.scalar("SELECT sqlite_version()")?.string) ?? "?"
            try db.defineConstantFunction("version", value: "PostgreSQL 15.0 (harmonylite node \(config.nodeID), SQLite \(sqliteVersion))")
            let databaseName = ((config.databasePath as NSString).lastPathComponent as NSString).deletingPathExtension
            try db.defineConstantFunction("current_database", value: databaseName)
            try db.defineConstantFunction("current_schema", value: "public")
            try db.defineConstantFunction("current_user", value: config.user)
            try db.defineConstantFunction("session_user", value: config.user)
            try db.defineConstantFunction("current_role", value: config.user)
            try db.defineConstantFunction("current_catalog", value: databaseName)
            try db.defineConstantFunction("pg_table_is_visible", value: "1", arguments: 1)
            // Made once, outside any transaction, so no client ROLLBACK or read-only block takes them away.
            for view in PGDialect.catalogViews { try db.execute(view) }
            connection = guarded
            onReady?(db.interrupter)
        } catch {
            return fatal("58000", "cannot open the database: \(error)")
        }
        phase = .ready
        emit(.authenticationOK)
        for (name, value) in Self.parameterStatus(user: config.user, applicationName: applicationName) {
            emit(.parameterStatus(name: name, value: value))
        }
        emit(.backendKeyData(processID: processID, secret: secret))
        emit(.readyForQuery(status: status))
    }

    static func parameterStatus(user: String, applicationName: String) -> [(String, String)] {
        [("server_version", "15.0"), ("server_encoding", "UTF8"), ("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY"),
         ("integer_datetimes", "on"), ("standard_conforming_strings", "on"), ("TimeZone", "UTC"), ("IntervalStyle", "postgres"),
         ("is_superuser", "off"), ("session_authorization", user), ("application_name", applicationName)]
    }

    /// SHOW answers: the parameters above plus a few drivers ask for.
    static func setting(_ name: String, user: String) -> String? {
        // READ COMMITTED is what a block gets unless it asks for SERIALIZABLE (see the write-after-read restart).
        let extra = ["transaction_isolation": "read committed", "default_transaction_isolation": "read committed",
                     "max_identifier_length": "63", "search_path": "public", "server_version_num": "150000",
                     "transaction_read_only": "off", "lc_collate": "C", "lc_ctype": "C"]
        if let v = extra[name] { return v }
        return parameterStatus(user: user, applicationName: "").first { $0.0.lowercased() == name }?.1
    }

    /// I idle, T in a transaction block, E in a failed one.
    var status: UInt8 {
        if failed { return UInt8(ascii: "E") }
        return inTransactionBlock ? UInt8(ascii: "T") : UInt8(ascii: "I")
    }

    // MARK: Queries

    private func serve(_ message: FrontendMessage) {
        do {
            switch message {
            case .query(let sql):
                simpleQuery(sql)
            case .parse(let name, let query, let types):
                if !name.isEmpty, statements[name] != nil {
                    throw PGError("42P05", "prepared statement \"\(name)\" already exists")
                }
                let (command, rest) = try compile(query)
                guard Self.isBlank(rest) else { throw PGError("42601", "cannot insert multiple commands into a prepared statement") }
                statements[name] = Prepared(sql: query, command: command, parameterTypes: types)
                emit(.parseComplete)
            case .bind(let portalName, let statementName, let formats, let values, let resultFormats):
                guard let prepared = statements[statementName] else {
                    throw PGError("26000", "prepared statement \"\(statementName)\" does not exist")
                }
                dropPortals { $0 == portalName }
                try bind(prepared, formats: formats, values: values)
                portals[portalName] = Portal(prepared: prepared, resultFormats: resultFormats)
                emit(.bindComplete)
            case .describe(let kind, let name):
                if kind == UInt8(ascii: "S") {
                    guard let prepared = statements[name] else { throw PGError("26000", "prepared statement \"\(name)\" does not exist") }
                    emit(.parameterDescription(parameterTypes(prepared)))
                    let columns = try describeBeforeItRuns(prepared)
                    prepared.describedTypes = columns.map(\.typeOID)
                    emit(columns.isEmpty ? .noData : .rowDescription(columns))
                } else {
                    guard let portal = portals[name] else { throw PGError("34000", "portal \"\(name)\" does not exist") }
                    let columns = try describe(portal)
                    emit(columns.isEmpty ? .noData : .rowDescription(columns))
                }
            case .execute(let name, let maxRows):
                guard let portal = portals[name] else { throw PGError("34000", "portal \"\(name)\" does not exist") }
                try execute(portal, maxRows: Int(max(0, maxRows)))
            case .close(let kind, let name):
                if kind == UInt8(ascii: "S") { statements[name] = nil } else { dropPortals { $0 == name } }
                emit(.closeComplete)
            case .sync:
                endImplicitTransaction(commit: true)
                if !inTransactionBlock { dropPortals { _ in true } }
                emit(.readyForQuery(status: status))
            case .flush:
                break
            case .password:
                throw PGError("08P01", "unexpected password message")
            default:
                throw PGError("08P01", "unexpected message \(message)")
            }
        } catch let error as PGError {
            failTransactionBlock()
            emit(.error(error))
            skippingUntilSync = true
        } catch {
            failTransactionBlock()
            emit(.error(PGError("XX000", "\(error)")))
            skippingUntilSync = true
        }
    }

    /// Any error inside a transaction block fails the block, as in PostgreSQL: a statement that would not compile,
    /// a table that does not exist, a SELECT that fails at run time or is cancelled, not only a failed write. Until
    /// ROLLBACK (or ROLLBACK TO a savepoint) only the block's end runs, and COMMIT rolls back; otherwise a COMMIT after
    /// a failed statement would keep the statements around it.
    private func failTransactionBlock() {
        if inTransactionBlock { failed = true }
    }

    /// Removes portals, and resets the statement of each one no remaining portal runs: a portal suspended at its
    /// row limit (asyncpg's fetchrow and fetchval, JDBC's fetch size) kept its SQLite statement mid-step, holding a
    /// read snapshot after Sync; the session's next write then met a newer commit (40001), and WAL checkpoints waited.
    private func dropPortals(where remove: (String) -> Bool) {
        let removed = portals.filter { remove($0.key) }
        guard !removed.isEmpty else { return }
        portals = portals.filter { !remove($0.key) }
        for portal in removed.values where !portals.values.contains(where: { $0.prepared === portal.prepared }) {
            if case .sqlite(let s, _) = portal.prepared.command { s.reset() }
        }
    }

    /// Commits the implicit transaction (rolls it back when `commit` is false, or when its COMMIT fails, such as
    /// on a deferred foreign key, whose error the client gets).
    private func endImplicitTransaction(commit: Bool) {
        guard implicitTransaction else { return }
        implicitTransaction = false
        guard database?.isInTransaction == true else { return }
        do {
            try run(commit ? "COMMIT" : "ROLLBACK")
        } catch {
            emit(.error(error))
            if database?.isInTransaction == true { try? run("ROLLBACK") }
        }
    }

    /// A Query message: each statement in turn (each in its own transaction unless a block is open); the first
    /// failure ends the message.
    private func simpleQuery(_ sql: String) {
        // Rewritten once whole: statement by statement, the rest was tokenized again for each (a seed file sent as
        // one Query took time quadratic in its length).
        var rest = String(PGDialect.rewritten(Substring(sql)))
        var ranAny = false
        var failedStatement = false
        defer { implicitTransactionAllowed = true }
        while true {
            let command: Command
            do {
                (command, rest) = try compile(rest, rewritten: true)
            } catch {
                failTransactionBlock()
                emit(.error(error))
                failedStatement = true
                break
            }
            implicitTransactionAllowed = ranAny || !Self.isBlank(rest)
            if case .empty = command {
                if !ranAny { emit(.emptyQueryResponse) }
                break
            }
            ranAny = true
            let portal = Portal(prepared: Prepared(sql: "", command: command, parameterTypes: []), resultFormats: [])
            do {
                if case .sqlite(let s, _) = command, s.parameterCount > 0 {
                    throw PGError("08P01", "the simple query protocol takes no parameters ($1...); use the extended protocol")
                }
                let columns = try describe(portal)
                if !columns.isEmpty { emit(.rowDescription(columns)) }
                try execute(portal, maxRows: 0)
            } catch {
                failTransactionBlock()
                emit(.error(error as? PGError ?? PGError("XX000", "\(error)")))
                failedStatement = true
                break
            }
            if Self.isBlank(rest) { break }
        }
        endImplicitTransaction(commit: !failedStatement)
        dropPortals { $0 == "" }
        emit(.readyForQuery(status: status))
    }

    static func isBlank(_ sql: String) -> Bool { SQLText.strippedLeading(sql).isEmpty }

    /// The first statement of `sql` and the text after it. PostgreSQL commands SQLite lacks (SET, SHOW, START
    /// TRANSACTION, BEGIN with options, ABORT...) are answered here; the rest is compiled by SQLite.
    /// `rewritten`: `sql` went through `PGDialect.rewritten` already (a Query message's text, rewritten once whole).
    private func compile(_ sql: String, rewritten: Bool = false) throws(PGError) -> (Command, String) {
        let text = SQLText.strippedLeading(sql)
        let words = text.prefix { $0 != ";" }.split(whereSeparator: { $0.isWhitespace }).prefix(3).map { $0.uppercased() }
        let keyword = String(text.prefix { $0.isLetter }).uppercased()
        func untilSemicolon() -> String {
            guard let end = text.firstIndex(of: ";") else { return "" }
            return String(text[text.index(after: end)...])
        }
        switch keyword {
        case "":
            return (.empty, "")
        case "SET", "RESET", "DISCARD", "LISTEN", "UNLISTEN":
            return (.utility(tag: keyword == "DISCARD" ? "DISCARD ALL" : keyword), untilSemicolon())
        case "SHOW":
            var name = words.count > 1 ? words[1].lowercased().trimmingCharacters(in: CharacterSet(charactersIn: ";")) : ""
            // SHOW TRANSACTION ISOLATION LEVEL (SQLAlchemy asks it at connect) is PostgreSQL's other name for it.
            if name == "transaction", words.count > 2, words[2].hasPrefix("ISOLATION") { name = "transaction_isolation" }
            return (.show(name), untilSemicolon())
        case "START", "BEGIN":
            let options = text.prefix { $0 != ";" }.uppercased()
            let immediate: Bool? = options.contains("READ WRITE") ? true : options.contains("READ ONLY") ? false : nil
            let serializable = options.contains("SERIALIZABLE") || options.contains("REPEATABLE READ")
            return (.begin(immediate: immediate, serializable: serializable), untilSemicolon())
        case "COMMIT", "END":
            return (.commit, untilSemicolon())
        case "ABORT":
            return (.rollback, untilSemicolon())
        case "ROLLBACK" where !(words.count > 1 && words[1] == "TO"):
            return (.rollback, untilSemicolon())
        case "DEALLOCATE":
            let name = words.dropFirst().first { $0 != "PREPARE" }?.trimmingCharacters(in: CharacterSet(charactersIn: ";"))
            return (.deallocate(name == "ALL" ? nil : name?.lowercased()), untilSemicolon())
        default:
            guard let connection else { throw PGError("08003", "no database connection") }
            let db = connection.database
            connection.startStatement()
            defer { connection.authorizing.topLevel = false }
            do {
                let (statement, rest) = try connection.prepareFirst(String(rewritten ? text : PGDialect.rewritten(text)))
                guard let statement else { return (.empty, "") }
                return (.sqlite(statement, tag: keyword), rest)
            } catch {
                let failure = sqlError(error)
                // psql's \d and GUI tools read PostgreSQL's catalogs, which SQLite has not: say that, not "syntax error".
                let statementText = text.prefix { $0 != ";" }.lowercased()
                if failure.code != "42501", statementText.contains("pg_catalog") || statementText.contains("information_schema") || statementText.contains("pg_class")
                    || statementText.contains("pg_type") {
                    // A lookup in pg_type is a driver asking for a type by name (psycopg's TypeInfo.fetch, which
                    // SQLAlchemy runs at connect for hstore): "undefined object" is its answer for a type that does
                    // not exist, and none of PostgreSQL's types exist here.
                    throw PGError(statementText.contains("pg_type") ? "42704" : "0A000", "PostgreSQL's catalogs (pg_catalog, information_schema) are not available: this is SQLite. "
                                  + "List tables with SELECT name FROM sqlite_schema WHERE type = 'table', a table's columns with "
                                  + "SELECT * FROM pragma_table_info('t'); psql's \\d commands do not work", detail: failure.message)
                }
                throw failure
            }
        }
    }

    private func parameterTypes(_ p: Prepared) -> [Int32] {
        guard case .sqlite(let s, _) = p.command else { return [] }
        return (0..<s.parameterCount).map { i in
            if i < p.parameterTypes.count, p.parameterTypes[i] != 0 { return p.parameterTypes[i] }
            let inferred = inferredTypes(of: p)
            if i < inferred.count, inferred[i] != 0 { return inferred[i] }
            return PGType.text
        }
    }

    /// `PGDialect.parameterHints` for the parameters the client left untyped, as type OIDs (0: nothing to go by),
    /// worked out once per prepared statement.
    private func inferredTypes(of p: Prepared) -> [Int32] {
        if let known = p.inferredTypes { return known }
        let inferred = inferParameterTypes(p.sql, given: p.parameterTypes)
        p.inferredTypes = inferred
        return inferred
    }

    private func inferParameterTypes(_ query: String, given: [Int32]) -> [Int32] {
        guard let db = database, query.contains("$") else { return [] }
        let hints = PGDialect.parameterHints(Substring(query)) { table in
            ((try? db.query("SELECT name, type FROM pragma_table_xinfo(?)", [.text(table)])) ?? []).compactMap { row in
                guard case .text(let name) = row[0] else { return nil }
                return (name, row[1].string ?? "")
            }
        }
        guard let highest = hints.keys.max(), highest > 0 else { return [] }
        return (1...highest).map { n in
            guard n > given.count || given[n - 1] == 0, let declared = hints[n], !declared.isEmpty else { return 0 }
            return PGType.oid(declared: declared, sample: nil)
        }
    }

    /// Binds a Bind message's values: `$1` is the parameter named "$1" (SQLite's own syntax for it), so each
    /// value goes to the place its number says.
    private func bind(_ p: Prepared, formats: [Int16], values: [[UInt8]?]) throws(PGError) {
        guard case .sqlite(let s, _) = p.command else {
            guard values.isEmpty else { throw PGError("08P01", "bind message supplies \(values.count) parameters, but the statement requires 0") }
            return
        }
        guard values.count == s.parameterCount else {
            throw PGError("08P01", "bind message supplies \(values.count) parameters, but prepared statement requires \(s.parameterCount)")
        }
        s.reset()
        s.clearBindings()
        for (i, bytes) in values.enumerated() {
            let format = formats.count == 1 ? formats[0] : (i < formats.count ? formats[i] : 0)
            var oid = i < p.parameterTypes.count ? p.parameterTypes[i] : 0
            // An untyped parameter sent in binary is in the type Describe reported for it; in text, SQLite's
            // affinity converts it as before.
            if oid == 0, format == 1 {
                let inferred = inferredTypes(of: p)
                if i < inferred.count { oid = inferred[i] }
            }
            let value = try PGType.decode(bytes, oid: oid, binary: format == 1)
            let index = s.parameterIndex("$\(i + 1)") ?? (i + 1)
            do { try s.bind(value, index: index) } catch { throw sqlError(error) }
        }
    }

    private func describe(prepared p: Prepared) throws(PGError) -> [PGColumn] {
        switch p.command {
        case .sqlite(let s, _):
            return (0..<s.columnCount).map { i in
                let oid = PGType.oid(declared: s.declaredType(i), sample: nil)
                return PGColumn(name: s.columnName(i), typeOID: oid, typeSize: PGType.size(oid), format: 0)
            }
        case .show(let name): return [PGColumn(name: name, typeOID: PGType.text, typeSize: -1, format: 0)]
        default: return []
        }
    }

    /// A Describe of the statement: no row to look at yet, so an expression column is typed by what its expression
    /// shows, if anything (a portal described alone is typed by its first row instead, in `describe(_ portal:)`).
    private func describeBeforeItRuns(_ p: Prepared) throws(PGError) -> [PGColumn] {
        var columns = try describe(prepared: p)
        guard case .sqlite(let s, _) = p.command, !columns.isEmpty,
              let shown = PGDialect.selectListTypes(Substring(p.sql)), shown.count == columns.count else { return columns }
        for i in columns.indices where s.declaredType(i) == nil {
            if let expression = shown[i] {
                columns[i].typeOID = expression
                columns[i].typeSize = PGType.size(expression)
            }
        }
        return columns
    }

    /// In a failed transaction block only its end may run, or ROLLBACK TO a savepoint (which recovers the block, as
    /// psycopg's nested transactions and psql's ON_ERROR_ROLLBACK rely on).
    private func refuseInFailedTransaction(_ command: Command) throws(PGError) {
        guard failed else { return }
        switch command {
        case .rollback, .commit: return
        case .sqlite(_, let keyword) where keyword == "ROLLBACK": return  // ROLLBACK TO (a plain ROLLBACK is .rollback)
        default: throw PGError("25P02", "current transaction is aborted, commands ignored until end of transaction block")
        }
    }

    /// The portal's columns; a query's first row is read now, so an expression's type comes from its value.
    private func describe(_ portal: Portal) throws(PGError) -> [PGColumn] {
        if let columns = portal.columns { return columns }
        try refuseInFailedTransaction(portal.prepared.command)
        if case .sqlite(let s, _) = portal.prepared.command, s.columnCount > 0, s.isReadOnly, portal.rowsSent == 0 {
            try startRequestedTransaction(for: s)
            if try step(s) { portal.peeked = s.row() } else { portal.exhausted = true }
        }
        // The columns after that first step: a statement prepared before another connection changed its table is
        // prepared again by SQLite on the step, with the new columns (read before, they did not match the rows).
        var columns = try describe(prepared: portal.prepared)
        for i in columns.indices {
            if let described = portal.prepared.describedTypes, described.count == columns.count {
                columns[i].typeOID = described[i]
                columns[i].typeSize = PGType.size(columns[i].typeOID)
            } else if case .sqlite(let s, _) = portal.prepared.command {
                columns[i].typeOID = PGType.oid(declared: s.declaredType(i), sample: portal.peeked?[i])
                columns[i].typeSize = PGType.size(columns[i].typeOID)
            }
            let format = portal.resultFormats.count == 1 ? portal.resultFormats[0] : (i < portal.resultFormats.count ? portal.resultFormats[i] : 0)
            columns[i].format = format
        }
        portal.columns = columns
        return columns
    }

    private func step(_ s: Statement) throws(PGError) -> Bool {
        do { return try s.step() } catch { throw sqlError(error) }
    }

    private func execute(_ portal: Portal, maxRows: Int) throws(PGError) {
        let command = portal.prepared.command
        let wasInTransaction = inTransactionBlock
        /// A COMMIT that failed ended the block (rolled back), so the error does not leave it failed.
        var endedBlock = false
        try refuseInFailedTransaction(command)
        do {
            switch command {
            case .empty:
                emit(.emptyQueryResponse)
            case .utility(let tag):
                emit(.commandComplete(tag))
            case .show(let name):
                let isolation = inTransactionBlock && serializableRequested ? "serializable" : nil
                guard let value = name == "transaction_isolation" ? isolation ?? Self.setting(name, user: config.user)
                                                                  : Self.setting(name, user: config.user) else {
                    throw PGError("42704", "unrecognized configuration parameter \"\(name)\"")
                }
                _ = try describe(portal)
                emit(.dataRow([Array(value.utf8)]))
                emit(.commandComplete("SHOW"))
            case .begin(let immediate, let serializable):
                if !wasInTransaction { serializableRequested = serializable }
                if !wasInTransaction, immediate == false || readOnlyBlock {
                    // BEGIN READ ONLY: writes in the block fail with 25006, as applications that use read-only
                    // transactions as a guard expect (psycopg's read_only = True); SQLite's query_only until its end.
                    readOnlyBlock = immediate == false
                    try run("PRAGMA query_only = \(readOnlyBlock ? "ON" : "OFF")")
                }
                if wasInTransaction {
                    emit(.notice("there is already a transaction in progress"))
                } else if implicitTransaction {
                    // The statements before BEGIN join the block, as PostgreSQL has them do.
                    implicitTransaction = false
                } else if let immediate {
                    try run(immediate ? "BEGIN IMMEDIATE" : "BEGIN DEFERRED")
                } else {
                    transactionRequested = true
                }
                emit(.commandComplete("BEGIN"))
            case .commit, .rollback:
                dropPortals { _ in true }  // a transaction's end closes its portals, as in PostgreSQL
                var commitError: PGError?
                if database?.isInTransaction == true {
                    if case .commit = command, !failed {
                        do {
                            try run("COMMIT")
                        } catch {
                            // A deferred foreign key fails at COMMIT and SQLite keeps the transaction open; PostgreSQL
                            // ends the block rolled back. Left open, the session held the write lock in state E.
                            commitError = error
                            if database?.isInTransaction == true { try? run("ROLLBACK") }
                        }
                    } else {
                        try run("ROLLBACK")
                    }
                } else if !wasInTransaction {
                    emit(.notice("there is no transaction in progress"))
                }
                let tag = if case .commit = command, !failed { "COMMIT" } else { "ROLLBACK" }
                if readOnlyBlock {
                    readOnlyBlock = false
                    try run("PRAGMA query_only = OFF")
                }
                failed = false
                implicitTransaction = false
                transactionRequested = false
                transactionReadFirst = false
                serializableRequested = false
                if let commitError {
                    endedBlock = true
                    throw commitError
                }
                emit(.commandComplete(tag))
            case .deallocate(let name):
                if let name { statements[name] = nil } else { statements = statements.filter { $0.key.isEmpty } }
                emit(.commandComplete("DEALLOCATE"))
            case .sqlite(let s, let keyword):
                try executeSQLite(portal, s, keyword: keyword, maxRows: maxRows)
                if keyword == "ROLLBACK" { failed = false }  // ROLLBACK TO a savepoint: the block goes on from there
            }
        } catch {
            if wasInTransaction, !endedBlock { failed = true }
            throw error as? PGError ?? PGError("XX000", "\(error)")
        }
    }

    /// SQLite's transaction is open (holding at least a read snapshot, perhaps the write lock) between messages.
    public var holdsTransaction: Bool { database?.isInTransaction == true }

    /// A transaction block is open for the client: BEGIN was sent (SQLite's may not have started yet) or a
    /// SAVEPOINT started one.
    var inTransactionBlock: Bool { transactionRequested || (database?.isInTransaction == true && !implicitTransaction) }

    /// Starts SQLite's transaction for a pending BEGIN, in the mode `s` needs.
    private func startRequestedTransaction(for s: Statement) throws(PGError) {
        guard transactionRequested else { return }
        transactionRequested = false
        if database?.isInTransaction != true {
            try run(s.isReadOnly ? "BEGIN DEFERRED" : "BEGIN IMMEDIATE")
            transactionReadFirst = s.isReadOnly
        }
    }

    /// The first step of a statement. A write in a block that has only read so far may find SQLite unable to
    /// move its read snapshot up to a write (another connection committed, or holds the write lock); under READ
    /// COMMITTED, PostgreSQL's default, the block's SQLite transaction then restarts as IMMEDIATE (nothing was
    /// written in it yet; the earlier reads saw an older snapshot, as READ COMMITTED allows) and the write runs on
    /// the newest data. A SERIALIZABLE block gets 40001 instead.
    private func firstStep(_ s: Statement) throws(PGError) -> Bool {
        guard !s.isReadOnly, transactionReadFirst, !serializableRequested, database?.isInTransaction == true else { return try step(s) }
        do {
            let hasRow = try s.step()
            transactionReadFirst = false
            return hasRow
        } catch let error as SQLiteError where error.primaryCode == SQLITE_BUSY {
            s.reset()
            try run("ROLLBACK")
            transactionReadFirst = false
            try run("BEGIN IMMEDIATE")
            return try step(s)
        } catch {
            throw sqlError(error)
        }
    }

    private func run(_ sql: String) throws(PGError) {
        do { try database?.execute(sql) } catch { throw sqlError(error) }
    }

    private func executeSQLite(_ portal: Portal, _ s: Statement, keyword: String, maxRows: Int) throws(PGError) {
        guard let db = database else { throw PGError("08003", "no database connection") }
        try startRequestedTransaction(for: s)
        if implicitTransactionAllowed, !implicitTransaction, !s.isReadOnly, db.isInTransaction == false,
           !["PRAGMA", "VACUUM", "SAVEPOINT", "RELEASE", "ROLLBACK"].contains(keyword) {
            // PRAGMAs such as foreign_keys do nothing inside a transaction, VACUUM cannot run in one, and a
            // SAVEPOINT outside a block opens one of its own.
            try run("BEGIN IMMEDIATE")
            implicitTransaction = true
        }
        if s.columnCount == 0 {
            let before = db.totalChanges
            if try firstStep(s) { while try step(s) {} }
            s.reset()
            let affected = db.totalChanges == before ? 0 : db.changes
            emit(.commandComplete(Self.tag(keyword: keyword, sql: s.sql, rows: affected)))
            return
        }
        let columns = try describe(portal)
        if !s.isReadOnly && portal.rowsSent == 0 {
            // A write with RETURNING runs on its first step, so a changed result is checked before it, against the
            // statement compiled anew; otherwise the write would run and then be refused.
            let fresh: Statement
            do { fresh = try db.prepare(s.sql) } catch { throw sqlError(error) }
            guard fresh.columnCount == columns.count else { throw Self.resultChanged }
        }
        var sent = 0
        func send(_ row: [DatabaseValue]) throws(PGError) {
            // A statement that was not read before it was described (a write with RETURNING) can still meet a table
            // changed since: PostgreSQL's own answer for a prepared statement whose result changed.
            guard row.count == columns.count else { throw Self.resultChanged }
            var values: [[UInt8]?] = []
            values.reserveCapacity(row.count)
            for (i, v) in row.enumerated() {
                values.append(try PGType.encode(v, oid: columns[i].typeOID, binary: columns[i].format == 1))
            }
            emit(.dataRow(values))
            sent += 1
            portal.rowsSent += 1
        }
        if let row = portal.peeked {
            portal.peeked = nil
            try send(row)
        }
        while !portal.exhausted && (maxRows == 0 || sent < maxRows) {
            let hasRow = portal.rowsSent == 0 ? try firstStep(s) : try step(s)
            if hasRow { try send(s.row()) } else { portal.exhausted = true }
        }
        if !portal.exhausted {
            emit(.portalSuspended)
            return
        }
        s.reset()
        let rows = ["INSERT", "UPDATE", "DELETE"].contains(keyword) ? db.changes : portal.rowsSent
        emit(.commandComplete(Self.tag(keyword: keyword, sql: s.sql, rows: rows, query: true)))
    }

    /// A statement described before another connection changed its table's columns: PostgreSQL's own answer when a
    /// prepared statement's result changes.
    static let resultChanged = PGError("0A000", "cached plan must not change result type: another connection changed the table's columns "
                                       + "since this statement was described; prepare it again")

    /// PostgreSQL's command tag: "INSERT 0 n", "UPDATE n", "SELECT n", "CREATE TABLE"...
    static func tag(keyword: String, sql: String, rows: Int, query: Bool = false) -> String {
        // WITH ... INSERT/UPDATE/DELETE is tagged by its statement, as PostgreSQL does (drivers read the row count
        // from "INSERT 0 n"; "WITH" gave psycopg's rowcount -1).
        if keyword == "WITH", let verb = PGDialect.statementAfterWith(Substring(sql)), verb != "WITH" {
            return tag(keyword: verb, sql: sql, rows: rows, query: query)
        }
        switch keyword {
        case "INSERT", "REPLACE": return "INSERT 0 \(rows)"
        case "UPDATE": return "UPDATE \(rows)"
        case "DELETE": return "DELETE \(rows)"
        case "SELECT", "WITH", "VALUES", "PRAGMA", "EXPLAIN": return query ? "SELECT \(rows)" : keyword
        case "CREATE", "DROP", "ALTER":
            let words = SQLText.strippedLeading(sql).split(whereSeparator: { $0.isWhitespace }).map { $0.uppercased() }
            let object = words.dropFirst().first { !["UNIQUE", "TEMP", "TEMPORARY", "VIRTUAL"].contains($0) } ?? ""
            return "\(keyword) \(object)"
        default:
            return query ? "SELECT \(rows)" : keyword
        }
    }

    /// SQLite's error as an SQLSTATE: class 23 for constraints (23505 unique), 42601 syntax, 42P01 and 42703 for
    /// missing tables and columns, 55P03 busy, 57014 interrupted, 42501 for what the authorizer refuses.
    func sqlError(_ error: any Error) -> PGError {
        let serializationFailure = PGError("40001", "could not serialize access: this SERIALIZABLE transaction read, then wrote, and another connection (the replicator or a client) committed in between; retry the transaction, or start it with BEGIN READ WRITE to take the write lock first")

        if let refusal = connection?.refusal {
            connection?.refusal = nil
            return PGError("42501", refusal)
        }
        guard let e = error as? SQLiteError else { return PGError("XX000", "\(error)") }
        let message = e.message
        switch e.code {
        case 517:  // SQLITE_BUSY_SNAPSHOT: a stale read snapshot cannot write (only SERIALIZABLE blocks get here)
            return serializationFailure
        case 5 where transactionReadFirst && database?.isInTransaction == true:  // BUSY on the upgrade from reading
            return serializationFailure
        case 2067, 1555: return PGError("23505", message)  // SQLITE_CONSTRAINT_UNIQUE, _PRIMARYKEY
        case 1299: return PGError("23502", message)  // _NOTNULL
        case 787: return PGError("23503", message)  // _FOREIGNKEY
        case 275: return PGError("23514", message)  // _CHECK
        default: break
        }
        switch e.primaryCode {
        case SQLITE_CONSTRAINT: return PGError("23000", message)
        case SQLITE_BUSY, SQLITE_LOCKED: return PGError("55P03", "the database is locked by another writer: \(message)")
        case SQLITE_INTERRUPT: return PGError("57014", "canceling statement due to user request")
        case SQLITE_AUTH: return PGError("42501", message)
        case SQLITE_FULL: return PGError("53100", message)
        case SQLITE_READONLY: return PGError("25006", message)
        case SQLITE_MISMATCH: return PGError("42804", message)
        case SQLITE_TOOBIG: return PGError("54000", message)
        case SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_NOMEM, SQLITE_CANTOPEN: return PGError("58030", message)
        default:
            if message.contains("syntax error") || message.contains("incomplete input") { return PGError("42601", message) }
            if message.hasPrefix("no such table") || message.hasPrefix("no such view") { return PGError("42P01", message) }
            if message.hasPrefix("no such column") { return PGError("42703", message) }
            if message.hasPrefix("no such function") { return PGError("42883", message) }
            if message.contains("already exists") { return PGError("42P07", message) }
            return PGError("42000", message)
        }
    }
}
