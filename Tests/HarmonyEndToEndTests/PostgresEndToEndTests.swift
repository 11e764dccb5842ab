import Foundation
import HarmonyProcess
import HarmonyRuntime
import HarmonyTestSupport
import Testing

/// psql against one node's PostgreSQL front end (PGPASSWORD in its environment; exit status and output).
func psql(port: Int, password: String, sslmode: String = "disable", _ commands: [String]) throws -> (status: Int32, out: String) {
    var environment = ProcessInfo.processInfo.environment
    environment["PGPASSWORD"] = password
    let (status, output) = try runProgram("/usr/bin/env", ["psql", "host=127.0.0.1 port=\(port) user=app dbname=app sslmode=\(sslmode) connect_timeout=10",
                                                          "-X", "-At", "-v", "ON_ERROR_STOP=1"] + commands.flatMap { ["-c", $0] },
                                           environment: environment)
    return (status, output)
}

/// The venv `scripts/install-deps` fills (psycopg), as the snapshot-store tests find theirs.
func venvPython() -> String {
    let environment = ProcessInfo.processInfo.environment
    let tools = environment["HARMONYLITE_TOOLS"] ?? ((environment["HOME"] ?? NSHomeDirectory()) + "/.cache/harmonylite-tools")
    return tools + "/venv/bin/python"
}

/// psycopg 3 through the extended protocol: every type both ways, binary results, transactions, SQLSTATEs,
/// a cross-node read, cancel, and concurrent writers.
let psycopgClient = #"""
import math, struct, sys, threading, time
import psycopg
from psycopg import errors

password, p1, p3 = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def connect(port, **kw):
    return psycopg.connect(host="127.0.0.1", port=port, user="app", password=password, dbname="app", sslmode="disable", connect_timeout=10, **kw)

def types():
    c = connect(p1, autocommit=True)
    c.execute("CREATE TABLE typed(id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BYTEA, flag BOOLEAN)")
    rows = [(1, -2**63, 0.1, "héllo ✓", b"\x00\xff\x10", True),
            (2, 2**63 - 1, 1e308, "", b"", False),
            (3, 0, 5e-324, None, None, None),
            (4, -1, math.pi, "x" * 1000, bytes(range(256)), True),
            (5, 2**31, float("inf"), "'quoted' \"both\"", b"\x00", False)]
    with c.cursor() as cur:
        cur.executemany("INSERT INTO typed VALUES (%s, %s, %s, %s, %s, %s)", rows)
    for binary in (False, True):
        with c.cursor(binary=binary) as cur:
            cur.execute("SELECT id, i, r, t, b, flag FROM typed WHERE id >= %s ORDER BY id", (1,))
            got = cur.fetchall()
        assert len(got) == len(rows), got
        for sent, back in zip(rows, got):
            assert back[0] == sent[0] and back[1] == sent[1] and type(back[1]) is int, (sent, back)
            assert struct.pack("<d", back[2]) == struct.pack("<d", sent[2]), ("REAL not bit-exact", sent[2], back[2], binary)
            assert back[3] == sent[3], (sent[3], back[3])
            assert (bytes(back[4]) if back[4] is not None else None) == sent[4], (sent[4], back[4])
            assert back[5] == sent[5], (sent[5], back[5])
    # Parameters of every type, typed by the driver, compared by SQLite.
    got = c.execute("SELECT %s = -9223372036854775808, %s = 1.5, %s = 'ü', %s = x'00ff', %s IS NULL, %s = 1",
                    (-2**63, 1.5, "ü", b"\x00\xff", None, True)).fetchone()
    assert got == (1, 1, 1, 1, 1, 1), got
    print("types ok")

