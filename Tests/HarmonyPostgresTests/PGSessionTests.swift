import Foundation
import HarmonyPostgres
import HarmonySQLite
import Testing

/// A session driven message by message against a real SQLite file, no network.
final class SessionFixture {
    let directory: String
    let path: String
    var replies: [BackendMessage] = []
    var session: PGSession!

    init(auth: PGAuthMethod = .md5, isTLS: Bool = false, requireTLS: Bool = false) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("pg-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path = directory + "/app.db"
        try SQLiteOpener().open(path: path).execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT, r REAL)")
        let config = PGSessionConfig(databasePath: path, user: "app", password: "pw", auth: auth, requireTLS: requireTLS)
        session = PGSession(config: config, isTLS: isTLS, processID: 1, secret: 2) { [unowned self] in self.replies.append($0) }
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    /// Sends messages; returns the replies they produced.
    @discardableResult
    func send(_ messages: FrontendMessage...) -> [BackendMessage] {
        replies.removeAll()
        for m in messages { session.handle(m) }
        return replies
    }

    func login() {
        let challenge = send(.startup(parameters: ["user": "app"]))
        guard case .authenticationMD5Password(let salt)? = challenge.first else { Issue.record("no md5 challenge: \(challenge)"); return }
        let answer = send(.password(body: Array(pgMD5Answer(user: "app", password: "pw", salt: salt).utf8) + [0]))
        #expect(answer.first == .authenticationOK && answer.last == .readyForQuery(status: UInt8(ascii: "I")))
    }

    static func text(_ s: String) -> [UInt8]? { Array(s.utf8) }
}

@Suite struct PGSessionTests {
    @Test func md5LoginAndAWrongPassword() throws {
        let f = try SessionFixture()
        f.login()
        let g = try SessionFixture()
        guard case .authenticationMD5Password? = g.send(.startup(parameters: ["user": "app"])).first else { Issue.record("no challenge"); return }
        let refused = g.send(.password(body: Array("md5deadbeef".utf8) + [0]))
        guard case .error(let e)? = refused.first else { Issue.record("\(refused)"); return }
        #expect(e.code == "28P01" && e.severity == "FATAL" && g.session.closing)
    }

    @Test func cleartextPasswordsAndPlainConnectionsAreRefusedWhereTLSIsRequired() throws {
        let plain = try SessionFixture(auth: .password)
        guard case .error(let e)? = plain.send(.startup(parameters: ["user": "app"])).first else { Issue.record("accepted"); return }
        #expect(e.code == "28000" && e.message.contains("TLS"))
        let overTLS = try SessionFixture(auth: .password, isTLS: true)
        #expect(overTLS.send(.startup(parameters: ["user": "app"])) == [.authenticationCleartextPassword])
        #expect(overTLS.send(.password(body: Array("pw".utf8) + [0])).first == .authenticationOK)
        let required = try SessionFixture(auth: .scramSHA256, requireTLS: true)
        guard case .error(let r)? = required.send(.startup(parameters: ["user": "app"])).first else { Issue.record("accepted"); return }
        #expect(r.message.contains("sslmode=require"))
    }

