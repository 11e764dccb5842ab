import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonySQLite
import Testing

/// A message the log stored, as the runtime offers it to the other nodes when `hint` is set.
struct StoredHint {
    var shard: Int
    var sequence: UInt64
    var payload: [UInt8]
}

extension TestCluster {
    /// `publish(i)`, keeping what the runtime would send as hints (in the order the log stored them).
    func publishKeepingHints(_ i: Int) throws -> [StoredHint] {
        try publishCollecting(i).compactMap { m, seq in
            guard m.hint, let seq else { return nil }
            return StoredHint(shard: m.shard, sequence: seq, payload: m.payload)
        }
    }

    /// `publish(i)`, returning every message handed to the log with the sequence it was stored at (nil: a duplicate).
    func publishCollecting(_ i: Int) throws -> [(OutgoingMessage, UInt64?)] {
        try nodes[i].databaseChanged()
        var sent: [(OutgoingMessage, UInt64?)] = []
        for _ in 0..<10_000 {
            let batch = ports[i].pendingPublishes
            if batch.isEmpty { return sent }
            ports[i].pendingPublishes.removeAll()
            for m in batch { sent.append((m, streams.store(shard: m.shard, messageID: m.messageID, payload: m.payload, nowMs: 0))) }
            try nodes[i].publishAcknowledged(tokens: batch.map(\.token))
        }
        fatalError("publish loop did not drain")
    }

    func hintsApplied(_ i: Int) -> [ReplicationEvent] {
        events[i].events.filter { if case .hintApplied = $0 { return true } else { return false } }
    }
}

@Suite("Hints: small messages applied ahead of a backlog")
struct HintTests {
    /// One message per change, so a few hundred inserts are a backlog of as many messages.
    static func oneChangePerMessage(_ c: inout NodeConfig) { c.publishBatchMax = 1 }

    /// Two nodes; node 1's `rows` inserts (ids 1...rows, name 'bulk') are on the log, one message each, and node 2
    /// has applied none of them.
    static func backlog(_ rows: Int, schema: String = usersSchema) throws -> TestCluster {
        let c = try TestCluster(nodes: 2, schema: schema, configure: oneChangePerMessage)
        try c.apps[0].transaction {
            for k in 1...rows { try c.apps[0].execute("INSERT INTO users (id, name, score) VALUES (?, ?, 0)", [.integer(Int64(k)), .text("bulk\(k)")]) }
        }
        _ = try c.publishKeepingHints(0)
        return c
    }

    /// Node 2 has not applied any of node 1's 200 inserts when node 1 updates one of them: the update's hint makes it
    /// visible at once, the backlog applied afterwards does not undo it, and the checkpoint moved only in order.
    @Test func aSmallCommitBehindABacklogIsVisibleAtOnceAndStays() throws {
        let c = try Self.backlog(200)
        try c.apps[0].execute("UPDATE users SET name = 'probe' WHERE id = 7")
        let hints = try c.publishKeepingHints(0)
        #expect(hints.count == 1)
        for h in hints { try c.nodes[1].hintArrived(shard: h.shard, sequence: h.sequence, payload: h.payload) }
        #expect(try c.rows(1, "SELECT id, name FROM users") == [[7, "probe"]])
        #expect(c.nodes[1].checkpoint(1) == 0)
        #expect(c.hintsApplied(1).count == 1)
        try c.deliver(1)
        #expect(c.nodes[1].checkpoint(1) == 201)
        #expect(try c.rows(1, "SELECT * FROM users ORDER BY id") == c.rows(0, "SELECT * FROM users ORDER BY id"))
        #expect(try c.rows(1, "SELECT name FROM users WHERE id = 7") == [["probe"]])
    }

    /// A delete ahead of its turn leaves a tombstone: the row's older insert, still in the backlog, does not bring it back.
    @Test func aHintedDeleteIsNotUndoneByTheBacklog() throws {
        let c = try Self.backlog(20)
        try c.apps[0].execute("DELETE FROM users WHERE id = 3")
        for h in try c.publishKeepingHints(0) { try c.nodes[1].hintArrived(shard: h.shard, sequence: h.sequence, payload: h.payload) }
        #expect(c.hintsApplied(1).count == 1)
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT count(*) FROM users WHERE id = 3") == [[0]])
        #expect(try c.rows(1, "SELECT * FROM users ORDER BY id") == c.rows(0, "SELECT * FROM users ORDER BY id"))
    }

