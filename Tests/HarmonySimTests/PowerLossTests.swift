import Foundation
import HarmonySQLite
@testable import HarmonySim
import Testing

@Suite("Simulated power loss")
struct PowerLossTests {
    func withNode(_ body: (SimVFS, String) throws -> Void) throws {
        let vfs = SimVFS(name: "power-test-\(UUID().uuidString)")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("power-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try body(vfs, dir.appendingPathComponent("a.db").path)
    }

    func open(_ vfs: SimVFS, _ path: String, synchronous: String) throws -> Database {
        let db = try vfs.opener.open(path: path)
        try db.execute("PRAGMA synchronous=\(synchronous)")
        try db.disableCheckpointOnClose()
        return db
    }

    func losePower(_ vfs: SimVFS, _ path: String) throws {
        try vfs.time.durability.losePower()
        try? FileManager.default.removeItem(atPath: path + "-shm")
    }

    /// With synchronous=NORMAL a WAL commit is not fsynced: it is gone after power loss; checkpointed data stays.
    @Test func unsyncedCommitIsLostSyncedDataSurvives() throws {
        try withNode { vfs, path in
            var db: Database? = try open(vfs, path, synchronous: "NORMAL")
            try db!.execute("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1);")
            try db!.execute("PRAGMA wal_checkpoint(TRUNCATE)")  // fsyncs: row 1 is durable
            try db!.execute("INSERT INTO t VALUES (2)")
            #expect(try db!.query("SELECT v FROM t ORDER BY v") == [[1], [2]])
            db = nil
            try losePower(vfs, path)
            let after = try open(vfs, path, synchronous: "NORMAL")
            #expect(try after.query("SELECT v FROM t ORDER BY v") == [[1]])
            #expect(try after.scalar("PRAGMA integrity_check") == "ok")
        }
    }

    /// With synchronous=FULL every commit is fsynced and survives.
    @Test func fsyncedCommitSurvives() throws {
        try withNode { vfs, path in
            var db: Database? = try open(vfs, path, synchronous: "FULL")
            try db!.execute("CREATE TABLE t (v INTEGER)")
            try db!.execute("INSERT INTO t VALUES (1)", [])
            try db!.execute("INSERT INTO t VALUES (2)", [])
            db = nil
            try losePower(vfs, path)
            let after = try open(vfs, path, synchronous: "FULL")
            #expect(try after.query("SELECT v FROM t ORDER BY v") == [[1], [2]])
        }
    }
}
