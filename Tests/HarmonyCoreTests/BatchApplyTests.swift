import Foundation
import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

/// A message's new rows of one table apply in multi-row statements (`applyRun`); everything else a change at a time.
@Suite("Applying a message's new rows together")
struct BatchApplyTests {
    static let schema = "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, photo BLOB);"
    static let versions = quoteIdentifier(Bookkeeping.versionTable("items"))

    /// Fills node 1's table with `count` rows of every value type, one transaction, from `first` on.
    static func insertItems(_ app: Database, from first: Int64, count: Int64) throws {
        try app.transaction {
            for id in first..<(first + count) {
                let name: DatabaseValue = id % 5 == 0 ? .null : .text("item \(id) ✓")
                try app.execute("INSERT INTO items VALUES (?, ?, ?, ?)", [.integer(id), name, .real(Double(id) / 4), .blob([UInt8(id % 256), 0, 7])])
            }
        }
    }

    /// More rows than the largest statement (256) and a remainder of several powers of two, in messages of up to
    /// 300: every row and every version lands as sent, each change reported once as won.
    @Test func newRowsLandWithTheirVersions() throws {
        let c = try TestCluster(nodes: 2, schema: Self.schema) { $0.shards = 1; $0.publishBatchMax = 300 }
        try Self.insertItems(c.apps[0], from: 1, count: 301)
        try c.publish(0)
        #expect(c.streams.messages(shard: 1).count == 2)  // 300 and 1
        try c.deliver(1)
        let rows = try c.rows(0, "SELECT * FROM items ORDER BY id")
        #expect(rows.count == 301)
        #expect(try c.rows(1, "SELECT * FROM items ORDER BY id") == rows)
        let sent = try c.rows(0, "SELECT pk_id, hlc, node, deleted FROM \(Self.versions) ORDER BY pk_id")
        #expect(try c.rows(1, "SELECT pk_id, hlc, node, deleted FROM \(Self.versions) ORDER BY pk_id") == sent)
        let applied = c.events[1].events.compactMap { event -> Bool? in
            if case .applied(_, _, "items", _, let won) = event { return won } else { return nil }
        }
        #expect(applied == Array(repeating: true, count: 301))
    }

    /// A message whose keys include one this node wrote later: that change loses here as it would alone, and the
    /// rest land. Both nodes end with the later write.
    @Test func aKeyWithANewerVersionHereStillWins() throws {
        let c = try TestCluster(nodes: 2, schema: Self.schema) { $0.shards = 1 }
        try Self.insertItems(c.apps[0], from: 1, count: 100)
        // Node 2's clock ahead of every version node 1 gives (the triggers read the wall clock, which a test does not
        // control): its write is the later one.
        let ahead = (Int64(Date().timeIntervalSince1970 * 1000) << 16) + (1 << 30)  // 16 s
        try c.apps[1].execute("UPDATE \(quoteIdentifier(Bookkeeping.clockTable)) SET hlc = ?", [.integer(ahead)])
        try c.apps[1].execute("INSERT INTO items VALUES (50, 'node 2 later', 0, NULL)")
        try c.settle()
        for node in 0..<2 {
            #expect(try c.rows(node, "SELECT name FROM items WHERE id = 50") == [["node 2 later"]])
            #expect(try c.rows(node, "SELECT count(*) FROM items") == [[100]])
        }
        #expect(try c.rows(1, "SELECT * FROM items ORDER BY id") == c.rows(0, "SELECT * FROM items ORDER BY id"))
        let lost = c.events[1].events.filter { if case .applied(_, _, "items", _, false) = $0 { return true } else { return false } }
        #expect(lost.count == 1)
    }

    /// A row here with no version (capture never leaves one; an operator editing the bookkeeping could): the
    /// multi-row insert meets it, and the message applies again a change at a time, where the change wins.
    @Test func aRowWithoutAVersionSendsTheMessageChangeByChange() throws {
        let c = try TestCluster(nodes: 2, schema: Self.schema) { $0.shards = 1 }
        try c.apps[1].execute("INSERT INTO items VALUES (7, 'unversioned', 0, NULL)")
        try c.publish(1)
        try c.apps[1].execute("DELETE FROM \(Self.versions) WHERE pk_id = 7")
        try Self.insertItems(c.apps[0], from: 1, count: 20)
        try c.publish(0)
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT * FROM items ORDER BY id") == c.rows(0, "SELECT * FROM items ORDER BY id"))
        #expect(try count(c.apps[1], Bookkeeping.parkedTable) == 0)
        #expect(try c.rows(1, "SELECT count(*) FROM \(Self.versions) WHERE node = 1") == [[20]])
    }

