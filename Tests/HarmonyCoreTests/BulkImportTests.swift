import Foundation
import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

/// A bulk import's bookkeeping (stamping its writes, deleting them once published) goes in batches with pauses, so
/// the application that made the import can write again at once instead of waiting seconds for SQLite's write lock.
@Suite("Bulk imports: bookkeeping in batches")
struct BulkImportTests {
    /// `rows` rows in one application transaction.
    func importRows(_ db: Database, _ ids: ClosedRange<Int>, name: (Int) -> String = { "row \($0)" }) throws {
        try db.transaction {
            for id in ids { try db.execute("INSERT INTO users VALUES (?, ?, ?)", [.integer(Int64(id)), .text(name(id)), .real(Double(id))]) }
        }
    }

    /// Fires node `i`'s due timers, moving its clock by `ms`, until no bookkeeping pause is left (bounded).
    func resumeBookkeeping(_ c: TestCluster, _ i: Int, stepMs: Int64 = 20) throws -> Int {
        var pauses = 0
        for _ in 0..<1_000 {
            guard c.nodes[i].bookkeepingPaused else { return pauses }
            pauses += 1
            for timer in c.clocks[i].advance(byMs: stepMs) { try c.nodes[i].timerFired(timer) }
        }
        Issue.record("bookkeeping still paused after 1,000 pauses")
        return pauses
    }

