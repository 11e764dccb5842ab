import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

@Suite("Publishing, cleanup, options, schema gate and hostile input")
struct PublishAndGateTests {
    /// Rows 1...`rows` of `users` in one statement, one transaction: a bulk load.
    func insertBulk(_ db: Database, rows: Int) throws {
        try db.execute("""
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < \(rows))
            INSERT INTO users SELECT i, 'bulk', i FROM n;
            """)
    }

    @Test func changeIsMarkedPublishedOnlyAfterAcknowledgement() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema) { $0.publishBatchMax = 1 }  // checks one message per change
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1), (2, 'b', 2)")
        try c.nodes[0].databaseChanged()
        #expect(c.ports[0].pendingPublishes.count == 2)
        #expect(try c.pendingChanges(0) == 2)
        // Scanning again while they are in flight sends nothing twice.
        try c.nodes[0].databaseChanged()
        #expect(c.ports[0].pendingPublishes.count == 2)
        try c.nodes[0].publishAcknowledged(tokens: [c.ports[0].pendingPublishes[0].token])
        #expect(try c.pendingChanges(0) == 1)
    }

    /// Node 1's application inserts two rows; node 1 publishes them and the log stores them, not yet acknowledged.
    static func twoRowsSentAndStored(_ c: TestCluster) throws -> [OutgoingMessage] {
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'ann', 1.5), (2, 'bob', 2.5)")
        try c.nodes[0].databaseChanged()
        let sent = c.takePublishes(0)
        for m in sent { c.streams.append(shard: m.shard, messageID: m.messageID, payload: m.payload) }
        return sent
    }

    /// The log acknowledges while an application holds the write lock (a bulk load's transactions back to back): the
    /// core does not sleep in SQLite's busy handler until the application lets go (in a million-row load that held up
    /// the priority lane, and a single-row commit made as it began showed up elsewhere after 3.5-7 s). The rows wait
    /// unmarked, are not sent again meanwhile, and are marked once the lock is free.
    @Test func anAcknowledgementThatFindsTheLockHeldIsMarkedOnceItIsFree() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema)
        let sent = try Self.twoRowsSentAndStored(c)
        #expect(!sent.isEmpty)

        try c.apps[0].execute("BEGIN IMMEDIATE")  // the application's turn, for a while
        try c.nodes[0].publishAcknowledged(tokens: sent.map(\.token))
        #expect(c.nodes[0].publishedUnmarked.count == 2)
        #expect(c.clocks[0].scheduled[.bookkeepingResume] != nil)
        try c.nodes[0].databaseChanged()
        #expect(c.ports[0].pendingPublishes.isEmpty, "rows the log has were sent again")
        try c.apps[0].execute("COMMIT")
        #expect(try c.pendingChanges(0) == 2)

        for _ in 0..<20 {
            for timer in c.clocks[0].advance(byMs: 100) { try c.nodes[0].timerFired(timer) }
        }
        #expect(try c.pendingChanges(0) == 0)
        #expect(c.nodes[0].publishedUnmarked.isEmpty)
        #expect(c.ports[0].pendingPublishes.isEmpty, "rows the log has were sent again")
    }

    /// An application's lock held past the busy timeout while acknowledged rows wait to be marked: the misses are
    /// reported as one failed mark that waits for the lock (not "sent again": nothing is), and the mark that commits
    /// once the lock is free reports that the node writes again, which is what clears `/health`'s reason.
    @Test func aMarkThatMissesTheLockForTheBusyTimeoutIsReportedAndItsRecoveryToo() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema)
        let sent = try Self.twoRowsSentAndStored(c)
        func reported(_ matching: (ReplicationEvent) -> Bool) -> Int { c.events[0].events.filter(matching).count }
        let failedMark = { (e: ReplicationEvent) in if case .markPublishedFailed(2, let error, false) = e { return error.contains("busy") } else { return false } }
        let resumed = { (e: ReplicationEvent) in if case .ownWritesResumed = e { return true } else { return false } }

        try c.apps[0].execute("BEGIN IMMEDIATE")
        try c.nodes[0].publishAcknowledged(tokens: sent.map(\.token))
        let busyTimeoutMs = c.nodes[0].connectionBusyTimeoutMs
        var waitedMs: Int64 = 0
        while waitedMs < busyTimeoutMs + 500 {
            for timer in c.clocks[0].advance(byMs: 250) { try c.nodes[0].timerFired(timer) }
            waitedMs += 250
        }
        #expect(reported(failedMark) == 1, "\(c.events[0].events)")
        #expect(reported(resumed) == 0)
        #expect(c.ports[0].pendingPublishes.isEmpty, "rows the log has were sent again")
        try c.apps[0].execute("COMMIT")

        for timer in c.clocks[0].advance(byMs: 1_000) { try c.nodes[0].timerFired(timer) }
        #expect(try c.pendingChanges(0) == 0)
        #expect(reported(resumed) == 1, "\(c.events[0].events)")
    }

    /// Acknowledged changes are marked published a run of ids at a time: a flush of some shards' messages marks
    /// exactly their changes, whatever gaps the other shards' messages leave between them, and nothing else.
    @Test func anAcknowledgementMarksExactlyItsMessagesChanges() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema) { $0.shards = 4; $0.publishBatchMax = 16 }
        try insertBulk(c.apps[0], rows: 300)
        try c.nodes[0].databaseChanged()
        let sent = c.ports[0].pendingPublishes
        #expect(sent.count > 8 && Set(sent.map(\.shard)) == [1, 2, 3, 4])
        func keys(_ messages: [OutgoingMessage]) -> Set<Int64> {
            Set(messages.flatMap { (try? EnvelopeCodec.decodeAll($0.payload)) ?? [] }.compactMap { $0.primaryKey.first?.value.int64 })
        }
        let acked = sent.filter { $0.shard == 1 || $0.shard == 3 }.enumerated().filter { $0.offset % 3 != 1 }.map(\.element)
        try c.nodes[0].publishAcknowledged(tokens: acked.map(\.token))
        let log = quoteIdentifier(Bookkeeping.changeLog("users")), global = quoteIdentifier(Bookkeeping.globalLog)
        let key = quoteIdentifier(Bookkeeping.valueColumn("id"))
        let published = try c.apps[0].query("""
            SELECT c.\(key) FROM \(global) g JOIN \(log) c ON c.id = g.change_table_id WHERE g.state = 1
            """).compactMap { $0[0].int64 }
        #expect(published.count == keys(acked).count)
        #expect(Set(published) == keys(acked))
        #expect(try c.pendingChanges(0) == 300 - keys(acked).count)
        #expect(ReplicationNode.contiguousRuns([7, 3, 4, 5, 9, 4]) == [3...5, 7...7, 9...9])
    }

    /// `publishPagesPerCall = 1` (the cost model's setting, so simulated time passes between pages): a call reads one
    /// page of a backlog and asks to go on (`publishContinue`); each time it goes on it reads the next, and the last
    /// page asks nothing more. The backlog goes out once, in order, as in the live node's one call.
    @Test func aBacklogReadAPageACallGoesOnWhenAsked() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema) {
            $0.scanMaxChanges = 64
            $0.priorityLaneMax = 0
            $0.publishPagesPerCall = 1
        }
        try insertBulk(c.apps[0], rows: 300)
        try c.nodes[0].databaseChanged()
        func sentKeys() -> [Int64] {
            c.ports[0].pendingPublishes.flatMap { (try? EnvelopeCodec.decodeAll($0.payload)) ?? [] }.compactMap { $0.primaryKey.first?.value.int64 }
        }
        #expect(sentKeys() == Array(1...64))
        var calls = 1
        while c.clocks[0].scheduled[.publishContinue] != nil {
            #expect(c.clocks[0].scheduled[.publishContinue] == c.clocks[0].nowMs, "goes on at once, after what is queued")
            for timer in c.clocks[0].advance(byMs: 0) { try c.nodes[0].timerFired(timer) }
            calls += 1
            #expect(calls <= 5)
        }
        #expect(calls == 5)  // 4 full pages of 64 and the last 44
        #expect(sentKeys() == Array(1...300))
        // The live node's setting: the whole backlog in one call, nothing left to go on with.
        let live = try TestCluster(nodes: 1, schema: usersSchema) { $0.scanMaxChanges = 64; $0.priorityLaneMax = 0 }
        try insertBulk(live.apps[0], rows: 300)
        try live.nodes[0].databaseChanged()
        #expect(live.ports[0].pendingPublishes.flatMap { (try? EnvelopeCodec.decodeAll($0.payload)) ?? [] }.count == 300)
        #expect(live.clocks[0].scheduled[.publishContinue] == nil)
    }

    /// A single-row commit made behind a bulk backlog goes out in the first round of publishes (the priority lane)
    /// instead of after the whole backlog; with the lane off (0) it waits. Either way every change arrives once.
    @Test(arguments: [64, 0])
    func aSmallCommitBehindABacklogGoesOutFirst(lane: Int) throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema) {
            $0.publishInFlightMax = 256
            $0.scanMaxChanges = 64
            $0.priorityLaneMax = lane
        }
        try insertBulk(c.apps[0], rows: 2000)
        try c.apps[0].execute("INSERT INTO users VALUES (100000, 'small commit', 0)")
        try c.nodes[0].databaseChanged()
        let firstRound = c.ports[0].pendingPublishes
        let marker = Array("small commit".utf8)
        let sentAtOnce = firstRound.contains { m in m.payload.indices.contains { i in m.payload[i...].starts(with: marker) } }
        #expect(sentAtOnce == (lane > 0))
        #expect(!firstRound.isEmpty)
        try c.publish(0)
        #expect(try c.pendingChanges(0) == 0)
        let delivered = c.streams.messages(shard: 1).flatMap { (try? EnvelopeCodec.decodeAll($0.payload)) ?? [] }
        #expect(Set(delivered.map { $0.primaryKey.first?.value }).count == 2001)
    }

    /// Small commits made while a bulk import is stamped a batch at a time are stamped all at once behind it, more
    /// of them than the lane takes at a time: the lane walks through that last batch on its next calls instead of
    /// leaving all but the newest 64 to the scan, behind the whole import. (With `lane-takes-newest-only` the last of
    /// them goes out after the import.)
    @Test(arguments: [PlantedBugs(), .laneTakesNewestOnly])
    func smallCommitsMadeWhileAnImportIsStampedGoOutAheadOfIt(bugs: PlantedBugs) throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema) {
            $0.publishInFlightMax = 256
            $0.scanMaxChanges = 64
            $0.lockBatchRows = 500
            $0.plantedBugs = bugs
        }
        try insertBulk(c.apps[0], rows: 3000)
        try c.nodes[0].databaseChanged()  // the first batch, then a pause
        // The application writes while the import is stamped; no publish is acknowledged meanwhile (a slow log).
        // More of them between two looks than the lane takes, so none goes ahead of the stamp (`sendAheadOfStamp`).
        var small: Int64 = 100_000
        for _ in 0..<100 where c.nodes[0].bookkeepingPaused {
            for _ in 0..<70 {
                small += 1
                try c.apps[0].execute("INSERT INTO users VALUES (?, 'small', 0)", [.integer(small)])
            }
            for timer in c.clocks[0].advance(byMs: 20) { try c.nodes[0].timerFired(timer) }
        }
        #expect(try c.rows(0, "SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.captureQueue))") == [[0]])
        let smallCount = Int(small - 100_000)
        #expect(smallCount > 256)
        var bulkSent = 0, smallSent = 0, bulkSentWhenSmallDone: Int?
        for _ in 0..<1_000 {
            let round = c.ports[0].pendingPublishes
            if round.isEmpty { break }
            c.ports[0].pendingPublishes.removeAll()
            for m in round {
                c.streams.append(shard: m.shard, messageID: m.messageID, payload: m.payload)
                for record in try EnvelopeCodec.decodeAll(m.payload) {
                    if (record.primaryKey.first?.value.int64 ?? 0) > 100_000 { smallSent += 1 } else { bulkSent += 1 }
                }
            }
            if smallSent == smallCount && bulkSentWhenSmallDone == nil { bulkSentWhenSmallDone = bulkSent }
            try c.nodes[0].publishAcknowledged(tokens: round.map(\.token))
        }
        #expect(try c.pendingChanges(0) == 0)
        #expect(bulkSent == 3000 && smallSent == smallCount)
        let bulkAhead = try #require(bulkSentWhenSmallDone)
        if bugs.isEmpty {
            #expect(bulkAhead < 1_000, "the small commits went out behind \(bulkAhead) of the import's 3000 rows")
        } else {
            #expect(bulkAhead == 3000)
        }
    }

    /// While the lane walks through an import's last batch and the log acknowledges nothing, a commit made meanwhile
    /// still finds room in the lane: the walk leaves half of it free. With all of it taken, the commit was not even
    /// stamped until the log acknowledged part of the walk.
    @Test func aCommitMadeWhileTheLaneWalksGoesOutAtOnce() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema) {
            $0.publishInFlightMax = 256
            $0.scanMaxChanges = 64
        }
        try insertBulk(c.apps[0], rows: 3000)
        // A walk through the whole backlog, and nothing newer for the lane's own page to take.
        c.nodes[0].laneWalk = (above: 0, below: .max)
        c.nodes[0].laneFloor = .max
        // Looks with nothing acknowledged in between (a slow log): each gives the walk another turn.
        for _ in 0..<3 { try c.nodes[0].databaseChanged() }
        #expect(c.nodes[0].laneWalk != nil, "the walk is under way")
        #expect(c.nodes[0].inFlight.count == 256 - 32, "\(256 - c.nodes[0].inFlight.count) of the window left free")
        c.ports[0].pendingPublishes.removeAll()  // sent, not acknowledged yet
        c.nodes[0].laneFloor = 0
        try c.apps[0].execute("INSERT INTO users VALUES (200000, 'late', 0)")
        try c.nodes[0].databaseChanged()
        let sent = try c.ports[0].pendingPublishes.flatMap { try EnvelopeCodec.decodeAll($0.payload) }
        #expect(sent.contains { $0.primaryKey.first?.value == .integer(200_000) })
    }

    /// An application holding SQLite's write lock past the busy timeout while the sidecar stamps (here in the middle
    /// of a paced bulk import, then for one small commit): the stamp is tried again after `retryDelayMs`, not in a
    /// loop and not by restarting the core; nothing is lost and every write goes out once the lock is released.
    /// (With `stamp-failure-restarts-core` the busy stamp throws out of the core.)
    @Test(arguments: [PlantedBugs(), .stampFailureRestartsCore])
    func aStampThatMeetsAHeldLockIsTriedAgainAfterAPause(bugs: PlantedBugs) throws {
        let c = try TestCluster(nodes: 0, schema: usersSchema)
        c.opener = SQLiteOpener(busyTimeoutMs: 20)
        try c.addNode(schema: usersSchema) {
            $0.lockBatchRows = 500
            $0.plantedBugs = bugs
        }
        try insertBulk(c.apps[0], rows: 2000)
        try c.nodes[0].databaseChanged()  // the first batch, then a pause
        #expect(c.nodes[0].bookkeepingPaused)
        try c.apps[0].execute("BEGIN IMMEDIATE")
        try c.apps[0].execute("INSERT INTO users VALUES (100001, 'held', 0)")
        let resume = try #require(c.clocks[0].scheduled[.bookkeepingResume])
        c.clocks[0].nowMs = resume
        guard bugs.isEmpty else {
            #expect(throws: SQLiteError.self) { try c.nodes[0].timerFired(.bookkeepingResume) }
            try c.apps[0].execute("ROLLBACK")
            return
        }
        try c.nodes[0].timerFired(.bookkeepingResume)
        let failures = { c.events[0].events.filter { if case .stampFailed(1500, let e, 250) = $0 { return e.contains("busy") } else { return false } }.count }
        #expect(failures() == 1)
        #expect(c.clocks[0].scheduled[.bookkeepingResume] == resume + 250)
        // Publishing and deliveries meanwhile do not try again before the retry is due.
        try c.nodes[0].databaseChanged()
        #expect(failures() == 1)
        for timer in c.clocks[0].advance(byMs: 250) { try c.nodes[0].timerFired(timer) }
        #expect(failures() == 2)
        try c.apps[0].execute("COMMIT")
        for _ in 0..<100 where try c.rows(0, "SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.captureQueue))") != [[0]] {
            for timer in c.clocks[0].advance(byMs: 250) { try c.nodes[0].timerFired(timer) }
        }
        try c.publish(0)
        #expect(try c.pendingChanges(0) == 0)
        let delivered = c.streams.messages(shard: 1).flatMap { (try? EnvelopeCodec.decodeAll($0.payload)) ?? [] }
        #expect(Set(delivered.compactMap { $0.primaryKey.first?.value.int64 }).count == 2001)
        #expect(failures() == 2)

        // A small commit whose stamp meets the lock: the same.
        try c.apps[0].execute("INSERT INTO users VALUES (100002, 'small', 0)")
        try c.apps[0].execute("BEGIN IMMEDIATE")
        try c.nodes[0].databaseChanged()
        #expect(c.events[0].events.contains { if case .stampFailed(1, _, 250) = $0 { return true } else { return false } })
        try c.apps[0].execute("COMMIT")
        for timer in c.clocks[0].advance(byMs: 250) { try c.nodes[0].timerFired(timer) }
        try c.publish(0)
        #expect(try c.pendingChanges(0) == 0)

        // The periodic cleanup of published rows meeting the lock: the same; the rows go at the retry.
        let global = quoteIdentifier(Bookkeeping.globalLog)
        #expect(try c.rows(0, "SELECT count(*) > 1 FROM \(global)") == [[1]])
        #expect(!c.nodes[0].bookkeepingPaused)
        try c.apps[0].execute("BEGIN IMMEDIATE")
        try c.nodes[0].timerFired(.cleanup)
        #expect(c.events[0].events.contains { if case .cleanupFailed(let e, 250) = $0 { return e.contains("busy") } else { return false } })
        try c.apps[0].execute("COMMIT")
        for _ in 0..<20 where try c.rows(0, "SELECT count(*) FROM \(global)") != [[1]] {
            for timer in c.clocks[0].advance(byMs: 250) { try c.nodes[0].timerFired(timer) }
        }
        #expect(try c.rows(0, "SELECT count(*) FROM \(global)") == [[1]])  // the newest entry always stays
    }

    @Test func failedPublishIsRetriedWithTheSameMessageID() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1)")
        try c.nodes[0].databaseChanged()
        let first = try #require(c.ports[0].pendingPublishes.first)
        c.ports[0].pendingPublishes.removeAll()
        c.nodes[0].publishFailed(token: first.token)
        let retryAt = try #require(c.clocks[0].scheduled[.publishRetry])
        #expect(retryAt > c.clocks[0].nowMs)
        try c.nodes[0].databaseChanged()
        #expect(c.ports[0].pendingPublishes.isEmpty)  // waits for the backoff
        try c.nodes[0].timerFired(.publishRetry)
        #expect(c.ports[0].pendingPublishes == [first])
        #expect(try c.pendingChanges(0) == 1)
    }

    /// A scan that throws halfway (here: a schema row that cannot be decoded) must leave nothing counted as in
    /// flight that was never handed to the log, and must not move the scan past rows it did not send.
    @Test func publishThatThrowsHalfwayLeavesNothingStuckInFlight() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema + "; CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);")
        let schemaTable = quoteIdentifier(Bookkeeping.schemaTable)
        let good = try #require(try c.apps[0].query("SELECT columns FROM \(schemaTable) WHERE table_name = 'notes'").first?[0])
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1), (2, 'b', 2)")
        try c.apps[0].execute("INSERT INTO notes VALUES (1, 'n')")
        try c.apps[0].execute("UPDATE \(schemaTable) SET columns = x'00' WHERE table_name = 'notes'")
        #expect(throws: (any Error).self) { try c.nodes[0].databaseChanged() }
        #expect(c.ports[0].pendingPublishes.isEmpty)
        try c.apps[0].execute("UPDATE \(schemaTable) SET columns = ? WHERE table_name = 'notes'", [good])
        try c.publish(0)
        #expect(try c.pendingChanges(0) == 0)
        let records = try c.streams.archive.keys.sorted().flatMap { c.streams.messages(shard: $0) }.flatMap { try EnvelopeCodec.decodeAll($0.payload) }
        #expect(records.map(\.table).sorted() == ["notes", "users", "users"])
    }

    /// Two rows of node 1 in the log, one per message, and a receiver (returned) opened with `busyTimeoutMs`.
    static func twoRowsInTheLogForAReceiver(busyTimeoutMs: Int32) throws -> (TestCluster, Int) {
        let c = try TestCluster(nodes: 1, schema: usersSchema) { $0.publishBatchMax = 1 }
        c.opener = SQLiteOpener(busyTimeoutMs: busyTimeoutMs)
        let n = try c.addNode(schema: usersSchema) { $0.publishBatchMax = 1 }
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1)")
        try c.apps[0].execute("INSERT INTO users VALUES (2, 'b', 2)")
        try c.publish(0)
        return (c, n)
    }

    /// An apply transaction that cannot start (the application holds the write lock past the busy timeout)
    /// applies and checkpoints nothing, asks for the whole delivery again, and succeeds once the lock is gone.
    @Test func failedApplyBatchNaksEverythingAndAppliesOnRedelivery() throws {
        let (c, n) = try Self.twoRowsInTheLogForAReceiver(busyTimeoutMs: 20)
        try c.apps[n].execute("BEGIN IMMEDIATE")
        try c.deliver(n)
        #expect(c.nodes[n].checkpoint(1) == 0)
        #expect(c.ports[n].naks[1] == [1, 2])
        #expect(c.events[n].events.contains { if case .applyBatchFailed(1, let e) = $0 { return e.contains("locked") } else { return false } })
        try c.apps[n].execute("COMMIT")
        #expect(try c.rows(n, "SELECT count(*) FROM users") == [[0]])
        try c.deliver(n)
        #expect(c.nodes[n].checkpoint(1) == 2)
        #expect(try c.rows(n, "SELECT id FROM users ORDER BY id") == [[1], [2]])
    }

    /// An apply that finds the application holding the write lock gives up after `lock_pause_ms`, not after the busy
    /// timeout, and its delivery goes back to the log: on a node whose application loads in back-to-back transactions,
    /// one message arriving (its own, come back from the log) kept the node's queue in SQLite's busy handler, and a
    /// single-row commit made meanwhile waited 4.7 s to be sent. The misses are reported once they have lasted a busy
    /// timeout; once the lock is free the delivery applies.
    @Test func anApplyThatFindsTheLockHeldGoesBackToTheLogWithoutWaitingOutTheBusyTimeout() throws {
        let (c, n) = try Self.twoRowsInTheLogForAReceiver(busyTimeoutMs: 10_000)
        func failures() -> [String] {
            c.events[n].events.compactMap { if case .applyBatchFailed(1, let error) = $0 { error } else { nil } }
        }

        try c.apps[n].execute("BEGIN IMMEDIATE")  // node 2's application, for longer than the busy timeout
        let started = ContinuousClock.now
        try c.deliver(n)
        let waited = ContinuousClock.now - started
        #expect(waited < .seconds(5), "an apply waited \(waited) for a lock held by the application (busy timeout 10 s)")
        #expect(c.nodes[n].checkpoint(1) == 0)
        #expect(c.ports[n].naks[1] == [1, 2])
        #expect(failures().isEmpty, "a brief miss is the application's turn, not a failure")
        #expect(c.nodes[n].lockMissedSinceMs != nil, "the lane ahead of the stamp looks while the lock is missed")

        // Redelivered every 250 ms for 10.5 s: one failed try reported, as one plain wait of the busy timeout was.
        for _ in 0..<42 {
            _ = c.clocks[n].advance(byMs: 250)
            try c.deliver(n)
        }
        #expect(failures().count == 1, "\(failures())")
        #expect(failures().allSatisfy { $0.contains("database busy") }, "\(failures())")
        #expect(c.nodes[n].checkpoint(1) == 0)

        try c.apps[n].execute("COMMIT")
        try c.deliver(n)
        #expect(c.nodes[n].checkpoint(1) == 2)
        #expect(try c.rows(n, "SELECT id FROM users ORDER BY id") == [[1], [2]])
        #expect(c.nodes[n].applyLockMissedSinceMs.isEmpty)
    }

    /// The periodic cleanup of published rows, too, waits for an application's lock only `lock_pause_ms`; the rows
    /// go at the next try, after a pause.
    @Test func aCleanupThatFindsTheLockHeldWaitsBriefly() throws {
        let c = try TestCluster(nodes: 0, schema: usersSchema)
        c.opener = SQLiteOpener(busyTimeoutMs: 10_000)
        try c.addNode(schema: usersSchema)
        for k in 1...3 { try c.apps[0].execute("INSERT INTO users VALUES (?, 'a', 1)", [.integer(Int64(k))]) }
        try c.publish(0)
        let global = quoteIdentifier(Bookkeeping.globalLog)
        #expect(try c.rows(0, "SELECT count(*) FROM \(global)") == [[3]])
        try c.apps[0].execute("BEGIN IMMEDIATE")
        let started = ContinuousClock.now
        try c.nodes[0].timerFired(.cleanup)
        let waited = ContinuousClock.now - started
        #expect(waited < .seconds(5), "a cleanup waited \(waited) for a lock held by the application (busy timeout 10 s)")
        #expect(!c.events[0].events.contains { if case .cleanupFailed = $0 { true } else { false } })
        try c.apps[0].execute("COMMIT")
        for timer in c.clocks[0].advance(byMs: 100) { try c.nodes[0].timerFired(timer) }
        #expect(try c.rows(0, "SELECT count(*) FROM \(global)") == [[1]])  // the newest entry always stays
    }

    /// The log acknowledged a change but the database was locked when marking it published: it is sent again
    /// after the backoff (the log drops the copy by its id) and marked then; nothing is lost, the core keeps running.
    @Test func acknowledgedChangeIsSentAgainWhenMarkingItFails() throws {
        let c = try TestCluster(nodes: 0, schema: usersSchema)
        c.opener = SQLiteOpener(busyTimeoutMs: 20)
        try c.addNode(schema: usersSchema)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1)")
        try c.nodes[0].databaseChanged()
        let m = c.ports[0].pendingPublishes.removeFirst()
        #expect(c.streams.append(shard: m.shard, messageID: m.messageID, payload: m.payload))
        try c.apps[0].execute("BEGIN IMMEDIATE")
        try c.nodes[0].publishAcknowledged(tokens: [m.token])
        try c.apps[0].execute("COMMIT")
        #expect(c.events[0].events.contains { if case .markPublishedFailed(1, let e, true) = $0 { return e.contains("busy") } else { return false } })
        #expect(!c.events[0].events.contains { if case .ownWritesResumed = $0 { return true } else { return false } })
        #expect(try c.pendingChanges(0) == 1)
        #expect(c.clocks[0].scheduled[.publishRetry] != nil)
        try c.nodes[0].timerFired(.publishRetry)
        #expect(c.ports[0].pendingPublishes.map(\.messageID) == [m.messageID])
        try c.publish(0)
        #expect(try c.pendingChanges(0) == 0)
        #expect(c.streams.messages(shard: m.shard).count == 1)
        // The mark that finally committed says the node writes again (`/health` stops reporting the failure).
        #expect(c.events[0].events.contains { if case .ownWritesResumed = $0 { return true } else { return false } })
    }

    /// A publish that landed but whose ack was lost is sent again; the message id lets the log drop the copy.
    @Test func lostAckDoesNotDuplicateInTheLog() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1)")
        try c.nodes[0].databaseChanged()
        let m = c.ports[0].pendingPublishes.removeFirst()
        #expect(c.streams.append(shard: m.shard, messageID: m.messageID, payload: m.payload))
        c.nodes[0].publishFailed(token: m.token)
        try c.nodes[0].timerFired(.publishRetry)
        try c.publish(0)
        #expect(c.streams.messages(shard: m.shard).count == 1)
        #expect(try c.pendingChanges(0) == 0)
    }

    @Test func cleanupDeletesOnlyPublishedRowsAndNeverReusesIDs() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema) { $0.publishBatchMax = 1 }  // checks one message per change
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1), (2, 'b', 2), (3, 'c', 3)")
        try c.publish(0)
        try c.apps[0].execute("INSERT INTO users VALUES (4, 'd', 4)")  // pending
        try stamp(c.apps[0])  // logged, as the sidecar's next look does, but not published
        try c.nodes[0].timerFired(.cleanup)
        #expect(try c.changeLogCount(0) == 1)
        #expect(try c.pendingChanges(0) == 1)
        #expect(try count(c.apps[0], Bookkeeping.changeLog("users")) == 1)
        try c.publish(0)
        try c.nodes[0].timerFired(.cleanup)
        // The newest row stays so the next change gets a fresh id above the scan cursor.
        #expect(try c.changeLogCount(0) == 1)
        try c.apps[0].execute("INSERT INTO users VALUES (5, 'e', 5)")
        try c.publish(0)
        #expect(try c.pendingChanges(0) == 0)
        #expect(c.streams.messages(shard: 1).count == 5)
        #expect(c.clocks[0].scheduled[.cleanup] != nil)
    }

    @Test func publishFalseReceivesButDoesNotSend() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) { if $0.nodeID == 2 { $0.publish = false } }
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'from-1', 1)")
        try c.apps[1].execute("INSERT INTO users VALUES (2, 'from-2', 2)")
        try c.settle()
        #expect(try c.rows(1, "SELECT id FROM users ORDER BY id") == [[1], [2]])
        #expect(try c.rows(0, "SELECT id FROM users ORDER BY id") == [[1]])
        #expect(c.streams.archive.values.joined().count == 1)
        try c.nodes[1].timerFired(.cleanup)
        #expect(try c.changeLogCount(1) <= 1)
    }

    @Test func replicateFalseSendsButDoesNotApply() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) { if $0.nodeID == 2 { $0.replicate = false } }
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'from-1', 1)")
        try c.apps[1].execute("INSERT INTO users VALUES (2, 'from-2', 2)")
        try c.settle()
        #expect(try c.rows(0, "SELECT id FROM users ORDER BY id") == [[1], [2]])
        #expect(try c.rows(1, "SELECT id FROM users ORDER BY id") == [[2]])
        #expect(c.ports[1].deliverFrom.isEmpty)  // never subscribed
    }

    /// A message from a node with another schema is not applied, acked or checkpointed; it is nak'd
    /// with a delay, and the shard resumes by itself once the local schema catches up.
    @Test func schemaMismatchPausesThenResumesAfterLocalAlter() throws {
        // The HarmonyLite procedure without DDL replication (replicate_ddl = false): each node runs the migration.
        let c = try TestCluster(nodes: 2, schema: usersSchema) { $0.replicateDDL = false }
        try c.apps[0].execute("ALTER TABLE users ADD COLUMN email TEXT")
        try c.nodes[0].databaseChanged()  // the sidecar notices the DDL and rebuilds capture
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1, 'a@x')")
        try c.publish(0)
        // The message carries node 0's new schema hash.
        try c.deliver(1)
        #expect(c.nodes[1].pausedShards[1] == 1)
        #expect(c.nodes[1].checkpoint(1) == 0)
        #expect(c.ports[1].acks[1] == nil)
        #expect(c.ports[1].naks[1] == [1])
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[0]])
        #expect(c.clocks[1].scheduled[.schemaCheck] != nil)
        try c.apps[1].execute("ALTER TABLE users ADD COLUMN email TEXT")
        try c.nodes[1].timerFired(.schemaCheck)
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT * FROM users") == [[1, "a", 1.0, "a@x"]])
        #expect(c.nodes[1].pausedShards.isEmpty)
        #expect(c.events[1].events.contains(.schemaResumed(shard: 1)))
    }

    /// During a rolling upgrade a node accepts messages written under its previous schema.
    @Test func previousSchemaHashIsAccepted() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'old shape', 1)")
        try c.publish(0)
        try c.apps[1].execute("ALTER TABLE users ADD COLUMN email TEXT DEFAULT 'none'")
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT * FROM users") == [[1, "old shape", 1.0, "none"]])
    }

    @Test func malformedMessagesAreParkedAndReplicationContinues() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        c.streams.appendRaw(shard: 1, payload: [0x01, 0xff, 0x00])
        c.streams.appendRaw(shard: 1, payload: [])
        c.streams.appendRaw(shard: 1, payload: [0x02, 1, 2, 3])
        c.streams.appendRaw(shard: 1, payload: [0x01] + CBOREncoder.encode(.map([(.unsigned(0), .unsigned(1))])))
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'after garbage', 1)")
        try c.settle()
        #expect(try c.rows(1, "SELECT name FROM users") == [["after garbage"]])
        #expect(try count(c.apps[1], Bookkeeping.parkedTable) == 4)
        #expect(c.nodes[1].checkpoint(1) == 5)
    }

    @Test func messageThatViolatesALocalConstraintIsParkedNotLost() throws {
        let schema = "CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT UNIQUE);"
        let c = try TestCluster(nodes: 2, schema: schema)
        try c.apps[0].execute("INSERT INTO accounts VALUES (1, 'same@x')")
        try c.apps[1].execute("INSERT INTO accounts VALUES (2, 'same@x')")
        try c.settle()
        let parked = try c.rows(1, "SELECT error, payload IS NOT NULL FROM \(quoteIdentifier(Bookkeeping.parkedTable))")
        #expect(parked.count == 1)
        #expect(parked.first?[0].string?.contains("UNIQUE") == true)
        #expect(c.nodes[1].checkpoint(1) == 2)
    }

    /// Rows of a batch apply without a savepoint each; when one fails a local constraint, the message is undone and
    /// applied again row by row, so the other rows land, only the failing row is parked (alone), and each applied
    /// row is reported once.
    @Test func aBatchWithOneRowFailingAConstraintAppliesTheRest() throws {
        let schema = "CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT UNIQUE);"
        let c = try TestCluster(nodes: 2, schema: schema) { $0.shards = 1 }
        try c.apps[1].execute("INSERT INTO accounts VALUES (2, 'taken@x')")
        try c.apps[0].transaction {
            for (id, email) in [(10, "a@x"), (11, "taken@x"), (12, "c@x")] {
                try c.apps[0].execute("INSERT INTO accounts VALUES (?, ?)", [.integer(Int64(id)), .text(email)])
            }
        }
        try c.publish(0)
        #expect(c.streams.messages(shard: 1).count == 1)  // one batch of three
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT id, email FROM accounts ORDER BY id") == [[2, "taken@x"], [10, "a@x"], [12, "c@x"]])
        let parked = try ReplicationNode.parkedMessages(c.apps[1])
        #expect(parked.map(\.key) == ["id=11"])
        #expect(parked.first?.reason.contains("UNIQUE") == true)
        #expect(c.nodes[1].checkpoint(1) == 1)
        // Applied once each: the versions of rows 10 and 12 are node 1's, and nothing of row 11 is.
        #expect(try c.rows(1, "SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.versionTable("accounts"))) WHERE node = 1") == [[2]])
    }

    /// An operator can list parked messages, apply them again once the cause is gone (checkpoints stay), and
    /// discard what cannot be saved; a retry that still fails keeps the message with the new reason.
    @Test func parkedMessagesCanBeListedRetriedAndDiscarded() throws {
        let schema = "CREATE TABLE accounts (id INTEGER PRIMARY KEY, email TEXT UNIQUE);"
        let c = try TestCluster(nodes: 2, schema: schema)
        try c.apps[1].execute("INSERT INTO accounts VALUES (2, 'a@x'), (3, 'b@x')")  // not published yet
        try c.apps[0].execute("INSERT INTO accounts VALUES (10, 'a@x')")
        try c.apps[0].execute("INSERT INTO accounts VALUES (11, 'b@x')")
        try c.publish(0)
        try c.deliver(1)
        let listed = try ReplicationNode.parkedMessages(c.apps[1])
        #expect(listed.count == 2)
        #expect(listed.allSatisfy { $0.table == "accounts" && $0.reason.contains("UNIQUE") })
        #expect(listed.map(\.key) == ["id=10", "id=11"])
        let checkpoint = c.nodes[1].checkpoint(1)
        // The operator frees 'a@x' on node 2 (not replicated further: a local fix), then retries everything.
        try c.apps[1].execute("UPDATE accounts SET email = 'a-old@x' WHERE id = 2")
        let results = try c.nodes[1].retryParked()
        #expect(results.map(\.id) == listed.map(\.id))
        #expect(results[0].outcome == .applied)
        guard case .stillFails(let reason) = results[1].outcome else { Issue.record("\(results)"); return }
        #expect(reason.contains("UNIQUE"))
        #expect(try c.rows(1, "SELECT id FROM accounts WHERE email = 'a@x'") == [[10]])
        #expect(try ReplicationNode.parkedMessages(c.apps[1]).map(\.id) == [listed[1].id])
        #expect(c.nodes[1].checkpoint(1) == checkpoint)
        #expect(try ReplicationNode.discardParked(c.apps[1], ids: [listed[1].id, 999]) == 1)
        #expect(try ReplicationNode.parkedMessages(c.apps[1]).isEmpty)
    }

    @Test func messageWithWrongKeyColumnsIsParked() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema)
        let hash = c.nodes[0].captured["users"]!.schema.hash
        let bad = ChangeRecord(originNode: 9, table: "users", operation: .upsert, primaryKey: [.init("name", "x")],
                               row: [.init("id", 1), .init("name", "x")], version: RowVersion(hlc: 1 << 40, node: 9), schemaHash: hash)
        c.streams.appendRaw(shard: 1, payload: try EnvelopeCodec.encode(bad))
        try c.deliver(0)
        #expect(try count(c.apps[0], Bookkeeping.parkedTable) == 1)
        #expect(try c.rows(0, "SELECT count(*) FROM users") == [[0]])
    }

    /// A row in exactly the local shape (the fast path) whose key value disagrees with its row value is parked,
    /// as is the same disagreement in another column order (the general path).
    @Test func rowWhoseKeyDisagreesWithItsKeyColumnIsParked() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema)
        let table = c.nodes[0].captured["users"]!.schema
        let row = table.columns.map { name -> ChangeRecord.Column in
            .init(name, name == "id" ? .integer(2) : name == "name" ? .text("x") : .real(1))
        }
        for columns in [row, row.reversed()] {
            let bad = ChangeRecord(originNode: 9, table: "users", operation: .upsert, primaryKey: [.init("id", 1)],
                                   row: Array(columns), version: RowVersion(hlc: 1 << 40, node: 9), schemaHash: table.hash)
            c.streams.appendRaw(shard: 1, payload: try EnvelopeCodec.encode(bad))
        }
        try c.deliver(0)
        let reasons = try c.rows(0, "SELECT error FROM \(quoteIdentifier(Bookkeeping.parkedTable)) ORDER BY seq")
        #expect(reasons.count == 2)
        #expect(reasons.allSatisfy { $0[0].string?.contains("disagrees between key and row") == true })
        #expect(try c.rows(0, "SELECT count(*) FROM users") == [[0]])
    }
}

