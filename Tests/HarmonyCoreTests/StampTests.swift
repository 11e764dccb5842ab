import Foundation
import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

/// The triggers only queue a write; the sidecar stamps its version later. These pin down that the version is still
/// the one the write would have got when it committed, and that a queued write takes part in last-writer-wins.
@Suite("Versions stamped on queued local writes")
struct StampTests {
    func version(_ db: Database, _ id: Int64) throws -> RowVersion? {
        try db.query("SELECT hlc, node FROM \(quoteIdentifier(Bookkeeping.versionTable("users"))) WHERE pk_id = ?", [.integer(id)]).first
            .map { RowVersion(hlc: $0[0].int64!, node: $0[1].int64!) }
    }

    func nowMs() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    /// A write stamped long after it committed keeps its commit time: a node whose sidecar was away does not make its
    /// old writes newer than what others wrote meanwhile.
    @Test func aWriteStampedLaterKeepsItsCommitTime() throws {
        let (_, db) = try temporaryDatabase(usersSchema)
        try ChangeCapture.install(db, nodeID: 1, filter: TableFilter())
        let before = nowMs()
        try db.execute("INSERT INTO users VALUES (1, 'a', 1)")
        let after = nowMs()
        usleep(300_000)
        let stamped = try #require(try stamp(db))
        #expect(stamped.count == 1)
        let v = try #require(try version(db, 1))
        // julianday() goes through a double: the millisecond may come out one lower.
        #expect(v.physicalMs >= before - 2 && v.physicalMs <= after, "physical \(v.physicalMs), write between \(before) and \(after)")
        #expect(v.node == 1)
    }

    /// Versions follow the clock rule over the queue in commit order: above the clock as each write found it, and
    /// strictly increasing, also for many rows written in one millisecond.
    @Test func queuedWritesGetIncreasingVersionsAboveTheClock() throws {
        let (_, db) = try temporaryDatabase(usersSchema + "CREATE TABLE tags (name TEXT PRIMARY KEY);")
        try ChangeCapture.install(db, nodeID: 3, filter: TableFilter())
        let ahead = (nowMs() + 3_600_000) << RowVersion.logicalBits  // versions applied from a node an hour ahead
        try db.execute("UPDATE \(quoteIdentifier(Bookkeeping.clockTable)) SET hlc = ?", [.integer(ahead)])
        try db.execute("""
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) INSERT INTO users SELECT i, 'x', i FROM n;
            INSERT INTO tags VALUES ('between');
            UPDATE users SET name = 'y' WHERE id = 7;
            """)
        try stamp(db)
        let logged = try db.query("""
            SELECT g.table_name, coalesce(u.hlc, t.hlc) FROM \(quoteIdentifier(Bookkeeping.globalLog)) g
            LEFT JOIN \(quoteIdentifier(Bookkeeping.changeLog("users"))) u ON g.table_name = 'users' AND u.id = g.change_table_id
            LEFT JOIN \(quoteIdentifier(Bookkeeping.changeLog("tags"))) t ON g.table_name = 'tags' AND t.id = g.change_table_id
            ORDER BY g.id
            """)
        #expect(logged.count == 502)
        // The global log keeps commit order across tables: the tag comes between the bulk insert and the update.
        #expect(logged[500][0] == .text("tags") && logged[501][0] == .text("users"))
        let hlcs = logged.compactMap { $0[1].int64 }
        #expect(hlcs.first == ahead + 1)
        #expect(zip(hlcs, hlcs.dropFirst()).allSatisfy { $0 < $1 })
        #expect(try db.scalar("SELECT hlc FROM \(quoteIdentifier(Bookkeeping.clockTable))")?.int64 == hlcs.last)
        #expect(try version(db, 7)?.hlc == hlcs.last)
        #expect(try count(db, Bookkeeping.captureQueue) == 0)
    }

