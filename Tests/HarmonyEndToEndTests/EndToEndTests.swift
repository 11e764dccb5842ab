import Foundation
import HarmonyNATS
import HarmonyRuntime
import HarmonyTestSupport
import Testing

let kvSchema = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, price REAL, data BLOB);"
let digestSQL = "SELECT id, quote(name), quote(qty), quote(price), quote(data) FROM items ORDER BY id;"

@Suite("End to end: real nats-server, real harmonylite processes, the sqlite3 shell", .serialized)
struct EndToEndTests {
    @Test func writesOnEveryNodeConvergeWithAllValueTypes() throws {
        let c = try LiveCluster(nodes: 3, schema: kvSchema)
        // (SQLite itself stores the shell literal -0.0 as 0.0; the sign bit over the wire is covered in HarmonyCoreTests.)
        try sqlite(c.dbPath(1), "INSERT INTO items VALUES (1, 'héllo ✓', 9223372036854775807, 1.5, x'00ff00'), (2, NULL, -9223372036854775808, -0.0, x'');")
        try sqlite(c.dbPath(2), "BEGIN; INSERT INTO items VALUES (3, 'two', 2, 2.25, NULL); INSERT INTO items VALUES (4, 'four', 4, 4e300, x'deadbeef'); COMMIT;")
        try sqlite(c.dbPath(3), "INSERT INTO items VALUES (5, 'to delete', 5, 0, NULL);")
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "5\n")
        try sqlite(c.dbPath(3), "UPDATE items SET qty = qty + 1 WHERE id = 3; DELETE FROM items WHERE id = 5;")
        try sqlite(c.dbPath(1), "UPDATE items SET id = 40 WHERE id = 4;")  // a primary-key change
        let digest = try c.waitForConvergence(digestSQL, expected: nil)
        #expect(digest == """
            1|'héllo ✓'|9223372036854775807|1.5|X'00FF00'
            2|NULL|-9223372036854775808|0.0|X''
            3|'two'|3|2.25|NULL
            40|'four'|4|4.0e+300|X'DEADBEEF'