@Suite("Run-time DDL")
struct RuntimeDDLTests {
    /// A virtual table (an FTS index made through the API or psql) is neither captured nor sent as DDL: said once,
    /// with what to do, and replication of the other tables goes on.
    @Test func aVirtualTableIsSaidToStayOnItsNode() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        try c.apps[0].execute("CREATE VIRTUAL TABLE notes USING fts5(body); INSERT INTO notes VALUES ('only here')")
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'still replicated', 1)")
        try c.settle()
        try c.apps[0].execute("CREATE TABLE later (id INTEGER PRIMARY KEY)")
        try c.settle()
        #expect(try c.rows(1, "SELECT name FROM users") == [["still replicated"]])
        #expect(try c.rows(1, "SELECT count(*) FROM sqlite_schema WHERE name LIKE 'notes%'") == [[0]])
        let said = c.events[0].events.filter { if case .tableSkipped = $0 { true } else { false } }
        #expect(said == [.tableSkipped(table: "notes", reason: ReplicationNode.virtualReason)], "\(said)")
    }

    /// Creating a keyless table while the node runs is reported, and replication of other tables goes on; so it is
    /// after a restart of every node (the CREATE replicated), where it used to stop each one at start.
    @Test func keylessTableCreatedAtRunTimeIsSkippedNotFatal() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        try c.apps[0].execute("CREATE TABLE audit (at TEXT, what TEXT)")
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'still replicated', 1)")
        try c.settle()
        #expect(try c.rows(1, "SELECT name FROM users") == [["still replicated"]])
        #expect(try c.rows(1, "SELECT name FROM sqlite_schema WHERE name = 'audit'") == [["audit"]])
        #expect(c.events[0].events.contains(.tableSkipped(table: "audit", reason: ReplicationNode.keylessReason)))
        // Said once, not again at every later schema change (the warning came several times a second).
        try c.apps[0].execute("CREATE TABLE later (id INTEGER PRIMARY KEY)")
        try c.apps[0].execute("CREATE INDEX later_id ON later(id)")
        try c.settle()
        #expect(c.events[0].events.filter { $0 == .tableSkipped(table: "audit", reason: ReplicationNode.keylessReason) }.count == 1)
        for i in 0...1 {
            try c.restart(i)
        }
        #expect(c.events[1].events.contains(.tableSkipped(table: "audit", reason: ReplicationNode.keylessReason)))
        try c.apps[1].execute("INSERT INTO users VALUES (2, 'after the restart', 1)")
        try c.settle()
        #expect(try c.rows(0, "SELECT name FROM users ORDER BY id") == [["still replicated"], ["after the restart"]])
    }

    /// Rows present before the first install are captured, with versions below any real write's: they fill keys
    /// the cluster lacks and lose every conflict.
    @Test func firstInstallCapturesExistingRowsBelowEveryRealWrite() throws {
        let (_, db) = try temporaryDatabase(usersSchema + "INSERT INTO users VALUES (1, 'seed', 0), (2, 'seed', 0);")
        try ChangeCapture.install(db, nodeID: 1, filter: TableFilter())
        #expect(try count(db, Bookkeeping.globalLog) == 2)
        try db.execute("INSERT INTO users VALUES (3, 'real', 0)")
        try stamp(db)
        let versions = try db.query("SELECT hlc FROM \(quoteIdentifier(Bookkeeping.versionTable("users"))) ORDER BY pk_id").compactMap { $0[0].int64 }
        #expect(versions.count == 3 && versions[0] < versions[1])
        #expect(versions[1] < 1 << 48 && versions[2] > 1 << 56)
    }

    /// A table created with a key while running is captured without a restart.
    @Test func tableCreatedAtRunTimeIsCaptured() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        for app in c.apps { try app.execute("CREATE TABLE tags (name TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID") }
        try c.nodes[1].databaseChanged()
        // Written before node 0's sidecar noticed the new table: backfilled when capture is installed.
        try c.apps[0].execute("INSERT INTO tags VALUES ('early-b', 2), ('early-a', 1)")
        try c.nodes[0].databaseChanged()
        try c.apps[0].execute("INSERT INTO tags VALUES ('late', 3)")
        try c.settle()
        #expect(try c.rows(1, "SELECT name, n FROM tags ORDER BY name") == [["early-a", 1], ["early-b", 2], ["late", 3]])
        #expect(try c.rows(0, "SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.versionTable("tags")))") == [[3]])
    }
}

