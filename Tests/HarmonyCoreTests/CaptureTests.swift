import Foundation
import HarmonyTestSupport
import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

func temporaryDatabase(_ schema: String) throws -> (path: String, db: Database) {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("harmony-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let path = dir.appendingPathComponent("app.db").path
    let db = try SQLiteOpener().open(path: path)
    try db.execute(schema)
    return (path, db)
}

/// What the sidecar does before it reads the logs: version the application's queued writes.
@discardableResult
func stamp(_ db: Database) throws -> StampedChanges? {
    try db.transaction(.immediate) { try ChangeCapture.stampCaptured(db) }
}

func count(_ db: Database, _ table: String, where condition: String = "1") throws -> Int64 {
    try db.scalar("SELECT count(*) FROM \(quoteIdentifier(table)) WHERE \(condition)")?.int64 ?? -1
}

let oddSchema = """
    CREATE TABLE "order" ("select" INTEGER PRIMARY KEY, "my column" TEXT, \"\"\"quoted\"\"\" BLOB);
    CREATE TABLE "my table" (a TEXT, b INTEGER, "c d" REAL, PRIMARY KEY (a, b));
    """

@Suite("Change capture with triggers")
struct CaptureTests {
    @Test func stockShellWritesThroughTriggersWithUntrustedSchema() throws {
        let (path, db) = try temporaryDatabase(oddSchema)
        try ChangeCapture.install(db, nodeID: 7, filter: TableFilter())
        _ = try runSQLiteShell(path, """
            INSERT INTO "order" VALUES (1, 'one', x'00ff');
            UPDATE "order" SET "my column" = 'uno' WHERE "select" = 1;
            INSERT INTO "my table" VALUES ('k', 1, 2.5);
            DELETE FROM "my table";
            """, arguments: ["-cmd", "PRAGMA trusted_schema=OFF"])
        // The triggers only queue; the sidecar stamps versions and logs the changes in commit order.
        #expect(try count(db, Bookkeeping.captureQueue) == 4 && count(db, Bookkeeping.globalLog) == 0)
        #expect(try stamp(db)?.count == 4)
        #expect(try count(db, Bookkeeping.captureQueue) == 0)
        #expect(try count(db, Bookkeeping.globalLog) == 4)
        #expect(try db.query("SELECT table_name FROM \(quoteIdentifier(Bookkeeping.globalLog)) ORDER BY id") == [["order"], ["order"], ["my table"], ["my table"]])
        // The log names keys only; the publisher reads the row when it sends it.
        let log = try db.query("SELECT type, node, \"val_select\" FROM \"__harmonylite__order_change_log\" ORDER BY id")
        #expect(log == [["insert", 7, 1], ["update", 7, 1]])
        let columns = try db.query("SELECT name FROM pragma_table_info('__harmonylite__order_change_log')").compactMap { $0[0].string }
        #expect(columns == ["id", "type", "hlc", "node", "epoch", "val_select"])
        let versions = try db.query("SELECT \"pk_a\", \"pk_b\", deleted, node FROM \"__harmonylite__my table_version\"")
        #expect(versions == [["k", 1, 1, 7]])
    }

    @Test func primaryKeyChangeIsDeleteOldPlusWriteNew() throws {
        let (_, db) = try temporaryDatabase(oddSchema)
        try ChangeCapture.install(db, nodeID: 1, filter: TableFilter())
        try db.execute("INSERT INTO \"order\" VALUES (1, 'x', NULL)")
        try db.execute("UPDATE \"order\" SET \"select\" = 2 WHERE \"select\" = 1")
        try stamp(db)
        let log = try db.query("SELECT type, \"val_select\" FROM \"__harmonylite__order_change_log\" ORDER BY id")
        #expect(log == [["insert", 1], ["delete", 1], ["update", 2]])
        let versions = try db.query("SELECT \"pk_select\", deleted FROM \"__harmonylite__order_version\" ORDER BY 1")
        #expect(versions == [[1, 1], [2, 0]])
        let hlcs = try db.query("SELECT hlc FROM \"__harmonylite__order_change_log\" ORDER BY id").map { $0[0].int64! }
        #expect(hlcs == hlcs.sorted() && Set(hlcs).count == 3)
    }

    @Test func tableWithoutPrimaryKeyIsRefusedWithClearMessage() throws {
        let (_, db) = try temporaryDatabase("CREATE TABLE events (at TEXT, what TEXT); CREATE TABLE ok (id INTEGER PRIMARY KEY);")
        #expect(throws: SchemaError.noPrimaryKey(["events"])) {
            try ChangeCapture.install(db, nodeID: 1, filter: TableFilter())
        }
        #expect("\(SchemaError.noPrimaryKey(["events"]))".contains("exclude"))
        // Nothing was half-installed.
        #expect(try db.scalar("SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_\\_harmonylite%' ESCAPE '\\'")?.int64 == 0)
        let captured = try ChangeCapture.install(db, nodeID: 1, filter: TableFilter(exclude: ["events"]))
        #expect(captured.keys.sorted() == ["ok"])
    }

    @Test func virtualShadowAndExcludedTablesAreSkipped() throws {
        let (_, db) = try temporaryDatabase("""
            CREATE VIRTUAL TABLE docs USING fts5(body);
            CREATE TABLE a (id INTEGER PRIMARY KEY); CREATE TABLE b (id INTEGER PRIMARY KEY);
            """)
        #expect(try ChangeCapture.install(db, nodeID: 1, filter: TableFilter()).keys.sorted() == ["a", "b"])
        #expect(try ChangeCapture.install(db, nodeID: 1, filter: TableFilter(exclude: ["b"])).keys.sorted() == ["a"])
        try db.execute("INSERT INTO b VALUES (1)")
        #expect(try count(db, Bookkeeping.captureQueue) == 0)  // b's triggers were removed when it was excluded
        #expect(try ChangeCapture.install(db, nodeID: 1, filter: TableFilter(include: ["b"])).keys.sorted() == ["b"])
    }

    @Test func addColumnRebuildsCaptureAndKeepsPendingRows() throws {
        let (_, db) = try temporaryDatabase(usersSchema)
        let first = try ChangeCapture.install(db, nodeID: 1, filter: TableFilter())
        try db.execute("INSERT INTO users VALUES (1, 'before', 1)")
        try db.execute("ALTER TABLE users ADD COLUMN email TEXT")
        let second = try ChangeCapture.install(db, nodeID: 1, filter: TableFilter())
        #expect(second["users"]!.epoch == 2)
        #expect(second["users"]!.previousHash == first["users"]!.schema.hash)
        #expect(second["users"]!.schema.columns == ["id", "name", "score", "email"])
        try db.execute("INSERT INTO users VALUES (2, 'after', 2, 'a@b')")
        try stamp(db)
        let log = try db.query("SELECT epoch, val_id FROM \"__harmonylite__users_change_log\" ORDER BY id")
        #expect(log == [[1, 1], [2, 2]])
        // Re-installing an unchanged schema is a no-op for epochs.
        #expect(try ChangeCapture.install(db, nodeID: 1, filter: TableFilter())["users"]!.epoch == 2)
    }

    /// The triggers name key columns only, so every ALTER TABLE SQLite allows goes through them from the stock
    /// shell: DROP COLUMN (used to fail with "no such column: NEW.b"), RENAME COLUMN, RENAME TO, a renamed key.
    @Test func everyAlterSQLiteAllowsWorksUnderCapture() throws {
        let (path, db) = try temporaryDatabase(usersSchema + "CREATE INDEX users_name ON users (name);")
        try ChangeCapture.install(db, nodeID: 1, filter: TableFilter())
        _ = try runSQLiteShell(path, """
            INSERT INTO users VALUES (1, 'a', 1.0);
            ALTER TABLE users DROP COLUMN score;
            ALTER TABLE users RENAME COLUMN name TO full_name;
            ALTER TABLE users RENAME COLUMN id TO user_id;
            INSERT INTO users VALUES (2, 'b');
            UPDATE users SET full_name = 'bb' WHERE user_id = 2;
            ALTER TABLE users ADD COLUMN email TEXT;
            DELETE FROM users WHERE user_id = 1;
            """)
        #expect(try db.query("SELECT * FROM users") == [[2, "bb", nil]])
        #expect(try count(db, Bookkeeping.captureQueue) == 4)
        let captured = try ChangeCapture.install(db, nodeID: 1, filter: TableFilter())
        #expect(captured["users"]!.schema.columns == ["user_id", "full_name", "email"])
        #expect(captured["users"]!.schema.primaryKey == ["user_id"])
        // The version table follows the renamed key; tombstones and versions survive.
        #expect(try db.query("SELECT pk_user_id, deleted FROM \"__harmonylite__users_version\" ORDER BY 1") == [[1, 1], [2, 0]])
        #expect(try count(db, Bookkeeping.globalLog) == 4)  // the install stamped them first
        _ = try runSQLiteShell(path, "INSERT INTO users VALUES (3, 'c', 'c@x');")
        try stamp(db)
        #expect(try count(db, Bookkeeping.globalLog) == 5)
    }

    @Test func renamesAreReadFromColumnsThatChangedInPlace() {
        #expect(ChangeCapture.renames(from: ["id", "b", "c"], to: ["id", "x", "c"]) == ["x": "b"])
        #expect(ChangeCapture.renames(from: ["id", "b", "c"], to: ["id", "c"]).isEmpty)       // DROP COLUMN
        #expect(ChangeCapture.renames(from: ["id", "b"], to: ["id", "b", "c"]).isEmpty)       // ADD COLUMN
        #expect(ChangeCapture.renames(from: ["id", "b", "c"], to: ["id", "c", "b"]).isEmpty)  // a rebuild that reordered
        // DROP COLUMN price and RENAME COLUMN name TO title seen as one schema change.
        #expect(ChangeCapture.renames(from: ["id", "name", "qty", "price", "data"], to: ["id", "title", "qty", "data"]) == ["title": "name"])
        #expect(ChangeCapture.renames(from: ["id", "b", "c"], to: ["id", "x", "y"]) == ["x": "b", "y": "c"])
        // Over several epochs: b -> x -> z, and c dropped on the way.
        #expect(ChangeCapture.currentNames(through: [["id", "b", "c"], ["id", "x", "c"], ["id", "x"], ["id", "z"]]) == ["b": "z", "x": "z"])
    }

    /// Everything goes but the one-row clock, whose time a reinstall continues from: a node whose clock is behind
    /// its peers' must not write below what it wrote or applied before the cleanup.
    @Test func cleanupRemovesEverythingButTheClockAndKeepsUserData() throws {
        let (path, db) = try temporaryDatabase(oddSchema)
        try ChangeCapture.install(db, nodeID: 1, filter: TableFilter())
        try db.execute("INSERT INTO \"order\" VALUES (1, 'x', NULL); INSERT INTO \"my table\" VALUES ('a', 1, 1.0)")
        let ahead: Int64 = 1 << 62  // versions applied from a node whose clock runs far ahead
        try db.execute("UPDATE \(quoteIdentifier(Bookkeeping.clockTable)) SET hlc = ?", [.integer(ahead)])
        try ChangeCapture.removeAll(db)
        let leftovers = try runSQLiteShell(path, "SELECT name FROM sqlite_schema WHERE name LIKE '%harmonylite%';")
        #expect(leftovers == Bookkeeping.clockTable + "\n")
        try ChangeCapture.install(db, nodeID: 1, filter: TableFilter())
        try db.execute("INSERT INTO \"order\" VALUES (3, 'after', NULL)")
        try stamp(db)
        #expect(try db.scalar("SELECT hlc FROM \(quoteIdentifier(Bookkeeping.versionTable("order"))) WHERE pk_select = 3")?.int64 ?? 0 > ahead)
        try ChangeCapture.removeAll(db, keepClock: false)
        #expect(try runSQLiteShell(path, "SELECT name FROM sqlite_schema WHERE name LIKE '%harmonylite%';").isEmpty)
        #expect(try count(db, "order") == 2 && count(db, "my table") == 1)  // user data untouched
        _ = try runSQLiteShell(path, "INSERT INTO \"order\" VALUES (2, 'y', NULL);")  // writes still work with no triggers
        #expect(try count(db, "order") == 3)
    }

    /// Remote applies and bookkeeping go through the sidecar with `applying = 1`: no change-log rows.
    @Test func sidecarWritesAreNeverCaptured() throws {
        let c = try TestCluster(nodes: 2, schema: usersSchema)
        try c.apps[0].execute("INSERT INTO users VALUES (1, 'a', 1), (2, 'b', 2)")
        try c.apps[0].execute("DELETE FROM users WHERE id = 2")
        try c.settle()
        #expect(try c.rows(1, "SELECT id FROM users") == [[1]])
        #expect(try c.changeLogCount(1) == 0)
        #expect(try c.rows(1, "SELECT applying FROM \(quoteIdentifier(Bookkeeping.clockTable))") == [[0]])
    }

    @Test func shellWritePickedUpByCoreAndReplicated() throws {
        let c = try TestCluster(nodes: 2, schema: oddSchema)
        _ = try runSQLiteShell(c.nodes[0].config.databasePath, """
            BEGIN;
            INSERT INTO "order" VALUES (10, 'shell', x'cafe');
            INSERT INTO "my table" VALUES ('z', 9, 0.5);
            COMMIT;
            UPDATE "order" SET "select" = 11 WHERE "select" = 10;
            """)
        try c.settle()
        #expect(try c.rows(1, "SELECT * FROM \"order\"") == [[11, "shell", .blob([0xca, 0xfe])]])
        #expect(try c.rows(1, "SELECT * FROM \"my table\"") == [["z", 9, 0.5]])
    }
}
