import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

/// A single-row commit that another connection makes between a bulk writer's transactions sits in the middle of the
/// capture queue, which has no transaction boundaries. Each queued write records its connection's change count, so
/// the sidecar tells such commits apart from the import around them and sends them first.
@Suite("Small commits picked out of a bulk load")
struct SmallCommitTests {
    func importRows(_ db: Database, _ ids: ClosedRange<Int>) throws { try BulkImportTests().importRows(db, ids) }

    /// The application's second connection, as a request handler beside a bulk loader would have.
    func otherConnection(_ c: TestCluster) throws -> Database { try SQLiteOpener().open(path: c.apps[0].path) }

    func keys(_ records: [ChangeRecord]) -> [Int64] { records.compactMap { $0.primaryKey.first?.value.int64 } }

    // MARK: the stretches

    @Test func aStretchOfOneConnectionsWritesIsSmallUpToItsLimit() {
        var s = WriterStretches(after: nil)
        // A loader at 0, 2, 4... (one statement and its queue row per write), a probe at 600 between its transactions.
        for id in Int64(1)...40 { s.add(queueID: id, writerChanges: 2 * (id - 1)) }
        s.add(queueID: 41, writerChanges: 600)
        for id in Int64(42)...81 { s.add(queueID: id, writerChanges: 80 + 2 * (id - 42)) }
        s.add(queueID: 82, writerChanges: 602)
        #expect(s.finish() == [41, 82])
        #expect(s.tail == WriterStretches.Tail(writerChanges: 602, length: 1))
    }

    @Test func aStretchGoesOnFromThePreviousPassesTail() {
        var first = WriterStretches(after: nil)
        for id in Int64(1)...20 { first.add(queueID: id, writerChanges: id) }
        // Stopped short of the queue's end: the open stretch is left to the next pass.
        #expect(first.finish(countingOpen: false) == [])
        var second = WriterStretches(after: first.tail)
        for id in Int64(21)...40 { second.add(queueID: id, writerChanges: id) }
        second.add(queueID: 41, writerChanges: 5_000)
        // 40 writes of one connection in all: not small; the write after them is.
        #expect(second.finish() == [41])
        // The queue started again at 1 (a stamp emptied it): the stretch still goes on from the tail.
        var third = WriterStretches(after: second.tail)
        third.add(queueID: 1, writerChanges: 5_002)
        #expect(third.finish() == [1])
        var fourth = WriterStretches(after: WriterStretches.Tail(writerChanges: 5_000, length: 32))
        fourth.add(queueID: 1, writerChanges: 5_002)
        #expect(fourth.finish() == [])
    }

    @Test func writesOfOlderTriggersAreNeverSmall() {
        var s = WriterStretches(after: nil)
        for id in Int64(1)...3 { s.add(queueID: id, writerChanges: nil) }
        s.add(queueID: 4, writerChanges: 10)
        s.add(queueID: 5, writerChanges: nil)
        #expect(s.finish() == [4])
    }