@Suite("Rolling schema upgrade")
struct RollingUpgradeTests {
    /// Found by harmonysim (schema-skew, seed 3): a full-row write from a node still on the previous schema
    /// means "the new column at its default", which is what the writer's own row reads after it upgrades.
    @Test func previousSchemaUpsertResetsNewColumnToItsDefault() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        try c.apps[1].execute("ALTER TABLE users ADD COLUMN email TEXT DEFAULT 'none'")
        try c.nodes[1].databaseChanged()
        try c.apps[1].execute("INSERT INTO users VALUES (1, 'new shape', 1, 'set@x')")
        // Node 0's write is certainly newer: its clock runs a minute ahead.
        try c.apps[0].execute("""
            UPDATE \(quoteIdentifier(Bookkeeping.clockTable))
            SET hlc = (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) + 60000) << 16
            """)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'old shape, newer', 2)")  // node 0 has not upgraded
        try c.publish(0)
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT * FROM users") == [[1, "old shape, newer", 2.0, "none"]])
    }
}

@Suite("ALTER TABLE while the sidecar is not looking")
struct AlterWindowTests {
    /// Found by harmonysim (swarm, seed 94): writes between ALTER TABLE ADD COLUMN and the sidecar's
    /// re-install go through the old triggers; the re-install captures those rows again with the new column.
    @Test func newColumnWrittenBeforeReinstallStillReplicates() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        try c.apps[1].execute("ALTER TABLE users ADD COLUMN email TEXT")
        try c.nodes[1].databaseChanged()
        try c.apps[0].execute("ALTER TABLE users ADD COLUMN email TEXT")
        // Node 0's sidecar has not noticed the ALTER yet: this write is captured without `email`.
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1, 'a@x'), (2, 'b', 2, NULL)")
        try c.settle()
        #expect(try c.rows(1, "SELECT * FROM users ORDER BY id") == [[1, "a", 1.0, "a@x"], [2, "b", 2.0, nil]])
        #expect(try c.rows(0, "SELECT * FROM users ORDER BY id") == [[1, "a", 1.0, "a@x"], [2, "b", 2.0, nil]])
    }
}