    /// A hint older than what the receiver already has (its own later write) loses, as its in-order copy would.
    @Test func anOlderHintLosesToANewerRow() throws {
        let c = try Self.backlog(20)
        try c.apps[0].execute("INSERT INTO users VALUES (100, 'from node 1', 0)")
        let hints = try c.publishKeepingHints(0)
        // Node 2's later write has the greater version: its clock is a minute ahead of node 1's write.
        let theirs = try #require(try c.apps[0].scalar("SELECT hlc FROM \(quoteIdentifier(Bookkeeping.versionTable("users"))) WHERE pk_id = 100")?.int64)
        try c.apps[1].execute("UPDATE \(quoteIdentifier(Bookkeeping.clockTable)) SET hlc = ?", [.integer(theirs + (60_000 << RowVersion.logicalBits))])
        try c.apps[1].execute("INSERT INTO users VALUES (100, 'from node 2', 0)")
        for h in hints { try c.nodes[1].hintArrived(shard: h.shard, sequence: h.sequence, payload: h.payload) }
        #expect(try c.rows(1, "SELECT name FROM users WHERE id = 100") == [["from node 2"]])
        let won = c.hintsApplied(1).compactMap { if case .hintApplied(_, _, _, let won) = $0 { return won.count } else { return nil } }
        #expect(won == [0])
        try c.settle()
        #expect(try c.rows(0, "SELECT * FROM users ORDER BY id") == c.rows(1, "SELECT * FROM users ORDER BY id"))
    }

