import Foundation
import Synchronization
import Testing

/// The user schema of one node as text (harmonylite's own objects left out), for comparing nodes.
let userSchemaSQL = """
    SELECT type || '|' || name || '|' || sql FROM sqlite_schema
    WHERE substr(name, 1, 15) <> '__harmonylite__' AND name NOT LIKE 'sqlite_%' ORDER BY type, name;
    """

@Suite("End to end: replicated DDL from the sqlite3 shell on 3 live nodes", .serialized)
struct DDLEndToEndTests {
    /// The issue's sequence, each step from the sqlite3 shell on one node, while writes go on: CREATE TABLE with rows,
    /// ADD COLUMN and writes using it, CREATE INDEX on another node, DROP and RENAME COLUMN, DROP TABLE on one node
    /// while another keeps writing to it, and the same ADD COLUMN run on every node. Every node ends with the same sqlite_schema and the same rows.
    @Test func everyKindOfDDLFromTheShellReachesEveryNode() throws {
        let c = try LiveCluster(nodes: 3, schema: kvSchema, shards: 2)
        defer { c.stopAll() }
        try sqlite(c.dbPath(1), """
            CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT NOT NULL, total REAL, note TEXT) STRICT;
            INSERT INTO orders VALUES (1, 'ann', 9.5, 'first'), (2, 'bob', 20.0, NULL);
            """)
        _ = try c.waitForConvergence("SELECT count(*) FROM orders;", expected: "2\n")

        try sqlite(c.dbPath(2), "ALTER TABLE orders ADD COLUMN status TEXT DEFAULT 'new';")
        try c.waitUntilEveryNode("has orders.status", "SELECT count(*) FROM pragma_table_info('orders') WHERE name = 'status';", "1\n")
        try sqlite(c.dbPath(2), "UPDATE orders SET status = 'paid' WHERE id = 1; INSERT INTO orders VALUES (3, 'cy', 1.0, NULL, 'open');")
        try sqlite(c.dbPath(3), "CREATE INDEX orders_customer ON orders (customer);")
        _ = try c.waitForConvergence("SELECT group_concat(id || ':' || status) FROM orders;", expected: "1:paid,2:new,3:open\n")

        try sqlite(c.dbPath(1), "ALTER TABLE orders DROP COLUMN note; ALTER TABLE orders RENAME COLUMN total TO amount;")
        try sqlite(c.dbPath(1), "INSERT INTO orders (id, customer, amount, status) VALUES (4, 'dee', 4.5, 'open');")
        try c.waitUntilEveryNode("has orders.amount", "SELECT count(*) FROM pragma_table_info('orders') WHERE name = 'amount';", "1\n")
        _ = try c.waitForConvergence("SELECT group_concat(id || ':' || amount) FROM orders;", expected: "1:9.5,2:20.0,3:1.0,4:4.5\n")

        // DROP TABLE on node 2 while node 3 keeps writing to it, and node 1 writes to another table meanwhile.
        try sqlite(c.dbPath(1), "CREATE TABLE scratch (id INTEGER PRIMARY KEY, v TEXT);")
        try c.waitUntilEveryNode("has scratch", "SELECT count(*) FROM sqlite_schema WHERE name = 'scratch';", "1\n")
        let stop = Atomic<Bool>(false)
        let writerPath = c.dbPath(3)
        let writer = Thread {
            var k = 0
            while !stop.load(ordering: .relaxed) && k < 500 {
                k += 1
                _ = try? sqlite(writerPath, "INSERT INTO scratch VALUES (\(k), 'w\(k)');")  // fails once the drop is here
                Thread.sleep(forTimeInterval: 0.01)
            }
        }
        writer.start()
        Thread.sleep(forTimeInterval: 0.5)
        try sqlite(c.dbPath(2), "DROP TABLE scratch;")
        for k in 1...20 { try sqlite(c.dbPath(1), "INSERT INTO items (id, name, qty) VALUES (\(k), 'during the drop', \(k));") }
        try c.waitUntilEveryNode("dropped scratch", "SELECT count(*) FROM sqlite_schema WHERE name = 'scratch';", "0\n")
        stop.store(true, ordering: .relaxed)
        while !writer.isFinished { Thread.sleep(forTimeInterval: 0.01) }
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "20\n")

