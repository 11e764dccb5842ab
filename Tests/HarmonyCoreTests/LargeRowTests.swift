import Foundation
import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

let blobsSchema = "CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB);"

/// Deterministic, incompressible-looking bytes, so a blob stays large on the wire.
func blobBytes(_ count: Int, seed: UInt64 = 1) -> [UInt8] {
    var x = seed &* 0x9E37_79B9_7F4A_7C15
    return (0..<count).map { _ in x ^= x << 13; x ^= x >> 7; x ^= x << 17; return UInt8(truncatingIfNeeded: x) }
}

@Suite("Rows larger than the log's message limit")
struct LargeRowTests {
    /// A cluster whose log takes 4 KiB messages, as a server with a small `max_payload` would.
    func cluster(rowBytesMax: Int = 1 << 20, configure: @escaping (inout NodeConfig) -> Void = { _ in }) throws -> TestCluster {
        try TestCluster(nodes: 2, schema: blobsSchema) {
            $0.messageBytesMax = 4096
            $0.rowBytesMax = rowBytesMax
            configure(&$0)
        }
    }

    func partsHeld(_ c: TestCluster, _ i: Int) throws -> Int64 {
        try c.apps[i].scalar("SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.partsTable))")?.int64 ?? -1
    }

    @Test func largeRowTravelsInPartsAndAppliesWhenTheLastArrives() throws {
        let c = try cluster()
        let data = blobBytes(20_000)
        try c.apps[0].execute("INSERT INTO blobs VALUES (1, ?)", [.blob(data)])
        try c.publish(0)
        let messages = c.streams.messages(shard: 1)
        #expect(messages.count >= 5)
        #expect(messages.allSatisfy { $0.payload.count <= 4096 - 1024 })
        #expect(try c.pendingChanges(0) == 0)  // acknowledged once every part landed

        // All but the last part: stored, nothing applied, yet the checkpoint moves past them.
        try c.nodes[1].messagesArrived(shard: 1, Array(messages.dropLast()))
        #expect(try c.rows(1, "SELECT count(*) FROM blobs") == [[0]])
        #expect(try partsHeld(c, 1) == Int64(messages.count - 1))
        #expect(c.nodes[1].checkpoint(1) == messages.dropLast().last!.sequence)

        try c.nodes[1].messagesArrived(shard: 1, [messages.last!])
        #expect(try c.rows(1, "SELECT data FROM blobs WHERE id = 1") == [[.blob(data)]])
        #expect(try partsHeld(c, 1) == 0)
    }

    /// Parts are stored with the checkpoint: a node that restarts between two parts still completes the row
    /// (fails with the planted bug that keeps them in memory).
    @Test(arguments: [false, true])
    func partsSurviveARestart(partsInMemory: Bool) throws {
        let c = try cluster { if partsInMemory { $0.plantedBugs.insert(.partsInMemory) } }
        let data = blobBytes(12_000, seed: 7)
        try c.apps[0].execute("INSERT INTO blobs VALUES (1, ?)", [.blob(data)])
        try c.publish(0)
        let messages = c.streams.messages(shard: 1)
        try c.nodes[1].messagesArrived(shard: 1, Array(messages.prefix(2)))
        c.nodes[1].stop()
        let restarted = ReplicationNode(config: c.nodes[1].config, environment: NodeEnvironment(clock: c.clocks[1], log: c.ports[1], opener: SQLiteOpener()))
        try restarted.start()
        defer { restarted.stop() }
        try restarted.messagesArrived(shard: 1, Array(messages.dropFirst(2)))
        let rows = try c.rows(1, "SELECT data FROM blobs WHERE id = 1")
        #expect((rows == [[.blob(data)]]) == !partsInMemory)
    }

    /// A snapshot taken between two parts of a change carries the parts it holds: a node restoring it from a
    /// truncated log completes the change with the parts that follow the snapshot.
    @Test func snapshotBetweenTwoPartsCarriesThem() throws {
        let c = try cluster()
        let data = blobBytes(12_000, seed: 3)
        try c.apps[0].execute("INSERT INTO blobs VALUES (1, ?)", [.blob(data)])
        try c.publish(0)
        let messages = c.streams.messages(shard: 1)
        try c.nodes[1].messagesArrived(shard: 1, Array(messages.prefix(2)))
        let (path, info) = try c.snapshot(1)
        #expect(info.sequences.values.first == 2)
        c.streams.truncate(shard: 1, before: 3)

        let n = try c.addNode(schema: "")
        #expect(c.nodes[n].restoreNeeded)
        try c.nodes[n].snapshotReady(at: path)
        #expect(!c.nodes[n].restoreNeeded)
        try c.deliver(n)
        #expect(try c.rows(n, "SELECT data FROM blobs WHERE id = 1") == [[.blob(data)]])
        #expect(try partsHeld(c, n) == 0)
    }

