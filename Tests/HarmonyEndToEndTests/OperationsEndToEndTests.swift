import Foundation
import HarmonyProcess
import HarmonyNATS
import HarmonyRuntime
import HarmonySQLite
import Testing

/// What operators run beside a live node: commands that must do their job and exit, and mistakes that must be
/// refused with a message naming the file, never turned into an empty database or a second sidecar.
@Suite("End to end: operator commands beside live nodes", .serialized)
struct OperationsEndToEndTests {
    /// `-config F -status` and `-config F -install` used to start a whole second sidecar, which took over the
    /// live node's NATS consumers. They must print and exit; the live node keeps replicating both ways.
    @Test func statusAndInstallWithAConfigExitAndLeaveTheLiveNodeAlone() throws {
        let c = try LiveCluster(nodes: 2, schema: kvSchema)
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (1, 'before');")
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "1\n")

        let status = try runHarmonylite(["-config", c.configPath(1), "-status"], timeoutSeconds: 10)
        #expect(status.code == 0, "\(status.output)")
        #expect(status.output.contains("changes pending: 0"), "\(status.output)")
        #expect(!status.output.contains("started on"), "-status started a sidecar:\n\(status.output)")
        let install = try runHarmonylite(["-config", c.configPath(1), "-install"], timeoutSeconds: 10)
        #expect(install.code == 0, "\(install.output)")
        #expect(install.output.contains("captured \"items\""), "\(install.output)")

