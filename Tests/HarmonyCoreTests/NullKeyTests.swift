import Foundation
import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

/// SQLite lets a rowid table's primary key hold NULL. Such a row cannot be replicated (no other node could find it
/// by its key, and a version table's key is NOT NULL), but it must not stop anything else: before, one such write
/// failed every stamp after it, so nothing more this node wrote was ever published, and one found at install kept
/// the node from starting.
@Suite("Primary keys holding NULL")
struct NullKeyTests {
    static let schema = """
        CREATE TABLE pair (x INT, y TEXT, z, PRIMARY KEY (x, y));
        CREATE TABLE other (id INTEGER PRIMARY KEY, v);
        """

    @Test func nullKeyRowsStayLocalReportedAndEverythingElseReplicates() throws {
        let c = try TestCluster(nodes: 0, schema: "")
        // Node 1's database already holds a row with a NULL in its key when capture is first installed.
        try c.addNode(schema: Self.schema + "INSERT INTO pair VALUES (1, NULL, 'legacy'), (1, 'a', 'keyed');")
        try c.addNode(schema: Self.schema)
        #expect(c.events[0].events.contains(.nullKeyNotReplicated(table: "pair", key: ["x", "y"], rows: 1, atInstall: true)))

        try c.apps[0].execute("""
            INSERT INTO pair VALUES (2, NULL, 'new'), (2, 'b', 'keyed too');
            INSERT INTO other VALUES (1, 'written after');
            UPDATE pair SET z = 'updated' WHERE x = 1 AND y IS NULL;
            DELETE FROM pair WHERE x = 2 AND y IS NULL;
            """)
        try c.settle()
        #expect(c.events[0].events.contains(.nullKeyNotReplicated(table: "pair", key: ["x", "y"], rows: 3, atInstall: false)))
        #expect(try c.pendingChanges(0) == 0, "nothing left queued or pending")
        #expect(try c.rows(1, "SELECT x, y, z FROM pair ORDER BY x") == [[1, "a", "keyed"], [2, "b", "keyed too"]])
        #expect(try c.rows(1, "SELECT v FROM other") == [["written after"]])
        // Nothing of the application's is touched here: the NULL-key row is still on node 1.
        #expect(try c.rows(0, "SELECT x, z FROM pair WHERE y IS NULL") == [[1, "updated"]])

        // The node goes on: later writes, keyed ones, still replicate.
        try c.apps[0].execute("INSERT INTO pair VALUES (3, 'c', 'later')")
        try c.settle()
        #expect(try c.rows(1, "SELECT z FROM pair WHERE x = 3") == [["later"]])
    }

    /// Another node's message naming a NULL key value (a buggy or hostile sender) is parked with its reason; the
    /// shard goes on.
    @Test func receivedChangeWithNullKeyIsParked() throws {
        let c = try TestCluster(nodes: 1, schema: Self.schema)
        let schema = c.nodes[0].captured["pair"]!.schema
        let bad = ChangeRecord(originNode: 9, table: "pair", operation: .upsert, primaryKey: [.init("x", 1), .init("y", .null)],
                               row: [.init("x", 1), .init("y", .null), .init("z", "hostile")],
                               version: RowVersion(hlc: 1 << 40, node: 9), schemaHash: schema.hash)
        let good = ChangeRecord(originNode: 9, table: "pair", operation: .upsert, primaryKey: [.init("x", 2), .init("y", "k")],
                                row: [.init("x", 2), .init("y", "k"), .init("z", "fine")],
                                version: RowVersion(hlc: 1 << 40, node: 9), schemaHash: schema.hash)
        c.streams.appendRaw(shard: c.nodes[0].router.shard(table: "pair", primaryKey: [1, .null]), payload: try EnvelopeCodec.encode(bad))
        c.streams.appendRaw(shard: c.nodes[0].router.shard(table: "pair", primaryKey: [2, "k"]), payload: try EnvelopeCodec.encode(good))
        try c.deliver(0)
        let reasons = try c.rows(0, "SELECT error FROM \(quoteIdentifier(Bookkeeping.parkedTable))")
        #expect(reasons.count == 1, "\(reasons)")
        #expect(try c.rows(0, "SELECT x, y, z FROM pair") == [[2, "k", "fine"]])
    }
}