    /// One lost part fails the whole message; the resend completes it, and the parts that did land twice are harmless.
    @Test func aLostPartResendsTheWholeMessage() throws {
        let c = try cluster()
        try c.apps[0].execute("INSERT INTO blobs VALUES (1, ?), (2, x'00')", [.blob(blobBytes(10_000))])
        try c.nodes[0].databaseChanged()
        let sent = c.takePublishes(0)
        let parts = sent.filter { EnvelopeCodec.isPart($0.payload) }
        #expect(parts.count >= 3 && parts.allSatisfy { $0.token < 0 })
        let whole = sent.filter { !EnvelopeCodec.isPart($0.payload) }
        #expect(whole.count == 1)  // row 2, in a message of its own
        for m in whole { c.streams.append(shard: m.shard, messageID: m.messageID, payload: m.payload) }
        try c.nodes[0].publishAcknowledged(tokens: whole.map(\.token))
        for m in parts.dropLast() { c.streams.append(shard: m.shard, messageID: m.messageID, payload: m.payload) }
        try c.nodes[0].publishAcknowledged(tokens: parts.dropLast().map(\.token))
        #expect(try c.pendingChanges(0) == 1)  // the large row waits for its last part
        c.nodes[0].publishFailed(token: parts.last!.token)
        try c.nodes[0].publishAcknowledged(tokens: parts.dropLast().map(\.token))  // late acks of the failed attempt: ignored
        try c.nodes[0].timerFired(.publishRetry)
        try c.settle()
        #expect(try c.pendingChanges(0) == 0)
        #expect(try c.rows(1, "SELECT id, length(data) FROM blobs ORDER BY id") == [[1, 10_000], [2, 1]])
        #expect(try partsHeld(c, 1) == 0)
    }

    /// Found by the swarm soak (seeds 1040, 1061): a split change resent after an ALTER is the same change (same
    /// version) in other bytes. Its parts must not be joined with those the first attempt left in the stream.
    @Test func aSplitChangeResentAfterAnAlterIsNotMixedWithItsFirstParts() throws {
        let c = try cluster()
        let data = blobBytes(12_000, seed: 9)
        try c.apps[0].execute("INSERT INTO blobs VALUES (1, ?)", [.blob(data)])
        try c.nodes[0].databaseChanged()
        let first = c.takePublishes(0)
        #expect(first.count >= 3)
        for m in first.dropLast() { c.streams.append(shard: m.shard, messageID: m.messageID, payload: m.payload) }
        c.nodes[0].publishFailed(token: first.last!.token)
        for app in c.apps { try app.execute("ALTER TABLE blobs ADD COLUMN note TEXT DEFAULT 'n'") }
        try c.nodes[1].databaseChanged()
        try c.nodes[0].timerFired(.publishRetry)
        try c.settle()
        #expect(try ReplicationNode.parkedMessages(c.apps[1]).isEmpty)
        #expect(try c.rows(1, "SELECT data, note FROM blobs") == [[.blob(data), "n"]])
    }