        // The same migration run on every node (a migration tool on each, or the seeds' procedure with every node
        // stopped first): identical DDL from three nodes is one change. (Run on a node that already received it,
        // SQLite itself answers "duplicate column name"; with DDL replication one node is enough.)
        for node in 1...3 { c.stop(node) }
        for node in 1...3 { try sqlite(c.dbPath(node), "ALTER TABLE items ADD COLUMN color TEXT;") }
        for node in 1...3 { try c.start(node) }
        try sqlite(c.dbPath(3), "UPDATE items SET color = 'red' WHERE id = 1;")
        _ = try c.waitForConvergence("SELECT color FROM items WHERE id = 1;", expected: "red\n")

        let schema = try c.waitForConvergence(userSchemaSQL)
        #expect(schema.contains("orders_customer") && schema.contains("amount") && !schema.contains("note") && !schema.contains("scratch"), "\(schema)")
        _ = try c.waitForConvergence("SELECT group_concat(id || ':' || customer || ':' || amount || ':' || status, ';') FROM orders;")
        _ = try c.waitForConvergence(digestSQL)
        for node in 1...3 {
            #expect(!c.log(node).contains("could not be run here"), "node \(node): \(c.log(node).suffix(3000))")
            #expect(try c.query(node, "PRAGMA integrity_check;") == "ok\n")
        }
    }

    /// A node joins a running cluster with a database whose application already made a table the others never had
    /// (before the node's sidecar first ran, so it counts as pre-existing there and is not sent as DDL). Its rows
    /// reach the others, which ask for the definition; the new node sends it, and the table with its rows ends on
    /// every node. Before, every other node waited for good on those rows, "paused on schema".
    @Test func aTableMadeBeforeANodesFirstStartReachesTheRunningCluster() throws {
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 2)
        defer { c.stopAll() }
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name, qty) VALUES (1, 'before the join', 1);")
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "1\n")
        let joined = try c.addNode(sql: kvSchema + """
            CREATE TABLE local_only (id INTEGER PRIMARY KEY, v TEXT NOT NULL);
            INSERT INTO local_only VALUES (1, 'a'), (2, 'b'), (3, 'c');
            """)
        _ = try c.waitForConvergence("SELECT group_concat(id || ':' || v) FROM local_only;", expected: "1:a,2:b,3:c\n", timeoutSeconds: 60)
        try sqlite(c.dbPath(1), "INSERT INTO local_only VALUES (4, 'from node 1');")
        _ = try c.waitForConvergence("SELECT count(*) FROM local_only;", expected: "4\n")
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "1\n")
        _ = try c.waitForConvergence(userSchemaSQL)
        #expect(c.log(1).contains("asked every node to send the definitions"), "\(c.log(1).suffix(3000))")
        #expect(c.log(joined).contains("asked for the definitions of objects that existed before the first install"), "\(c.log(joined).suffix(3000))")
        for node in 1...joined { #expect(try c.query(node, "PRAGMA integrity_check;") == "ok\n") }
    }

    /// The seeds' schema procedures with changes beyond ADD COLUMN, on 3 live nodes. Seed 000's: writes stopped, on
    /// one node stop the sidecar, DROP COLUMN and RENAME COLUMN from the shell, `-cleanup`, restart, then "repeat on
    /// the other nodes" (SQLite refuses the repeat there, since replication already brought it, and nothing
    /// changes). Seed 003's rolling change with the sidecar running: a RENAME TO on one node while another node's
    /// application keeps writing to the old name. Every node ends with the same schema and every row any write
    /// committed, and keeps replicating.
    @Test func theSeedsSchemaProceduresEndWithAReplicatingCluster() throws {
        let c = try LiveCluster(nodes: 3, schema: kvSchema, shards: 2)
        defer { c.stopAll() }
        try sqlite(c.dbPath(1), """
            CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, nickname TEXT, age INTEGER);
            INSERT INTO users VALUES (1, 'ann', 'a', 30), (2, 'bob', 'b', 40);
            """)
        _ = try c.waitForConvergence("SELECT count(*) FROM users;", expected: "2\n")

        // Seed 000: "Apply schema changes on one node; run cleanup; restart; repeat for other nodes."
        c.stop(1)
        try sqlite(c.dbPath(1), "ALTER TABLE users DROP COLUMN nickname; ALTER TABLE users RENAME COLUMN age TO years;")
        let cleaned = try runHarmonylite(["-config", c.configPath(1), "-cleanup"], timeoutSeconds: 10)
        #expect(cleaned.code == 0, "\(cleaned.output)")
        try c.start(1)
        try c.waitUntilEveryNode("has users.years", "SELECT count(*) FROM pragma_table_info('users') WHERE name = 'years';", "1\n")
        for node in 2...3 {
            c.stop(node)
            #expect(throws: (any Error).self, "node \(node) still had nickname") {
                try sqlite(c.dbPath(node), "ALTER TABLE users DROP COLUMN nickname;")
            }
            let repeated = try runHarmonylite(["-config", c.configPath(node), "-cleanup"], timeoutSeconds: 10)
            #expect(repeated.code == 0, "\(repeated.output)")
            try c.start(node)
        }
        for node in 1...3 { try sqlite(c.dbPath(node), "INSERT INTO users (id, name, years) VALUES (\(10 + node), 'n\(node)', \(node));") }
        _ = try c.waitForConvergence("SELECT group_concat(id || ':' || years) FROM (SELECT * FROM users ORDER BY id);",
                                     expected: "1:30,2:40,11:1,12:2,13:3\n")

        // Seed 003: the change on a running node, no restart; here a RENAME TO while node 1 still writes to users.
        let stop = Atomic<Bool>(false)
        let committed = Mutex<[Int]>([])
        let writerPath = c.dbPath(1)
        let writer = Thread {
            var k = 100
            while !stop.load(ordering: .relaxed) && k < 600 {
                k += 1
                if (try? sqlite(writerPath, "INSERT INTO users (id, name, years) VALUES (\(k), 'late', \(k));")) != nil {
                    committed.withLock { $0.append(k) }
                }
                Thread.sleep(forTimeInterval: 0.005)
            }
        }
        writer.start()
        Thread.sleep(forTimeInterval: 0.3)
        try sqlite(c.dbPath(3), "ALTER TABLE users RENAME TO members;")
        try c.waitUntilEveryNode("renamed users", "SELECT group_concat(name) FROM sqlite_schema WHERE name IN ('users', 'members');", "members\n")
        stop.store(true, ordering: .relaxed)
        while !writer.isFinished { Thread.sleep(forTimeInterval: 0.01) }
        let late = committed.withLock { $0 }
        #expect(!late.isEmpty, "the writer never wrote before the rename")
        _ = try c.waitForConvergence("SELECT count(*) FROM members;", expected: "\(5 + late.count)\n")
        try sqlite(c.dbPath(2), "INSERT INTO members (id, name, years) VALUES (1000, 'after', 1);")
        _ = try c.waitForConvergence("SELECT count(*) FROM members;", expected: "\(6 + late.count)\n")
        _ = try c.waitForConvergence("SELECT group_concat(id || ':' || name || ':' || years) FROM (SELECT * FROM members ORDER BY id);")
        let schema = try c.waitForConvergence(userSchemaSQL)
        #expect(schema.contains("members") && !schema.contains("nickname") && !schema.contains("|users|"), "\(schema)")
        for node in 1...3 {
            #expect(try c.query(node, "SELECT count(*) FROM __harmonylite___parked;") == "0\n")
            #expect(try c.query(node, "PRAGMA integrity_check;") == "ok\n")
        }
    }

    /// How long a DDL takes to be on every node: 20 index creations and drops, each from the sqlite3 shell on a node in
    /// turn, timed from the shell's return until every node's sqlite_schema shows it. The p50 goes to the log of the
    /// test run (no assertion on time: these machines are noisy); the issue's note quotes it.
    @Test func convergenceTimeAfterADDL() throws {
        let c = try LiveCluster(nodes: 3, schema: kvSchema, shards: 2)
        defer { c.stopAll() }
        var seconds: [Double] = []
        for i in 0..<20 {
            let node = i % 3 + 1
            let create = i % 2 == 0
            let sql = create ? "CREATE INDEX items_qty ON items (qty);" : "DROP INDEX items_qty;"
            let start = Date()
            try sqlite(c.dbPath(node), sql)
            try c.waitUntilEveryNode("index \(create ? "created" : "dropped")", "SELECT count(*) FROM sqlite_schema WHERE name = 'items_qty';",
                                     create ? "1\n" : "0\n", pollSeconds: 0.005)
            seconds.append(Date().timeIntervalSince(start))
        }
        let sorted = seconds.sorted()
        print("DDL convergence over 20 DDLs on 3 nodes: p50 \(Int(sorted[10] * 1000)) ms, max \(Int(sorted.last! * 1000)) ms")
        #expect(sorted.count == 20)
    }

    /// A replicated DDL that SQLite refuses on a node (the name is a view there and a table elsewhere) turns both
    /// nodes' /health to 503 after stall_seconds, naming the object, and raises harmonylite_schema_objects_diverged;
    /// fixed by hand on one node, both are healthy again.
    @Test func aRefusedReplicatedDDLIsUnhealthyNamedAndClearsOnceFixed() throws {
        let ports = distinctFreePorts(2)
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 1) { i in
            "[prometheus]\nenable = true\nbind = \"127.0.0.1:\(ports[i - 1])\"\n[health]\nstall_seconds = 1\n"
        }
        defer { c.stopAll() }
        c.stop(2)
        try sqlite(c.dbPath(1), "CREATE TABLE x (id INTEGER PRIMARY KEY);")
        Thread.sleep(forTimeInterval: 1)
        try sqlite(c.dbPath(2), "CREATE VIEW x AS SELECT id FROM items;")
        try c.start(2)
        for (node, port) in zip([1, 2], ports) {
            try waitUntil("node \(node)'s /health names x", timeoutSeconds: 30) {
                let health = try httpGet(port: port, path: "/health")
                return health.status == 503 && health.body.contains("\\\"x\\\"") && health.body.contains("SQLite refused")
            }
            #expect(metricValues(try httpGet(port: port, path: "/metrics").body, "harmonylite_schema_objects_diverged") == [1])
        }
        try sqlite(c.dbPath(2), "DROP VIEW x; CREATE TABLE x (id INTEGER PRIMARY KEY);")
        for (node, port) in zip([1, 2], ports) {
            try waitUntil("node \(node) is healthy again", timeoutSeconds: 30) { try httpGet(port: port, path: "/health").status == 200 }
        }
        #expect(try c.query(1, "SELECT type, sql FROM sqlite_schema WHERE name = 'x';") == c.query(2, "SELECT type, sql FROM sqlite_schema WHERE name = 'x';"))
    }
}

extension LiveCluster {
    /// Polls until `sql` answers `expected` on every node, bounded in time.
    func waitUntilEveryNode(_ what: String, _ sql: String, _ expected: String, timeoutSeconds: Double = 30, pollSeconds: Double = 0.05) throws {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline {
            if (1...nodeCount).allSatisfy({ (try? query($0, sql)) == expected }) { return }
            Thread.sleep(forTimeInterval: pollSeconds)
        }
        throw E2EError("not every node \(what) within \(timeoutSeconds) s:\n" + (1...nodeCount).map { "node \($0): \((try? query($0, sql)) ?? "?") \(log($0).suffix(1500))" }.joined(separator: "\n"))
    }
}