def transactions():
    c = connect(p1)
    with c.cursor() as cur:
        cur.execute("INSERT INTO typed(id) VALUES (100)")
        c.rollback()
        cur.execute("SELECT count(*) FROM typed WHERE id = 100")
        assert cur.fetchone() == (0,)
        c.rollback()
        cur.execute("INSERT INTO typed(id) VALUES (101)")
        c.commit()
        try:
            cur.execute("INSERT INTO typed(id) VALUES (101)")
            raise AssertionError("a duplicate key was accepted")
        except errors.UniqueViolation as e:
            assert e.sqlstate == "23505", e.sqlstate
        # The failed statement left the transaction in error: everything but ROLLBACK is refused.
        try:
            cur.execute("SELECT 1")
            raise AssertionError("a statement ran in a failed transaction")
        except errors.InFailedSqlTransaction as e:
            assert e.sqlstate == "25P02"
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        c.rollback()
        cur.execute("SELECT count(*) FROM typed WHERE id = 101")
        assert cur.fetchone() == (1,)
        c.rollback()
        try:
            cur.execute("SELEC 1")
        except errors.SyntaxError as e:
            assert e.sqlstate == "42601"
        c.rollback()
        try:
            cur.execute("ATTACH DATABASE '/etc/passwd' AS x")
        except errors.InsufficientPrivilege as e:
            assert "ATTACH" in str(e)
        c.rollback()
    # Read-then-write transactions in psycopg's default mode (READ COMMITTED) never fail for another connection's
    # commit in between (the sidecar commits after every one of ours), nor with BEGIN READ WRITE.
    for base, read_only in ((300, None), (320, False)):
        c = connect(p1)
        c.read_only = read_only
        for i in range(20):
            c.execute("SELECT count(*) FROM typed")
            c.execute("INSERT INTO typed(id) VALUES (%s)", (base + i,))
            c.commit()
    # executemany is one pipeline with one Sync, so one implicit transaction, as in PostgreSQL: a duplicate key in
    # it keeps none of its rows, even in autocommit.
    c = connect(p1, autocommit=True)
    try:
        c.cursor().executemany("INSERT INTO typed(id) VALUES (%s)", [(400,), (401,), (101,), (402,)])
        raise AssertionError("a duplicate key was accepted")
    except errors.UniqueViolation:
        pass
    assert c.execute("SELECT count(*) FROM typed WHERE id >= 400").fetchone() == (0,)
    # Cancel: a long query stops with 57014 and the session goes on.
    c = connect(p1, autocommit=True)
    threading.Timer(0.5, c.cancel).start()
    try:
        c.execute("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n")
        raise AssertionError("the query was not cancelled")
    except errors.QueryCanceled as e:
        assert e.sqlstate == "57014"
    assert c.execute("SELECT 7").fetchone() == (7,)
    print("transactions ok")

def cross_node():
    connect(p1, autocommit=True).execute("INSERT INTO typed(id, t) VALUES (%s, %s)", (200, "from node 1"))
    c3 = connect(p3, autocommit=True)
    deadline = time.time() + 30
    while c3.execute("SELECT t FROM typed WHERE id = 200").fetchone() != ("from node 1",):
        assert time.time() < deadline, "node 1's row never reached node 3"
        time.sleep(0.05)
    print("cross-node ok")

def concurrent(ports, clients, rows_each):
    errors_seen = []
    def run(k):
        try:
            c = connect(ports[k % len(ports)], autocommit=True)
            for j in range(rows_each):
                c.execute("INSERT INTO load(client, n) VALUES (%s, %s)", (k, j))
        except Exception as e:
            errors_seen.append((k, repr(e)))
    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads: t.start()
    for t in threads: t.join(120)
    assert not errors_seen, errors_seen[:3]
    print("concurrent ok")

step = sys.argv[1]
if step == "types": types()
elif step == "transactions": transactions()
elif step == "cross-node": cross_node()
else: concurrent([int(p) for p in sys.argv[5].split(",")], int(sys.argv[6]), int(sys.argv[7]))
"""#

/// The PostgreSQL JDBC driver (Debian's libpostgresql-jdbc-java): metadata at connect, prepared statements past
/// the driver's threshold (named server-side statements), every type, transactions, SQLSTATE 23505.
let jdbcClient = #"""
import java.sql.*;

