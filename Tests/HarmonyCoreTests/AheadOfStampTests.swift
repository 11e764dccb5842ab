import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

/// While a bulk import is stamped a batch at a time, a small commit made behind it goes out at once, ahead of its
/// stamp, under exactly the version the stamp gives it later: a single-row commit is visible elsewhere without
/// waiting for the whole import to be stamped.
@Suite("Commits sent ahead of a stamp backlog")
struct AheadOfStampTests {
    func importRows(_ db: Database, _ ids: ClosedRange<Int>) throws { try BulkImportTests().importRows(db, ids) }

    func queued(_ c: TestCluster) throws -> Int64 {
        try c.apps[0].scalar("SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.captureQueue))")?.int64 ?? -1
    }

    /// Takes node 0's publishes, hands them to the log and acknowledges them; returns their records.
    func takePublishes(_ c: TestCluster) throws -> [ChangeRecord] {
        let round = c.takePublishes(0)
        for m in round { c.streams.append(shard: m.shard, messageID: m.messageID, payload: m.payload) }
        try c.nodes[0].publishAcknowledged(tokens: round.map(\.token))
        return try round.flatMap { try EnvelopeCodec.decodeAll($0.payload) }
    }

    /// Lets node 0 stamp and publish everything, firing its timers (bounded).
    func drain(_ c: TestCluster) throws {
        for _ in 0..<1_000 {
            _ = try takePublishes(c)
            if !c.nodes[0].bookkeepingPaused, try queued(c) == 0, c.ports[0].pendingPublishes.isEmpty {
                try c.publish(0)
                return
            }
            for timer in c.clocks[0].advance(byMs: 20) { try c.nodes[0].timerFired(timer) }
        }
        Issue.record("node 0 did not drain its queue")
    }

    func storedVersion(_ c: TestCluster, _ id: Int64) throws -> RowVersion? {
        guard let row = try c.apps[0].query("SELECT hlc, node FROM \(quoteIdentifier(Bookkeeping.versionTable("users"))) WHERE pk_id = ?",
                                            [.integer(id)]).first, let hlc = row[0].int64, let node = row[1].int64 else { return nil }
        return RowVersion(hlc: hlc, node: node)
    }

    /// Two imports in a row (the second after the queue was emptied, so its ids start again at 1). During each one's
    /// stamping an update and a delete of rows still queued, and an insert, go out ahead of the stamp; the stamp gives
    /// them the versions they went out with, and the other node ends with every row.
    @Test func smallCommitsGoOutAheadOfTheStampUnderTheVersionsItGives() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) {
            $0.lockBatchRows = 500
            $0.lockPauseMs = 20
        }
        for round in 0..<2 {
            let base = round * 10_000
            try importRows(c.apps[0], (base + 1)...(base + 3000))
            try c.nodes[0].databaseChanged()  // the first batch, then a pause
            #expect(c.nodes[0].bookkeepingPaused)
            _ = try takePublishes(c)
            let small = Int64(100_000 + round)
            try c.apps[0].execute("UPDATE users SET name = 'changed' WHERE id = ?", [.integer(Int64(base + 2999))])
            try c.apps[0].execute("DELETE FROM users WHERE id = ?", [.integer(Int64(base + 2998))])
            try c.apps[0].execute("INSERT INTO users VALUES (?, 'small', 0)", [.integer(small)])
            try c.nodes[0].databaseChanged()
            let ahead = try takePublishes(c)
            let byKey = Dictionary(ahead.map { ($0.primaryKey.first?.value.int64 ?? 0, $0) }, uniquingKeysWith: { a, _ in a })
            let update = try #require(byKey[Int64(base + 2999)]), delete = try #require(byKey[Int64(base + 2998)])
            let insert = try #require(byKey[small])
            #expect(update.operation == .upsert && update.row.first { $0.name == "name" }?.value == .text("changed"))
            #expect(delete.operation == .delete && insert.operation == .upsert)
            // Still queued: nothing of them is stamped yet, and the import's own rows are not sent ahead.
            #expect(try queued(c) > 2000)
            #expect(try storedVersion(c, small) == nil)
            #expect(byKey.count == 3, "\(byKey.count) rows went ahead")
            #expect(c.events[0].events.contains { if case .sentAheadOfStamp(let v) = $0 { return v.count == 3 } else { return false } })
            try drain(c)
            #expect(try storedVersion(c, small) == insert.version)
            #expect(try storedVersion(c, Int64(base + 2999)) == update.version)
            #expect(try storedVersion(c, Int64(base + 2998)) == delete.version)
        }
        try c.deliver(1)
        let want = try c.rows(0, "SELECT * FROM users ORDER BY id")
        #expect(want.count == 2 * 3000)
        #expect(try c.rows(1, "SELECT * FROM users ORDER BY id") == want)
    }

    /// A look that finds more new commits than the lane takes (the import itself, still being written) sends none of
    /// them ahead and moves past them; the next single-row commit goes ahead alone.
    @Test func aLookThatFindsMoreThanTheLaneTakesOnlyMovesPastThem() throws {
        let c = try TestCluster(nodes: 1, schema: usersSchema) {
            $0.lockBatchRows = 500
            $0.priorityLaneMax = 64
        }
        try importRows(c.apps[0], 1...3000)
        try c.nodes[0].databaseChanged()
        _ = try takePublishes(c)
        try importRows(c.apps[0], 5001...5065)
        try c.nodes[0].databaseChanged()
        let first = try takePublishes(c).compactMap { $0.primaryKey.first?.value.int64 }
        #expect(!first.contains { $0 > 5000 }, "\(first.filter { $0 > 5000 }.count) rows of the second import went ahead")
        try c.apps[0].execute("INSERT INTO users VALUES (100000, 'small', 0)")
        try c.nodes[0].databaseChanged()
        let second = try takePublishes(c).compactMap { $0.primaryKey.first?.value.int64 }
        #expect(second.filter { $0 > 3000 } == [100_000])
    }
}