    /// While an import is stamped, this node sends other nodes' messages back to the log for later. The log then
    /// delivers what follows them first: that is no gap (no event, no question about the stream's range; a bulk load
    /// logged a hundred such "gaps", and a long one thousands). Once the import is stamped they are asked for again in
    /// order; a message that does not come back even then is still found missing, however often what follows it is
    /// sent back meanwhile.
    @Test func messagesThisNodeSentBackAreNoGapUntilLongOverdue() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) {
            $0.lockBatchRows = 10
            $0.publishBatchMax = 1
        }
        for id in 100...102 { try c.apps[1].execute("INSERT INTO users VALUES (?, 'remote', 0)", [.integer(Int64(id))]) }
        try c.publish(1)
        let remote = c.streams.messages(shard: 1, from: 1)
        #expect(remote.count == 3)
        try importRows(c.apps[0], 1...35)
        func gaps() -> Int { c.events[0].events.filter { if case .gap = $0 { true } else { false } }.count }

        try c.nodes[0].messagesArrived(shard: 1, remote)  // held back while the import is stamped
        #expect(c.ports[0].naks[1] == [1, 2, 3])
        _ = try resumeBookkeeping(c, 0)
        try c.nodes[0].messagesArrived(shard: 1, Array(remote[1...]))  // 1 is still in its delay
        #expect(gaps() == 0)
        #expect(c.ports[0].stateRequests.isEmpty)
        #expect(c.nodes[0].checkpoint(1) == 0)
        #expect(c.ports[0].deliverFrom[1] == 1, "the import is stamped: what it sent back is asked for again in order")

        // 1 never comes back (gone from the stream, say); 2 and 3 keep coming and are sent back each time.
        for _ in 0..<5 {
            _ = c.clocks[0].advance(byMs: 300)
            try c.nodes[0].messagesArrived(shard: 1, Array(remote[1...]))
        }
        #expect(gaps() >= 1)
        #expect(c.ports[0].stateRequests.contains(1))
        c.answerStreamStates(0)
        try c.nodes[0].messagesArrived(shard: 1, remote)
        #expect(c.nodes[0].checkpoint(1) == 3)
        #expect(try c.rows(0, "SELECT count(*) FROM users WHERE id >= 100") == [[.integer(3)]])
    }

    /// The versions of a queue stamped a batch at a time are those of one stamp of the whole queue.
    @Test func aQueueStampedInBatchesGetsTheVersionsOfOneStamp() throws {
        func stampedVersions(limit: Int?) throws -> (versions: [[DatabaseValue]], clock: Int64?, batches: Int) {
            let (_, db) = try temporaryDatabase(usersSchema)
            try ChangeCapture.install(db, nodeID: 2, filter: TableFilter())
            try importRows(db, 1...40)
            try db.execute("UPDATE users SET name = 'again' WHERE id IN (3, 17, 33)")
            // The same milliseconds in both databases, a step forward in the middle of the queue.
            try db.execute("UPDATE \(quoteIdentifier(Bookkeeping.captureQueue)) SET ms = CASE WHEN id < 20 THEN 1700000000000 ELSE 1700000000005 END")
            var batches = 0
            while try db.transaction(.immediate, { try ChangeCapture.stampCaptured(db, limit: limit) }) != nil { batches += 1 }
            let versions = try db.query("SELECT pk_id, hlc, node, deleted FROM \(quoteIdentifier(Bookkeeping.versionTable("users"))) ORDER BY pk_id")
            return (versions, try db.scalar("SELECT hlc FROM \(quoteIdentifier(Bookkeeping.clockTable))")?.int64, batches)
        }
        let whole = try stampedVersions(limit: nil)
        let inBatches = try stampedVersions(limit: 7)
        #expect(whole.batches == 1 && inBatches.batches == 7)  // 43 writes
        #expect(whole.versions.count == 40)
        #expect(inBatches.versions == whole.versions)
        #expect(inBatches.clock == whole.clock)
    }

    /// The sidecar stamps an import `lockBatchRows` at a time and holds no transaction in between: the application
    /// writes during the pause. Each batch goes out as soon as it is stamped, and everything arrives.
    @Test func anImportIsStampedInBatchesAndTheApplicationWritesBetweenThem() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) {
            $0.lockBatchRows = 10
            $0.lockPauseMs = 20
        }
        try importRows(c.apps[0], 1...35)
        try c.nodes[0].databaseChanged()
        #expect(try count(c.apps[0], Bookkeeping.captureQueue) == 25)
        #expect(c.nodes[0].bookkeepingPaused)
        #expect(c.clocks[0].scheduled[.bookkeepingResume] == c.clocks[0].nowMs + 20)
        let firstBatch = try c.ports[0].pendingPublishes.flatMap { try EnvelopeCodec.decodeAll($0.payload) }
        #expect(firstBatch.compactMap { $0.primaryKey.first?.value.int64 }.sorted() == Array(1...10))
        // The lock is free: an application connection that will not wait at all gets it.
        let impatient = try SQLiteOpener().open(path: c.apps[0].path)
        try impatient.execute("PRAGMA busy_timeout = 0")
        try impatient.execute("INSERT INTO users VALUES (100, 'during the pause', 0)")
        // A look during the pause stamps nothing more.
        try c.nodes[0].databaseChanged()
        #expect(try count(c.apps[0], Bookkeeping.captureQueue) == 26)
        let pauses = try resumeBookkeeping(c, 0)
        #expect(pauses == 3)  // 10 at the look, then 10, 10 and the last 6
        #expect(try count(c.apps[0], Bookkeeping.captureQueue) == 0)
        try c.settle()
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[.integer(36)]])
        #expect(try c.rows(1, "SELECT name FROM users WHERE id = 100") == [["during the pause"]])
    }

    /// An application writing faster than a quarter of a batch per batch (a bulk load still running) is not
    /// paused for: the stamp keeps up with it, or every newer commit would wait, unstamped, behind the load. Once
    /// the load stops growing the queue, the pauses come back.
    @Test func aLoadStillRunningIsStampedWithoutPauses() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) { $0.lockBatchRows = 10 }
        try importRows(c.apps[0], 1...35)
        try c.nodes[0].databaseChanged()
        #expect(c.nodes[0].bookkeepingPaused)
        try importRows(c.apps[0], 36...45)  // ten more during the pause: the load goes on
        for timer in c.clocks[0].advance(byMs: 20) { try c.nodes[0].timerFired(timer) }
        // Two batches at the pause's end, back to back (35 left before it); then the queue stopped growing.
        #expect(try count(c.apps[0], Bookkeeping.captureQueue) == 15)
        #expect(c.nodes[0].bookkeepingPaused)
        _ = try resumeBookkeeping(c, 0)
        try c.settle()
        #expect(try count(c.apps[0], Bookkeeping.captureQueue) == 0)
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[.integer(45)]])
    }

    /// A node importing holds back changes from other nodes (applying would stamp the whole import at once) and says
    /// so once; they apply when the import is stamped, and a remote write older than one of the import's loses to it.
    /// (With `apply-stamps-one-batch` the apply stamps only the first batch: the remote row overwrites an import row
    /// still queued, whose newer version then carries the remote's values everywhere.)
    @Test(arguments: [PlantedBugs(), .applyStampsOneBatch])
    func changesFromOtherNodesWaitUntilTheImportIsStamped(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) {
            $0.lockBatchRows = 10
            $0.plantedBugs = bug
        }
        try c.apps[1].execute("INSERT INTO users VALUES (35, 'older, node 2', 0), (200, 'node 2 only', 0)")
        try c.publish(1)
        usleep(5_000)  // versions carry milliseconds: node 1's import is unambiguously the newer
        try importRows(c.apps[0], 1...35)
        try c.deliver(0)
        if bug.isEmpty {
            #expect(try c.rows(0, "SELECT count(*) FROM users WHERE id = 200") == [[.integer(0)]])
            #expect(!(c.ports[0].naks[1, default: []] + c.ports[0].naks[2, default: []]).isEmpty)
            let told = c.events[0].events.filter { if case .stampingBulkImport = $0 { true } else { false } }
            #expect(told.count == 1)
            #expect("\(told.first!)".contains("35 local writes are queued"))
            try c.deliver(0)  // asked again during the import: still waiting, and not told twice
            #expect(c.events[0].events.filter { if case .stampingBulkImport = $0 { true } else { false } }.count == 1)
            _ = try resumeBookkeeping(c, 0)
        }
        try c.settle()
        for i in 0..<2 { try c.deliver(i) }
        let expected: [[DatabaseValue]] = [["row 35"]]
        if bug.isEmpty {
            #expect(try c.rows(0, "SELECT name FROM users WHERE id = 35") == expected)
            #expect(try c.rows(1, "SELECT name FROM users WHERE id = 35") == expected)
            #expect(try c.rows(0, "SELECT name FROM users WHERE id = 200") == [["node 2 only"]])
        } else {
            #expect(try c.rows(0, "SELECT name FROM users WHERE id = 35") != expected)
        }
    }

    /// What this node sent back for later while it stamped an import, nats-server delivers again in no particular
    /// order (each one out of order was sent back once more: 300 messages took 4 s after a 300,000-row import), and it
    /// can drop one (a redelivery that finds no fetch waiting comes again only after the 30 s ack wait; then the
    /// node waited 3 s more to find it missing). Once the import is stamped, the node asks for them again in order at
    /// once, by recreating its consumer from its checkpoint.
    @Test func onceAnImportIsStampedWhatItSentBackIsAskedForInOrder() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) { $0.lockBatchRows = 10 }
        for k in 1...3 { try c.apps[1].execute("INSERT INTO users VALUES (?, 'node 2', 0)", [.integer(Int64(500 + k))]); try c.publish(1) }
        try importRows(c.apps[0], 1...200)
        try c.deliver(0)
        #expect(c.nodes[0].checkpoint(1) == 0)
        #expect(c.ports[0].deliverFrom[1] == 1, "held back: asked for again")
        for _ in 0..<100 where try c.nodes[0].bulkImportHoldingDeliveries() != nil {
            try c.nodes[0].databaseChanged()
            _ = try resumeBookkeeping(c, 0)
        }
        #expect(try c.nodes[0].bulkImportHoldingDeliveries() == nil)
        // The log delivers message 3 first: it dropped 1 and 2, or holds them for later.
        c.ports[0].deliverFrom[1] = 3
        try c.deliver(0)
        #expect(c.nodes[0].checkpoint(1) == 0)
        #expect(c.ports[0].deliverFrom[1] == 1, "the consumer is made again from the checkpoint")
        let asked = c.events[0].events.filter { if case .sentBackAskedAgain(1, 1, true) = $0 { true } else { false } }
        #expect(asked.count == 1)
        #expect(asked.first?.description.contains("come in order") == true)
        #expect(!c.events[0].events.contains { if case .gap = $0 { true } else { false } })
        try c.deliver(0)  // at once: no clock advanced
        #expect(c.nodes[0].checkpoint(1) == 3)
        #expect(try c.rows(0, "SELECT count(*) FROM users WHERE id > 500") == [[.integer(3)]])
        #expect(!c.events[0].events.contains { if case .deliveryStalled = $0 { true } else { false } })
    }

    /// A message this node sent back for later when its apply missed the write lock, which does not come back when due
    /// while later ones do, is asked for again at once, by recreating the consumer from it: neither reported as a gap
    /// nor waited for (`missingDeliveryResubscribeMs`, 3 s), since the log dropped the redelivery, not the message.
    @Test func aMessageSentBackThatDoesNotComeBackWhenDueIsAskedForAtOnce() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        for k in 1...3 { try c.apps[1].execute("INSERT INTO users VALUES (?, 'node 2', 0)", [.integer(Int64(500 + k))]); try c.publish(1) }
        try c.apps[0].execute("BEGIN IMMEDIATE")  // the application's turn
        try c.deliver(0)
        #expect(c.nodes[0].checkpoint(1) == 0)
        #expect(c.ports[0].naks[1] == [1, 2, 3], "the apply missed the lock: sent back for later")
        try c.apps[0].execute("COMMIT")
        _ = c.clocks[0].advance(byMs: 300)
        // Not due long enough: 2 and 3 come first and wait for 1, quietly sent back again.
        c.ports[0].deliverFrom[1] = 4
        try c.nodes[0].messagesArrived(shard: 1, c.streams.messages(shard: 1, from: 2))
        #expect(c.ports[0].naks[1] == [1, 2, 3, 2, 3])
        #expect(c.events[0].events.allSatisfy { if case .sentBackAskedAgain = $0 { false } else { true } })
        _ = c.clocks[0].advance(byMs: 2_000)
        c.ports[0].deliverFrom[1] = 4
        try c.nodes[0].messagesArrived(shard: 1, c.streams.messages(shard: 1, from: 2))  // 1's redelivery was dropped
        #expect(c.ports[0].deliverFrom[1] == 1)
        #expect(c.ports[0].naks[1] == [1, 2, 3, 2, 3], "asked for in order instead")
        let asked = c.events[0].events.filter { if case .sentBackAskedAgain(1, 1, false) = $0 { true } else { false } }
        #expect(asked.count == 1)
        #expect(asked.first?.description.contains("did not come back when due") == true)
        #expect(!c.events[0].events.contains { if case .gap = $0 { true } else { false } })
        #expect(c.ports[0].stateRequests.isEmpty)
        try c.deliver(0)
        #expect(c.nodes[0].checkpoint(1) == 3)
    }

    /// Deliveries held back on purpose while an import is stamped are not a stalled consumer: the node does not
    /// recreate it however long the import takes, and says how many writes it still waits for (`/health` shows it).
    @Test func deliveriesHeldForAnImportAreNotAStall() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) {
            $0.lockBatchRows = 10
            $0.deliveryStallResubscribeMs = 10_000
        }
        try c.apps[1].execute("INSERT INTO users VALUES (500, 'node 2', 0)")
        try c.publish(1)
        try importRows(c.apps[0], 1...200)
        try c.deliver(0)
        #expect(c.nodes[0].checkpoint(1) == 0)
        #expect(try c.nodes[0].bulkImportHoldingDeliveries() == 190)
        let subscribed = c.ports[0].deliverFrom
        for _ in 0..<4 {
            _ = c.clocks[0].advance(byMs: 6_000)  // the stamping's own timers are not fired: it (nearly) stands still
            try c.nodes[0].timerFired(.cleanup)  // asks for the streams' ranges
            c.answerStreamStates(0)
        }
        #expect(try (c.nodes[0].bulkImportHoldingDeliveries() ?? 0) > 10)
        #expect(!c.events[0].events.contains { if case .deliveryStalled = $0 { true } else { false } })
        #expect(c.ports[0].deliverFrom == subscribed)
        for _ in 0..<100 where try c.nodes[0].bulkImportHoldingDeliveries() != nil {
            try c.nodes[0].databaseChanged()
            _ = try resumeBookkeeping(c, 0)
        }
        #expect(try c.nodes[0].bulkImportHoldingDeliveries() == nil)
        try c.deliver(0)
        #expect(try c.rows(0, "SELECT name FROM users WHERE id = 500") == [["node 2"]])
    }

    /// Published entries are deleted `lockBatchRows` at a time, oldest first, with the lock left to the application
    /// between batches; the newest entry stays, as before.
    @Test func publishedEntriesAreDeletedInBatches() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) { $0.lockBatchRows = 10 }
        try importRows(c.apps[0], 1...35)
        try c.publish(0)
        _ = try resumeBookkeeping(c, 0)
        try c.settle()
        #expect(try count(c.apps[0], Bookkeeping.globalLog, where: "state = 1") == 35)
        try c.nodes[0].cleanupPublished()
        #expect(try count(c.apps[0], Bookkeeping.globalLog) == 25)
        #expect(try count(c.apps[0], Bookkeeping.changeLog("users")) == 25)
        #expect(c.nodes[0].bookkeepingPaused)
        // The periodic cleanup meeting a pause leaves the rest to the pause's end.
        try c.nodes[0].timerFired(.cleanup)
        #expect(try count(c.apps[0], Bookkeeping.globalLog) == 25)
        _ = try resumeBookkeeping(c, 0)
        #expect(try count(c.apps[0], Bookkeeping.globalLog) == 1)
        let deleted = c.events[0].events.compactMap { if case .cleanedUp(let rows) = $0 { rows } else { nil } }
        #expect(deleted == [10, 10, 10, 4])
    }

    /// A batch of no rows or a negative pause is refused with its reason.
    @Test func aBookkeepingBatchOfNoRowsIsRefused() {
        var config = NodeConfig(nodeID: 1, databasePath: "/tmp/x.db")
        config.lockBatchRows = 0
        config.lockPauseMs = -1
        let errors = config.validationErrors()
        #expect(errors.contains { $0.contains("bookkeeping batch must be at least 1 row") })
        #expect(errors.contains { $0.contains("must not be negative") })
    }
}