@Suite("Batched publishing")
struct BatchedPublishTests {
    /// Many changes of one shard travel in few messages; acks and failures cover every change in a message.
    @Test func batchesCarryManyChangesAndAckThemAll() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) { $0.publishBatchMax = 50 }
        try c.apps[0].transaction { for k in 1...120 { try c.apps[0].execute("INSERT INTO users VALUES (?, 'x', 0)", [.integer(Int64(k))]) } }
        try c.nodes[0].databaseChanged()
        #expect(c.ports[0].pendingPublishes.count == 3)  // 50 + 50 + 20
        let first = c.ports[0].pendingPublishes[0]
        #expect(try EnvelopeCodec.decodeAll(first.payload).count == 50)
        c.nodes[0].publishFailed(token: first.token)           // the whole first batch goes back to pending
        for m in c.ports[0].pendingPublishes.dropFirst() { c.streams.append(shard: m.shard, messageID: m.messageID, payload: m.payload) }
        try c.nodes[0].publishAcknowledged(tokens: c.ports[0].pendingPublishes.dropFirst().map(\.token))
        #expect(try c.pendingChanges(0) == 50)
        c.ports[0].pendingPublishes.removeAll()
        try c.nodes[0].timerFired(.publishRetry)
        #expect(c.ports[0].pendingPublishes.count == 1)
        try c.settle()
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[120]])
    }

    /// A batch holding a change of an unknown schema waits as a whole: nothing of it applies until the schema matches.
    @Test func batchWithAMismatchedRecordIsHeldWhole() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema + "CREATE TABLE tags (name TEXT PRIMARY KEY);") { $0.shards = 1; $0.replicateDDL = false }
        try c.apps[0].execute("ALTER TABLE tags ADD COLUMN color TEXT")
        try c.nodes[0].databaseChanged()
        try c.apps[0].transaction {
            try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1)", [])
            try c.apps[0].execute("INSERT INTO tags VALUES ('t', 'red')", [])
        }
        try c.publish(0)
        #expect(c.streams.messages(shard: 1).count == 1)
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[0]])  // held with its batch
        try c.apps[1].execute("ALTER TABLE tags ADD COLUMN color TEXT")
        try c.nodes[1].timerFired(.schemaCheck)
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT count(*) FROM users") == [[1]])
        #expect(try c.rows(1, "SELECT * FROM tags") == [["t", "red"]])
    }
}