    /// With `max_entries` set, a row in more parts than half the stream holds is refused like one above
    /// `max_row_bytes`, with the reason naming max_entries; a row that fits goes out in parts as before
    /// (`parts-outgrow-the-stream`: sent in 25 parts on a 20-message stream, its first parts fell off before its last
    /// landed, and the receiver was left behind the stream's start).
    @Test(arguments: [PlantedBugs(), .partsOutgrowTheStream])
    func aRowInMorePartsThanHalfTheStreamIsRefused(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: blobsSchema, maxEntries: 20) {
            $0.messageBytesMax = 4096
            $0.logMaxMessages = 20
            $0.plantedBugs = bug
        }
        let fits = blobBytes(30_000, seed: 2)
        try c.apps[0].execute("INSERT INTO blobs VALUES (1, ?)", [.blob(blobBytes(100_000))])
        try c.apps[0].execute("INSERT INTO blobs VALUES (2, ?)", [.blob(fits)])
        try c.settle()
        #expect(try (c.rows(1, "SELECT id FROM blobs ORDER BY id") == [[2]]) == bug.isEmpty)
        #expect(c.nodes[1].restoreNeeded == !bug.isEmpty)
        guard bug.isEmpty else { return }
        #expect(try c.rows(1, "SELECT data FROM blobs WHERE id = 2") == [[.blob(fits)]])
        let parked = try ReplicationNode.parkedMessages(c.apps[0])
        #expect(parked.count == 1 && parked[0].key == "id=1" && parked[0].reason.contains("max_entries"), "\(parked)")
    }

    /// Above `max_row_bytes` a change is parked locally, never sent, and does not hold anything else back.
    @Test func changeAboveMaxRowBytesIsRefusedAndParked() throws {
        let c = try cluster(rowBytesMax: 8 * 1024)
        try c.apps[0].execute("INSERT INTO blobs VALUES (1, ?)", [.blob(blobBytes(9_000))])
        try c.apps[0].execute("INSERT INTO blobs VALUES (2, x'01')")
        try c.settle()
        #expect(try c.rows(1, "SELECT id FROM blobs") == [[2]])
        #expect(try c.pendingChanges(0) == 0)
        #expect(c.events[0].events.contains { if case .changeRefused("blobs", "id=1", let bytes, 8192) = $0 { return bytes > 9_000 } else { return false } })
        let parked = try ReplicationNode.parkedMessages(c.apps[0])
        #expect(parked.count == 1 && parked[0].stream == Bookkeeping.localParkedStream && parked[0].table == "blobs" && parked[0].key == "id=1")
        #expect(parked[0].reason.contains("max_row_bytes"))

        // Cleanup keeps the refused change's values; discarding lets cleanup take them.
        try c.nodes[0].cleanupPublished()
        #expect(try c.apps[0].scalar("SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.globalLog)) WHERE state = 2")?.int64 == 1)
        #expect(try ReplicationNode.discardParked(c.apps[0], ids: [parked[0].id]) == 1)
        #expect(try c.apps[0].scalar("SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.globalLog)) WHERE state = 2")?.int64 == 0)
    }

    /// A refused row is in no log, so no snapshot may carry it; once the application overwrites it, it is back.
    @Test func snapshotLeavesOutARefusedRowUntilItIsOverwritten() throws {
        let c = try cluster(rowBytesMax: 8 * 1024)
        try c.apps[0].execute("INSERT INTO blobs VALUES (1, x'01'), (2, x'02')")
        try c.settle()
        try c.apps[0].execute("UPDATE blobs SET data = ? WHERE id = 1", [.blob(blobBytes(9_000))])
        try c.settle()
        func snapshotRows() throws -> [[DatabaseValue]] {
            let path = c.directory.appendingPathComponent("refused-\(UUID().uuidString).db").path
            guard case .taken = try c.nodes[0].takeSnapshot(to: path) else { Issue.record("no snapshot"); return [] }
            return try Database(path: path).query("SELECT id, length(data) FROM blobs ORDER BY id")
        }
        #expect(try snapshotRows() == [[2, 1]])
        try c.apps[0].execute("UPDATE blobs SET data = x'0303' WHERE id = 1")
        try c.settle()
        #expect(try snapshotRows() == [[1, 2], [2, 1]])
        #expect(try c.rows(1, "SELECT id, length(data) FROM blobs ORDER BY id") == [[1, 2], [2, 1]])
    }

    /// `-parked-retry` on a refused change puts it back under a new id: a node with a higher limit sends it.
    @Test func retriedRefusedChangeIsPublishedByANodeWithAHigherLimit() throws {
        let c = try cluster(rowBytesMax: 8 * 1024)
        try c.apps[0].execute("INSERT INTO blobs VALUES (1, ?)", [.blob(blobBytes(9_000))])
        try c.settle()
        let parked = try ReplicationNode.parkedMessages(c.apps[0])
        #expect(parked.count == 1)
        #expect(try c.nodes[0].retryParked().map(\.outcome) == [.requeued])
        #expect(try ReplicationNode.parkedMessages(c.apps[0]).isEmpty)
        // The operator raised max_row_bytes and restarted the node.
        var raised = c.nodes[0].config
        raised.rowBytesMax = 1 << 20
        c.nodes[0].stop()
        c.nodes[0] = ReplicationNode(config: raised, environment: NodeEnvironment(clock: c.clocks[0], log: c.ports[0], opener: SQLiteOpener()))
        try c.nodes[0].start()
        try c.settle()
        #expect(try c.rows(1, "SELECT id, length(data) FROM blobs") == [[1, 9_000]])
    }

    /// Hostile or broken parts are parked with a reason, never trusted: a size above this node's limit, parts that
    /// disagree, parts that do not add up.
    @Test func badPartsAreParked() throws {
        let c = try cluster(rowBytesMax: 4096)
        func part(_ group: String, _ index: Int, _ count: Int, total: Int, _ bytes: [UInt8]) -> [UInt8] {
            EnvelopeCodec.encodePart(MessagePart(groupID: group, index: index, count: count, totalBytes: total, bytes: bytes))
        }
        c.streams.appendRaw(shard: 1, payload: part("huge", 0, 2, total: 100 << 20, [1]))
        c.streams.appendRaw(shard: 1, payload: part("g", 0, 2, total: 10, [1, 2, 3, 4, 5]))
        c.streams.appendRaw(shard: 1, payload: part("g", 1, 3, total: 10, [6]))
        c.streams.appendRaw(shard: 1, payload: part("short", 0, 2, total: 10, [1]))
        c.streams.appendRaw(shard: 1, payload: part("short", 1, 2, total: 10, [2]))
        try c.deliver(1)
        #expect(c.nodes[1].checkpoint(1) == 5)
        let reasons = try ReplicationNode.parkedMessages(c.apps[1]).map(\.reason)
        #expect(reasons.count == 3)
        #expect(reasons[0].contains("above this node's limit"))
        #expect(reasons[1].contains("disagree"))
        #expect(reasons[2].contains("do not add up"))
        #expect(try partsHeld(c, 1) == 0)
    }
}
