import Foundation
import HarmonyCodec
@testable import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite
import Testing

/// A node's own messages coming back from the log: consumed without being applied while the database holds what
/// they carry, applied again once a restore may have taken rows back.
@Suite("Own messages back from the log")
struct EchoTests {
    static let schema = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)"

    func count(_ cluster: TestCluster, _ i: Int) throws -> Int64 {
        try cluster.apps[i].scalar("SELECT count(*) FROM kv")?.int64 ?? -1
    }

    func echoesConsumed(_ events: EventLog) -> Int {
        events.events.reduce(0) { if case .echoesConsumed(_, let n) = $1 { $0 + n } else { $0 } }
    }

    func applied(_ events: EventLog) -> Int {
        events.events.filter { if case .applied = $0 { true } else { false } }.count
    }

    /// Node 1's application loads 1,000 rows in one transaction; node 1 stamps and sends the first batch, then pauses.
    func importStartsOnNode1(_ cluster: TestCluster, table: String) throws {
        try cluster.apps[0].execute("BEGIN")
        for k in 1...1_000 { try cluster.apps[0].execute("INSERT INTO \(table) VALUES (\(k), 'import')") }
        try cluster.apps[0].execute("COMMIT")
        try cluster.publish(0)
    }

    /// Node 1 stamps the rest of its import, taking shard 1's deliveries as they come, until it applies again.
    func finishStamping(_ cluster: TestCluster) throws {
        for _ in 0..<100 where cluster.nodes[0].applyHeldForStamping {
            _ = cluster.clocks[0].advance(byMs: 1_000)
            try cluster.nodes[0].timerFired(.bookkeepingResume)
            try cluster.nodes[0].messagesArrived(shard: 1, cluster.streams.messages(shard: 1, from: cluster.nodes[0].checkpoint(1) + 1))
        }
    }

    @Test("a node's own messages are consumed without being decoded or applied; the other nodes apply them")
    func ownMessagesAreConsumedNotApplied() throws {
        let cluster = try TestCluster(nodes: 2, schema: Self.schema)
        try cluster.apps[0].execute("BEGIN")
        for k in 1...300 { try cluster.apps[0].execute("INSERT INTO kv VALUES (\(k), 'v\(k)')") }
        try cluster.apps[0].execute("COMMIT")
        try cluster.publish(0)
        let last = cluster.streams.lastSequence(shard: 1)
        #expect(last >= 3)  // 300 rows in batches of at most 128
        try cluster.deliver(0)
        #expect(cluster.nodes[0].checkpoint(1) == last)
        #expect(cluster.ports[0].acks[1] == Array(1...last))
        #expect(echoesConsumed(cluster.events[0]) == Int(last))
        #expect(applied(cluster.events[0]) == 0)
        #expect(cluster.nodes[0].ownEchoes.count == 0)
        try cluster.deliver(1)
        #expect(try count(cluster, 1) == 300)
        #expect(applied(cluster.events[1]) == 300)
        // Another node's message goes the full way on node 1 as before, and its own echo is consumed there.
        try cluster.apps[1].execute("UPDATE kv SET v = 'node 2' WHERE k = 7")
        try cluster.settle()
        #expect(try cluster.apps[0].query("SELECT v FROM kv WHERE k = 7") == [[.text("node 2")]])
        #expect(echoesConsumed(cluster.events[1]) == 1)
    }

    @Test("while a bulk import is stamped, the node's own messages go through and other nodes' wait")
    func ownMessagesAreNotHeldForAnImport() throws {
        let cluster = try TestCluster(nodes: 2, schema: Self.schema) { $0.lockBatchRows = 100 }
        for k in 1...50 { try cluster.apps[0].execute("INSERT INTO kv VALUES (\(k), 'v\(k)')") }
        try cluster.publish(0)
        let own = cluster.streams.lastSequence(shard: 1)
        try cluster.apps[1].execute("INSERT INTO kv VALUES (900, 'from node 2')")
        try cluster.publish(1)
        // The import: queued by the triggers, not stamped yet.
        try cluster.apps[0].execute("BEGIN")
        for k in 1_000..<2_000 { try cluster.apps[0].execute("INSERT INTO kv VALUES (\(k), 'import')") }
        try cluster.apps[0].execute("COMMIT")
        try cluster.nodes[0].messagesArrived(shard: 1, cluster.streams.messages(shard: 1, from: 1))
        #expect(cluster.nodes[0].checkpoint(1) == own)
        #expect(cluster.ports[0].acks[1] == Array(1...own))
        #expect(cluster.ports[0].naks[1] == [own + 1])
        #expect(try cluster.apps[0].query("SELECT v FROM kv WHERE k = 900").isEmpty)
        for _ in 0..<100 where try cluster.changeLogCount(0) > 0 && cluster.nodes[0].applyHeldForStamping {
            _ = cluster.clocks[0].advance(byMs: 1_000)
            try cluster.nodes[0].timerFired(.bookkeepingResume)
            try cluster.nodes[0].messagesArrived(shard: 1, cluster.streams.messages(shard: 1, from: own + 1))
        }
        try cluster.settle()
        for i in 0..<2 { #expect(try count(cluster, i) == 1_051) }
    }

    /// Between an import's stamp batches (its bookkeeping paused for the applications) the node's own messages used
    /// to wait for the next stamp, sent back for `retry_delay` each time: a 300,000-row import with the default
    /// `max_entries` (1024) left the writing node 20-40 of its own messages short of a stream's start, needing a
    /// snapshot. They now move the checkpoint by themselves; other nodes' messages still wait for the stamp.
    @Test("between an import's stamp batches, the node's own messages move its checkpoint at once")
    func ownMessagesMoveTheCheckpointWhileTheStampPauses() throws {
        let cluster = try TestCluster(nodes: 2, schema: Self.schema) { $0.lockBatchRows = 100 }
        try importStartsOnNode1(cluster, table: "kv")
        #expect(cluster.nodes[0].bookkeepingPaused)
        let sent = cluster.streams.lastSequence(shard: 1)
        #expect(sent >= 1)
        try cluster.apps[1].execute("INSERT INTO kv VALUES (5000, 'from node 2')")
        try cluster.publish(1)
        let all = cluster.streams.messages(shard: 1, from: 1)
        #expect(all.count == Int(sent) + 1)

        try cluster.nodes[0].messagesArrived(shard: 1, all)
        #expect(cluster.nodes[0].bookkeepingPaused, "the pause is the applications': no stamp ran")
        #expect(cluster.nodes[0].checkpoint(1) == sent)
        #expect(cluster.ports[0].acks[1] == Array(1...sent))
        #expect(cluster.ports[0].naks[1] == [sent + 1], "node 2's message waits for the import's stamping")
        #expect(try cluster.apps[0].query("SELECT v FROM kv WHERE k = 5000").isEmpty)
        try finishStamping(cluster)
        try cluster.settle()
        for i in 0..<2 { #expect(try count(cluster, i) == 1_001) }
    }

    /// A loader committing back to back leaves the write lock free for microseconds at a time. Waiting `lock_pause_ms`
    /// for it per delivery to save the checkpoint, the node consumed its own messages at about 250 a second, and a
    /// 300,000-row import left it behind its stream's start. Now the checkpoint moves in memory when the lock is
    /// missed, and the node's next write transaction, whatever it is, saves it.
    @Test("while the loader holds the lock, own messages move the checkpoint in memory and the next transaction saves it")
    func ownMessagesMoveTheCheckpointInMemoryWhileTheLoaderHoldsTheLock() throws {
        let cluster = try TestCluster(nodes: 2, schema: Self.schema) { $0.lockBatchRows = 100 }
        try importStartsOnNode1(cluster, table: "kv")
        let sent = cluster.streams.lastSequence(shard: 1)
        #expect(sent >= 1)
        try cluster.apps[1].execute("INSERT INTO kv VALUES (5000, 'from node 2')")
        try cluster.publish(1)
        let before = try cluster.apps[0].scalar("SELECT max(seq) FROM \(quoteIdentifier(Bookkeeping.checkpointTable))")?.int64 ?? 0

        try cluster.apps[0].execute("BEGIN IMMEDIATE")  // the loader's next transaction
        try cluster.nodes[0].messagesArrived(shard: 1, cluster.streams.messages(shard: 1, from: 1))
        #expect(cluster.nodes[0].checkpoint(1) == sent)
        #expect(cluster.ports[0].acks[1] == Array(1...sent))
        #expect(cluster.ports[0].naks[1] == [sent + 1], "node 2's message waits for the import's stamping")
        #expect(try cluster.apps[0].scalar("SELECT max(seq) FROM \(quoteIdentifier(Bookkeeping.checkpointTable))")?.int64 ?? 0 == before,
                "not saved while the loader holds the lock")
        try cluster.apps[0].execute("INSERT INTO kv VALUES (2000, 'loader')")
        try cluster.apps[0].execute("COMMIT")

        _ = cluster.clocks[0].advance(byMs: 1_000)
        try cluster.nodes[0].timerFired(.bookkeepingResume)  // the import's next stamp: a write transaction
        #expect(try cluster.apps[0].scalar("SELECT max(seq) FROM \(quoteIdentifier(Bookkeeping.checkpointTable))")?.int64 == Int64(sent))
        #expect(cluster.nodes[0].echoCheckpointsUnsaved.isEmpty)
        try finishStamping(cluster)
        try cluster.settle()
        for i in 0..<2 { #expect(try count(cluster, i) == 1_002) }
    }

    /// The same with a CREATE TABLE just before the import: the node's own definition came back first, and as a
    /// definition it took the full path, held for the stamp, with every own message behind it. The import's messages
    /// then passed the stream's `max_entries` (1024) and left the node needing a snapshot (one live run in four).
    @Test("a node's own definition at the head of an import's messages moves the checkpoint with them")
    func ownDefinitionBeforeAnImportDoesNotHoldItsMessages() throws {
        let cluster = try TestCluster(nodes: 2, schema: Self.schema) { $0.lockBatchRows = 100 }
        try cluster.apps[0].execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        try cluster.publish(0)  // the definition is sent; its copy comes back once the import has begun
        #expect(cluster.streams.lastSequence(shard: 1) == 1)
        try importStartsOnNode1(cluster, table: "items")
        #expect(cluster.nodes[0].bookkeepingPaused)
        let sent = cluster.streams.lastSequence(shard: 1)
        #expect(sent >= 2, "the definition and the import's first batch")
        try cluster.apps[1].execute("INSERT INTO kv VALUES (5000, 'from node 2')")
        try cluster.publish(1)
        let all = cluster.streams.messages(shard: 1, from: 1)
        #expect(all.count == Int(sent) + 1)

        try cluster.nodes[0].messagesArrived(shard: 1, all)
        #expect(cluster.nodes[0].applyHeldForStamping)
        #expect(cluster.nodes[0].checkpoint(1) == sent, "the definition and the rows after it, all this node's own")
        #expect(cluster.ports[0].naks[1] == [sent + 1], "node 2's message waits for the import's stamping")
        try finishStamping(cluster)
        try cluster.settle()
        for i in 0..<2 {
            #expect(try cluster.apps[i].scalar("SELECT count(*) FROM items")?.int64 == 1_000)
            #expect(try cluster.apps[i].scalar("SELECT count(*) FROM kv")?.int64 == 1)
        }
    }

    @Test("the remembered messages stay bounded: past the capacity the oldest half is forgotten, the newest kept")
    func rememberedMessagesStayBounded() {
        var echoes = OwnEchoes()
        func payload(_ n: Int) -> [UInt8] { withUnsafeBytes(of: UInt64(n).bigEndian) { Array($0) } + [UInt8](repeating: 7, count: n % 5) }
        for n in 0...OwnEchoes.capacity { echoes.insert(payload(n)) }
        #expect(echoes.count == OwnEchoes.capacity / 2)
        #expect(echoes.match(payload(0)) == nil)
        #expect(echoes.match(payload(OwnEchoes.capacity / 2)) == nil)
        #expect(echoes.match(payload(OwnEchoes.capacity / 2 + 1)) != nil)
        #expect(echoes.match(payload(OwnEchoes.capacity)) != nil)
        // Bytes that differ anywhere, the last byte included, are another message.
        var changed = payload(OwnEchoes.capacity)
        changed[changed.count - 1] ^= 1
        #expect(echoes.match(changed) == nil)
        echoes.removeAll()
        #expect(echoes.match(payload(OwnEchoes.capacity)) == nil)
    }

    /// Node 3 sends rows, publishing cleans their log entries up, then a snapshot older than them replaces its
    /// database: the copy of its own message still on the log is all that brings them back.
    @Test("after a restore, the node's own messages sent before it are applied again", arguments: [PlantedBugs(), .echoesSurviveRestore])
    func ownMessagesApplyAgainAfterARestore(bug: PlantedBugs) throws {
        let cluster = try TestCluster(nodes: 3, schema: Self.schema) { $0.plantedBugs = bug }
        for k in 1...10 { try cluster.apps[0].execute("INSERT INTO kv VALUES (\(k), 'v\(k)')") }
        try cluster.publish(0)
        try cluster.deliver(0)
        let (path, info) = try cluster.snapshot(0)
        // Node 3 has consumed nothing yet; it writes two rows and publishes them in one message.
        try cluster.apps[2].execute("INSERT INTO kv VALUES (300, 'node 3'); INSERT INTO kv VALUES (301, 'node 3 too')")
        try cluster.publish(2)
        try cluster.nodes[2].timerFired(.cleanup)  // the older entry goes (the newest always stays)
        cluster.truncateStreams(after: info)
        cluster.answerStreamStates(2)
        #expect(cluster.nodes[2].restoreNeeded)
        try cluster.nodes[2].snapshotReady(at: path)
        #expect(try cluster.apps[2].query("SELECT v FROM kv WHERE k = 300").isEmpty)  // older than the write
        try cluster.deliver(2)
        let row = try cluster.apps[2].query("SELECT v FROM kv WHERE k = 300")
        if bug.isEmpty {
            #expect(row == [[.text("node 3")]])
            #expect(echoesConsumed(cluster.events[2]) == 0)
        } else {
            #expect(row.isEmpty)
        }
    }
}