    /// A remote change that arrives while a newer local write still waits in the queue loses to it: the apply stamps
    /// the queue first. (With `apply-before-stamping` the remote row overwrites the local one, and the local version
    /// then carries the remote's values to everyone.)
    @Test(arguments: [PlantedBugs(), .applyBeforeStamping])
    func aQueuedLocalWriteTakesPartInLastWriterWins(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema) { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'base', 0)")
        try c.settle()
        try c.apps[1].execute("UPDATE users SET name = 'older, node 2' WHERE id = 1")
        try c.publish(1)
        usleep(5_000)  // versions carry milliseconds: node 1's write is unambiguously the newer
        try c.apps[0].execute("UPDATE users SET name = 'newer, node 1' WHERE id = 1")
        #expect(try count(c.apps[0], Bookkeeping.captureQueue) == 1)  // not stamped: node 1 has not looked yet
        try c.deliver(0)
        try c.settle()
        let expected: [[DatabaseValue]] = [[.text("newer, node 1")]]
        if bug.isEmpty {
            #expect(try c.rows(0, "SELECT name FROM users") == expected)
            #expect(try c.rows(1, "SELECT name FROM users") == expected)
        } else {
            #expect(try c.rows(0, "SELECT name FROM users") != expected)
        }
    }

    /// A stamp on its own is committed without a sync, but the connection goes back to syncing: applies and marks that
    /// are acknowledged to the log must be on disk first.
    @Test func theStampAloneIsNotSyncedAndEverythingElseStaysSynced() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        let sidecar = c.nodes[0].requireDatabase()
        let synchronous = try #require(try sidecar.scalar("PRAGMA synchronous")?.int64)
        #expect(synchronous == 2)  // FULL, SQLite's default
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1)")
        try c.nodes[0].stampLocalChangesIfQueued()
        #expect(try count(c.apps[0], Bookkeeping.captureQueue) == 0)
        #expect(try sidecar.scalar("PRAGMA synchronous")?.int64 == synchronous)
        try c.settle()
        #expect(try c.rows(1, "SELECT name FROM users") == [["a"]])
    }

    /// The stamp of a transaction that rolls back is not reported, and the writes are stamped again next time.
    @Test func aStampThatRollsBackIsStampedAgain() throws {
        let (_, db) = try temporaryDatabase(usersSchema)
        try ChangeCapture.install(db, nodeID: 1, filter: TableFilter())
        try db.execute("INSERT INTO users VALUES (1, 'a', 1), (2, 'b', 2)")
        struct Abort: Error {}
        #expect(throws: Abort.self) {
            try db.transaction(.immediate) {
                #expect(try ChangeCapture.stampCaptured(db)?.count == 2)
                throw Abort()
            }
        }
        #expect(try count(db, Bookkeeping.captureQueue) == 2 && count(db, Bookkeeping.globalLog) == 0)
        let again = try #require(try db.transaction(.immediate) { try ChangeCapture.stampCaptured(db, collectVersions: true) })
        #expect(again.count == 2 && again.hlcs.count == 2)
        #expect(try version(db, 2)?.hlc == again.hlcs[again.lastQueueID])
    }

    /// A write to a table dropped before the sidecar looked has no row left to send: it is let go, not retried forever.
    @Test func aWriteToATableDroppedMeanwhileIsLetGo() throws {
        let (_, db) = try temporaryDatabase(usersSchema + "CREATE TABLE tags (name TEXT PRIMARY KEY);")
        try ChangeCapture.install(db, nodeID: 1, filter: TableFilter())
        try db.execute("INSERT INTO tags VALUES ('gone'); INSERT INTO users VALUES (1, 'kept', 1)")
        try db.execute("DROP TABLE tags")
        try ChangeCapture.install(db, nodeID: 1, filter: TableFilter(), replicateDDL: true)
        #expect(try count(db, Bookkeeping.captureQueue) == 0)
        #expect(try count(db, Bookkeeping.globalLog, where: "state = 0 AND table_name = 'tags'") == 0)
        #expect(try count(db, Bookkeeping.globalLog, where: "state = 0 AND table_name = 'users'") == 1)
        #expect(try version(db, 1) != nil)
    }
}