            """)
    }

    /// The same row updated on every node at once ends, everywhere, as the write with the greatest version.
    @Test func concurrentUpdatesConvergeToTheLWWWinner() throws {
        let c = try LiveCluster(nodes: 3, schema: kvSchema)
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (1, 'start');")
        _ = try c.waitForConvergence("SELECT name FROM items;", expected: "start\n")
        for round in 0..<5 {
            for i in 1...3 { try sqlite(c.dbPath(i), "UPDATE items SET name = 'node \(i) round \(round)' WHERE id = 1;") }
        }
        let final = try c.waitForConvergence("SELECT name FROM items;")
        let version = try c.waitForConvergence("SELECT hlc, node FROM __harmonylite__items_version;")
        let winnerNode = version.split(separator: "|").last!.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(final == "node \(winnerNode) round 4\n")
    }

    /// kill -9 in the middle of a write burst, restart: it catches up, nothing duplicated, nothing lost.
    @Test func killNineDuringBurstLosesNothing() throws {
        let c = try LiveCluster(nodes: 3, schema: kvSchema)
        for batch in 0..<20 {
            if batch == 8 { c.kill9(2) }
            if batch == 14 { try c.start(2) }
            for i in 1...3 {
                let base = batch * 100 + i * 10
                try sqlite(c.dbPath(i), "INSERT INTO items (id, name) VALUES \((0..<5).map { "(\(base + $0), 'n\(i)')" }.joined(separator: ","));")
            }
        }
        var expectedSum = 0
        for batch in 0..<20 { for i in 1...3 { for k in 0..<5 { expectedSum += batch * 100 + i * 10 + k } } }
        _ = try c.waitForConvergence("SELECT count(*), sum(id) FROM items;", expected: "300|\(expectedSum)\n")
        // Each change was applied once per receiving node: the stream holds exactly one message per change.
        #expect(try c.query(1, "SELECT count(*) FROM __harmonylite___change_log_global WHERE state = 0;") == "0\n")
    }

    /// NATS is down for 10 s while every node keeps writing; after it comes back every write arrives.
    @Test func natsOutageWhileWritingLosesNothing() throws {
        let c = try LiveCluster(nodes: 3, schema: kvSchema)
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (1, 'before');")
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "1\n")
        c.nats?.stop()
        let outageEnds = Date().addingTimeInterval(10)
        var id = 100
        while Date() < outageEnds {
            for i in 1...3 {
                try sqlite(c.dbPath(i), "INSERT INTO items (id, name) VALUES (\(id), 'during outage on \(i)');")
                id += 1
            }
            Thread.sleep(forTimeInterval: 0.5)
        }
        c.nats = try EmbeddedNATSServer(bindAddress: "127.0.0.1:\(c.natsPort)", storeDirectory: c.directory + "/nats", serverName: "e2e")
        try c.nats?.start()
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "\(1 + id - 100)\n", timeoutSeconds: 60)
    }

    @Test func publishFalseReceivesAndReplicateFalseSends() throws {
        let c = try LiveCluster(nodes: 3, schema: kvSchema) { i in i == 2 ? "publish = false" : i == 3 ? "replicate = false" : "" }
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (1, 'from 1');")
        try sqlite(c.dbPath(2), "INSERT INTO items (id, name) VALUES (2, 'from 2');")
        try sqlite(c.dbPath(3), "INSERT INTO items (id, name) VALUES (3, 'from 3');")
        try waitUntil("node 1 has node 3's row and node 2 has both others", timeoutSeconds: 20) {
            try c.query(1, "SELECT group_concat(id) FROM items;") == "1,3\n" && c.query(2, "SELECT group_concat(id) FROM items;") == "1,2,3\n"
        }
        Thread.sleep(forTimeInterval: 1)
        #expect(try c.query(1, "SELECT group_concat(id) FROM items;") == "1,3\n")  // node 2 never sent
        #expect(try c.query(3, "SELECT group_concat(id) FROM items;") == "3\n")    // node 3 never applied
    }

    /// No external server: each harmonylite runs its own embedded nats-server, routed to the others' into one
    /// JetStream cluster holding R3 streams. A node killed with SIGKILL leaves its server orphaned; restarted, it
    /// stops that orphan, starts its own again and catches up with what the other two wrote meanwhile.
    @Test func embeddedNATSClusterConvergesAndSurvivesKillNine() throws {
        let started = Date()
        let c = try LiveCluster(nodes: 3, schema: kvSchema, transport: .embeddedCluster, replicas: 3)
        #expect(c.natsServerPIDs().count == 3)
        for i in 1...3 {
            try sqlite(c.dbPath(i), "INSERT INTO items (id, name) VALUES (\(i), 'from \(i)'), (\(i + 10), 'also from \(i)');")
        }
        _ = try c.waitForConvergence("SELECT count(*), sum(id) FROM items;", expected: "6|42\n")

        c.kill9(2)
        let orphans = c.natsServerPIDs(under: c.storeDirectory(2))
        for i in [1, 3] {
            try sqlite(c.dbPath(i), "INSERT INTO items (id, name) VALUES (\(i + 100), 'while 2 is down');")
        }
        try waitUntil("nodes 1 and 3 have each other's rows", timeoutSeconds: 20) {
            try c.query(1, "SELECT count(*) FROM items;") == "8\n" && c.query(3, "SELECT count(*) FROM items;") == "8\n"
        }
        try c.start(2)
        for pid in orphans { #expect(!c.natsServerPIDs(under: c.storeDirectory(2)).contains(pid), "orphaned nats-server \(pid) still running") }
        #expect(c.natsServerPIDs(under: c.storeDirectory(2)).count == 1)
        try sqlite(c.dbPath(2), "INSERT INTO items (id, name) VALUES (202, 'after the restart');")
        _ = try c.waitForConvergence("SELECT count(*), sum(id) FROM items;", expected: "9|\(42 + 101 + 103 + 202)\n")

        c.stopAll()
        #expect(c.natsServerPIDs().isEmpty, "nats-server processes left behind")
        #expect(Date().timeIntervalSince(started) < 60)
    }

    /// Garbage on the stream is parked with its reason, and replication goes on.
    @Test func malformedMessageIsParkedAndReplicationContinues() throws {
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 1)
        let conn = try NATSConnection(NATSConnectOptions(urls: ["nats://127.0.0.1:\(c.natsPort)"]))
        defer { conn.close() }
        let js = try conn.jetStream { _ in }
        try js.publishAsync(subject: "\(LiveNode.subjectPrefix).1", payload: [0x01, 0xFF, 0x13, 0x37], messageID: "garbage-1")
        try js.publishAsync(subject: "\(LiveNode.subjectPrefix).1", payload: Array("not cbor at all".utf8), messageID: "garbage-2")
        try js.waitForPublishes(timeoutMs: 5_000)
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (1, 'after the garbage');")
        _ = try c.waitForConvergence("SELECT name FROM items;", expected: "after the garbage\n")
        #expect(try c.query(2, "SELECT count(*) FROM __harmonylite___parked;") == "2\n")
        #expect(c.log(2).contains("parked"))
    }

    /// The error contract, live: a core whose database it cannot read throws, is stopped and restarted with backoff,
    /// `/health` answers 503 with the reason meanwhile, and once the cause is gone the node catches up, losing nothing.
    @Test func coreThatThrowsIsRestartedAndLosesNothing() throws {
        let metricsPorts = distinctFreePorts(2)
        let c = try LiveCluster(nodes: 2, schema: kvSchema) { i in
            "[prometheus]\nenable = true\nbind = \"127.0.0.1:\(metricsPorts[i - 1])\""
        }
        let schemaRow = "FROM __harmonylite___schema WHERE table_name = 'items'"
        let good = try c.query(1, "SELECT hex(columns) \(schemaRow);").trimmingCharacters(in: .whitespacesAndNewlines)
        // Damage node 1's schema history, then write: publishing that write needs it, so the core throws.
        try sqlite(c.dbPath(1), "UPDATE __harmonylite___schema SET columns = x'00' WHERE table_name = 'items'; INSERT INTO items (id, name) VALUES (1, 'written while broken');")
        try waitUntil("node 1's /health reports the failure", timeoutSeconds: 20) {
            let health = try httpGet(port: metricsPorts[0], path: "/health")
            return health.status == 503 && health.body.contains("replication stopped while")
        }
        #expect(c.log(1).contains("Restarting it in"))
        // HEAD /health (HAProxy's httpchk and other balancers' checks): the same status, headers only.
        let head = try runToEnd("/usr/bin/curl", ["-s", "-S", "-I", "--max-time", "10", "http://127.0.0.1:\(metricsPorts[0])/health"]).output
        #expect(head.hasPrefix("HTTP/1.0 503") && head.lowercased().contains("content-length:"), "\(head)")
        try sqlite(c.dbPath(2), "INSERT INTO items (id, name) VALUES (2, 'from node 2');")
        try sqlite(c.dbPath(1), "UPDATE __harmonylite___schema SET columns = x'\(good)' WHERE table_name = 'items';")
        _ = try c.waitForConvergence("SELECT id, name FROM items ORDER BY id;", expected: "1|written while broken\n2|from node 2\n", timeoutSeconds: 60)
        try waitUntil("node 1 is healthy again", timeoutSeconds: 20) { try httpGet(port: metricsPorts[0], path: "/health").status == 200 }
        #expect(metricValues(try httpGet(port: metricsPorts[0], path: "/metrics").body, "harmonylite_core_restarts_total ").contains { $0 >= 1 })
    }

    /// A publish that times out and never lands: the server stops answering (SIGSTOP) while a write is sent, the
    /// publish's ack times out, then the server dies with the message unread (SIGKILL) and comes back. The change
    /// must not count as published: it is sent again and reaches the other node, once.
    @Test func publishThatTimesOutAndNeverLandsIsSentAgain() throws {
        let metricsPort = distinctFreePorts(1)[0]
        let c = try LiveCluster(nodes: 2, schema: kvSchema) { i in
            i == 1 ? "[prometheus]\nenable = true\nbind = \"127.0.0.1:\(metricsPort)\"" : ""
        }
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (1, 'before');")
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "1\n")
        let server = try #require(c.nats)
        let frozen = try #require(server.processIdentifier)
        kill(frozen, SIGSTOP)
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (2, 'sent into a frozen server');")
        // libnats's ack wait is 10 s: the publish must be reported failed, not acknowledged.
        try waitUntil("node 1 counts the publish as failed", timeoutSeconds: 30) {
            metricValues(try httpGet(port: metricsPort, path: "/metrics").body, "harmonylite_publish_failures_total ").contains { $0 >= 1 }
        }
        #expect(try c.query(1, "SELECT count(*) FROM __harmonylite___change_log_global WHERE state = 0;") != "0\n")
        kill(frozen, SIGKILL)  // what the server had not read dies with it; the supervisor starts it again
        kill(frozen, SIGCONT)
        _ = try c.waitForConvergence("SELECT id, name FROM items ORDER BY id;", expected: "1|before\n2|sent into a frozen server\n", timeoutSeconds: 60)
        try waitUntil("node 1 has nothing left to publish", timeoutSeconds: 20) {
            try c.query(1, "SELECT count(*) FROM __harmonylite___change_log_global WHERE state = 0;") == "0\n"
        }
        // The operator saw it: the lost connection and its return are logged, the failure rate-limited.
        #expect(c.log(1).contains("lost the connection to NATS at nats://127.0.0.1:") && c.log(1).contains("reconnected to NATS at"), "\(c.log(1))")
        #expect(c.log(1).contains("failed or timed out"))
        // Why, in words (libnats's own text for it was "Timeout: Timeout").
        #expect(c.log(1).contains("no acknowledgement from JetStream in time") && !c.log(1).contains("Timeout: Timeout"), "\(c.log(1))")
    }
}
