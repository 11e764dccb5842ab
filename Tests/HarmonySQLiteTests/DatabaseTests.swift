import Foundation
import HarmonySQLite
import Testing

func scratchDatabase() throws -> Database {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("sqlite-\(UUID().uuidString).db").path
    return try SQLiteOpener().open(path: path)
}

@Suite("SQLite layer")
struct DatabaseTests {
    @Test func everyStorageClassRoundTripsExactly() throws {
        let db = try scratchDatabase()
        try db.execute("CREATE TABLE t (v)")
        let values: [DatabaseValue] = [
            .null, .integer(Int64.max), .integer(Int64.min), .integer(0), .real(Double.pi), .real(-1e-300),
            .text(""), .text("ünïcødé 🚀"), .text("a\u{0}b"), .blob([]), .blob([0, 1, 2, 255]),
        ]
        for v in values { try db.execute("INSERT INTO t VALUES (?)", [v]) }
        #expect(try db.query("SELECT v FROM t ORDER BY rowid").map { $0[0] } == values)
        #expect(try db.query("SELECT typeof(v) FROM t WHERE rowid = 10") == [["blob"]])  // empty blob is not NULL
    }

    @Test func transactionRollsBackWhenBodyThrows() throws {
        let db = try scratchDatabase()
        try db.execute("CREATE TABLE t (v)")
        struct Boom: Error {}
        #expect(throws: Boom.self) {
            try db.transaction { try db.execute("INSERT INTO t VALUES (1)", []); throw Boom() }
        }
        #expect(try db.scalar("SELECT count(*) FROM t") == 0)
        #expect(!db.isInTransaction)
        try db.transaction { try db.execute("INSERT INTO t VALUES (2)", []) }
        #expect(try db.scalar("SELECT count(*) FROM t") == 1)
    }

    @Test func errorsNameTheStatementAndTheCause() throws {
        let db = try scratchDatabase()
        do {
            try db.execute("SELECT * FROM missing_table", [])
            Issue.record("expected an error")
        } catch let e as SQLiteError {
            #expect(e.description.contains("missing_table"))
            #expect(e.sql == "SELECT * FROM missing_table")
        }
        try db.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, e TEXT UNIQUE)")
        try db.execute("INSERT INTO u VALUES (1, 'x')", [])
        do {
            try db.execute("INSERT INTO u VALUES (2, 'x')", [])
            Issue.record("expected a constraint error")
        } catch let e as SQLiteError {
            #expect(e.isConstraint)
        }
    }

    @Test func openerUsesWALAndBusyTimeout() throws {
        let db = try scratchDatabase()
        #expect(try db.scalar("PRAGMA journal_mode") == "wal")
        #expect(try db.scalar("PRAGMA busy_timeout") == 5000)
        #expect(throws: SQLiteError.self) { try Database(path: "/nonexistent-dir/x.db") }
        #expect(throws: SQLiteError.self) { try Database(path: ":memory:", vfsName: "no-such-vfs") }
    }

    @Test func identifiersAndLiteralsAreQuoted() throws {
        let db = try scratchDatabase()
        let name = "we\"ird 'name"
        try db.execute("CREATE TABLE \(quoteIdentifier(name)) (\(quoteIdentifier("select")) TEXT)")
        try db.execute("INSERT INTO \(quoteIdentifier(name)) VALUES (\(quoteLiteral("it's")))")
        #expect(try db.scalar("SELECT \(quoteIdentifier("select")) FROM \(quoteIdentifier(name))") == "it's")
    }
}