public class JdbcCheck {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/app?sslmode=disable";
        try (Connection c = DriverManager.getConnection(url, "app", args[1])) {
            DatabaseMetaData md = c.getMetaData();
            System.out.println("server " + md.getDatabaseProductName() + " " + md.getDatabaseProductVersion());
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE IF NOT EXISTS jdbc_t (id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB, f BOOLEAN)");
            }
            try (PreparedStatement p = c.prepareStatement("INSERT INTO jdbc_t VALUES (?, ?, ?, ?, ?, ?)")) {
                for (int k = 0; k < 7; k++) {  // past prepareThreshold (5): named server-side statements
                    p.setInt(1, k); p.setLong(2, Long.MIN_VALUE + k); p.setDouble(3, 0.1 * k); p.setString(4, "jdbc " + k);
                    p.setBytes(5, new byte[]{0, (byte) k, (byte) 0xff}); p.setBoolean(6, k % 2 == 0);
                    p.executeUpdate();
                }
            }
            c.setAutoCommit(false);
            try (Statement s = c.createStatement()) {
                s.executeUpdate("INSERT INTO jdbc_t(id) VALUES (100)");
                c.rollback();
                s.executeUpdate("INSERT INTO jdbc_t(id) VALUES (101)");
                c.commit();
            }
            c.setAutoCommit(true);
            try (PreparedStatement p = c.prepareStatement("SELECT id, i, r, t, b, f FROM jdbc_t WHERE id >= ? ORDER BY id")) {
                p.setInt(1, 0);
                try (ResultSet rs = p.executeQuery()) {
                    int n = 0;
                    while (rs.next()) {
                        int id = rs.getInt(1);
                        if (id < 7) {
                            if (rs.getLong(2) != Long.MIN_VALUE + id) throw new AssertionError("i " + rs.getLong(2));
                            if (Double.doubleToLongBits(rs.getDouble(3)) != Double.doubleToLongBits(0.1 * id)) throw new AssertionError("r " + rs.getDouble(3));
                            if (!rs.getString(4).equals("jdbc " + id)) throw new AssertionError("t");
                            byte[] b = rs.getBytes(5);
                            if (b.length != 3 || b[1] != (byte) id) throw new AssertionError("b");
                            if (rs.getBoolean(6) != (id % 2 == 0)) throw new AssertionError("f");
                        }
                        n++;
                    }
                    if (n != 8) throw new AssertionError("rows " + n);
                }
            }
            try (Statement s = c.createStatement()) {
                s.executeUpdate("INSERT INTO jdbc_t(id) VALUES (101)");
                throw new AssertionError("duplicate accepted");
            } catch (SQLException e) {
                if (!"23505".equals(e.getSQLState())) throw new AssertionError("sqlstate " + e.getSQLState());
            }
            System.out.println("jdbc ok");
        }
    }
}
"""#

/// Compiles and runs `jdbcClient` against one node; its output.
func runJDBC(port: Int, password: String, in directory: String) throws -> String {
    let source = directory + "/JdbcCheck.java"
    try jdbcClient.write(toFile: source, atomically: true, encoding: .utf8)
    let compiled = try runProgram("/usr/bin/env", ["javac", "-d", directory, source])
    guard compiled.status == 0 else { throw E2EError("javac failed: \(compiled.output)") }
    let ran = try runProgram("/usr/bin/env", ["java", "-cp", "/usr/share/java/postgresql.jar:" + directory, "JdbcCheck", String(port), password])
    guard ran.status == 0 else { throw E2EError("the JDBC client failed: \(ran.output)") }
    return ran.output
}

func runPsycopg(_ arguments: [String], in directory: String) throws -> String {
    try runPython(psycopgClient, arguments, in: directory, python: venvPython())
}

func startupMessage(user: String) -> [UInt8] {
    var body: [UInt8] = [0, 3, 0, 0]
    for s in ["user", user, "database", "app"] { body += Array(s.utf8) + [0] }
    body.append(0)
    return withUnsafeBytes(of: Int32(body.count + 4).bigEndian, Array.init) + body
}

/// A psycopg client running `body` (with `c` connected to `port`), started and waited for (at most 30 s) until it
/// prints its first line (by then it holds what the test needs it to hold); the process and the file of its output.
func startHoldingClient(port: Int, _ body: String) throws -> (ChildProcess, String) {
    let output = FileManager.default.temporaryDirectory.appendingPathComponent("pg-client-\(UUID().uuidString.prefix(8)).out").path
    let client = try ChildProcess.spawn(venvPython(), ["-c", """
        import time, psycopg
        c = psycopg.connect(host="127.0.0.1", port=\(port), user="app", password="\(PostgresEndToEndTests.password)", dbname="app", sslmode="disable")
        """ + "\n" + body], environment: ProcessInfo.processInfo.environment, stdin: nil, stdout: output, stderr: output)
    do {
        try waitUntil("the psycopg client prints its first line", timeoutSeconds: 30) {
            if fileText(output).contains("\n") { return true }
            if let status = client.wait(timeoutSeconds: 0) { throw E2EError("the psycopg client exited (\(status)): \(fileText(output))") }
            return false
        }
    } catch {
        client.terminate(graceSeconds: 1)
        throw error
    }
    return (client, output)
}

@Suite(.serialized) struct PostgresEndToEndTests {
    static let password = "pg-e2e-password"

    /// Three nodes, each with the wire protocol (TLS offered, not required); node 3 takes at most 12 clients.
    func cluster(ports: [Int], certificate: TestCertificate) throws -> LiveCluster {
        try LiveCluster(nodes: 3, schema: "PRAGMA journal_mode=WAL;", shards: 2) { i in
            """
            [postgres]
            enable = true
            bind = "127.0.0.1:\(ports[i - 1])"
            user = "app"
            password = "\(Self.password)"
            cert_file = "\(certificate.certFile)"
            key_file = "\(certificate.keyFile)"
            max_connections = \(i == 3 ? 12 : 100)
            message_timeout_ms = 1000
            idle_in_transaction_timeout_ms = \(i == 3 ? 1500 : 60000)
            authentication_timeout_ms = \(i == 3 ? 1500 : 60000)
            """
        }
    }

    @Test func psqlAndPsycopgWorkOnEveryNodeAndReplicate() throws {
        let certificate = try TestCertificate()
        let ports = distinctFreePorts(3)
        let c = try cluster(ports: ports, certificate: certificate)

        // psql, simple protocol: DDL and rows on node 1, several statements in one Query, read back on node 3.
        let made = try psql(port: ports[0], password: Self.password, [
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)",
            "INSERT INTO users VALUES (1, 'HA user from PostgreSQL Wire Protocol'); INSERT INTO users VALUES (2, 'second'); SELECT count(*) FROM users",
        ])
        #expect(made.status == 0 && made.out == "CREATE TABLE\nINSERT 0 1\nINSERT 0 1\n2\n", "\(made.out)")
        _ = try c.waitForConvergence("SELECT count(*) FROM users;", expected: "2\n")
        let read = try psql(port: ports[2], password: Self.password, ["SELECT id, name FROM users ORDER BY id"])
        #expect(read.out == "1|HA user from PostgreSQL Wire Protocol\n2|second\n", "\(read.out)")

        // Over TLS (sslmode=require), and what psql reports about the connection.
        let tls = try psql(port: ports[1], password: Self.password, sslmode: "require", ["\\conninfo", "UPDATE users SET name = 'over tls' WHERE id = 2"])
        #expect(tls.status == 0 && tls.out.contains("SSL connection") && tls.out.contains("UPDATE 1"), "\(tls.out)")
        _ = try c.waitForConvergence("SELECT name FROM users WHERE id = 2;", expected: "over tls\n")

        // A wrong password is refused with PostgreSQL's message and nothing runs.
        let refused = try psql(port: ports[0], password: "wrong", ["DELETE FROM users"])
        #expect(refused.status != 0 && refused.out.contains("password authentication failed for user \"app\""), "\(refused.out)")
        #expect(try c.query(1, "SELECT count(*) FROM users;") == "2\n")

        // psycopg 3: extended protocol, every type both ways in text and binary, transactions, SQLSTATEs, cancel.
        #expect(try runPsycopg(["types", Self.password, String(ports[0]), String(ports[2])], in: c.directory).contains("types ok"))
        #expect(try runPsycopg(["transactions", Self.password, String(ports[0]), String(ports[2])], in: c.directory).contains("transactions ok"))
        #expect(try runPsycopg(["cross-node", Self.password, String(ports[0]), String(ports[2])], in: c.directory).contains("cross-node ok"))
        _ = try c.waitForConvergence("SELECT count(*), sum(id) FROM typed;", expected: "47|13096\n")

        // JDBC, through node 2: what it asks at connect, prepared statements, types, transactions.
        #expect(try runJDBC(port: ports[1], password: Self.password, in: c.directory).contains("jdbc ok"))
        _ = try c.waitForConvergence("SELECT count(*) FROM jdbc_t;", expected: "8\n")

        // 8 connections, 200 rows each, spread over the nodes: every row on every node.
        #expect(try psql(port: ports[0], password: Self.password, ["CREATE TABLE load (client INTEGER, n INTEGER, PRIMARY KEY (client, n))"]).status == 0)
        _ = try c.waitForConvergence("SELECT count(*) FROM sqlite_schema WHERE name = 'load';", expected: "1\n")
        let all = ports.map(String.init).joined(separator: ",")
        #expect(try runPsycopg(["concurrent", Self.password, String(ports[0]), String(ports[2]), all, "8", "200"], in: c.directory).contains("concurrent ok"))
        #expect(try c.waitForConvergence("SELECT count(*) FROM load;", expected: "1600\n", timeoutSeconds: 60) == "1600\n")
    }

    @Test func hostileClientsLoseTheirConnectionAndNobodyElseNotices() throws {
        let certificate = try TestCertificate()
        let ports = distinctFreePorts(3)
        let c = try cluster(ports: ports, certificate: certificate)
        _ = c
        let created = try psql(port: ports[2], password: Self.password, ["CREATE TABLE t (id INTEGER PRIMARY KEY)"])
        try #require(created.status == 0, "\(created.out)")

        func errorResponse(_ bytes: [UInt8]) -> String? {
            guard bytes.first == UInt8(ascii: "E") else { return nil }
            return String(decoding: bytes, as: UTF8.self)
        }
        // An oversized length, an unknown message type before startup, a truncated message then silence.
        let oversized = try RawSocket(port: ports[2])
        oversized.send(startupMessage(user: "app"))
        Thread.sleep(forTimeInterval: 0.2)
        oversized.send([UInt8(ascii: "Q"), 0x7f, 0xff, 0xff, 0xff])
        #expect(oversized.readToEnd().count > 0)
        let unknown = try RawSocket(port: ports[2])
        unknown.send([0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78])
        #expect(errorResponse(unknown.readToEnd())?.contains("08P01") == true)
        let stalled = try RawSocket(port: ports[2])
        stalled.send(Array(startupMessage(user: "app").prefix(6)))
        let started = Date()
        #expect(errorResponse(stalled.readToEnd())?.contains("incomplete") == true)
        #expect(Date().timeIntervalSince(started) < 9, "a stalled client is dropped after message_timeout_ms")
        // Connections that never log in (silent, or whole messages and then nothing at the password) hold a place under
        // max_connections (12 on node 3): closed after authentication_timeout_ms, so real clients get in again.
        let silent = try (0..<12).map { _ in try RawSocket(port: ports[2]) }
        let loginStarted = Date()
        for s in silent.prefix(6) { s.send(startupMessage(user: "app")) }
        for s in silent { _ = s.readToEnd() }
        #expect(Date().timeIntervalSince(loginStarted) < 9, "connections that never log in are closed after authentication_timeout_ms")
        #expect(try psql(port: ports[2], password: Self.password, ["SELECT 1"]).out == "1\n")

        // Random bytes from 100 clients: each is dropped, the server stays up.
        var rng = SplitMix64(state: 2026)
        for _ in 0..<100 {
            let fuzz = try RawSocket(port: ports[2])
            let bytes = rng.below(2) == 0 ? startupMessage(user: "app") : []
            fuzz.send(bytes + (0..<rng.below(64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) })
            shutdown(fuzz.fd, Int32(SHUT_WR))
            _ = fuzz.readToEnd()
        }

        // A client killed while its transaction holds the write lock and a statement runs: the statement is
        // stopped, the transaction rolled back, and the next writer gets in at once.
        let (holder, _) = try startHoldingClient(port: ports[2], """
            c.execute("INSERT INTO t VALUES (50)")
            print("holding", flush=True)
            c.execute("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n")
            """)
        Thread.sleep(forTimeInterval: 0.5)
        kill(holder.pid, SIGKILL)
        _ = holder.wait(timeoutSeconds: 30)
        let next = try psql(port: ports[2], password: Self.password, ["INSERT INTO t VALUES (51)", "SELECT group_concat(id) FROM t"])
        #expect(next.status == 0 && next.out == "INSERT 0 1\n51\n", "\(next.out)")
        #expect(try psql(port: ports[2], password: Self.password, ["DELETE FROM t"]).status == 0)

        // A client that leaves a writing transaction idle (1.5 s on node 3) loses it and its session; the write
        // lock frees for the replicator and other clients.
        let (idler, idlerOut) = try startHoldingClient(port: ports[2], """
            c.execute("INSERT INTO t VALUES (60)")
            print("holding", flush=True)
            time.sleep(4)
            try:
                c.commit()
                print("committed")
            except psycopg.Error as e:
                print("lost:", e)
            """)
        let afterIdle = try psql(port: ports[2], password: Self.password, ["INSERT INTO t VALUES (61)"])
        #expect(afterIdle.status == 0, "\(afterIdle.out)")
        #expect(idler.wait(timeoutSeconds: 30) != nil, "the idle client was still running")
        let idlerText = fileText(idlerOut)
        #expect(idlerText.contains("idle-in-transaction timeout"), "\(idlerText)")
        #expect(try psql(port: ports[2], password: Self.password, ["SELECT group_concat(id) FROM t"]).out == "61\n")
        #expect(try psql(port: ports[2], password: Self.password, ["DELETE FROM t"]).status == 0)

        // Beyond max_connections (12 on node 3) a client gets an error, not a hang; once others leave, it gets in.
        let held = try (0..<12).map { _ in try RawSocket(port: ports[2]) }
        Thread.sleep(forTimeInterval: 0.3)
        let full = try psql(port: ports[2], password: Self.password, ["SELECT 1"])
        #expect(full.status != 0 && full.out.contains("too many clients"), "\(full.out)")
        withExtendedLifetime(held) {}
        for h in held { shutdown(h.fd, Int32(SHUT_RDWR)) }
        try waitUntil("node 3 takes clients again", timeoutSeconds: 10) {
            try psql(port: ports[2], password: Self.password, ["INSERT INTO t VALUES (1)"]).status == 0
        }
        #expect(try psql(port: ports[2], password: Self.password, ["SELECT count(*) FROM t"]).out == "1\n")
    }
}