    /// The triggers record the writing connection's `total_changes()`: it steps by two per captured write on one
    /// connection and differs on another.
    @Test func theQueueRecordsEachWritersChangeCount() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema)
        let other = try otherConnection(c)
        try importRows(c.apps[0], 1...3)
        try other.execute("INSERT INTO users VALUES (100, 'small', 0)")
        let counts = try c.apps[0].query("SELECT writer_changes FROM \(quoteIdentifier(Bookkeeping.captureQueue)) ORDER BY id").map(\.[0])
        #expect(counts.count == 4)
        let loader = counts.prefix(3).compactMap(\.int64)
        #expect(loader.count == 3 && loader[1] - loader[0] == 2 && loader[2] - loader[1] == 2)
        #expect(counts[3].int64 == 0)
    }

    /// A queue made by an older version (no `writer_changes`) gains the column when the sidecar starts again; writes
    /// queued before, which have none, still replicate.
    @Test func anOlderQueueGainsTheColumn() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        c.nodes[0].stop()
        // What an older version left: a queue without the column, and a write its trigger queued.
        let queue = quoteIdentifier(Bookkeeping.captureQueue)
        for trigger in try c.apps[0].query("SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'users'").compactMap(\.[0].string) {
            try c.apps[0].execute("DROP TRIGGER \(quoteIdentifier(trigger))")
        }
        try c.apps[0].execute("ALTER TABLE \(queue) DROP COLUMN writer_changes")
        try c.apps[0].execute("INSERT INTO users VALUES (7, 'queued by an older version', 0)")
        try c.apps[0].execute("INSERT INTO \(queue) (table_name, type, epoch, ms, k1) VALUES ('users', 'insert', 1, \(ChangeCapture.nowMsSQL), 7)")
        try c.nodes[0].start()
        let columns = try c.apps[0].query("SELECT name FROM pragma_table_info(?)", [.text(Bookkeeping.captureQueue)]).compactMap(\.[0].string)
        #expect(columns.contains("writer_changes"))
        try c.apps[0].execute("INSERT INTO users VALUES (8, 'after the upgrade', 0)")
        try c.settle()
        #expect(try c.rows(1, "SELECT id FROM users ORDER BY id") == [[.integer(7)], [.integer(8)]])
    }

    // MARK: in the sidecar

    /// Stamped together with the import around it, the small commit goes out before the import's rows, although
    /// the scan reaches its place only after a thousand of them.
    @Test func aSmallCommitStampedInsideAnImportGoesOutFirst() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) {
            $0.publishInFlightMax = 256
        }
        let other = try otherConnection(c)
        try importRows(c.apps[0], 1...1000)
        try other.execute("INSERT INTO users VALUES (100000, 'small', 0)")
        try importRows(c.apps[0], 1001...1500)
        try c.nodes[0].databaseChanged()
        let first = c.ports[0].pendingPublishes
        let sent = keys(try first.flatMap { try EnvelopeCodec.decodeAll($0.payload) })
        #expect(sent.contains(100_000), "the small commit waited behind the import")
        #expect(sent.filter { (900...1000).contains($0) }.isEmpty)  // its neighbours in the queue did wait
        #expect(first.contains { $0.hint && keys(try! EnvelopeCodec.decodeAll($0.payload)).contains(100_000) })
        try c.settle()
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[.integer(1501)]])
    }

    /// On the bulk writer's node, while the import is stamped a batch at a time, the lane's first look at the queue
    /// finds the small commit in the middle of it and sends it ahead of its stamp, under the version the stamp gives
    /// it. A small commit whose row the import writes again later stays queued: sent now, it would carry the later
    /// write's row under its own, older version (`ahead-lane-ignores-later-writes` sends it, and the stamp then gives
    /// the row another version than the one sent).
    @Test(arguments: [PlantedBugs(), .aheadLaneIgnoresLaterWrites])
    func theFirstLookAtAStampBacklogSendsTheSmallCommitsInIt(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) {
            $0.lockBatchRows = 500
            $0.lockPauseMs = 20
            $0.plantedBugs = bug
        }
        let other = try otherConnection(c)
        try importRows(c.apps[0], 1...2000)
        try other.execute("INSERT INTO users VALUES (100000, 'small', 0)")
        try other.execute("INSERT INTO users VALUES (100001, 'small, then imported over', 0)")
        try importRows(c.apps[0], 2001...3000)
        try c.apps[0].execute("UPDATE users SET name = 'imported' WHERE id = 100001")
        try c.nodes[0].databaseChanged()  // the first batch, then a pause
        #expect(c.nodes[0].bookkeepingPaused)
        let round = c.ports[0].pendingPublishes
        let ahead = try round.filter { $0.messageID.hasSuffix("-ahead") }.flatMap { try EnvelopeCodec.decodeAll($0.payload) }
        let byKey = Dictionary(ahead.map { (keys([$0]).first ?? 0, $0) }, uniquingKeysWith: { a, _ in a })
        let small = try #require(byKey[100_000], "the small commit was not sent ahead of its stamp")
        #expect(small.row.first { $0.name == "name" }?.value == .text("small"))
        // The import's own rows are not sent ahead.
        #expect(keys(ahead).filter { $0 <= 3000 }.isEmpty)
        try AheadOfStampTests().drain(c)
        #expect(try AheadOfStampTests().storedVersion(c, 100_000) == small.version)
        if bug.isEmpty {
            #expect(byKey[100_001] == nil)
        } else {
            let early = try #require(byKey[100_001])
            #expect(early.row.first { $0.name == "name" }?.value == .text("imported"))
            #expect(try AheadOfStampTests().storedVersion(c, 100_001) != early.version)
        }
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT * FROM users ORDER BY id") == c.rows(0, "SELECT * FROM users ORDER BY id"))
    }

    /// An application that holds the write lock (a loader between its transactions, most of the time) keeps the
    /// sidecar's stamp waiting only `lock_pause_ms`, not the whole busy timeout: the lane still sends a small commit
    /// ahead of its stamp meanwhile. A lock missed for as long as a plain wait would have lasted is reported as a
    /// failed stamp, as before.
    @Test func aStampBacklogWaitsForTheLockOnlyBriefly() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) {
            $0.lockBatchRows = 500
            $0.lockPauseMs = 20
        }
        let other = try otherConnection(c)
        try importRows(c.apps[0], 1...3000)
        try c.nodes[0].databaseChanged()  // the first batch, then a pause: a backlog
        #expect(c.nodes[0].bookkeepingPaused)
        _ = try AheadOfStampTests().takePublishes(c)
        try other.execute("INSERT INTO users VALUES (100000, 'small', 0)")
        let holder = try SQLiteOpener().open(path: c.apps[0].path)
        try holder.execute("BEGIN IMMEDIATE")
        func failures() -> Int { c.events[0].events.filter { if case .stampFailed = $0 { true } else { false } }.count }
        for timer in c.clocks[0].advance(byMs: 20) { try c.nodes[0].timerFired(timer) }
        let ahead = try c.ports[0].pendingPublishes.filter { $0.messageID.hasSuffix("-ahead") }.flatMap { try EnvelopeCodec.decodeAll($0.payload) }
        #expect(keys(ahead) == [100_000])
        #expect(failures() == 0)
        #expect(c.nodes[0].bookkeepingPaused)
        // Held past the busy timeout (5 s): now it is a failure /health shows.
        for timer in c.clocks[0].advance(byMs: 5_000) { try c.nodes[0].timerFired(timer) }
        #expect(failures() == 1)
        try holder.execute("COMMIT")
        try AheadOfStampTests().drain(c)
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[.integer(3001)]])
    }

    /// The loader has just begun: nothing is stamped yet, and the first stamp already misses the lock. The small
    /// commit made between the loader's transactions goes out ahead of its stamp at once, the loader's rows do not.
    @Test func aFirstStampThatMissesTheLockLetsTheLaneSendAhead() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        let other = try otherConnection(c)
        try importRows(c.apps[0], 1...1000)
        try other.execute("INSERT INTO users VALUES (100000, 'small', 0)")
        try importRows(c.apps[0], 1001...1200)
        let holder = try SQLiteOpener().open(path: c.apps[0].path)
        try holder.execute("BEGIN IMMEDIATE")
        try c.nodes[0].databaseChanged()
        let ahead = try c.ports[0].pendingPublishes.filter { $0.messageID.hasSuffix("-ahead") }.flatMap { try EnvelopeCodec.decodeAll($0.payload) }
        #expect(keys(ahead) == [100_000])
        #expect(!c.events[0].events.contains { if case .stampFailed = $0 { true } else { false } })
        try holder.execute("COMMIT")
        try AheadOfStampTests().drain(c)
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[.integer(1201)]])
    }
}
