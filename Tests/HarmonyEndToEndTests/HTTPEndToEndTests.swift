import Foundation
import HarmonyRuntime
import HarmonyTestSupport
import Testing

/// A client of one node's HTTP API through the real `curl` binary.
struct Curl {
    let port: Int
    let token: String?
    var scheme = "http"
    var extra: [String] = []

    /// Runs curl; answers the status and the body (or, with `output`, the body goes to that file).
    @discardableResult
    func call(_ method: String = "GET", _ path: String = "/", body: String? = nil, output: String? = nil,
              headers: [String] = [], authorize: Bool = true) throws -> (status: Int, body: String) {
        var args = ["-s", "-S", "--max-time", "60", "-X", method, "-o", output ?? "-", "-w", "\n%{http_code}"] + extra
        if authorize, let token { args += ["-H", "Authorization: Bearer \(token)"] }
        for h in headers { args += ["-H", h] }
        if body != nil { args += ["--data-binary", "@-"] }
        args.append("\(scheme)://127.0.0.1:\(port)\(path)")
        let run = try runToEnd("/usr/bin/curl", args, input: body ?? "")
        let out = run.output
        guard run.status == 0, let newline = out.lastIndex(of: "\n"), let status = Int(out[out.index(after: newline)...]) else {
            throw E2EError("curl \(method) \(path) failed (\(run.status)): \(run.errors) \(out.suffix(300))")
        }
        return (status, String(out[..<newline]))
    }

    /// A HEAD request (`curl -I`, as a load balancer's check sends): the status line and headers curl printed.
    func head(_ path: String) throws -> String {
        var args = ["-s", "-S", "-I", "--max-time", "10"] + extra
        if let token { args += ["-H", "Authorization: Bearer \(token)"] }
        let run = try runToEnd("/usr/bin/curl", args + ["\(scheme)://127.0.0.1:\(port)\(path)"])
        guard run.status == 0 else { throw E2EError("curl -I \(path) failed (\(run.status)): \(run.errors)") }
        return run.output
    }

    /// POSTs SQL and expects 200.
    @discardableResult
    func sql(_ body: String) throws -> String {
        let reply = try call("POST", "/", body: body)
        guard reply.status == 200 else { throw E2EError("POST / \(body) answered \(reply.status): \(reply.body)") }
        return reply.body
    }
}

/// A Python http.client program: exact values written through one node and read through another, and
/// concurrent keep-alive writers.
let pythonClient = #"""
import http.client, json, math, struct, sys, threading, time, base64