    /// Close behind the checkpoint (its in-order copy is about to come) or already applied: ignored.
    @Test func aHintCloseToTheCheckpointWaitsItsTurn() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema, configure: Self.oneChangePerMessage)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 0), (2, 'b', 0), (3, 'c', 0)")
        _ = try c.publishKeepingHints(0)
        try c.apps[0].execute("UPDATE users SET name = 'probe' WHERE id = 1")
        let hints = try c.publishKeepingHints(0)
        #expect(hints.map(\.sequence) == [4])
        for h in hints { try c.nodes[1].hintArrived(shard: h.shard, sequence: h.sequence, payload: h.payload) }
        #expect(c.hintsApplied(1).isEmpty)
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[0]])
    }

    /// Which of two rows wins a unique index besides the key depends on apply order: such a table's hints wait.
    @Test func aTableWithAnotherUniqueIndexTakesNoHints() throws {
        let c = try Self.backlog(20, schema: "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT UNIQUE, score REAL);")
        try c.apps[0].execute("UPDATE users SET score = 9 WHERE id = 1")
        for h in try c.publishKeepingHints(0) { try c.nodes[1].hintArrived(shard: h.shard, sequence: h.sequence, payload: h.payload) }
        #expect(c.hintsApplied(1).isEmpty)
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT score FROM users WHERE id = 1") == [[9.0]])
    }

    /// A row under a schema the receiver does not have (yet) waits for its in-order copy, which pauses for it as usual.
    @Test func aHintUnderAnotherSchemaWaitsItsTurn() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) { $0.publishBatchMax = 1; $0.replicateDDL = false }
        try c.apps[0].transaction {
            for k in 1...20 { try c.apps[0].execute("INSERT INTO users VALUES (?, 'bulk', 0)", [.integer(Int64(k))]) }
        }
        _ = try c.publishKeepingHints(0)
        try c.apps[0].execute("ALTER TABLE users ADD COLUMN email TEXT")
        try c.apps[0].execute("UPDATE users SET email = 'x@y' WHERE id = 1")
        let hints = try c.publishKeepingHints(0)
        #expect(!hints.isEmpty)
        for h in hints { try c.nodes[1].hintArrived(shard: h.shard, sequence: h.sequence, payload: h.payload) }
        #expect(c.hintsApplied(1).isEmpty)
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[0]])
    }

    /// Only small messages of user rows are offered: not definitions, not a bulk batch, and nothing when hints are off.
    @Test(arguments: [true, false])
    func onlySmallRowMessagesAreOffered(hintsOn: Bool) throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema) { $0.hints = hintsOn }
        try c.apps[0].execute("CREATE INDEX users_by_name ON users (name)")
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 0)")
        let first = try c.publishCollecting(0).map(\.0)
        let definitions = first.filter { m in (try? EnvelopeCodec.decodeAll(m.payload))?.contains { $0.table == Bookkeeping.ddlTable } == true }
        let rows = first.filter { m in (try? EnvelopeCodec.decodeAll(m.payload))?.contains { $0.table == "users" } == true }
        #expect(definitions.count == 1)  // the index (the table existed before the node started), never a hint
        #expect(definitions.allSatisfy { !$0.hint })
        #expect(rows.count == 1)
        #expect(rows.allSatisfy { $0.hint == hintsOn })
        let big = String(repeating: "x", count: 10_000)  // above hintBytesMax (8 KiB)
        try c.apps[0].execute("INSERT INTO users VALUES (2, ?, 0)", [.text(big)])
        let large = try c.publishCollecting(0).map(\.0)
        #expect(large.count == 1)
        #expect(large.allSatisfy { !$0.hint })
    }

    /// A hint that finds an application holding the write lock is dropped after `lock_pause_ms`, not after the busy
    /// timeout: the node's queue ran one hint after another, each sleeping the full timeout, so while an application
    /// kept its lock nothing else ran (ten hints held the queue 50 s, and /health answered from before the lock).
    /// Its in-order copy applies it once the lock is free.
    @Test func aHintThatFindsTheLockHeldIsDroppedWithoutWaitingOutTheBusyTimeout() throws {
        let c = try TestCluster(nodes: 0, schema: usersSchema)
        c.opener = SQLiteOpener(busyTimeoutMs: 10_000)
        for _ in 0..<2 { try c.addNode(schema: usersSchema, configure: Self.oneChangePerMessage) }
        try c.apps[0].transaction {
            for k in 1...20 { try c.apps[0].execute("INSERT INTO users (id, name, score) VALUES (?, ?, 0)", [.integer(Int64(k)), .text("bulk\(k)")]) }
        }
        _ = try c.publishKeepingHints(0)
        try c.apps[0].execute("UPDATE users SET name = 'probe' WHERE id = 7")
        let hints = try c.publishKeepingHints(0)
        #expect(hints.count == 1)
        try c.apps[1].execute("BEGIN IMMEDIATE")  // node 2's application, for longer than the busy timeout
        let started = ContinuousClock.now
        for h in hints { try c.nodes[1].hintArrived(shard: h.shard, sequence: h.sequence, payload: h.payload) }
        let waited = ContinuousClock.now - started
        #expect(waited < .seconds(5), "a hint waited \(waited) for a lock held by the application (busy timeout 10 s)")
        #expect(c.hintsApplied(1).isEmpty)
        try c.apps[1].execute("COMMIT")
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT name FROM users WHERE id = 7") == [["probe"]])
        #expect(try c.rows(1, "SELECT * FROM users ORDER BY id") == c.rows(0, "SELECT * FROM users ORDER BY id"))
    }

    /// A backlog goes to receivers in order anyway: only the newest changes (the lane's) and the last page of the scan
    /// are offered as hints, not the pages of a bulk load in front of them.
    @Test func aBacklogIsNotOffered() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema) { $0.publishBatchMax = 1; $0.scanMaxChanges = 100 }
        try c.apps[0].transaction {
            for k in 1...300 { try c.apps[0].execute("INSERT INTO users VALUES (?, 'bulk', 0)", [.integer(Int64(k))]) }
        }
        let sent = try c.publishCollecting(0).map(\.0)
        let keys = sent.map { m in (try? EnvelopeCodec.decodeAll(m.payload))?.first?.primaryKey.first?.value.int64 ?? 0 }
        let offered = zip(sent, keys).filter { $0.0.hint }.map(\.1)
        #expect(sent.count == 300)
        #expect(offered.contains(300))  // the newest, through the lane
        #expect(offered.count < 100, "\(offered.count) of 300 backlog messages offered as hints")
        #expect(!offered.contains(1) && !offered.contains(100))  // the first page, a backlog
    }

    /// Anyone who can publish on NATS can send bytes that are no message at all: nothing happens, nothing throws.
    @Test func garbageIsIgnored() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema, configure: Self.oneChangePerMessage)
        for payload: [UInt8] in [[], [0xff], Array(repeating: 0xa1, count: 100), Array("not cbor at all".utf8)] {
            try c.nodes[1].hintArrived(shard: 1, sequence: 1_000, payload: payload)
            try c.nodes[1].hintArrived(shard: 99, sequence: 1_000, payload: payload)
        }
        #expect(c.hintsApplied(1).isEmpty)
        #expect(c.nodes[1].isRunning)
    }
}