    /// Which runs go together: distinct keys, none of which has a version here, in any order (the shards interleave
    /// a bulk load's keys; the priority lane sends newest first).
    @Test func onlyNewKeysGoTogether() throws {
        let c = try TestCluster(nodes: 1, schema: Self.schema)
        try c.apps[0].execute("INSERT INTO items VALUES (50, 'here', 0, NULL)")
        try c.publish(0)
        let node = c.nodes[0], db = node.requireDatabase()
        let schema = try #require(node.captured["items"]).schema
        func run(_ keys: [DatabaseValue]) -> [ReplicationNode.ResolvedChange] {
            keys.enumerated().map { i, key in
                ReplicationNode.ResolvedChange(table: schema, operation: .upsert, key: [key], row: [], version: RowVersion(hlc: Int64(i + 1), node: 2))
            }
        }
        #expect(try node.keysAreNew(db, run([1, 2, 3])))
        #expect(try node.keysAreNew(db, run([49, 51, 1_000, 7])))   // around 50, in any order
        #expect(try node.keysAreNew(db, run((100..<400).map { .integer($0) })))  // more than one probe
        #expect(try !node.keysAreNew(db, run([40, 50, 60])))        // 50 has a version
        #expect(try !node.keysAreNew(db, run((300..<600).map { .integer($0) } + [50])))  // ... found by a later probe
        #expect(try !node.keysAreNew(db, run([1, 2, 1])))           // a key twice
        #expect(try !node.keysAreNew(db, run([1, .null])))
        // A version kept under a real key equal to an integer in the run: the same key to SQLite's index.
        try db.execute("INSERT INTO \(Self.versions) (pk_id, hlc, node, deleted) VALUES (70.0, 1, 1, 0)")
        #expect(try !node.keysAreNew(db, run([69, 70, 71])))
    }

    @Test func statementsFitSQLitesLimitOnParameters() {
        #expect(ReplicationNode.statementSizes(301, parametersPerRow: 4, limit: 32_766) == [256, 32, 8, 4, 1])
        #expect(ReplicationNode.statementSizes(600, parametersPerRow: 4, limit: 32_766) == [256, 256, 64, 16, 8])
        #expect(ReplicationNode.statementSizes(100, parametersPerRow: 4, limit: 999) == [64, 32, 4])  // at most 128 rows of 4 under 999
        #expect(ReplicationNode.statementSizes(5, parametersPerRow: 2_000, limit: 999) == [1, 1, 1, 1, 1])
        #expect(ReplicationNode.statementSizes(0, parametersPerRow: 4, limit: 32_766) == [])
        for count in 0...600 {
            let sizes = ReplicationNode.statementSizes(count, parametersPerRow: 7, limit: 999)
            #expect(sizes.reduce(0, +) == count && sizes.allSatisfy { $0 * 7 <= 999 || $0 == 1 })
        }
    }
}

/// A page of pending changes is read a table at a time, one statement over each table's range of change-log ids
/// (`joinedRecords`); what goes out must be what reading each entry alone sends.
@Suite("Reading a page of changes in one statement per table")
struct PageReadTests {
    @Test func aPageReadTogetherSendsEachRowsNewestChangeOnce() throws {
        let c = try TestCluster(nodes: 2, schema: BatchApplyTests.schema + "CREATE TABLE tags (name TEXT PRIMARY KEY, n INTEGER);") {
            $0.shards = 1
        }
        let app = c.apps[0]
        try BatchApplyTests.insertItems(app, from: 1, count: 100)
        try app.transaction {
            try app.execute("UPDATE items SET name = 'changed' WHERE id = 50")  // the first entry of 50 is superseded
            try app.execute("DELETE FROM items WHERE id = 60")                   // 60 goes as a delete, once
            try app.execute("INSERT INTO tags VALUES ('a', 1), ('b', 2)")         // another table in the same page
            try app.execute("UPDATE items SET price = -1 WHERE id = 70")
        }
        try c.publish(0)
        let sent = try c.streams.messages(shard: 1).flatMap { try EnvelopeCodec.decodeAll($0.payload) }
        let items = sent.filter { $0.table == "items" }
        #expect(items.count == 100)
        #expect(Set(items.map { $0.primaryKey[0].value }).count == 100)
        #expect(items.first { $0.primaryKey[0].value == 50 }?.row.first { $0.name == "name" }?.value == "changed")
        #expect(items.first { $0.primaryKey[0].value == 60 }?.operation == .delete)
        #expect(items.first { $0.primaryKey[0].value == 70 }?.row.first { $0.name == "price" }?.value == .real(-1))
        #expect(sent.filter { $0.table == "tags" }.map { $0.primaryKey[0].value } == ["a", "b"])
        try c.deliver(1)
        #expect(try c.rows(1, "SELECT * FROM items ORDER BY id") == c.rows(0, "SELECT * FROM items ORDER BY id"))
        #expect(try c.rows(1, "SELECT * FROM tags ORDER BY name") == [["a", 1], ["b", 2]])
    }
}