def post(conn, token, body):
    # JSON has no Infinity: the API reads 1e999 (as Python's own json.loads does).
    text = json.dumps(body).replace("-Infinity", "-1e999").replace("Infinity", "1e999")
    conn.request("POST", "/", body=text, headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status, json.loads(data)

def exact(token, write_port, read_port):
    # (-0.0 is left out: SQLite itself stores it as 0.0 in a REAL column, API or not.)
    reals = [0.1, 2.5e-8, 1e308, 5e-324, 2.0 ** 53 + 2, math.pi, 1.0, float("inf")]
    ints = [-(2 ** 63), 2 ** 63 - 1, 0, -1, 2 ** 53 + 1]
    blob = bytes(range(256))
    w = http.client.HTTPConnection("127.0.0.1", write_port, timeout=30)
    rows = []
    for i, (n, r) in enumerate(zip(ints + [0] * 3, reals)):
        rows.append({"sql": "INSERT INTO exact(id, i, r, t, b) VALUES (?, ?, ?, ?, ?)",
                     "params": [i, n, r, "text ✓ \u0000 " + str(i), {"base64": base64.b64encode(blob[i:]).decode()} if i % 2 == 0 else None]})
    status, reply = post(w, token, rows)
    assert status == 200, (status, reply)
    rd = http.client.HTTPConnection("127.0.0.1", read_port, timeout=30)
    deadline = time.time() + 30
    while True:
        status, reply = post(rd, token, {"sql": "SELECT id, i, r, t, b FROM exact ORDER BY id"})
        if status == 200 and len(reply["rows"]) == len(rows):
            break
        assert time.time() < deadline, ("rows never arrived on the reading node", status, reply)
        time.sleep(0.05)
    for sent, got in zip(rows, reply["rows"]):
        i, n, r, t, b = sent["params"]
        assert got[0] == i and got[1] == n and type(got[1]) is int, (sent, got)
        assert struct.pack("<d", got[2]) == struct.pack("<d", r), ("REAL not bit-exact", r, got[2])
        assert got[3] == t, (t, got[3])
        assert got[4] == b, (b, got[4])
    print("exact ok")

def concurrent(token, ports, clients, rows_each):
    errors = []
    def run(k):
        try:
            c = http.client.HTTPConnection("127.0.0.1", ports[k % len(ports)], timeout=60)
            for j in range(rows_each):
                status, reply = post(c, token, {"sql": "INSERT INTO load(client, n) VALUES (:client, :n)", "params": {"client": k, "n": j}})
                if status != 200:
                    errors.append((k, j, status, reply))
                    return
            # one connection for all its requests: http.client reuses it while the server keeps it alive
            assert c.sock is not None, "the server closed a keep-alive connection"
        except Exception as e:
            errors.append((k, repr(e)))
    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads: t.start()
    for t in threads: t.join(120)
    assert not errors, errors[:3]
    print("concurrent ok")

if sys.argv[1] == "exact":
    exact(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
else:
    concurrent(sys.argv[2], [int(p) for p in sys.argv[3].split(",")], int(sys.argv[4]), int(sys.argv[5]))
"""#

@Suite(.serialized) struct HTTPEndToEndTests {
    static let token = "e2e-token-0123456789abcdef"

    /// Three nodes, each serving the API with a token, snapshots in one shared directory.
    func cluster(ports: [Int], extra: String = "") throws -> LiveCluster {
        let snapshots = FileManager.default.temporaryDirectory.appendingPathComponent("e2e-snaps-\(UUID().uuidString.prefix(8))").path
        return try LiveCluster(nodes: 3, schema: "PRAGMA journal_mode=WAL;", shards: 2) { i in
            """
            [http]
            enable = true
            bind = "127.0.0.1:\(ports[i - 1])"
            token = "\(Self.token)"
            max_body_bytes = 2097152
            \(extra)
            [snapshot]
            enabled = true
            store = "local"
            [snapshot.local]
            path = "\(snapshots)"
            """
        }
    }

    @Test func theSeedsHTTPInterfaceWorksOnEveryNodeAndReplicates() throws {
        let ports = distinctFreePorts(3)
        let c = try cluster(ports: ports)
        let api = ports.map { Curl(port: $0, token: Self.token) }

        // Seed 004's own sequence: a table made through the API (DDL replication takes it everywhere), an insert
        // with a bind parameter through node 1, read back through node 3's API.
        try api[0].sql(#"[{"sql": "CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT)"}]"#)
        let inserted = try api[0].sql(#"{"sql": "INSERT INTO users(name) VALUES(:name)", "params": {"name": "HA user"}}"#)
        #expect(inserted == #"{"columns":["rows_affected","last_insert_id"],"rows":[[1,1]]}"#)
        try waitUntil("node 3's API shows node 1's row", timeoutSeconds: 30) {
            (try? api[2].sql(#"{"sql": "SELECT * FROM users"}"#)) == #"{"columns":["id","name"],"rows":[[1,"HA user"]]}"#
        }
        let batch = try api[1].sql(#"""
            [{"sql": "INSERT INTO users(name) VALUES(:name)", "params": {"name": "new HA user"}},
             {"sql": "DELETE FROM users WHERE name = :name", "params": {"name": "new HA user"}},
             {"sql": "SELECT * FROM users"}]
            """#)
        #expect(batch == #"{"results":[{"columns":["rows_affected","last_insert_id"],"rows":[[1,2]]},{"columns":["rows_affected","last_insert_id"],"rows":[[1,0]]},{"columns":["id","name"],"rows":[[1,"HA user"]]}]}"#)

        // An array that fails halfway commits nothing, here or anywhere.
        let failed = try api[0].call("POST", "/", body: #"[{"sql": "INSERT INTO users(id, name) VALUES (10, 'a')"}, {"sql": "INSERT INTO users(id, name) VALUES (1, 'dup')"}]"#)
        #expect(failed.status == 400)
        #expect(failed.body.contains(#""statement":1"#) && failed.body.contains("UNIQUE"))
        try api[0].sql(#"{"sql": "INSERT INTO users(id, name) VALUES (11, 'after')"}"#)
        #expect(try c.waitForConvergence("SELECT group_concat(id) FROM users;", expected: "1,11\n") == "1,11\n")

        // Exact INTEGER, REAL, TEXT, BLOB and NULL from Python's http.client, written on node 1, read on node 3.
        try api[0].sql(#"{"sql": "CREATE TABLE exact(id INTEGER PRIMARY KEY, i INTEGER, r REAL, t TEXT, b BLOB)"}"#)
        #expect(try runPython(pythonClient, ["exact", Self.token, String(ports[0]), String(ports[2])], in: c.directory).contains("exact ok"))

        // 8 keep-alive clients, 200 rows each, spread over the three nodes: every row on every node.
        try api[0].sql(#"{"sql": "CREATE TABLE load(client INTEGER, n INTEGER, PRIMARY KEY (client, n))"}"#)
        _ = try c.waitForConvergence("SELECT count(*) FROM sqlite_schema WHERE name = 'load';", expected: "1\n")
        #expect(try runPython(pythonClient, ["concurrent", Self.token, ports.map(String.init).joined(separator: ","), "8", "200"], in: c.directory).contains("concurrent ok"))
        #expect(try c.waitForConvergence("SELECT count(*), count(DISTINCT client || '/' || n) FROM load;", expected: "1600|1600\n", timeoutSeconds: 60) == "1600|1600\n")

        // /download: a consistent copy that sqlite3 opens and checks.
        let copy = c.directory + "/download.db"
        #expect(try api[2].call("GET", "/download", output: copy).status == 200)
        #expect(try sqlite(copy, "PRAGMA integrity_check; SELECT count(*) FROM load; SELECT name FROM users ORDER BY id;") == "ok\n1600\nHA user\nafter\n")

        // POST /snapshot names the snapshot; GET /snapshot downloads that newest one.
        let taken = try api[1].call("POST", "/snapshot")
        #expect(taken.status == 200, "\(taken.body)")
        let name = taken.body.split(separator: "\"").dropFirst(3).first.map(String.init) ?? ""
        #expect(name.hasPrefix("harmonylite-snapshot-"))
        let snapshot = c.directory + "/snapshot.db"
        #expect(try api[0].call("GET", "/snapshot", output: snapshot).status == 200)
        #expect(try sqlite(snapshot, "PRAGMA integrity_check; SELECT count(*) FROM load;") == "ok\n1600\n")

        // /replications: one entry per shard; a deleted consumer comes back and replication goes on.
        let list = try api[0].call("GET", "/replications")
        #expect(list.status == 200)
        #expect(list.body.components(separatedBy: #""name":"harmonylite-node-1-shard-"#).count - 1 == 2)
        let one = try api[0].call("GET", "/replications/harmonylite-node-1-shard-1")
        #expect(one.status == 200 && one.body.contains(#""stream":"harmonylite-changes-1""#) && one.body.contains(#""consumer":{"#))
        #expect(try api[0].call("GET", "/replications/nope").status == 404)
        for shard in 1...2 {
            let deleted = try api[0].call("DELETE", "/replications/harmonylite-node-1-shard-\(shard)")
            #expect(deleted.status == 200 && deleted.body.contains("checkpoint"), "\(deleted.body)")
        }
        for k in 0..<20 { try api[1].sql(#"{"sql": "INSERT INTO users(name) VALUES ('after delete \#(k)')"}"#) }
        #expect(try c.waitForConvergence("SELECT count(*) FROM users;", expected: "22\n") == "22\n")
        try waitUntil("node 1's consumers exist again", timeoutSeconds: 10) {
            try api[0].call("GET", "/replications").body.components(separatedBy: #""consumer":{"#).count - 1 == 2
        }

        // Operations endpoints on the API port too.
        #expect(try api[0].call("GET", "/health").status == 200)
        #expect(try api[0].call("GET", "/metrics").body.contains("harmonylite_"))
        // HEAD, as load balancers' checks send it: the GET's status and headers, no body.
        let head = try api[0].head("/health")
        #expect(head.hasPrefix("HTTP/1.1 200") && head.lowercased().contains("content-length:"), "\(head)")
    }

    @Test func theAPIRefusesWhatItMustAndSaysWhy() throws {
        let ports = distinctFreePorts(3)
        let c = try cluster(ports: ports)
        let api = Curl(port: ports[0], token: Self.token)
        try api.sql(#"{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"}"#)

        let anonymous = try api.call("POST", "/", body: #"{"sql": "SELECT 1"}"#, authorize: false)
        #expect(anonymous.status == 401)
        let wrong = try api.call("POST", "/", body: #"{"sql": "SELECT 1"}"#, headers: ["Authorization: Bearer e2e-token-0123456789abcdeX"], authorize: false)
        #expect(wrong.status == 401)
        #expect(try api.call("GET", "/download", output: "/dev/null", authorize: false).status == 401)

        let refusals: [(String, Int, String)] = [
            (#"{"sql": "ATTACH DATABASE '/etc/passwd' AS x"}"#, 403, "ATTACH"),
            (#"{"sql": "VACUUM INTO '/tmp/stolen.db'"}"#, 403, "VACUUM INTO"),
            (#"{"sql": "SELECT load_extension('/tmp/x.so')"}"#, 403, "load_extension"),
            (#"{"sql": "DELETE FROM __harmonylite___change_log_global"}"#, 403, "bookkeeping"),
            (#"{"sql": "DROP TRIGGER __harmonylite__t_on_insert"}"#, 403, "bookkeeping"),
            (#"{"sql": "PRAGMA journal_mode = DELETE"}"#, 403, "break replication"),
            (#"{"sql": "BEGIN"}"#, 403, "array of statements"),
            (#"{"sql": "SELECT 1", "parms": {}}"#, 400, "unknown field"),
            (#"{"sql": "SELECT :a", "params": {"a": [1, 2]}}"#, 400, "not an SQL value"),
            (#"{"sql": "SELECT 1"#, 400, "malformed JSON"),
        ]
        for (body, status, fragment) in refusals {
            let reply = try api.call("POST", "/", body: body)
            #expect(reply.status == status, "\(body): \(reply.body)")
            #expect(reply.body.contains(fragment), "\(body): \(reply.body)")
        }
        // Writes still work and still replicate after all that.
        try api.sql(#"{"sql": "INSERT INTO t(id, v) VALUES (1, 'still fine')"}"#)
        #expect(try c.waitForConvergence("SELECT v FROM t;", expected: "still fine\n") == "still fine\n")

        // A body over max_body_bytes (2 MiB here) is refused before it is read; 1.5 MiB of row is taken.
        let huge = #"{"sql": "INSERT INTO t(v) VALUES (?)", "params": [""# + String(repeating: "x", count: 3 << 20) + #""]}"#
        let tooLarge = try api.call("POST", "/", body: huge)
        #expect(tooLarge.status == 413 && tooLarge.body.contains("max_body_bytes"))
        let large = #"{"sql": "INSERT INTO t(id, v) VALUES (2, ?)", "params": [""# + String(repeating: "y", count: 1_500_000) + #""]}"#
        #expect(try api.call("POST", "/", body: large).status == 200)
        #expect(try c.waitForConvergence("SELECT length(v) FROM t WHERE id = 2;", expected: "1500000\n") == "1500000\n")

        // Unknown endpoints and methods.
        #expect(try api.call("GET", "/nope").status == 404)
        #expect(try api.call("PUT", "/snapshot").status == 405)
        #expect(try api.call("GET", "/").status == 405)
    }

    /// A load balancer's /health answers at once while every query worker waits for an application's write lock;
    /// it used to wait behind them (4.5 s with 55 writes queued).
    @Test func healthAnswersWhileEveryWorkerWaitsForTheWriteLock() throws {
        let ports = distinctFreePorts(3)
        let c = try cluster(ports: ports, extra: "concurrent_queries = 1\nstatement_timeout_ms = 6000")
        let api = Curl(port: ports[0], token: Self.token)
        try api.sql(#"{"sql": "CREATE TABLE t (id INTEGER PRIMARY KEY)"}"#)
        let holder = try holdWriteLock(c.dbPath(1), seconds: 5, writing: "INSERT INTO t VALUES (100);")
        defer { _ = holder.wait(timeoutSeconds: 30) }
        try waitUntilTheWriteLockIsHeld(c.dbPath(1))
        let writers = (1...3).map { k in Thread { _ = try? api.call("POST", "/", body: #"{"sql": "INSERT INTO t VALUES (\#(k))"}"#) } }
        writers.forEach { $0.start() }
        Thread.sleep(forTimeInterval: 0.5)
        let started = Date()
        let health = try api.call("GET", "/health")
        #expect(Date().timeIntervalSince(started) < 2, "took \(Date().timeIntervalSince(started)) s")
        #expect([200, 503].contains(health.status) && health.body.contains("status"), "\(health.body)")
    }

    /// Without a token, a web page's request (a browser names its Origin) cannot run SQL on a loopback API; curl
    /// (no Origin) can, and with a token the Origin does not matter.
    @Test func withoutATokenWebPagesCannotPostSQL() throws {
        let port = EmbeddedNATSServer.freePort()
        let c = try LiveCluster(nodes: 1, schema: "PRAGMA journal_mode=WAL;", shards: 1) { _ in "[http]\nenable = true\nbind = \"127.0.0.1:\(port)\"" }
        _ = c
        let api = Curl(port: port, token: nil)
        let page = try api.call("POST", "/", body: #"{"sql": "CREATE TABLE stolen (id INTEGER PRIMARY KEY)"}"#,
                                headers: ["Origin: http://evil.example", "Content-Type: text/plain"])
        #expect(page.status == 403 && page.body.contains("Origin"), "\(page.body)")
        #expect(try api.call("POST", "/", body: #"{"sql": "SELECT count(*) FROM sqlite_schema WHERE name = 'stolen'"}"#).body.contains("[[0]]"))
        #expect(try api.call("GET", "/health", headers: ["Origin: http://evil.example"]).status == 200)
    }

    @Test func theAPIServesTLSWhenGivenACertificate() throws {
        let certificate = try TestCertificate()
        let directory = certificate.directory
        let ports = distinctFreePorts(3)
        let c = try cluster(ports: ports, extra: "cert_file = \"\(certificate.certFile)\"\nkey_file = \"\(certificate.keyFile)\"")
        var api = Curl(port: ports[0], token: Self.token, scheme: "https", extra: ["--cacert", certificate.certFile])
        try api.sql(#"{"sql": "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)"}"#)
        try api.sql(#"{"sql": "INSERT INTO t VALUES (1, 'over tls')"}"#)
        #expect(try c.waitForConvergence("SELECT v FROM t;", expected: "over tls\n") == "over tls\n")
        let copy = directory + "/download.db"
        #expect(try api.call("GET", "/download", output: copy).status == 200)
        #expect(try sqlite(copy, "PRAGMA integrity_check; SELECT v FROM t;") == "ok\nover tls\n")
        // Plain HTTP to the TLS port gets no answer that looks like success.
        api.scheme = "http"
        api.extra = []
        #expect((try? api.call("POST", "/", body: #"{"sql": "SELECT 1"}"#))?.status != 200)
    }
}