@Suite("A table dropped on one node")
struct DroppedTableTests {
    /// DROP TABLE on one node while another keeps writing to it: the dropping node discards (and counts) those
    /// changes instead of pausing the whole shard forever; other tables on the shard keep replicating.
    /// (Without DDL replication, where the drop stays on one node; DDLTests covers it replicated.)
    @Test func changesToATableDroppedHereAreDiscardedAndTheShardGoesOn() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema + "CREATE TABLE tags (name TEXT PRIMARY KEY);") { $0.replicateDDL = false }
        try c.apps[0].execute("INSERT INTO tags VALUES ('a')")
        try c.settle()
        try c.apps[1].execute("DROP TABLE tags")
        try c.nodes[1].databaseChanged()
        try c.apps[0].execute("INSERT INTO tags VALUES ('b')")
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'after the drop', 1)")
        try c.settle()
        #expect(try c.rows(1, "SELECT name FROM users") == [["after the drop"]])
        #expect(c.nodes[1].pausedShards.isEmpty)
        #expect(c.events[1].events.contains { if case .discarded(_, _, "tags") = $0 { return true } else { return false } })
        // A table that was never here is still waited for (it may be created by a migration that has not run yet).
        try c.apps[0].execute("CREATE TABLE later (id INTEGER PRIMARY KEY); INSERT INTO later VALUES (1);")
        try c.settle()
        #expect(!c.nodes[1].pausedShards.isEmpty)
    }
}

