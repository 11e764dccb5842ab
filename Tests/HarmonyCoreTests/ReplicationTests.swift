import Foundation
import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

let usersSchema = "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, score REAL);"

@Suite("Replication between cores through an in-memory log")
struct ReplicationTests {
    @Test func twoNodesExchangeInsertsUpdatesAndDeletes() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'ann', 1.5), (2, 'bob', 2.5)")
        try c.apps[1].execute("INSERT INTO users VALUES (3, 'cid', 3.5)")
        try c.settle()
        try c.apps[1].execute("UPDATE users SET name = 'ANN' WHERE id = 1")
        try c.apps[0].execute("DELETE FROM users WHERE id = 3")
        try c.settle()
        let expected: [[DatabaseValue]] = [[1, "ANN", 1.5], [2, "bob", 2.5]]
        #expect(try c.rows(0, "SELECT * FROM users ORDER BY id") == expected)
        #expect(try c.rows(1, "SELECT * FROM users ORDER BY id") == expected)
    }

    /// The runtime tells an application's commit from the sidecar's by these counters: applying another node's
    /// change (or stamping and publishing) moves only `ownWrites`, an application's commit only `dataVersion`.
    @Test func connectionCountersTellTheApplicationsCommitsFromTheSidecars() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        let start = try #require(try c.nodes[1].connectionCounters())
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'ann', 1.5)")
        try c.publish(0)
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT name FROM users") == [["ann"]])
        let applied = try #require(try c.nodes[1].connectionCounters())
        #expect(applied.dataVersion == start.dataVersion)
        #expect(applied.ownWrites > start.ownWrites)

        try c.apps[1].execute("INSERT INTO users VALUES (2, 'bob', 2.5)")
        let written = try #require(try c.nodes[1].connectionCounters())
        #expect(written.dataVersion != applied.dataVersion)
        #expect(written.ownWrites == applied.ownWrites)
        c.nodes[1].stop()
        #expect(try c.nodes[1].connectionCounters() == nil)
    }

    @Test func threeNodesWithShardsConverge() throws {
        let c = try TestCluster(nodes: 3, schema: usersSchema) { $0.shards = 4 }
        for i in 0..<3 {
            try c.apps[i].transaction {
                for k in 0..<50 { try c.apps[i].execute("INSERT INTO users VALUES (?, ?, ?)", [.integer(Int64(i * 100 + k)), .text("n\(i)-\(k)"), .real(Double(k))]) }
            }
        }
        try c.settle()
        try c.apps[2].execute("UPDATE users SET score = score + 1 WHERE id % 3 = 0")
        try c.settle()
        try c.apps[0].execute("DELETE FROM users WHERE id % 7 = 0")
        try c.settle()
        let reference = try c.rows(0, "SELECT * FROM users ORDER BY id")
        #expect(reference.count == 150 - 22)
        #expect(try c.rows(1, "SELECT * FROM users ORDER BY id") == reference)
        #expect(try c.rows(2, "SELECT * FROM users ORDER BY id") == reference)
        // Every shard carried traffic: the router spreads rows.
        #expect(c.streams.archive.keys.sorted() == [1, 2, 3, 4])
    }

    /// Both nodes update the same row before either hears of the other; the greater version must win
    /// everywhere, whichever write reaches the stream first.
    @Test(arguments: [false, true])
    func concurrentUpdatesResolveToGreaterVersion(secondPublishesFirst: Bool) throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'base', 0)")
        try c.settle()
        try c.apps[0].execute("UPDATE users SET name = 'from-1' WHERE id = 1")
        try c.apps[1].execute("UPDATE users SET name = 'from-2' WHERE id = 1")
        let v1 = try version(c, node: 0, id: 1), v2 = try version(c, node: 1, id: 1)
        #expect(v1 != v2)
        if secondPublishesFirst { try c.publish(1); try c.publish(0) } else { try c.publish(0); try c.publish(1) }
        try c.deliver(0); try c.deliver(1)
        let winner = v1 > v2 ? "from-1" : "from-2"
        #expect(try c.rows(0, "SELECT name FROM users") == [[.text(winner)]])
        #expect(try c.rows(1, "SELECT name FROM users") == [[.text(winner)]])
        #expect(try version(c, node: 0, id: 1) == max(v1, v2))
        #expect(try version(c, node: 1, id: 1) == max(v1, v2))
    }

    /// A delete with a greater version than a concurrent update must not be undone by that update arriving later.
    @Test(arguments: [false, true])
    func deleteBeatsOlderConcurrentUpdate(deleteFirst: Bool) throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'base', 0)")
        try c.settle()
        try c.apps[1].execute("UPDATE users SET name = 'late update' WHERE id = 1")
        let update = try version(c, node: 1, id: 1)
        // Node 1's clock is ahead of the update (it has not seen it): its delete is the greater version.
        try c.apps[0].execute("UPDATE \(quoteIdentifier(Bookkeeping.clockTable)) SET hlc = max(hlc, ?)", [.integer(update.hlc)])
        try c.apps[0].execute("DELETE FROM users WHERE id = 1")
        #expect(try version(c, node: 0, id: 1) > update)
        if deleteFirst { try c.publish(0); try c.publish(1) } else { try c.publish(1); try c.publish(0) }
        try c.deliver(0); try c.deliver(1)
        #expect(try c.rows(0, "SELECT count(*) FROM users") == [[0]])
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[0]])
    }

    /// An update with the greater version recreates a row another node deleted concurrently: the full row travels.
    @Test func newerUpdateRecreatesRowDeletedConcurrently() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'base', 0)")
        try c.settle()
        try c.apps[0].execute("DELETE FROM users WHERE id = 1")
        // Node 2 applies a far-future version first, so its next write is certainly newer than the delete.
        try c.apps[1].execute("UPDATE users SET name = 'newer' WHERE id = 1")
        try c.apps[1].execute("UPDATE \(quoteIdentifier(Bookkeeping.clockTable)) SET hlc = hlc + (1000 << 16)")
        try c.apps[1].execute("UPDATE users SET score = 9 WHERE id = 1")
        try c.settle()
        #expect(try c.rows(0, "SELECT * FROM users") == [[1, "newer", 9.0]])
        #expect(try c.rows(1, "SELECT * FROM users") == [[1, "newer", 9.0]])
    }

    @Test func tombstoneStopsResurrectionByOlderUpsert() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'x', 0)")
        try c.publish(0)
        let insertMessage = try #require(c.streams.messages(shard: 1).first)
        try c.deliver(1)
        try c.apps[0].execute("DELETE FROM users WHERE id = 1")
        try c.settle()
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[0]])
        // The old insert arrives again as a new message (outside any dedup window): it must not resurrect the row.
        c.streams.appendRaw(shard: 1, payload: insertMessage.payload)
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[0]])
        #expect(try c.rows(1, "SELECT deleted FROM \(quoteIdentifier(Bookkeeping.versionTable("users")))") == [[1]])
    }

    @Test func duplicateDeliveryAndRedeliveryChangeNothing() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) { $0.publishBatchMax = 1 }  // checks one message per change
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1), (2, 'b', 2)")
        try c.settle()
        try c.apps[1].execute("UPDATE users SET name = 'local' WHERE id = 2")  // a newer local write on node 2
        let all = c.streams.messages(shard: 1, from: 1)
        // Redeliver everything (lost acks), twice, and out of order.
        try c.nodes[1].messagesArrived(shard: 1, all.reversed())
        try c.nodes[1].messagesArrived(shard: 1, all + all)
        #expect(try c.rows(1, "SELECT * FROM users ORDER BY id") == [[1, "a", 1.0], [2, "local", 2.0]])
        #expect(c.nodes[1].checkpoint(1) == 2)
        // Reversed: both are duplicates (2). Doubled in one batch: each sequence counts once, both duplicates (2).
        let dups = c.events[1].events.filter { if case .duplicate = $0 { return true } else { return false } }
        #expect(dups.count == 4)
        #expect(c.ports[1].acks[1]?.suffix(4) == [1, 2, 1, 2])
    }

    /// The checkpoint is stored in the database: a restarted node resumes at checkpoint + 1 and re-applies nothing.
    @Test func checkpointSurvivesRestart() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1)")
        try c.settle()
        c.nodes[1].stop()
        let config = c.nodes[1].config
        let restarted = ReplicationNode(config: config, environment: NodeEnvironment(clock: c.clocks[1], log: c.ports[1], opener: SQLiteOpener()))
        try restarted.start()
        #expect(restarted.checkpoint(1) == 1)
        #expect(c.ports[1].deliverFrom[1] == 2)
    }

    /// A message arriving ahead of a gap is held back (nak), never applied out of order.
    @Test func gapIsHeldBackNotSkipped() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) { $0.publishBatchMax = 1 }  // checks one message per change
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1)")
        try c.apps[0].execute("INSERT INTO users VALUES (2, 'b', 2)")
        try c.publish(0)
        let all = c.streams.messages(shard: 1, from: 1)
        try c.nodes[1].messagesArrived(shard: 1, [all[1]])
        #expect(c.nodes[1].checkpoint(1) == 0)
        #expect(c.ports[1].naks[1] == [2])
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[0]])
        try c.nodes[1].messagesArrived(shard: 1, all)
        #expect(try c.rows(1, "SELECT id FROM users ORDER BY id") == [[1], [2]])
    }

    @Test func truncatedLogIsReportedAsBehindLogStart() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) { $0.publishBatchMax = 1 }  // checks one message per change
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1)")
        try c.apps[0].execute("INSERT INTO users VALUES (2, 'b', 2)")
        try c.publish(0)
        c.streams.truncate(shard: 1, before: 2)
        try c.nodes[1].messagesArrived(shard: 1, c.streams.messages(shard: 1, from: 2))
        // The gap alone cannot tell a hole from a late message: the node asks the log, inside no transaction.
        #expect(c.events[1].events.contains(.gap(shard: 1, expected: 1, got: 2)))
        #expect(c.ports[1].stateRequests == [1])
        #expect(!c.nodes[1].restoreNeeded)
        c.answerStreamStates(1)
        #expect(c.events[1].events.contains(.behindLogStart(shard: 1, checkpoint: 0, firstSequence: 2)))
        #expect(c.nodes[1].restoreNeeded)
        #expect(c.nodes[1].checkpoint(1) == 0)
    }

    /// A log that cannot tell a stream's range changes nothing; the next periodic check asks again, once per shard.
    @Test func unknownStreamRangeIsAskedAgainLater() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) { $0.shards = 2 }
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1)")
        try c.publish(0)
        for shard in 1...2 { c.streams.truncate(shard: shard, before: c.streams.lastSequence(shard: shard) + 1) }
        try c.nodes[1].timerFired(.cleanup)
        try c.nodes[1].timerFired(.cleanup)  // still outstanding: not asked twice
        #expect(c.ports[1].stateRequests == [1, 2])
        c.answerStreamStates(1, unknown: true)
        #expect(!c.nodes[1].restoreNeeded)
        #expect(c.events[1].events.contains(.streamStateUnknown(shard: 1)))
        try c.nodes[1].timerFired(.cleanup)
        #expect(c.ports[1].stateRequests == [1, 2])
        c.answerStreamStates(1)
        #expect(c.nodes[1].restoreNeeded == (c.streams.lastSequence(shard: 1) > 0 || c.streams.lastSequence(shard: 2) > 0))
    }

    /// Every SQLite storage class crosses the wire bit for bit.
    @Test func valueTypesRoundTrip() throws {
        let c = try TestCluster(nodes: 2, schema: "CREATE TABLE v (id INTEGER PRIMARY KEY, a, b, c, d, e);") { $0.compress = true }
        let values: [[DatabaseValue]] = [
            [1, .integer(Int64.max), .integer(Int64.min), .real(-0.0), .real(1e308), .real(Double.leastNonzeroMagnitude)],
            [2, .text("héllo wörld ✓ 𝄞"), .text("nul\u{0}inside"), .blob([]), .blob([0, 255, 1, 254]), .null],
            [3, .text(""), .real(3.141592653589793), .integer(0), .integer(-1), .blob(Array(repeating: 7, count: 70_000))],
        ]
        for row in values { try c.apps[0].execute("INSERT INTO v VALUES (?, ?, ?, ?, ?, ?)", row) }
        try c.settle()
        let got = try c.rows(1, "SELECT * FROM v ORDER BY id")
        #expect(got == values)
        // -0.0 == 0.0 under ==; check the sign bit survived too.
        if case .real(let z) = got[0][3] { #expect(z.sign == .minus) } else { Issue.record("not a real") }
    }

    /// A write made after applying a version from a node with a fast clock still gets a greater version.
    @Test func localWriteAfterApplyIsNewerThanWhatWasApplied() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        // Node 1's clock runs an hour ahead of real time.
        try c.apps[0].execute("""
            UPDATE \(quoteIdentifier(Bookkeeping.clockTable))
            SET hlc = (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) + 3600000) << 16
            """)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'future', 0)")
        try c.settle()
        let applied = try version(c, node: 1, id: 1)
        #expect(applied.physicalMs > Int64(Date().timeIntervalSince1970 * 1000) + 1_800_000)  // really from the future
        try c.apps[1].execute("UPDATE users SET name = 'after' WHERE id = 1")
        #expect(try version(c, node: 1, id: 1) > applied)
        try c.apps[1].execute("INSERT INTO users VALUES (2, 'other row', 0)")
        #expect(try version(c, node: 1, id: 2) > applied)
        try c.settle()
        #expect(try c.rows(0, "SELECT name FROM users ORDER BY id") == [["after"], ["other row"]])
    }

    @Test func nodeConsumesItsOwnMessagesWithoutApplyingThem() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1)")
        try c.settle()
        #expect(c.nodes[0].checkpoint(1) == 1)
        #expect(c.events[0].events.contains(.echoesConsumed(shard: 1, messages: 1)))
        #expect(!c.events[0].events.contains { if case .applied = $0 { true } else { false } })
        #expect(try c.rows(0, "SELECT * FROM users") == [[1, "a", 1.0]])
    }

    /// The row's version, once the node's queued writes are stamped (as its sidecar does before it reads them).
    func version(_ c: TestCluster, node: Int, id: Int64) throws -> RowVersion {
        try stamp(c.apps[node])
        let row = try #require(try c.rows(node, "SELECT hlc, node FROM \(quoteIdentifier(Bookkeeping.versionTable("users"))) WHERE pk_id = \(id)").first)
        return RowVersion(hlc: row[0].int64!, node: row[1].int64!)
    }
}

