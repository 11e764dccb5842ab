import Foundation
import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

/// The publisher reads each pending entry's change in one joined statement when it can; that read must give
/// exactly what the statement-at-a-time read gives, for every kind of key and every state a row can be in.
@Suite("Reading pending changes")
struct ChangeReadTests {
    static let schema = """
        CREATE TABLE plain (id INTEGER PRIMARY KEY, a TEXT, b REAL);
        CREATE TABLE "odd ""name" ("key col" TEXT PRIMARY KEY, n INT, "select" BLOB) WITHOUT ROWID;
        CREATE TABLE pair (x INT, y TEXT COLLATE NOCASE, z, PRIMARY KEY (x, y));
        CREATE TABLE numeric (k INT PRIMARY KEY, v TEXT);
        CREATE TABLE renamed (k TEXT PRIMARY KEY, v INT);
        CREATE TABLE e (t INTEGER PRIMARY KEY, v TEXT, e TEXT);
        """

    /// Every pending entry's change both ways; returns how many the joined read answered and how many it left
    /// to the stepwise one.
    func compareReads(_ node: ReplicationNode, _ db: Database) throws -> (joined: Int, stepwise: Int) {
        try node.refreshCaptureIfSchemaChanged()
        try node.stampLocalChangesIfQueued(all: true)
        var joined = 0, stepwise = 0
        for row in try db.query("SELECT change_table_id, table_name FROM \(quoteIdentifier(Bookkeeping.globalLog)) WHERE state = 0 ORDER BY id") {
            let changeID = try #require(row[0].int64), table = try #require(row[1].string)
            if table == Bookkeeping.ddlTable { continue }  // the RENAME itself, read from the DDL log
            let captured = try #require(node.captured[table])
            let slow = try node.changeRecordStepwise(table: table, captured: captured, changeID: changeID)
            if let fast = try node.joinedChangeRecord(table: table, schema: captured.schema, changeID: changeID) {
                #expect(fast == slow, "entry \(changeID) of \(table)")
                joined += 1
            } else {
                stepwise += 1
            }
        }
        return (joined, stepwise)
    }

    @Test func joinedReadGivesWhatTheStepwiseReadGives() throws {
        let cluster = try TestCluster(nodes: 1, schema: Self.schema)
        let node = cluster.nodes[0], app = cluster.apps[0]
        try app.execute("""
            INSERT INTO plain VALUES (1, 'one', 1.5), (2, 'two', NULL), (3, NULL, 3);
            UPDATE plain SET a = 'uno' WHERE id = 1;
            DELETE FROM plain WHERE id = 2;
            INSERT INTO "odd ""name" VALUES ('k1', 1, x'00ff'), ('1', 2, NULL), ('', 3, 'text');
            UPDATE "odd ""name" SET n = 20 WHERE "key col" = '1';
            INSERT INTO pair VALUES (1, 'Abc', 'first'), ('2', 'x', 2.5);
            UPDATE pair SET z = 'second' WHERE x = 1 AND y = 'abc';
            UPDATE pair SET y = 'ABC' WHERE x = 1;
            INSERT INTO numeric VALUES ('12', 'text that is a number'), ('abc', 'text'), (1.0, 'real that is an integer'), (2.5, 'real');
            INSERT INTO renamed VALUES ('r1', 1), ('r2', 2);
            INSERT INTO e VALUES (1, 'named like the read''s aliases', 'e');
            """)
        let first = try compareReads(node, app)
        #expect(first.joined == 20 && first.stepwise == 0, "\(first)")

        // A row deleted after its insert was stamped but before its delete was: its version still says live,
        // the row is gone, so the insert has nothing to send (the delete has an entry of its own).
        try app.execute("DELETE FROM plain WHERE id = 3; INSERT INTO plain VALUES (4, 'four', 4)")
        try node.stampLocalChangesIfQueued(all: true)
        try app.execute("DELETE FROM plain WHERE id = 4")
        #expect(try node.joinedChangeRecord(table: "plain", schema: try #require(node.captured["plain"]).schema,
                                            changeID: try #require(app.scalar("SELECT max(id) FROM __harmonylite__plain_change_log")?.int64)) == .some(nil))

        // Entries logged under a key column's old name are read stepwise, by their epoch's names.
        try app.execute("ALTER TABLE renamed RENAME COLUMN k TO key2")
        try app.execute("INSERT INTO renamed VALUES ('r3', 3)")
        let after = try compareReads(node, app)
        #expect(after.stepwise >= 3, "\(after)")
    }
}