        // The live node 1 still has its consumers: it receives node 2's write, and node 2 receives its.
        try sqlite(c.dbPath(2), "INSERT INTO items (id, name) VALUES (2, 'from node 2');")
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (3, 'from node 1');")
        _ = try c.waitForConvergence("SELECT id FROM items ORDER BY id;", expected: "1\n2\n3\n", timeoutSeconds: 20)
        #expect(c.startLines(1) == 1)
    }

    /// A mistyped path is an error that names it; nothing is created.
    @Test func missingDatabaseOrConfigIsRefusedAndNothingIsCreated() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ops-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for flags in [["-status"], ["-install"], ["-cleanup"], []] {
            let db = "\(dir)/mistyped.db"
            let run = try runHarmonylite(["-db", db] + flags, timeoutSeconds: 10)
            #expect(run.code == 2, "\(flags): \(run.output)")
            #expect(run.output.contains("no database at \(db)"), "\(flags): \(run.output)")
            #expect(!FileManager.default.fileExists(atPath: db), "\(flags) created \(db)")
        }
        let config = "\(dir)/nowhere.toml"
        let run = try runHarmonylite(["-config", config], timeoutSeconds: 10)
        #expect(run.code == 2)
        #expect(run.output.contains("config file \(config) does not exist"), "\(run.output)")
        #expect(!run.output.contains("NSCocoaErrorDomain"), "\(run.output)")
        // A db_path in a directory that does not exist: refused, with what to do, instead of an empty node.
        try "db_path = \"\(dir)/missing/app.db\"\nnode_id = 1\n".write(toFile: "\(dir)/typo.toml", atomically: true, encoding: .utf8)
        let typo = try runHarmonylite(["-config", "\(dir)/typo.toml"], timeoutSeconds: 10)
        #expect(typo.code == 2 && typo.output.contains("no database at \(dir)/missing/app.db"), "\(typo.output)")
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/missing"))
    }

    /// A node that needs a snapshot it cannot get must not look healthy: `/health` turns 503 at once, with a JSON
    /// body that says why and what to do, and every shard's state.
    @Test func healthIs503WhileANodeWaitsForASnapshotThatCannotCome() throws {
        let metricsPorts = distinctFreePorts(2)
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 1, maxEntries: 20) { i in
            "[prometheus]\nenable = true\nbind = \"127.0.0.1:\(metricsPorts[i - 1])\""
        }
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (1, 'one');")
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "1\n")
        #expect(try httpGet(port: metricsPorts[1], path: "/health").status == 200)
        c.stop(2)
        for k in 2...60 { try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (\(k), 'while node 2 is away');") }
        try c.start(2)
        var body = ""
        try waitUntil("node 2's /health says it needs a snapshot", timeoutSeconds: 20) {
            let health = try httpGet(port: metricsPorts[1], path: "/health")
            body = health.body
            return health.status == 503
        }
        let json = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any], "\(body)")
        #expect(json["status"] as? String == "unhealthy")
        let reasons = json["reasons"] as? [String] ?? []
        #expect(reasons.contains { $0.contains("needs a snapshot, but [snapshot] enabled = false") }, "\(reasons)")
        let shards = json["shards"] as? [[String: Any]] ?? []
        #expect(shards.first?["state"] as? String == "waiting for a snapshot", "\(shards)")
        #expect(try httpGet(port: metricsPorts[0], path: "/health").status == 200)
    }

    /// The embedded server's port is taken (here by a plain listener; another harmonylite's server is the same
    /// case): the node must fail at once with the reason, never wait nor join whatever listens there.
    @Test func embeddedServerPortInUseFailsAtOnceWithTheReason() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ops-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(listener) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        #expect(listen(listener, 4) == 0)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &len) } }
        let port = Int(UInt16(bigEndian: addr.sin_port))
        try sqlite("\(dir)/app.db", kvSchema)
        try """
            db_path = "\(dir)/app.db"
            node_id = 1
            [nats]
            bind_address = "127.0.0.1:\(port)"
            """.write(toFile: "\(dir)/node.toml", atomically: true, encoding: .utf8)
        let started = Date()
        let run = try runHarmonylite(["-config", "\(dir)/node.toml"], timeoutSeconds: 15)
        #expect(run.code != 0)
        #expect(run.output.contains("127.0.0.1:\(port)") && run.output.contains("address already in use"), "\(run.output)")
        #expect(Date().timeIntervalSince(started) < 5, "took \(Date().timeIntervalSince(started)) s")
    }

    /// `-save-snapshot` on a node that is itself behind the log's start, with no snapshot to restore, used to wait
    /// silently for 300 s. It must say at once why it cannot, and what to do instead.
    @Test func saveSnapshotOnANodeThatIsBehindSaysSoAtOnce() throws {
        let store = FileManager.default.temporaryDirectory.appendingPathComponent("ops-snapshots-\(UUID().uuidString.prefix(8))").path
        defer { try? FileManager.default.removeItem(atPath: store) }
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 1, maxEntries: 20) { _ in
            "[snapshot]\nenabled = true\ninterval = 0\nstore = \"local\"\n[snapshot.local]\npath = \"\(store)\""
        }
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (1, 'one');")
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "1\n")
        c.stop(2)
        for k in 2...60 { try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (\(k), 'while node 2 is away');") }
        let started = Date()
        let run = try runHarmonylite(["-config", c.configPath(2), "-save-snapshot"], timeoutSeconds: 60)
        #expect(run.code == 1, "\(run.output)")
        #expect(run.output.contains("behind the log's start and needs a snapshot itself"), "\(run.output)")
        #expect(Date().timeIntervalSince(started) < 20, "took \(Date().timeIntervalSince(started)) s")
    }

    /// A second process started with a node_id a live node already has (on another database) used to split that
    /// id's deliveries with it, and both stalled. It must be refused at start, naming the live one, which goes on.
    @Test func aDuplicateNodeIDIsRefusedAndTheLiveNodeGoesOn() throws {
        let c = try LiveCluster(nodes: 2, schema: kvSchema)
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (1, 'before');")
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "1\n")
        let impostorDB = c.directory + "/impostor.db"
        try sqlite(impostorDB, kvSchema)
        let config = try String(contentsOfFile: c.configPath(2), encoding: .utf8)
            .replacingOccurrences(of: "db_path = \"\(c.dbPath(2))\"", with: "db_path = \"\(impostorDB)\"")
        try config.write(toFile: c.directory + "/impostor.toml", atomically: true, encoding: .utf8)
        let started = Date()
        let run = try runHarmonylite(["-config", c.directory + "/impostor.toml"], timeoutSeconds: 30)
        #expect(run.code != 0)
        #expect(run.output.contains("node_id 2 is in use by another harmonylite") && run.output.contains(c.dbPath(2)), "\(run.output)")
        #expect(Date().timeIntervalSince(started) < 15)
        for k in 2...30 { try sqlite(c.dbPath(1 + k % 2), "INSERT INTO items (id, name) VALUES (\(k), 'after');") }
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "30\n", timeoutSeconds: 30)
        #expect(try c.query(2, "SELECT count(*) FROM items;") == "30\n")
    }

    /// Every node must use the same shard count: a node started with fewer shards than the streams another node made
    /// is refused, naming the stream and the setting, instead of never reading the rows hashed to the others.
    @Test func aNodeWithFewerShardsThanTheStreamsIsRefused() throws {
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 2)
        for k in 1...20 { try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (\(k), 'two shards');") }
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "20\n")
        c.stop(2)
        let config = try String(contentsOfFile: c.configPath(2), encoding: .utf8).replacingOccurrences(of: "shards = 2", with: "shards = 1")
        #expect(config.contains("shards = 1"))
        try config.write(toFile: c.directory + "/one-shard.toml", atomically: true, encoding: .utf8)
        let started = Date()
        let run = try runHarmonylite(["-config", c.directory + "/one-shard.toml"], timeoutSeconds: 30)
        #expect(run.code != 0)
        #expect(run.output.contains("stream harmonylite-changes-2 exists") && run.output.contains("shards to the same value"), "\(run.output)")
        #expect(Date().timeIntervalSince(started) < 20)
    }

    /// A node restarted with more shards than the running ones (an operator's slip, or half of raising the count)
    /// makes a stream they never read: the running nodes say so on `/health` and in their log while they run,
    /// not only at their next start, since the rows hashed to that stream never reach them.
    @Test func runningNodesSayWhenANodeWithMoreShardsMakesAStream() throws {
        let ports = distinctFreePorts(2)
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 1) { i in
            "[prometheus]\nenable = true\nbind = \"127.0.0.1:\(ports[i - 1])\""
        }
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (1, 'one shard');")
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "1\n")
        #expect(try httpGet(port: ports[0], path: "/health").status == 200)
        c.stop(2)
        c.shards = 2
        try c.writeConfig(2)
        try c.start(2)
        var health = (status: 0, body: "")
        try waitUntil("node 1's /health names the stream past its shards", timeoutSeconds: 30) {
            health = try httpGet(port: ports[0], path: "/health")
            return health.status == 503
        }
        #expect(health.body.contains("stream harmonylite-changes-2 exists") && health.body.contains("shards to the same value"), "\(health.body)")
        #expect(c.log(1).contains("restart this node with the cluster's shard count"))
    }

    /// A stream deleted while the nodes run (`nats stream rm`, a server that lost its store) is made again by
    /// them, and refilled: the nodes see it start over, send their rows again, and a node that joins afterwards
    /// gets every row. Before, publishes failed and every node said 503 until one was restarted.
    @Test func aStreamDeletedWhileNodesRunIsMadeAgainAndRefilled() throws {
        let ports = distinctFreePorts(2)
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 1) { i in
            i <= 2 ? "[prometheus]\nenable = true\nbind = \"127.0.0.1:\(ports[i - 1])\"" : ""
        }
        for k in 1...20 { try sqlite(c.dbPath(1 + k % 2), "INSERT INTO items (id, name) VALUES (\(k), 'before');") }
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "20\n")
        let conn = try NATSConnection(NATSConnectOptions(urls: ["nats://127.0.0.1:\(c.natsPort)"]))
        defer { conn.close() }
        try conn.jetStream { _ in }.deleteStream(name: "harmonylite-changes-1")
        for k in 21...30 { try sqlite(c.dbPath(1 + k % 2), "INSERT INTO items (id, name) VALUES (\(k), 'after');") }
        #expect(try c.waitForConvergence("SELECT count(*) FROM items;", expected: "30\n", timeoutSeconds: 60) == "30\n")
        try waitUntil("both nodes healthy again", timeoutSeconds: 30) {
            try ports.allSatisfy { try httpGet(port: $0, path: "/health").status == 200 }
        }
        #expect(c.log(1).contains("no longer existed") || c.log(2).contains("no longer existed"))
        // The new stream holds every row again: a node that joins now, with no rows, gets all 30.
        let joined = try c.addNode()
        try waitUntil("the joining node has every row", timeoutSeconds: 60) {
            try c.query(joined, "SELECT count(*) FROM sqlite_schema WHERE name = 'items';") == "1\n"
                && c.query(joined, "SELECT count(*) FROM items;") == "30\n"
        }
    }

    /// Parked messages are an operator's to see and to deal with, from the command line beside the live node.
    @Test func parkedMessagesAreListedRetriedAndDiscardedFromTheCommandLine() throws {
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 1)
        let conn = try NATSConnection(NATSConnectOptions(urls: ["nats://127.0.0.1:\(c.natsPort)"]))
        defer { conn.close() }
        let js = try conn.jetStream { _ in }
        for (i, junk) in [[UInt8](arrayLiteral: 0x01, 0xFF), Array("not cbor".utf8)].enumerated() {
            try js.publishAsync(subject: "\(LiveNode.subjectPrefix).1", payload: junk, messageID: "junk-\(i)")
        }
        try js.waitForPublishes(timeoutMs: 5_000)
        try waitUntil("node 2 parked both", timeoutSeconds: 20) { try c.query(2, "SELECT count(*) FROM __harmonylite___parked;") == "2\n" }
        let listed = try runHarmonylite(["-config", c.configPath(2), "-parked"], timeoutSeconds: 10)
        #expect(listed.code == 0)
        let lines = listed.output.split(separator: "\n").filter { $0.contains("harmonylite-changes-1 seq") }
        #expect(lines.count == 2 && lines.allSatisfy { $0.contains("(undecodable)") && $0.contains("undecodable:") }, "\(listed.output)")
        let ids = lines.compactMap { Int($0.split(separator: " ").first ?? "") }
        let retried = try runHarmonylite(["-config", c.configPath(2), "-parked-retry", String(ids[0])], timeoutSeconds: 10)
        #expect(retried.output.contains("parked message \(ids[0]): still fails, kept"), "\(retried.output)")
        let discarded = try runHarmonylite(["-config", c.configPath(2), "-parked-discard", String(ids[0]), String(ids[1])], timeoutSeconds: 10)
        #expect(discarded.output.contains("discarded 2 parked message(s)") && discarded.output.contains("no parked messages"), "\(discarded.output)")
        // The live node did not notice: it still replicates.
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (1, 'after');")
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "1\n")
    }

    /// A 3 MiB row written with the sqlite3 shell replicates through a nats-server with its default 1 MiB
    /// payload limit (in parts); a row above `max_row_bytes` is refused, said, parked locally, and holds
    /// nothing back.
    @Test func aThreeMebibyteRowReplicatesAndOneAboveMaxRowBytesIsParked() throws {
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 1) { _ in "max_row_bytes = 4194304" }
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name, data) VALUES (1, 'big', randomblob(3145728));")
        _ = try c.waitForConvergence("SELECT count(*) FROM items WHERE length(data) = 3145728;", expected: "1\n", timeoutSeconds: 60)
        let read = { (i: Int) throws -> [UInt8] in
            try Database(path: c.dbPath(i)).scalar("SELECT data FROM items WHERE id = 1")?.bytes ?? []
        }
        #expect(try read(2) == (try read(1)))

        try sqlite(c.dbPath(1), "INSERT INTO items (id, name, data) VALUES (2, 'too big', randomblob(5242880));")
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (3, 'after');")
        try waitUntil("row 3 reaches node 2", timeoutSeconds: 30) { try c.query(2, "SELECT group_concat(id) FROM items;") == "1,3\n" }
        try waitUntil("node 1 logs the refusal", timeoutSeconds: 10) { c.log(1).contains("above max_row_bytes or the largest change this node sends (4194304 bytes") }
        #expect(c.log(1).contains("(id=2)"))
        let listed = try runHarmonylite(["-config", c.configPath(1), "-parked"], timeoutSeconds: 10)
        #expect(listed.output.contains("(local change)") && listed.output.contains("id=2"), "\(listed.output)")
        #expect(try c.query(1, "SELECT count(*) FROM __harmonylite___change_log_global WHERE state = 0;") == "0\n")
    }

    /// The sqlite3 shell writes a row whose primary key holds NULL (SQLite allows it in a rowid table): the node
    /// says, in a sentence and in `refused_changes_total`, that the row stays local, and every later write replicates.
    /// Before, that write failed every stamp after it and nothing this node wrote was published again.
    @Test func aRowWithNullInItsPrimaryKeyStaysLocalAndReplicationGoesOn() throws {
        let metricsPorts = distinctFreePorts(2)
        let c = try LiveCluster(nodes: 2, schema: kvSchema + "CREATE TABLE pair (x INT, y TEXT, z, PRIMARY KEY (x, y));", shards: 1) { i in
            "[prometheus]\nenable = true\nbind = \"127.0.0.1:\(metricsPorts[i - 1])\""
        }
        try sqlite(c.dbPath(1), "INSERT INTO pair VALUES (1, NULL, 'no key'), (1, 'a', 'keyed');")
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (1, 'after');")
        try waitUntil("both rows reach node 2", timeoutSeconds: 30) {
            try c.query(2, "SELECT (SELECT group_concat(z) FROM pair) || ' ' || (SELECT name FROM items);") == "keyed after\n"
        }
        try waitUntil("node 1 says why", timeoutSeconds: 10) { c.log(1).contains("1 write(s) in \"pair\" with NULL in the primary key (\"x\", \"y\") were not replicated") }
        let metrics = try httpGet(port: metricsPorts[0], path: "/metrics").body
        #expect(metrics.contains("harmonylite_refused_changes_total 1"), "\(metrics)")
        #expect(try httpGet(port: metricsPorts[0], path: "/health").status == 200)
        #expect(try c.query(1, "SELECT z FROM pair WHERE y IS NULL;") == "no key\n")
    }

    /// An application transaction holds SQLite's write lock past the sidecar's busy timeout (5 s) while an import is
    /// stamped a batch at a time: the stamp is tried again after a pause instead of restarting the core, `/health`
    /// says why after stall_seconds, and every row arrives once the lock is released. Meanwhile `/health` answers
    /// promptly although the core spends up to 5 s at a time in SQLite's busy handler.
    @Test func aLongApplicationTransactionDuringAnImportPausesStampingNotTheNode() throws {
        let metricsPorts = distinctFreePorts(2)
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 1) { i in
            "lock_batch_rows = 100\nlock_pause_ms = 300\n[health]\nstall_seconds = 2\n"
                + "[prometheus]\nenable = true\nbind = \"127.0.0.1:\(metricsPorts[i - 1])\""
        }
        try sqlite(c.dbPath(1), """
            WITH RECURSIVE n(k) AS (SELECT 1 UNION ALL SELECT k + 1 FROM n WHERE k < 2000)
            INSERT INTO items (id, name) SELECT k, 'imported' FROM n;
            """)
        // The import takes about 20 pauses of 300 ms to stamp; the application takes the lock for 20 s right away.
        // Whichever meets the lock first, the stamp or the mark of what the log acknowledged (the stamp then waits
        // behind the mark), the reason is the lock, never "publishes have failed": publishing works.
        let holder = try holdWriteLock(c.dbPath(1), seconds: 20, writing: "INSERT INTO items (id, name) VALUES (5000, 'held');")
        defer { holder.terminate(graceSeconds: 2) }
        var reasons: [String] = [], slowest = 0.0
        /// node 1's /health, timed: while the lock is held its core blocks for up to the busy timeout at a time.
        func health() -> (status: Int, body: String)? {
            let started = Date()
            defer { slowest = max(slowest, Date().timeIntervalSince(started)) }
            return try? httpGet(port: metricsPorts[0], path: "/health")
        }
        var lastBody = ""
        let stampsFailed = (try? waitUntil("node 1's /health says its stamps fail", timeoutSeconds: 30) {
            guard let health = health() else { return false }
            lastBody = health.body
            guard health.status == 503 else { return false }
            let json = try JSONSerialization.jsonObject(with: Data(health.body.utf8)) as? [String: Any]
            reasons = json?["reasons"] as? [String] ?? []
            return reasons.contains { $0.contains("local writes have not been stamped or marked published for") }
        }) != nil
        try #require(stampsFailed, "the last /health: \(lastBody)\nnode 1's log: \(c.log(1).suffix(3000))")
        #expect(slowest < 2.5, "the slowest /health took \(slowest) s while the core waited for the lock")
        #expect(reasons.contains { $0.contains("database is locked") && $0.contains("another connection holds SQLite's write lock") }, "\(reasons)")
        #expect(!reasons.contains { $0.contains("replication stopped") || $0.contains("publishes have failed") }, "\(reasons)")
        #expect(holder.wait(timeoutSeconds: 40) == 0)
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "2001\n", timeoutSeconds: 60)
        var lastHealth = ""
        let healthy = (try? waitUntil("node 1 is healthy again", timeoutSeconds: 30) {
            guard let health = try? httpGet(port: metricsPorts[0], path: "/health") else { return false }
            lastHealth = health.body
            return health.status == 200
        }) != nil
        #expect(healthy, "\(lastHealth)")
        let metrics = try httpGet(port: metricsPorts[0], path: "/metrics").body
        #expect(metricValues(metrics, "harmonylite_core_restarts_total ") == [0])
        // The failed tries are counted: stamps, or marks (counted with the publish failures) when a mark met the lock first.
        let failedTries = metricValues(metrics, "harmonylite_stamp_failures_total ").reduce(0, +)
            + metricValues(metrics, "harmonylite_publish_failures_total ").reduce(0, +)
        #expect(failedTries >= 1, "\(metrics)")
        // The import's own messages came back and were consumed without being applied a second time.
        #expect(metricValues(metrics, "harmonylite_echo_messages_consumed_total ").contains { $0 >= 1 })
        #expect(c.log(1).contains("failed (database busy"), "\(c.log(1).suffix(2000))")
        #expect(c.log(1).contains("this node writes to its database again"), "\(c.log(1).suffix(2000))")
        #expect(!c.log(1).contains("replication stopped"))
    }

    /// A bulk import on one node while another node's application keeps writing, with a short stream: the other
    /// node's messages wait on the importing node for the import's stamp, and the importing node must not push them
    /// out of the stream meanwhile (with a 300,000-row import at the default `max_entries` it did, every time, and
    /// then needed a snapshot: `scripts/import-beside-a-writer`). Here the stream keeps 64 messages and the import
    /// sends about 300: node 1 ends with every row of both, does not need a snapshot, says it held its backlog back,
    /// and `/health` is 200. Node 2 only sends (`replicate = false`): a receiver slower than the sender (a debug
    /// build, 64 messages) falls behind such a stream on its own, which is what snapshots are for, not this rule.
    @Test func anImportBesideAnotherWriterLeavesNoNodeBehindItsStream() throws {
        let metricsPort = distinctFreePorts(1)[0]
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 1, maxEntries: 64) { i in
            i == 1 ? "lock_batch_rows = 500\n[prometheus]\nenable = true\nbind = \"127.0.0.1:\(metricsPort)\"\n" : "replicate = false\n"
        }
        // Node 2's application: a row every 100 ms for 2.5 s, as node 1 imports. (Its messages must stay fewer than the
        // stream keeps while node 1 holds them for its stamp: at this stream's length and a debug build's pace, 25.)
        let writerScript = c.directory + "/writer.py"
        try """
            import sqlite3, sys, time
            c = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
            for k in range(25):
                c.execute("INSERT INTO items (id, name) VALUES (?, 'from node 2')", (1000000 + k,))
                time.sleep(0.1)
            """.write(toFile: writerScript, atomically: true, encoding: .utf8)
        let writer = try ChildProcess.spawn("/usr/bin/python3", [writerScript, c.dbPath(2)], environment: ProcessInfo.processInfo.environment,
                                            stdin: nil, stdout: nil, stderr: c.directory + "/writer.err")
        defer { writer.terminate(graceSeconds: 2) }
        _ = try runPython("""
            import sqlite3, sys
            c = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
            for b in range(0, 40000, 1000):
                c.execute("BEGIN")
                c.executemany("INSERT INTO items (id, name) VALUES (?, 'imported')", ((k, ) for k in range(b + 1, b + 1001)))
                c.execute("COMMIT")
            """, [c.dbPath(1)], in: c.directory)
        #expect(writer.wait(timeoutSeconds: 30) == 0)
        var count = ""
        let complete = (try? waitUntil("node 1 has every row", timeoutSeconds: 60) {
            count = try c.query(1, "SELECT count(*) FROM items;")
            return count == "40025\n"
        }) != nil
        #expect(complete, "node 1 has \(count) rows of 40025; its log: \(c.log(1).suffix(3000))")
        #expect(!c.log(1).contains("needs a snapshot"), "\(c.log(1).suffix(3000))")
        #expect(c.log(1).contains("holds back sending its backlog until it has applied more"), "\(c.log(1).suffix(3000))")
        var lastHealth = ""
        let healthy = (try? waitUntil("node 1 is healthy", timeoutSeconds: 30) {
            guard let health = try? httpGet(port: metricsPort, path: "/health") else { return false }
            lastHealth = health.body
            return health.status == 200
        }) != nil
        #expect(healthy, "\(lastHealth)")
    }

    /// A load balancer's health check gets its answer at once, also while the node's core waits in SQLite's busy
    /// handler: here an application holds node 1's write lock for 12 s while a change from node 2 waits to be applied,
    /// and with `lock_pause_ms` at the busy timeout (an operator's choice; by default the core's waits are brief) each
    /// try to apply it waits out the busy timeout (5 s). `/health` used to wait for that call, so a check with a
    /// timeout of a second or two failed without a reason. Now it answers within half a second from the last look at
    /// the core, and once the call has lasted stall_seconds, 503 says so. The change arrives afterwards.
    @Test func healthAnswersAtOnceWhileTheCoreWaitsForTheWriteLock() throws {
        let ports = distinctFreePorts(2)
        let metricsPort = ports[0]
        let api = Curl(port: ports[1], token: nil)
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 1) { i in
            i == 1 ? "lock_pause_ms = 5000\n[health]\nstall_seconds = 2\n[prometheus]\nenable = true\nbind = \"127.0.0.1:\(metricsPort)\"\n"
                + "[http]\nenable = true\nbind = \"127.0.0.1:\(ports[1])\"" : ""
        }
        #expect(try httpGet(port: metricsPort, path: "/health").status == 200)
        let holder = try holdWriteLock(c.dbPath(1), seconds: 12, writing: "INSERT INTO items (id, name) VALUES (2, 'held');")
        defer { holder.terminate(graceSeconds: 2) }
        try waitUntilTheWriteLockIsHeld(c.dbPath(1))
        try sqlite(c.dbPath(2), "INSERT INTO items (id, name) VALUES (1, 'from node 2');")
        var slowest = 0.0, answers = 0, busyReason: String?
        try waitUntil("node 1's /health says its core has been busy with one call", timeoutSeconds: 10) {
            let started = Date()
            let health = try httpGet(port: metricsPort, path: "/health")
            slowest = max(slowest, Date().timeIntervalSince(started))
            answers += 1
            let json = try JSONSerialization.jsonObject(with: Data(health.body.utf8)) as? [String: Any]
            busyReason = (json?["reasons"] as? [String] ?? []).first { $0.contains("the replication core has been busy with one task for") }
            return health.status == 503 && busyReason != nil
        }
        #expect(busyReason?.contains("SQLite's write lock") == true, "\(busyReason ?? "")")
        #expect(slowest < 2.5, "the slowest of \(answers) /health answers took \(slowest) s while the core waited for the lock")
        // A Prometheus scrape and the API's replication status answer as quickly, from the same look.
        var started = Date()
        let scrape = try httpGet(port: metricsPort, path: "/metrics")
        let scrapeSeconds = Date().timeIntervalSince(started)
        #expect(scrape.status == 200 && scrape.body.contains("harmonylite_"), "\(scrape.body.prefix(300))")
        started = Date()
        let status = try api.call("GET", "/replications")
        let statusSeconds = Date().timeIntervalSince(started)
        #expect(status.status == 200 && status.body.contains("\"stalled\"") && status.body.contains("busy with one task"), "\(status.body)")
        #expect(scrapeSeconds < 2.5 && statusSeconds < 2.5, "/metrics took \(scrapeSeconds) s, GET /replications \(statusSeconds) s")
        _ = holder.wait(timeoutSeconds: 40)
        _ = try c.waitForConvergence("SELECT id, name FROM items ORDER BY id;", expected: "1|from node 2\n2|held\n", timeoutSeconds: 60)
        try waitUntil("node 1 is healthy again", timeoutSeconds: 30) { try httpGet(port: metricsPort, path: "/health").status == 200 }
    }

    /// No single call lasts long enough to be called stuck: each try to apply waits `lock_pause_ms` for the lock and
    /// goes back to the log, a failed try reported per busy timeout (5 s) of them, and the queue is free in between. The
    /// shard itself must then turn the node unhealthy. It did not: the stream's range was last asked for before node 2
    /// wrote, so /health said 200 with "stream_last": 0 for as long as the application held the lock. Now what was
    /// delivered counts, and the reason names the lock.
    @Test func healthIs503WhileAnApplicationsLongTransactionKeepsTheNodeFromApplying() throws {
        let metricsPort = distinctFreePorts(1)[0]
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 1) { i in
            i == 1 ? "[health]\nstall_seconds = 6\n[prometheus]\nenable = true\nbind = \"127.0.0.1:\(metricsPort)\"\n" : ""
        }
        #expect(try httpGet(port: metricsPort, path: "/health").status == 200)
        let holder = try holdWriteLock(c.dbPath(1), seconds: 20, writing: "INSERT INTO items (id, name) VALUES (2, 'held');")
        defer { holder.terminate(graceSeconds: 2) }
        try waitUntilTheWriteLockIsHeld(c.dbPath(1))
        for id in 3...5 { try sqlite(c.dbPath(2), "INSERT INTO items (id, name) VALUES (\(id), 'from node 2');") }
        var last: (status: Int, body: String) = (0, "")
        try waitUntil("node 1's /health says its shard has not moved, and why", timeoutSeconds: 18) {
            last = try httpGet(port: metricsPort, path: "/health")
            return last.status == 503
        }
        let json = try JSONSerialization.jsonObject(with: Data(last.body.utf8)) as? [String: Any]
        let reasons = json?["reasons"] as? [String] ?? []
        #expect(reasons.contains { $0.hasPrefix("shard 1 has not moved for") && $0.contains("at message 0 of ") && $0.contains("; the last try to apply failed: database busy") },
                "\(last.body)")
        #expect(!reasons.contains { $0.contains("busy with one task") }, "each try lasts lock_pause_ms: \(last.body)")
        #expect(holder.isRunning, "503 came only after the application let go")
        _ = holder.wait(timeoutSeconds: 40)
        _ = try c.waitForConvergence("SELECT id, name FROM items ORDER BY id;",
                                     expected: "2|held\n3|from node 2\n4|from node 2\n5|from node 2\n", timeoutSeconds: 60)
        try waitUntil("node 1 is healthy again", timeoutSeconds: 30) { try httpGet(port: metricsPort, path: "/health").status == 200 }
    }

    /// The seeds' procedure: stop a node, `-cleanup`, let the application write while capture is absent, restart.
    /// Nothing is lost: the row written meanwhile reaches the other node, and the other node's newer writes win
    /// over this node's copies (captured again with versions below any real write). With a log trimmed past the
    /// node (`trimmed`), the restart goes through a snapshot restore, which used to delete the local row.
    /// `-cleanup` beside the running sidecar is refused with what to do instead.
    @Test(arguments: [false, true])
    func cleanupOnAStoppedNodeThenALocalWriteThenARestartLosesNothing(trimmed: Bool) throws {
        let store = "\(FileManager.default.temporaryDirectory.path)/e2e-cleanup-\(ProcessInfo.processInfo.processIdentifier)-\(trimmed)"
        defer { try? FileManager.default.removeItem(atPath: store) }
        let c = try LiveCluster(nodes: 2, schema: kvSchema, shards: 1, maxEntries: trimmed ? 20 : 0) { _ in
            trimmed ? "[snapshot]\nenabled = true\nstore = \"local\"\n[snapshot.local]\npath = \"\(store)\"" : ""
        }
        try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (1, 'first'), (2, 'second');")
        _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "2\n")

        let refused = try runHarmonylite(["-config", c.configPath(2), "-cleanup"], timeoutSeconds: 10)
        #expect(refused.code == 1 && refused.output.contains("is running on") && refused.output.contains("stop it first"), "\(refused.output)")
        #expect(try c.query(2, "SELECT count(*) FROM sqlite_schema WHERE name = '__harmonylite___clock';") == "1\n")

        c.stop(2)
        // A clean stop closes the NATS connection on purpose: no "lost the connection" warning in every shutdown.
        #expect(c.log(2).contains("node 2 stopped") && !c.log(2).contains("lost the connection to NATS"), "\(c.log(2).suffix(600))")
        // A write the stopped node captured but never published: -cleanup would lose it, so it is refused.
        try sqlite(c.dbPath(2), "INSERT INTO items (id, name) VALUES (5, 'captured, not yet published');")
        let pending = try runHarmonylite(["-config", c.configPath(2), "-cleanup"], timeoutSeconds: 10)
        #expect(pending.code == 1 && pending.output.contains("1 local change(s) not yet published"), "\(pending.output)")
        try c.start(2)
        try waitUntil("node 2 published its write", timeoutSeconds: 20) {
            try c.query(2, "SELECT count(*) FROM __harmonylite___change_log_global WHERE state = 0;") == "0\n"
        }
        c.stop(2)
        let cleaned = try runHarmonylite(["-config", c.configPath(2), "-cleanup"], timeoutSeconds: 10)
        #expect(cleaned.code == 0, "\(cleaned.output)")
        try sqlite(c.dbPath(2), "INSERT INTO items (id, name) VALUES (3, 'written while cleaned');")
        try sqlite(c.dbPath(1), "UPDATE items SET name = 'newer on 1' WHERE id = 1; INSERT INTO items (id, name) VALUES (4, 'from 1 meanwhile');")
        if trimmed {
            for k in 10..<40 { try sqlite(c.dbPath(1), "INSERT INTO items (id, name) VALUES (\(k), 'filler');") }
            try waitUntil("node 1 published everything", timeoutSeconds: 30) {
                try c.query(1, "SELECT count(*) FROM __harmonylite___change_log_global WHERE state = 0;") == "0\n"
            }
            kill(c.processes[1]!.pid, SIGUSR1)
            try waitUntil("node 1 saved a snapshot", timeoutSeconds: 30) { c.log(1).contains(" saved") }
        }
        try c.start(2)
        let all = "SELECT group_concat(id || '=' || name, ';') FROM (SELECT * FROM items WHERE id < 10 ORDER BY id);"
        _ = try c.waitForConvergence(all, expected: "1=newer on 1;2=second;3=written while cleaned;4=from 1 meanwhile;5=captured, not yet published\n",
                                     timeoutSeconds: 60)
        if trimmed {
            #expect(c.log(2).contains("restored"), "node 2 did not restore:\n\(c.log(2).suffix(3000))")
            _ = try c.waitForConvergence("SELECT count(*) FROM items;", expected: "35\n", timeoutSeconds: 30)
        }
    }

    /// A decommissioned node stays in `-schema-status-cluster` until forgotten; a running one cannot be.
    @Test func aDecommissionedNodeIsForgottenAndARunningOneIsNot() throws {
        let c = try LiveCluster(nodes: 3, schema: kvSchema)
        try waitUntil("all three registered", timeoutSeconds: 20) {
            try runHarmonylite(["-config", c.configPath(1), "-schema-status-cluster"], timeoutSeconds: 10).output.contains("all 3 node(s)")
        }
        let refused = try runHarmonylite(["-config", c.configPath(1), "-schema-forget", "2"], timeoutSeconds: 10)
        #expect(refused.code == 1 && refused.output.contains("node 2 is running"), "\(refused.output)")
        c.stop(3)
        let forgot = try runHarmonylite(["-config", c.configPath(1), "-schema-forget", "3"], timeoutSeconds: 10)
        #expect(forgot.code == 0 && forgot.output.contains("forgot node 3"), "\(forgot.output)")
        let status = try runHarmonylite(["-config", c.configPath(1), "-schema-status-cluster"], timeoutSeconds: 10)
        #expect(status.output.contains("all 2 node(s)"), "\(status.output)")
    }

    /// Wrong credentials will not get better by waiting: the node fails at once with the server's answer, where it
    /// used to retry silently for connect_retries x reconnect_wait_seconds (45 s with the seeds' settings).
    @Test func anAuthorizationFailureFailsAtOnce() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ops-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let port = distinctFreePorts(1)[0]
        let server = try ChildProcess.spawn(try EmbeddedNATSServer.findExecutable(), ["-a", "127.0.0.1", "-p", String(port), "-js", "-sd", dir + "/nats",
                                                                                  "--user", "app", "--pass", "right"],
                                            environment: ProcessInfo.processInfo.environment, stdin: nil, stdout: nil, stderr: nil)
        defer { server.terminate(graceSeconds: 5) }
        try waitUntil("nats-server accepts connections", timeoutSeconds: 10) { EmbeddedNATSServer.canConnect(host: "127.0.0.1", port: port) }
        try sqlite("\(dir)/app.db", kvSchema)
        try """
            db_path = "\(dir)/app.db"
            node_id = 1
            [nats]
            urls = ["nats://127.0.0.1:\(port)"]
            user_name = "app"
            user_password = "wrong"
            connect_retries = 10
            reconnect_wait_seconds = 5
            """.write(toFile: "\(dir)/node.toml", atomically: true, encoding: .utf8)
        let started = Date()
        let run = try runHarmonylite(["-config", "\(dir)/node.toml"], timeoutSeconds: 30)
        #expect(run.code != 0)
        #expect(run.output.lowercased().contains("auth"), "\(run.output)")
        #expect(Date().timeIntervalSince(started) < 10, "took \(Date().timeIntervalSince(started)) s")
    }
}