    @Test func simpleQueriesAnswerWithPostgresTagsAndTypes() throws {
        let f = try SessionFixture()
        f.login()
        let replies = f.send(.query("INSERT INTO t VALUES (1, 'a', 1.5), (2, 'b', NULL); UPDATE t SET v = 'c' WHERE id = 2; SELECT id, v, r, count(*) OVER () FROM t ORDER BY id; DELETE FROM t WHERE id = 1"))
        let tags = replies.compactMap { if case .commandComplete(let t) = $0 { t } else { nil } }
        #expect(tags == ["INSERT 0 2", "UPDATE 1", "SELECT 2", "DELETE 1"])
        let description = replies.compactMap { if case .rowDescription(let c) = $0 { c } else { nil } }.first
        #expect(description?.map(\.typeOID) == [20, 25, 701, 20])
        #expect(replies.contains(.dataRow([SessionFixture.text("1"), SessionFixture.text("a"), SessionFixture.text("1.5"), SessionFixture.text("2")])))
        #expect(replies.contains(.dataRow([SessionFixture.text("2"), SessionFixture.text("c"), nil, SessionFixture.text("2")])))
        #expect(replies.last == .readyForQuery(status: UInt8(ascii: "I")))
        #expect(f.send(.query("  ")).first == .emptyQueryResponse)
        // A WITH clause is tagged by the statement it leads to (drivers read row counts from the tag).
        let with = f.send(.query("WITH v(x) AS (VALUES (10), (11)) INSERT INTO t(id) SELECT x FROM v; WITH d AS (SELECT 1) UPDATE t SET v = 'w' WHERE id >= 10; WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3) SELECT x FROM n"))
        #expect(with.compactMap { if case .commandComplete(let t) = $0 { t } else { nil } } == ["INSERT 0 2", "UPDATE 2", "SELECT 3"])
        // PostgreSQL's value functions without parentheses, as psql users and toolkits write them.
        #expect(f.send(.query("SELECT current_user, session_user, current_catalog, current_schema")).contains(
            .dataRow([SessionFixture.text("app"), SessionFixture.text("app"), SessionFixture.text("app"), SessionFixture.text("public")])))
        #expect(f.send(.query("SHOW TRANSACTION ISOLATION LEVEL")).contains(.dataRow([SessionFixture.text("read committed")])))
        let shown = f.send(.query("SET extra_float_digits = 3; SHOW server_version; SELECT version()"))
        #expect(shown.contains(.commandComplete("SET")) && shown.contains(.dataRow([SessionFixture.text("15.0")])))
    }

    @Test func extendedQueriesBindByNumberAndSuspendAtTheRowLimit() throws {
        let f = try SessionFixture()
        f.login()
        // $2 before $1 in the text: each value goes where its number says.
        var replies = f.send(.parse(name: "ins", query: "INSERT INTO t(v, id) VALUES ($2, $1)", parameterTypes: [20, 25]),
                             .bind(portal: "", statement: "ins", parameterFormats: [1, 0],
                                   parameters: [[0, 0, 0, 0, 0, 0, 0, 7], Array("seven".utf8)], resultFormats: []),
                             .execute(portal: "", maxRows: 0), .sync)
        #expect(replies == [.parseComplete, .bindComplete, .commandComplete("INSERT 0 1"), .readyForQuery(status: UInt8(ascii: "I"))])
        _ = f.send(.query("INSERT INTO t(id) VALUES (8), (9)"))
        replies = f.send(.parse(name: "", query: "SELECT id FROM t ORDER BY id", parameterTypes: []),
                         .bind(portal: "p", statement: "", parameterFormats: [], parameters: [], resultFormats: [1]),
                         .describe(kind: UInt8(ascii: "P"), name: "p"),
                         .execute(portal: "p", maxRows: 2), .execute(portal: "p", maxRows: 2), .sync)
        #expect(replies == [
            .parseComplete, .bindComplete,
            .rowDescription([PGColumn(name: "id", typeOID: 20, typeSize: 8, format: 1)]),
            .dataRow([[0, 0, 0, 0, 0, 0, 0, 7]]), .dataRow([[0, 0, 0, 0, 0, 0, 0, 8]]), .portalSuspended,
            .dataRow([[0, 0, 0, 0, 0, 0, 0, 9]]), .commandComplete("SELECT 3"),
            .readyForQuery(status: UInt8(ascii: "I")),
        ])
        // An error skips the rest up to Sync.
        replies = f.send(.parse(name: "", query: "SELEC", parameterTypes: []), .bind(portal: "", statement: "", parameterFormats: [], parameters: [], resultFormats: []),
                         .execute(portal: "", maxRows: 0), .sync)
        guard case .error(let e)? = replies.first else { Issue.record("\(replies)"); return }
        #expect(e.code == "42601" && replies.count == 2 && replies.last == .readyForQuery(status: UInt8(ascii: "I")))
    }

    /// A statement described before it runs (asyncpg's way) keeps the types it was described with in every execution:
    /// a DATETIME column told as timestamp whose row holds a Unix time is refused in binary (22007), not sent as int8
    /// bytes the driver would decode as a timestamp without a word.
    @Test func aDescribedStatementKeepsItsTypesInEveryExecution() throws {
        let f = try SessionFixture()
        f.login()
        _ = f.send(.query("CREATE TABLE ev(id INTEGER PRIMARY KEY, at DATETIME); INSERT INTO ev VALUES (1, '2024-01-02 03:04:05'), (2, 1700000000)"))
        let described = f.send(.parse(name: "q", query: "SELECT at FROM ev WHERE id = $1", parameterTypes: [PGType.int8]),
                               .describe(kind: UInt8(ascii: "S"), name: "q"), .sync)
        #expect(described.contains(.rowDescription([PGColumn(name: "at", typeOID: PGType.timestamp, typeSize: 8, format: 0)])), "\(described)")
        func run(_ id: Int64) -> [BackendMessage] {
            f.send(.bind(portal: "", statement: "q", parameterFormats: [1], parameters: [withUnsafeBytes(of: id.bigEndian, Array.init)], resultFormats: [1]),
                   .execute(portal: "", maxRows: 0), .sync)
        }
        #expect(run(1).contains { if case .dataRow(let v) = $0 { v[0]?.count == 8 } else { false } })
        #expect(run(2).contains { if case .error(let e) = $0 { e.code == "22007" } else { false } })
    }

    /// asyncpg's way: Parse with untyped parameters, Describe the statement, and encode each parameter (in binary)
    /// by the type the ParameterDescription says. The types come from the columns the parameters go into or are
    /// compared with; before, every one was text and asyncpg refused to send an int.
    @Test func untypedParametersAreDescribedByTheirColumnsAndReadInBinary() throws {
        let f = try SessionFixture()
        f.login()
        _ = f.send(.query("CREATE TABLE items(id INTEGER PRIMARY KEY, name TEXT, price NUMERIC, at TIMESTAMP, ok BOOLEAN)"))
        let cases: [(String, [Int32])] = [
            ("INSERT INTO items VALUES ($1, $2, $3, $4, $5)", [PGType.int8, PGType.text, PGType.numeric, PGType.timestamp, PGType.bool]),
            ("INSERT INTO items (name, id) VALUES ($2, $1), ($3, $4)", [PGType.int8, PGType.text, PGType.text, PGType.int8]),
            ("UPDATE items SET name = $1 WHERE id = $2", [PGType.text, PGType.int8]),
            ("SELECT id FROM items WHERE price > $1 AND id IN ($2, $3) AND name LIKE $4 LIMIT $5", [PGType.numeric, PGType.int8, PGType.int8, PGType.text, PGType.int8]),
            ("SELECT $1::date, $2 + 1", [PGType.date, PGType.text]),
        ]
        for (sql, types) in cases {
            let replies = f.send(.parse(name: "", query: sql, parameterTypes: []), .describe(kind: UInt8(ascii: "S"), name: ""), .sync)
            #expect(replies.contains(.parameterDescription(types)), "\(sql): \(replies)")
        }
        // An int sent in binary for an untyped parameter is read as the int8 Describe said.
        let inserted = f.send(.parse(name: "", query: "INSERT INTO items (id, name) VALUES ($1, $2)", parameterTypes: []),
                              .bind(portal: "", statement: "", parameterFormats: [1, 0], parameters: [withUnsafeBytes(of: Int64(7).bigEndian, Array.init), SessionFixture.text("seven")], resultFormats: []),
                              .execute(portal: "", maxRows: 0), .sync)
        #expect(inserted.contains(.commandComplete("INSERT 0 1")), "\(inserted)")
        #expect(try Database(path: f.path).query("SELECT id, typeof(id), name FROM items") == [[7, "integer", "seven"]])
    }

    /// A portal suspended at its row limit (asyncpg's fetchrow, JDBC's fetch size) is closed at Sync with its
    /// statement reset: its SQLite statement held a read snapshot, and the session's next write, after another
    /// connection committed, failed (40001).
    @Test func aSuspendedPortalLetsGoOfItsSnapshotAtSync() throws {
        let f = try SessionFixture()
        f.login()
        _ = f.send(.query("INSERT INTO t(id) VALUES (1), (2), (3)"))
        let suspended = f.send(.parse(name: "q", query: "SELECT id FROM t ORDER BY id", parameterTypes: []),
                               .bind(portal: "", statement: "q", parameterFormats: [], parameters: [], resultFormats: []),
                               .execute(portal: "", maxRows: 1), .sync)
        #expect(suspended.contains(.portalSuspended))
        try Database(path: f.path).execute("INSERT INTO t(id) VALUES (10)")
        let write = f.send(.query("INSERT INTO t(id) VALUES (11)"))
        #expect(write.contains(.commandComplete("INSERT 0 1")), "\(write)")
        _ = f.send(.query("BEGIN"))
        #expect(f.send(.query("UPDATE t SET v = 'x' WHERE id = 1")).contains(.commandComplete("UPDATE 1")))
        #expect(f.send(.query("COMMIT")).first == .commandComplete("COMMIT"))
    }

    /// A named statement prepared once and executed again (psycopg's prepared statements, JDBC's after a few runs)
    /// after another connection changed the table: SQLite prepares it again on its first step, and the row
    /// description must be the new one. It used to describe the old columns over the new rows, and a row longer
    /// than its description indexed past it and stopped the whole process.
    @Test func aPreparedStatementRunAfterAnotherConnectionAltersTheTableDescribesTheNewColumns() throws {
        let f = try SessionFixture()
        f.login()
        _ = f.send(.query("INSERT INTO t VALUES (1, 'a', 1.5)"))
        _ = f.send(.parse(name: "all", query: "SELECT * FROM t", parameterTypes: []), .sync)
        func run() -> [BackendMessage] {
            f.send(.bind(portal: "", statement: "all", parameterFormats: [], parameters: [], resultFormats: []),
                   .describe(kind: UInt8(ascii: "P"), name: ""), .execute(portal: "", maxRows: 0), .sync)
        }
        func names(_ replies: [BackendMessage]) -> [String] {
            replies.compactMap { if case .rowDescription(let c) = $0 { c.map(\.name) } else { nil } }.first ?? []
        }
        #expect(names(run()) == ["id", "v", "r"])
        let other = try SQLiteOpener().open(path: f.path)
        try other.execute("ALTER TABLE t ADD COLUMN extra TEXT DEFAULT 'x'")
        let added = run()
        #expect(names(added) == ["id", "v", "r", "extra"])
        #expect(added.contains(.dataRow([SessionFixture.text("1"), SessionFixture.text("a"), SessionFixture.text("1.5"), SessionFixture.text("x")])), "\(added)")
        try other.execute("ALTER TABLE t DROP COLUMN r")
        let dropped = run()
        #expect(names(dropped) == ["id", "v", "extra"])
        #expect(dropped.contains(.dataRow([SessionFixture.text("1"), SessionFixture.text("a"), SessionFixture.text("x")])), "\(dropped)")
        // A write with RETURNING is described before it runs: changed meanwhile, it is refused with PostgreSQL's error
        // before it writes anything, not run and then crash the process.
        _ = f.send(.parse(name: "ret", query: "INSERT INTO t (id, v) VALUES (2, 'b') RETURNING *", parameterTypes: []),
                   .bind(portal: "r", statement: "ret", parameterFormats: [], parameters: [], resultFormats: []),
                   .describe(kind: UInt8(ascii: "P"), name: "r"), .flush)
        try other.execute("ALTER TABLE t ADD COLUMN more TEXT")
        let returned = f.send(.execute(portal: "r", maxRows: 0), .sync)
        guard case .error(let e)? = returned.first else { Issue.record("\(returned)"); return }
        #expect(e.code == "0A000" && e.message.contains("cached plan must not change result type"))
        #expect(try other.scalar("SELECT count(*) FROM t WHERE id = 2")?.int64 == 0, "the refused write did not run")
    }

    /// psql's `\\d` reads pg_catalog, which SQLite has not: the error says so and what to run instead, instead of
    /// SQLite's "near "(": syntax error".
    @Test func catalogQueriesAreRefusedWithWhatToRunInstead() throws {
        let f = try SessionFixture()
        f.login()
        // psql 15's \dt, as psql -E prints it.
        let replies = f.send(.query(#"""
            SELECT n.nspname as "Schema",
              c.relname as "Name",
              CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as "Type",
              pg_catalog.pg_get_userbyid(c.relowner) as "Owner"
            FROM pg_catalog.pg_class c
                 LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
            WHERE c.relkind IN ('r','p','')
                  AND n.nspname <> 'pg_catalog'
                  AND n.nspname !~ '^pg_toast'
                  AND n.nspname <> 'information_schema'
              AND pg_catalog.pg_table_is_visible(c.oid)
            ORDER BY 1,2;
            """#))
        guard case .error(let e)? = replies.first else { Issue.record("\(replies)"); return }
        #expect(e.code == "0A000" && e.message.contains("sqlite_schema") && e.message.contains("\\d"), "\(e.message)")
        #expect(replies.last == .readyForQuery(status: UInt8(ascii: "I")))
        // An ordinary mistake keeps SQLite's own message.
        guard case .error(let typo)? = f.send(.query("SELEC 1")).first else { Issue.record("accepted"); return }
        #expect(typo.code == "42601")
    }

    @Test func aFailedStatementInATransactionBlocksAllButRollback() throws {
        let f = try SessionFixture()
        f.login()
        var replies = f.send(.query("BEGIN; INSERT INTO t(id) VALUES (1); INSERT INTO t(id) VALUES (1)"))
        #expect(replies.contains { if case .error(let e) = $0 { e.code == "23505" } else { false } })
        #expect(replies.last == .readyForQuery(status: UInt8(ascii: "E")))
        replies = f.send(.query("SELECT 1"))
        #expect(replies.first.map { if case .error(let e) = $0 { e.code == "25P02" } else { false } } == true)
        replies = f.send(.query("COMMIT"))
        #expect(replies == [.commandComplete("ROLLBACK"), .readyForQuery(status: UInt8(ascii: "I"))])
        #expect(try Database(path: f.path).scalar("SELECT count(*) FROM t")?.int64 == 0)
        // BEGIN ... COMMIT commits, and the status says T in between.
        #expect(f.send(.query("BEGIN")).last == .readyForQuery(status: UInt8(ascii: "T")))
        #expect(f.send(.query("INSERT INTO t(id) VALUES (5)")).last == .readyForQuery(status: UInt8(ascii: "T")))
        #expect(f.send(.query("COMMIT")).first == .commandComplete("COMMIT"))
        #expect(try Database(path: f.path).scalar("SELECT count(*) FROM t")?.int64 == 1)
    }

    /// Not only a failed write fails the block: a statement that does not compile, a missing table, a SELECT that fails
    /// as it runs. COMMIT then rolls back the write made before it (it used to commit it), on the simple protocol and
    /// the extended one. ROLLBACK TO a savepoint recovers the block, as psycopg's nested transactions need.
    @Test(arguments: ["SELECT * FROM nosuch", "SELEC 1", "SELECT abs(-9223372036854775808)"])
    func anyErrorInABlockFailsItAndCommitRollsBack(failing: String) throws {
        let f = try SessionFixture()
        f.login()
        #expect(f.send(.query("BEGIN; INSERT INTO t(id) VALUES (1)")).last == .readyForQuery(status: UInt8(ascii: "T")))
        var replies = f.send(.query(failing))
        #expect(replies.contains { if case .error = $0 { true } else { false } }, "\(replies)")
        #expect(replies.last == .readyForQuery(status: UInt8(ascii: "E")))
        replies = f.send(.query("INSERT INTO t(id) VALUES (2)"))
        #expect(replies.first.map { if case .error(let e) = $0 { e.code == "25P02" } else { false } } == true)
        #expect(f.send(.query("COMMIT")).first == .commandComplete("ROLLBACK"))
        #expect(try Database(path: f.path).scalar("SELECT count(*) FROM t")?.int64 == 0)
        // The extended protocol: a Parse that fails inside a block fails it too.
        #expect(f.send(.query("BEGIN; INSERT INTO t(id) VALUES (3)")).last == .readyForQuery(status: UInt8(ascii: "T")))
        replies = f.send(.parse(name: "", query: failing, parameterTypes: []), .bind(portal: "", statement: "", parameterFormats: [], parameters: [], resultFormats: []),
                         .execute(portal: "", maxRows: 0), .sync)
        #expect(replies.last == .readyForQuery(status: UInt8(ascii: "E")), "\(replies)")
        #expect(f.send(.query("COMMIT")).first == .commandComplete("ROLLBACK"))
        #expect(try Database(path: f.path).scalar("SELECT count(*) FROM t")?.int64 == 0)
    }

    /// BEGIN READ ONLY refuses writes with 25006 (psycopg's read_only = True sends it); the next block writes again.
    @Test func aReadOnlyBlockRefusesWrites() throws {
        let f = try SessionFixture()
        f.login()
        _ = f.send(.query("BEGIN READ ONLY"))
        let refused = f.send(.query("INSERT INTO t(id) VALUES (1)"))
        #expect(refused.first.map { if case .error(let e) = $0 { e.code == "25006" } else { false } } == true, "\(refused)")
        #expect(f.send(.query("ROLLBACK")).first == .commandComplete("ROLLBACK"))
        _ = f.send(.query("BEGIN"))
        #expect(f.send(.query("INSERT INTO t(id) VALUES (2)")).last == .readyForQuery(status: UInt8(ascii: "T")))
        #expect(f.send(.query("COMMIT")).first == .commandComplete("COMMIT"))
        #expect(f.send(.query("INSERT INTO t(id) VALUES (3)")).last == .readyForQuery(status: UInt8(ascii: "I")))
        #expect(try Database(path: f.path).query("SELECT id FROM t ORDER BY id") == [[2], [3]])
    }

    /// Statements up to Sync, and the statements of one Query message, are one implicit transaction, as in
    /// PostgreSQL: psycopg's executemany (a pipeline with one Sync) keeps none of its rows when one fails, and
    /// other connections see the rows at Sync, not before.
    @Test func statementsUpToSyncAndOneQuerysStatementsCommitTogether() throws {
        let f = try SessionFixture()
        f.login()
        let other = try Database(path: f.path)
        func insert(_ id: Int64) -> [FrontendMessage] {
            [.bind(portal: "", statement: "ins", parameterFormats: [1], parameters: [withUnsafeBytes(of: id.bigEndian, Array.init)], resultFormats: []),
             .execute(portal: "", maxRows: 0)]
        }
        _ = f.send(.parse(name: "ins", query: "INSERT INTO t(id) VALUES ($1)", parameterTypes: [PGType.int8]), .sync)
        for m in insert(1) + insert(2) { f.session.handle(m) }
        #expect(try other.scalar("SELECT count(*) FROM t")?.int64 == 0, "the rows were visible before Sync")
        #expect(f.send(.sync) == [.readyForQuery(status: UInt8(ascii: "I"))])
        #expect(try other.query("SELECT id FROM t ORDER BY id") == [[1], [2]])
        // A failure before Sync takes back the rows before it.
        f.replies.removeAll()
        for m in insert(3) + insert(1) + insert(4) + [FrontendMessage.sync] { f.session.handle(m) }
        #expect(f.replies.contains { if case .error(let e) = $0 { e.code == "23505" } else { false } } && f.replies.last == .readyForQuery(status: UInt8(ascii: "I")))
        #expect(try other.query("SELECT id FROM t ORDER BY id") == [[1], [2]])
        // One Query message: a failing statement takes back the ones before it; BEGIN takes them into its block.
        _ = f.send(.query("INSERT INTO t(id) VALUES (5); INSERT INTO t(id) VALUES (1)"))
        #expect(try other.query("SELECT id FROM t ORDER BY id") == [[1], [2]])
        #expect(f.send(.query("INSERT INTO t(id) VALUES (6); BEGIN; INSERT INTO t(id) VALUES (7)")).last == .readyForQuery(status: UInt8(ascii: "T")))
        #expect(try other.query("SELECT id FROM t ORDER BY id") == [[1], [2]])
        #expect(f.send(.query("COMMIT")).first == .commandComplete("COMMIT"))
        #expect(try other.query("SELECT id FROM t ORDER BY id") == [[1], [2], [6], [7]])
        // A lone statement and PRAGMAs run as before (foreign_keys would do nothing inside a transaction).
        _ = f.send(.query("PRAGMA foreign_keys = ON"))
        #expect(f.send(.query("PRAGMA foreign_keys")).contains(.dataRow([SessionFixture.text("1")])))
        #expect(f.send(.query("INSERT INTO t(id) VALUES (8)")).last == .readyForQuery(status: UInt8(ascii: "I")))
        #expect(f.session.holdsTransaction == false)
    }

    @Test func rollbackToASavepointRecoversAFailedBlock() throws {
        let f = try SessionFixture()
        f.login()
        _ = f.send(.query("BEGIN; INSERT INTO t(id) VALUES (1); SAVEPOINT s"))
        #expect(f.send(.query("INSERT INTO t(id) VALUES (1)")).last == .readyForQuery(status: UInt8(ascii: "E")))
        #expect(f.send(.query("ROLLBACK TO SAVEPOINT s")).last == .readyForQuery(status: UInt8(ascii: "T")))
        #expect(f.send(.query("INSERT INTO t(id) VALUES (2)")).last == .readyForQuery(status: UInt8(ascii: "T")))
        #expect(f.send(.query("COMMIT")).first == .commandComplete("COMMIT"))
        #expect(try Database(path: f.path).query("SELECT id FROM t ORDER BY id") == [[1], [2]])
        // RELEASE is not a way out of a failed block.
        _ = f.send(.query("BEGIN; SAVEPOINT s"))
        _ = f.send(.query("SELECT * FROM nosuch"))
        #expect(f.send(.query("RELEASE s")).first.map { if case .error(let e) = $0 { e.code == "25P02" } else { false } } == true)
        #expect(f.send(.query("ROLLBACK")).first == .commandComplete("ROLLBACK"))
    }

    /// A block that read, then writes after another connection committed: under READ COMMITTED (PostgreSQL's
    /// default) the write runs on the newest data; a SERIALIZABLE block gets 40001.
    @Test func aWriteAfterAnotherCommitRestartsUnderReadCommittedAndFailsUnderSerializable() throws {
        let f = try SessionFixture()
        f.login()
        let other = try Database(path: f.path)
        for (begin, expectsFailure) in [("BEGIN", false), ("BEGIN ISOLATION LEVEL SERIALIZABLE", true)] {
            _ = f.send(.query(begin))
            _ = f.send(.query("SELECT count(*) FROM t"))
            try other.execute("INSERT INTO t(v) VALUES ('from another connection')")
            let replies = f.send(.query("INSERT INTO t(v) VALUES ('from the session')"))
            let code = replies.compactMap { if case .error(let e) = $0 { e.code } else { nil } }.first
            #expect(code == (expectsFailure ? "40001" : nil), "\(begin): \(replies)")
            _ = f.send(.query(expectsFailure ? "ROLLBACK" : "COMMIT"))
        }
        #expect(try other.scalar("SELECT count(*) FROM t WHERE v = 'from the session'")?.int64 == 1)
    }

    /// A deferred foreign key fails at COMMIT: the block ends rolled back (ReadyForQuery I), as in PostgreSQL,
    /// instead of staying failed and holding SQLite's write lock until the client thinks to roll back.
    @Test func aCommitRefusedByADeferredForeignKeyEndsTheBlock() throws {
        let f = try SessionFixture()
        f.login()
        _ = f.send(.query("PRAGMA foreign_keys = ON"))
        _ = f.send(.query("CREATE TABLE child(id INTEGER PRIMARY KEY, parent INTEGER REFERENCES t(id) DEFERRABLE INITIALLY DEFERRED)"))
        _ = f.send(.query("BEGIN"))
        #expect(f.send(.query("INSERT INTO child VALUES (1, 42)")).last == .readyForQuery(status: UInt8(ascii: "T")))
        let replies = f.send(.query("COMMIT"))
        #expect(replies.contains { if case .error(let e) = $0 { e.code == "23503" } else { false } }, "\(replies)")
        #expect(replies.last == .readyForQuery(status: UInt8(ascii: "I")) && !f.session.holdsTransaction)
        let other = try Database(path: f.path)
        try other.execute("INSERT INTO t(id) VALUES (42)")
        #expect(try other.scalar("SELECT count(*) FROM child")?.int64 == 0)
        #expect(f.send(.query("INSERT INTO child VALUES (1, 42)")).last == .readyForQuery(status: UInt8(ascii: "I")))
    }

    @Test func sqlstatesFollowSQLitesErrors() throws {
        let f = try SessionFixture()
        f.login()
        func code(_ sql: String) -> String? {
            for r in f.send(.query(sql)) { if case .error(let e) = r { return e.code } }
            return nil
        }
        _ = f.send(.query("CREATE TABLE u(id INTEGER PRIMARY KEY, n TEXT NOT NULL, c INTEGER CHECK (c > 0))"))
        #expect(code("INSERT INTO u VALUES (1, 'a', 1); INSERT INTO u VALUES (1, 'b', 1)") == "23505")
        #expect(code("INSERT INTO u VALUES (2, NULL, 1)") == "23502")
        #expect(code("INSERT INTO u VALUES (3, 'c', 0)") == "23514")
        #expect(code("SELECT * FROM nope") == "42P01")
        #expect(code("SELECT nope FROM u") == "42703")
        #expect(code("SELECT FROM WHERE") == "42601")
        #expect(code("DELETE FROM __harmonylite___anything") == "42501" || code("DELETE FROM __harmonylite___anything") == "42P01")
        #expect(code("ATTACH DATABASE '/tmp/x' AS x") == "42501")
        #expect(code("SHOW nonsense") == "42704")
    }
}
