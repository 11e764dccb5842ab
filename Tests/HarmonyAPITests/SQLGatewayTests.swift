import Foundation
import HarmonyAPI
import HarmonySQLite
import HarmonyTestSupport
import Testing

/// The gateway against a real WAL database that carries a trigger named like harmonylite's capture triggers.
final class GatewayFixture {
    let directory: String
    let path: String
    let gateway: SQLGateway

    init(timeoutMs: Int = 2_000, maxResultBytes: Int = 64 << 20) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("api-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path = directory + "/app.db"
        let db = try SQLiteOpener().open(path: path)
        try db.execute("""
            CREATE TABLE t(id INTEGER PRIMARY KEY, i INTEGER, r REAL, s TEXT, b BLOB);
            CREATE TABLE __harmonylite___change_log_global(id INTEGER PRIMARY KEY, tbl TEXT, row_id INTEGER);
            CREATE TRIGGER __harmonylite__t_on_insert AFTER INSERT ON t BEGIN
                INSERT INTO __harmonylite___change_log_global(tbl, row_id) VALUES ('t', NEW.id);
            END;
            """)
        gateway = SQLGateway(config: SQLGatewayConfig(databasePath: path, statementTimeoutMs: timeoutMs, maxResultBytes: maxResultBytes))
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }

    /// Posts a JSON body; answers the status and the parsed JSON reply.
    func post(_ body: String) throws -> (status: Int, json: JSONValue) {
        let decoded: SQLRequest
        do { decoded = try SQLRequest.decode(Array(body.utf8)) } catch { return (error.status, try JSONReader.parse(error.body)) }
        let (status, bytes) = gateway.execute(decoded)
        return (status, try JSONReader.parse(bytes))
    }

    func rows(_ sql: String) throws -> [JSONValue] {
        let reply = try post(#"{"sql": \#(String(decoding: JSONWriter.encode(.string(sql)), as: UTF8.self))}"#)
        #expect(reply.status == 200, "\(reply.json)")
        guard case .array(let rows)? = reply.json["rows"] else { return [] }
        return rows
    }
}

@Suite struct SQLGatewayTests {
    @Test func aWriteAnswersRowsAffectedAndLastInsertIDAndFiresCaptureTriggers() throws {
        let f = try GatewayFixture()
        for (i, key) in [":s", "@s", "$s", "s"].enumerated() {
            let prefix = key.count == 1 ? ":" : String(key.first!)
            let reply = try f.post(#"{"sql": "INSERT INTO t(id, s) VALUES (\#(i + 10), \#(prefix)s)", "params": {"\#(key)": "v\#(i)"}}"#)
            #expect(reply.status == 200)
            #expect(reply.json == .object([("columns", .array([.string("rows_affected"), .string("last_insert_id")])),
                                           ("rows", .array([.array([.integer(1), .integer(Int64(i + 10))])]))]))
        }
        #expect(try f.rows("SELECT count(*) FROM __harmonylite___change_log_global") == [.array([.integer(4)])])
        // A statement that changes nothing reports 0, not the pooled connection's previous count or rowid.
        let ddl = try f.post(#"{"sql": "CREATE INDEX t_s ON t(s)"}"#)
        #expect(ddl.json["rows"] == .array([.array([.integer(0), .integer(0)])]))
    }