@Suite("ALTER TABLE ... RENAME TO")
struct RenameTableTests {
    /// A table renamed on one node keeps replicating: its capture moves with it (one set of triggers, its
    /// bookkeeping under the new name, its versions and tombstones kept), and rows the other nodes still write
    /// under the old name apply to it instead of being discarded as if it had been dropped.
    @Test func aRenamedTableKeepsItsCaptureAndTakesRowsForItsOldName() throws {
        // Without DDL replication: node 0 keeps the old name (with it, the rename reaches node 0 too; see DDLTests).
        let c = try TestCluster(nodes: 2, schema: usersSchema) { $0.replicateDDL = false }
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1), (2, 'b', 2)")
        try c.settle()
        try c.apps[1].execute("DELETE FROM users WHERE id = 2")
        try c.settle()
        try c.apps[1].execute("ALTER TABLE users RENAME TO members")
        try c.nodes[1].databaseChanged()
        let triggers = try c.rows(1, "SELECT name FROM sqlite_schema WHERE type = 'trigger' ORDER BY name").compactMap { $0[0].string }
        #expect(triggers == ["insert", "update", "update_key", "delete"].map { Bookkeeping.trigger("members", $0) }.sorted())
        #expect(try c.rows(1, "SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.versionTable("members")))") == [[2]])
        // Node 0 still calls it users; node 1 writes to members.
        try c.apps[0].execute("INSERT INTO users VALUES (3, 'from the old name', 3)")
        try c.apps[1].execute("INSERT INTO members VALUES (4, 'under the new name', 4)")
        try c.settle()
        #expect(try c.rows(1, "SELECT id FROM members ORDER BY id") == [[1], [3], [4]])
        #expect(c.events[1].events.allSatisfy { if case .discarded = $0 { return false } else { return true } })
    }
}