@Suite("Deliveries that stop reaching a node")
struct DeliveryStallTests {
    /// Another process consuming as this node (a duplicate node_id) took and acked every message this node would
    /// have had: nothing reaches it, so it sees no gap, while the stream holds more. Once the checkpoint has stood
    /// still for `deliveryStallResubscribeMs`, the node recreates its consumer from checkpoint + 1.
    @Test(arguments: [false, true])
    func stalledShardRecreatesItsConsumer(plantedBug: Bool) throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) {
            $0.deliveryStallResubscribeMs = 10_000
            if plantedBug { $0.plantedBugs.insert(.noResubscribeOnStall) }
        }
        for k in 1...6 { try c.apps[0].execute("INSERT INTO users VALUES (?, 'x', 0)", [.integer(Int64(k))]) ; try c.publish(0) }
        // The impostor took messages 1...6 and acked them: node 1's consumer has nothing left to deliver.
        c.ports[1].deliverFrom[1] = 7
        try c.deliver(1)
        #expect(c.nodes[1].checkpoint(1) == 0)
        // Periodic range checks: the first notes the stall, a later one past the limit acts on it.
        for step in 0..<3 {
            _ = c.clocks[1].advance(byMs: 6_000)
            try c.nodes[1].timerFired(.cleanup)
            c.answerStreamStates(1)
            if step == 0 { #expect(c.ports[1].deliverFrom[1] == 7) }
        }
        try c.deliver(1)
        #expect(c.nodes[1].checkpoint(1) == (plantedBug ? 0 : 6))
        #expect(c.events[1].events.contains {
            if case .deliveryStalled(1, 0, 6, _, false, false) = $0 { return true } else { return false }
        } == !plantedBug)
    }

    /// The server no longer has a node's consumer (an operator's `nats consumer rm`): the fetch is refused, and the
    /// node makes the consumer again from checkpoint + 1 at once, forgetting what it held back from the old one, instead
    /// of waiting `deliveryStallResubscribeMs` for the stall check.
    @Test func aLostConsumerIsMadeAgainFromTheCheckpoint() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        for k in 1...3 { try c.apps[0].execute("INSERT INTO users VALUES (?, 'x', 0)", [.integer(Int64(k))]); try c.publish(0) }
        try c.deliver(1)
        #expect(c.nodes[1].checkpoint(1) == 3)
        c.nodes[1].holdBack(shard: 1, [4], delayMs: 250)  // sent back to the consumer the server lost
        for k in 4...6 { try c.apps[0].execute("INSERT INTO users VALUES (?, 'x', 0)", [.integer(Int64(k))]); try c.publish(0) }
        c.ports[1].deliverFrom[1] = 99  // the server lost the consumer: nothing more comes from it
        c.nodes[1].consumerLost(shard: 1)
        #expect(c.ports[1].deliverFrom[1] == 4)
        #expect(c.nodes[1].heldBack[1] == nil)
        #expect(c.events[1].events.contains(.consumerLost(shard: 1, from: 4)))
        try c.deliver(1)
        #expect(c.nodes[1].checkpoint(1) == 6)
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[6]])
    }

    /// A full disk makes every try to apply fail: the first message is asked for again after
    /// `storageRetryDelayMs`, while the live runtime asks for the rest of its fetch sooner, so later messages keep
    /// coming in between. The first one is not missing (it keeps coming and failing), so the consumer is not
    /// recreated: by hand, a node on a full disk warned every 3 s that "message 12 never arrived ... another process
    /// running with this node_id took it". Once the disk has room everything applies.
    @Test func aBatchThatKeepsFailingOnAFullDiskIsNotAMissingDelivery() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) { $0.publishBatchMax = 1 }
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'first', 0)")
        try c.settle()
        let db = try #require(c.nodes[1].database)
        let pages = try #require(try db.scalar("PRAGMA page_count")?.int64)
        try db.execute("PRAGMA max_page_count = \(pages)")
        let start = c.nodes[1].checkpoint(1)
        try c.apps[0].transaction {
            for k in 2...10 { try c.apps[0].execute("INSERT INTO users VALUES (?, ?, 0)", [.integer(Int64(k)), .text(String(repeating: "x", count: 3_000))]) }
        }
        try c.publish(0)
        let all = c.streams.messages(shard: 1, from: start + 1)
        #expect(all.count == 9)
        for _ in 0..<6 {
            try c.nodes[1].messagesArrived(shard: 1, all)  // the whole fetch: fails on the full disk
            c.answerStreamStates(1)
            _ = c.clocks[1].advance(byMs: 300)
            try c.nodes[1].messagesArrived(shard: 1, Array(all.dropFirst()))  // the rest of it, asked for again sooner
            c.answerStreamStates(1)
            _ = c.clocks[1].advance(byMs: 700)
        }
        #expect(c.events[1].events.contains { if case .applyBatchFailed = $0 { true } else { false } })
        #expect(!c.events[1].events.contains { if case .deliveryStalled = $0 { true } else { false } },
                "\(c.events[1].events.filter { if case .deliveryStalled = $0 { true } else { false } })")
        #expect(c.nodes[1].checkpoint(1) == start)
        try db.execute("PRAGMA max_page_count = 1073741823")
        try c.nodes[1].messagesArrived(shard: 1, all)
        #expect(c.nodes[1].checkpoint(1) == start + 9)
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[10]])
    }

    /// The answer to a fetch was lost when the connection dropped (a partition began): the consumer moved past
    /// message 1 and delivers 2...6, each held back behind the missing one, and JetStream would send message 1 again
    /// only after its ack wait (30 s). Once it has stayed missing for `missingDeliveryResubscribeMs` while later ones
    /// came, the node recreates its consumer from it; the slow stall check (60 s) would wait on.
    @Test(arguments: [false, true])
    func missingDeliveryRecreatesTheConsumerSoon(plantedBug: Bool) throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) {
            if plantedBug { $0.plantedBugs.insert(.stallIgnoresGaps) }
        }
        for k in 1...6 { try c.apps[0].execute("INSERT INTO users VALUES (?, 'x', 0)", [.integer(Int64(k))]) ; try c.publish(0) }
        c.ports[1].deliverFrom[1] = 2
        // Later messages keep coming (each redelivery of what was held back shows the gap again).
        for _ in 0..<2 {
            try c.deliver(1)
            #expect(c.nodes[1].checkpoint(1) == 0)
            #expect(c.ports[1].deliverFrom[1] == 2)
            _ = c.clocks[1].advance(byMs: 1_600)
        }
        try c.deliver(1)
        try c.deliver(1)
        #expect(c.nodes[1].checkpoint(1) == (plantedBug ? 0 : 6))
        #expect(c.events[1].events.contains {
            if case .deliveryStalled(1, 0, 6, 3_200, true, false) = $0 { return true } else { return false }
        } == !plantedBug)
        #expect(!c.events[1].events.contains { if case .deliveryStalled(_, _, _, _, false, _) = $0 { return true } else { return false } })
    }
}