    @Test func valuesRoundTripExactlyWithTheirTypes() throws {
        let f = try GatewayFixture()
        let body = #"{"sql": "INSERT INTO t VALUES (?, ?, ?, ?, ?)", "params": [1, -9223372036854775808, 0.1, "é\u0000x", {"base64": "AP8Q"}]}"#
        #expect(try f.post(body).status == 200)
        #expect(try f.post(#"{"sql": "INSERT INTO t(id, i, r) VALUES (2, 9223372036854775807, 1e308)"}"#).status == 200)
        #expect(try f.post(#"{"sql": "INSERT INTO t(id, r, b) VALUES (3, ?, ?)", "params": [5e-324, {"base64": ""}]}"#).status == 200)
        let rows = try f.rows("SELECT id, i, r, s, b, typeof(b) FROM t ORDER BY id")
        #expect(rows == [
            .array([.integer(1), .integer(.min), .real(0.1), .string("é\u{0}x"), .object([("base64", .string("AP8Q"))]), .string("blob")]),
            .array([.integer(2), .integer(.max), .real(1e308), .null, .null, .string("null")]),
            .array([.integer(3), .null, .real(.leastNonzeroMagnitude), .null, .object([("base64", .string(""))]), .string("blob")]),
        ])
    }

    @Test func anArrayIsOneTransactionAndAFailureHalfwayCommitsNothing() throws {
        let f = try GatewayFixture()
        let ok = try f.post(#"[{"sql": "INSERT INTO t(id) VALUES (1)"}, {"sql": "SELECT count(*) AS n FROM t"}]"#)
        #expect(ok.status == 200)
        #expect(ok.json == .object([("results", .array([
            .object([("columns", .array([.string("rows_affected"), .string("last_insert_id")])), ("rows", .array([.array([.integer(1), .integer(1)])]))]),
            .object([("columns", .array([.string("n")])), ("rows", .array([.array([.integer(1)])]))]),
        ]))]))
        let failed = try f.post(#"[{"sql": "INSERT INTO t(id) VALUES (2)"}, {"sql": "INSERT INTO t(id) VALUES (3)"}, {"sql": "INSERT INTO t(id) VALUES (1)"}, {"sql": "INSERT INTO t(id) VALUES (4)"}]"#)
        #expect(failed.status == 400)
        #expect(failed.json["statement"] == .integer(2))
        guard case .string(let message)? = failed.json["error"] else { Issue.record("no error"); return }
        #expect(message.contains("UNIQUE constraint failed"))
        #expect(try f.rows("SELECT id FROM t ORDER BY id") == [.array([.integer(1)])])
        #expect(try f.rows("SELECT count(*) FROM __harmonylite___change_log_global") == [.array([.integer(1)])])
    }

    /// A REPLACE that removes another row through a second UNIQUE constraint fires that row's delete triggers (the
    /// capture trigger among them), so the delete replicates; with SQLite's default it did not, and other nodes kept
    /// the row and then parked the new one for breaking their UNIQUE constraint.
    @Test func aReplaceThatRemovesARowFiresItsDeleteTrigger() throws {
        let f = try GatewayFixture()
        try SQLiteOpener().open(path: f.path).execute("""
            CREATE TABLE em (id INTEGER PRIMARY KEY, email TEXT UNIQUE, n TEXT);
            CREATE TABLE gone (id INTEGER);
            CREATE TRIGGER em_gone AFTER DELETE ON em BEGIN INSERT INTO gone VALUES (OLD.id); END;
            INSERT INTO em VALUES (1, 'a@x', 'one'), (2, 'b@x', 'two');
            """)
        #expect(try f.post(#"{"sql": "REPLACE INTO em VALUES (3, 'a@x', 'three')"}"#).status == 200)
        #expect(try f.rows("SELECT id FROM gone") == [.array([.integer(1)])])
        #expect(try f.rows("SELECT id FROM em ORDER BY id") == [.array([.integer(2)]), .array([.integer(3)])])
    }

    @Test func theAuthorizerRefusesWhatWouldEscapeOrBreakReplication() throws {
        let f = try GatewayFixture()
        let refused: [(String, String)] = [
            ("ATTACH DATABASE '/tmp/x.db' AS x", "ATTACH"),
            ("VACUUM INTO '/tmp/copy.db'", "VACUUM INTO"),
            ("VACUUM", "rewrites the whole database"),
            ("SELECT load_extension('/tmp/evil.so')", "load_extension"),
            ("SELECT fts3_tokenizer('simple')", "fts3_tokenizer"),
            ("SELECT fts3_tokenizer('evil', x'4141414141414141')", "fts3_tokenizer"),
            ("INSERT INTO __harmonylite___change_log_global(tbl) VALUES ('x')", "replication bookkeeping"),
            ("DELETE FROM __HARMONYLITE___change_log_global", "replication bookkeeping"),
            ("DROP TRIGGER __harmonylite__t_on_insert", "replication bookkeeping"),
            ("DROP TABLE __harmonylite___change_log_global", "replication bookkeeping"),
            ("ALTER TABLE __harmonylite___change_log_global ADD COLUMN x", "replication bookkeeping"),
            ("CREATE TRIGGER sneaky AFTER INSERT ON __harmonylite___change_log_global BEGIN SELECT 1; END", "replication bookkeeping"),
            ("PRAGMA journal_mode = DELETE", "break replication"),
            ("PRAGMA writable_schema = ON", "break replication"),
            ("PRAGMA foreign_keys = ON", "pooled"),
            ("BEGIN", "array of statements"),
            ("SAVEPOINT a", "array of statements"),
            ("CREATE TEMP TABLE x(a)", "pooled"),
        ]
        for (sql, reason) in refused {
            let reply = try f.post(#"{"sql": \#(String(decoding: JSONWriter.encode(.string(sql)), as: UTF8.self))}"#)
            #expect(reply.status == 403, "\(sql): \(reply.json)")
            guard case .string(let message)? = reply.json["error"] else { Issue.record("\(sql): no error"); continue }
            #expect(message.contains(reason), "\(sql): \(message)")
        }
        // A user trigger cannot reach the bookkeeping either: refused when it is made, since it would fire on every
        // node it replicates to, for any connection that writes there; and one made otherwise (the sqlite3 shell)
        // is refused when a client's write fires it.
        let trigger = try f.post(#"{"sql": "CREATE TRIGGER ut AFTER UPDATE ON t BEGIN DELETE FROM __HARMONYLITE___checkpoint; END"}"#)
        #expect(trigger.status == 403)
        #expect("\(trigger.json)".contains("a trigger that names harmonylite"), "\(trigger.json)")
        #expect(try f.rows("SELECT count(*) FROM sqlite_schema WHERE name = 'ut'") == [.array([.integer(0)])])
        try SQLiteOpener().open(path: f.path).execute("CREATE TRIGGER ut AFTER UPDATE ON t BEGIN DELETE FROM __harmonylite___change_log_global; END")
        #expect(try f.post(#"{"sql": "INSERT INTO t(id) VALUES (1)"}"#).status == 200)
        #expect(try f.post(#"{"sql": "UPDATE t SET s = 'x'"}"#).status == 403)
        // Reading is fine, and so are the PRAGMAs that only read; the table keeps working after all that.
        #expect(try f.rows("PRAGMA table_info(t)").count == 5)
        #expect(try f.rows("PRAGMA journal_mode") == [.array([.string("wal")])])
        #expect(try f.rows("SELECT count(*) FROM __harmonylite___change_log_global") == [.array([.integer(1)])])
        // Dropping a user table takes its capture trigger with it.
        #expect(try f.post(#"{"sql": "DROP TABLE t"}"#).status == 200)
    }

    @Test func malformedRequestsAreRefusedWith400AndSayWhy() throws {
        let f = try GatewayFixture()
        let cases: [(String, String)] = [
            (#"{"sql": "SELECT 1", "param": {}}"#, "unknown field \"param\""),
            (#"{"sql": 1}"#, "\"sql\" must be a string"),
            (#"{"sql": "SELECT :a", "params": {"a": [1]}}"#, "array is not an SQL value"),
            (#"{"sql": "SELECT :a", "params": {"a": {"hex": "00"}}}"#, "must be a BLOB"),
            (#"{"sql": "SELECT :a", "params": {"a": {"base64": "!!"}}}"#, "not valid base64"),
            (#"{"sql": "SELECT :a", "params": {}}"#, "parameter :a has no value"),
            (#"{"sql": "SELECT :a", "params": {"a": 1, "b": 2}}"#, "does not use"),
            (#"{"sql": "SELECT ?, ?", "params": [1]}"#, "has 2 parameter(s)"),
            (#"{"sql": "SELECT ?", "params": {"a": 1}}"#, "bare ?"),
            (#"{"sql": "SELECT ?"}"#, "gives no \"params\""),
            (#"{"sql": "SELECT 1; SELECT 2"}"#, "more than one statement"),
            (#"{"sql": "  -- nothing "}"#, "holds no statement"),
            (#"{"sql": "SELEC 1"}"#, "syntax error"),
            (#"[]"#, "empty"),
            (#"[{"sql": "SELECT 1"}, 3]"#, "must be an object"),
            (#"{"sql": "SELECT 1""#, "malformed JSON"),
        ]
        for (body, fragment) in cases {
            let reply = try f.post(body)
            #expect(reply.status == 400, "\(body): \(reply.json)")
            guard case .string(let message)? = reply.json["error"] else { Issue.record("\(body): no error"); continue }
            #expect(message.contains(fragment), "\(body): \(message)")
        }
        // A trailing comment after the one statement is fine.
        #expect(try f.post(#"{"sql": "SELECT 1; -- done"}"#).status == 200)
    }

    @Test func aStatementPastItsTimeoutIsStoppedAndRolledBack() throws {
        let f = try GatewayFixture(timeoutMs: 200)
        let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
        let read = try f.post(#"{"sql": "\#(slow)"}"#)
        #expect(read.status == 408)
        let write = try f.post(#"[{"sql": "INSERT INTO t(id) VALUES (1)"}, {"sql": "INSERT INTO t(id) \#(slow.replacingOccurrences(of: "SELECT count(*) FROM c", with: "SELECT x + 1 FROM c"))"}]"#)
        #expect(write.status == 408)
        #expect(write.json["statement"] == .integer(1))
        #expect(try f.rows("SELECT count(*) FROM t") == [.array([.integer(0)])])
    }

    @Test func aWriterWaitsForTheLockThenAnswers503WhileReadersGoOn() throws {
        let f = try GatewayFixture(timeoutMs: 300)
        #expect(try f.post(#"{"sql": "INSERT INTO t(id) VALUES (1)"}"#).status == 200)
        let holder = try Database(path: f.path)
        try holder.execute("BEGIN IMMEDIATE; INSERT INTO t(id) VALUES (2);")
        let blocked = try f.post(#"{"sql": "INSERT INTO t(id) VALUES (3)"}"#)
        #expect(blocked.status == 503, "\(blocked.json)")
        #expect(try f.rows("SELECT id FROM t") == [.array([.integer(1)])])
        try holder.execute("COMMIT")
        #expect(try f.post(#"{"sql": "INSERT INTO t(id) VALUES (3)"}"#).status == 200)
    }

    @Test func aReusedStatementCarriesNothingOverFromItsLastRun() throws {
        let f = try GatewayFixture()
        for v in 1...3 {
            #expect(try f.post(#"{"sql": "INSERT INTO t(id, s) VALUES (:id, :s)", "params": {"id": \#(v), "s": "v\#(v)"}}"#).status == 200)
        }
        #expect(try f.rows("SELECT id, s FROM t ORDER BY id") == (1...3).map { .array([.integer(Int64($0)), .string("v\($0)")]) })
        // A query cut short by the result limit does not keep a read open that would pin the WAL.
        let small = try GatewayFixture(maxResultBytes: 200)
        for v in 1...50 { #expect(try small.post(#"{"sql": "INSERT INTO t(id, s) VALUES (\#(v), 'some text')"}"#).status == 200) }
        #expect(try small.post(#"{"sql": "SELECT * FROM t"}"#).status == 400)
        #expect(try small.post(#"{"sql": "INSERT INTO t(id) VALUES (51)"}"#).status == 200)
        let checkpoint = try Database(path: small.path)
        #expect(try checkpoint.query("PRAGMA wal_checkpoint(TRUNCATE)").first?.first == .integer(0))
    }

    /// A query the gateway has run before keeps its compiled statement; another connection (an application, a
    /// replicated ALTER) then changes the table. SQLite compiles the statement again on its first step, and the
    /// answer must name the new columns over the new values: it used to read the names (and their count) before
    /// that step, so `SELECT *` after DROP COLUMN put the old names over shifted values.
    @Test func aQueryAfterAnotherConnectionAltersTheTableNamesTheNewColumns() throws {
        let f = try GatewayFixture()
        _ = try f.post(#"{"sql": "INSERT INTO t (id, i, r, s) VALUES (1, 10, 1.5, 'one')"}"#)
        func select() throws -> (columns: [String], row: [JSONValue]) {
            let reply = try f.post(#"{"sql": "SELECT * FROM t"}"#)
            #expect(reply.status == 200, "\(reply.json)")
            guard case .array(let names)? = reply.json["columns"], case .array(let rows)? = reply.json["rows"],
                  case .array(let first)? = rows.first else { Issue.record("\(reply.json)"); return ([], []) }
            return (names.compactMap { if case .string(let n) = $0 { n } else { nil } }, first)
        }
        for _ in 0..<3 { #expect(try select().columns == ["id", "i", "r", "s", "b"]) }
        let other = try SQLiteOpener().open(path: f.path)
        try other.execute("ALTER TABLE t DROP COLUMN r")
        let dropped = try select()
        #expect(dropped.columns == ["id", "i", "s", "b"])
        #expect(dropped.row == [.integer(1), .integer(10), .string("one"), .null], "\(dropped.row)")
        try other.execute("ALTER TABLE t ADD COLUMN extra TEXT DEFAULT 'x'")
        let added = try select()
        #expect(added.columns == ["id", "i", "s", "b", "extra"])
        #expect(added.row.count == 5 && added.row.last == .string("x"), "\(added.row)")
    }

    @Test func aResultLargerThanTheLimitIsRefusedNotBuilt() throws {
        let f = try GatewayFixture(maxResultBytes: 10_000)
        let reply = try f.post(#"{"sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 100000) SELECT x FROM c"}"#)
        #expect(reply.status == 400)
        #expect(try f.rows("SELECT 1") == [.array([.integer(1)])])
    }
}