@Suite("A key column renamed with changes pending")
struct RenamedKeyTests {
    /// A change logged before `RENAME COLUMN id TO user_id` is still sent, under the key's new name.
    @Test func pendingChangeIsSentAfterItsKeyColumnWasRenamed() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema) { $0.replicateDDL = false }  // no DDL message ahead of it
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1)")
        try c.apps[0].execute("ALTER TABLE users RENAME COLUMN id TO user_id")
        try c.nodes[0].databaseChanged()
        let sent = try c.ports[0].pendingPublishes.flatMap { try EnvelopeCodec.decodeAll($0.payload) }.filter { $0.table == "users" }
        #expect(sent.map(\.primaryKey) == [[ChangeRecord.Column("user_id", .integer(1))]])
    }
}

@Suite("A stream made again")
struct StreamStartedOverTests {
    /// NATS lost its store (or the stream was deleted) and both nodes restart: the streams are empty, their sequences
    /// start over below each node's checkpoint. Each node reads them from their start and sends its rows again, so the
    /// rows written since reach the other node, and so do those the old stream held
    /// (`stream-start-over-unnoticed`: each node took the new stream's first messages for ones it had applied, and
    /// kept only its own writes).
    @Test(arguments: [PlantedBugs(), .streamStartOverUnnoticed])
    func nodesReadAStreamMadeAgainFromItsStart(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) { $0.plantedBugs = bug }
        for id in 1...5 { try c.apps[id % 2].execute("INSERT INTO users VALUES (\(id), 'before', 1)") }
        try c.settle()
        #expect(c.nodes[0].checkpoint(1) >= 2)
        c.streams.deleteStream(shard: 1)
        for i in 0...1 {
            try c.restart(i)
            // The cleanup timer asks again; the second answer below the checkpoint decides.
            try c.nodes[i].timerFired(.cleanup)
            c.answerStreamStates(i)
        }
        try c.apps[0].execute("INSERT INTO users VALUES (101, 'after, node 1', 1)")
        try c.apps[1].execute("INSERT INTO users VALUES (102, 'after, node 2', 1)")
        try c.settle()
        try c.settle()
        let all: [[DatabaseValue]] = [[1], [2], [3], [4], [5], [101], [102]]
        for i in 0...1 { #expect(try (c.rows(i, "SELECT id FROM users ORDER BY id") == all) == bug.isEmpty) }
        #expect(c.events[0].events.contains { if case .streamStartedOver = $0 { true } else { false } } == bug.isEmpty)
    }
    /// The log found the stream gone and made it again itself (the runtime does, on "stream not found"): the node
    /// reads it from its start at once, even when other nodes' writes already took it past the node's checkpoint,
    /// which a plain answer cannot tell from the old stream (the node then skips those writes).
    @Test(arguments: [true, false])
    func aStreamTheLogMadeAgainIsReadFromItsStartAtOnce(madeAgain: Bool) throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        for id in 1...3 {
            try c.apps[0].execute("INSERT INTO users VALUES (\(id), 'before', 1)")
            try c.settle()
        }
        let before = c.nodes[1].checkpoint(1)
        c.streams.deleteStream(shard: 1)
        for id in 101...Int(101 + before + 2) {
            try c.apps[0].execute("INSERT INTO users VALUES (\(id), 'after', 1)")
            try c.publish(0)
        }
        #expect(c.streams.lastSequence(shard: 1) > before)
        c.nodes[1].streamStateArrived(shard: 1, StreamState(firstSequence: 1, lastSequence: c.streams.lastSequence(shard: 1), madeAgain: madeAgain))
        try c.settle()
        try c.settle()
        let after = try c.rows(0, "SELECT count(*) FROM users WHERE id > 100")
        #expect((try c.rows(1, "SELECT count(*) FROM users WHERE id > 100") == after) == madeAgain)
    }

    /// A short stream made again that already holds another node's writes when this node finds it started over:
    /// this node's resend waits until it has read them, as after a hole repair. Sent at once
    /// (`start-over-resend-not-held`), it pushed them off the stream unread, and the node was behind its start.
    @Test(arguments: [PlantedBugs(), .startOverResendNotHeld])
    func theResendAfterAStreamStartedOverWaitsUntilTheNodeHasReadIt(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema, maxEntries: 8) { $0.plantedBugs = bug }
        for id in 1...10 {
            // Large rows, so the resend takes several messages (random bytes: compression does not shrink them).
            try c.apps[0].execute("INSERT INTO users VALUES (\(id), randomblob(300000), 1)")
            try c.settle()
        }
        let before = c.nodes[0].checkpoint(1)
        c.streams.deleteStream(shard: 1)
        for id in 101...106 { try c.apps[1].execute("INSERT INTO users VALUES (\(id), 'after, node 2', 1)"); try c.publish(1) }
        #expect(c.streams.lastSequence(shard: 1) < before)
        for _ in 0..<2 {
            try c.nodes[0].timerFired(.cleanup)
            c.answerStreamStates(0)
        }
        #expect(c.events[0].events.contains { if case .streamStartedOver = $0 { true } else { false } })
        try c.publish(0)
        try c.deliver(0)
        #expect(c.nodes[0].restoreNeeded == !bug.isEmpty, "behind the stream's start")
        #expect(try (c.rows(0, "SELECT count(*) FROM users WHERE id > 100") == [[6]]) == bug.isEmpty)
    }
}
