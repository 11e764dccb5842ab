import Foundation
import HarmonyCodec
@testable import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite
@testable import HarmonySim
import Testing

/// Keeps what the core publishes and never answers (nothing is acknowledged, so nothing else gets synced).
private final class RecordingLog: ReplicationLog {
    var published: [OutgoingMessage] = []
    func publish(_ message: OutgoingMessage) { published.append(message) }
    func subscribe(shard: Int, fromSequence: UInt64) {}
    func ack(shard: Int, sequence: UInt64) {}
    func nak(shard: Int, sequence: UInt64, delayMs: Int64) {}
    func requestStreamState(shard: Int) {}
}

@Suite("Bulk imports and power loss")
struct BulkImportPowerLossTests {
    /// The first batch of an import goes out before the rest is stamped, each row as it is now: row 1 travels with
    /// its update's values under its insert's version. Those values must then survive a power cut, or no later
    /// write would ever correct the copies the others hold. The stamp that stopped short is synced for that.
    /// (With `partial-stamp-not-synced`, an application that does not sync its own commits loses the import.)
    @Test(arguments: [PlantedBugs(), .partialStampNotSynced])
    func aWriteSentWithAnImportsFirstBatchSurvivesAPowerCut(bug: PlantedBugs) throws {
        let vfs = SimVFS(name: "bulk-power-\(UUID().uuidString)")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bulk-power-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("node.db").path
        var app: Database? = try vfs.opener.open(path: path)
        try app!.disableCheckpointOnClose()
        try app!.execute("PRAGMA synchronous = NORMAL")  // the application's choice: its commits are not synced
        try app!.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        var config = NodeConfig(nodeID: 1, databasePath: path)
        config.lockBatchRows = 5
        config.plantedBugs = bug
        let log = RecordingLog()
        let node = ReplicationNode(config: config, environment: NodeEnvironment(clock: ManualClock(), log: log, opener: vfs.opener))
        try node.start()
        try app!.execute("PRAGMA wal_checkpoint(TRUNCATE)")  // the schema and the capture install are on disk
        try app!.transaction {
            try app!.execute("INSERT INTO users VALUES (1, 'inserted')")
            for id in 2...12 { try app!.execute("INSERT INTO users VALUES (?, 'other')", [.integer(Int64(id))]) }
            try app!.execute("UPDATE users SET name = 'updated' WHERE id = 1")
        }
        try node.databaseChanged()
        #expect(node.bookkeepingPaused)  // one batch of five stamped, the rest still queued
        let sent = try log.published.flatMap { try EnvelopeCodec.decodeAll($0.payload) }
        #expect(sent.contains { $0.primaryKey.first?.value == .integer(1) && $0.row.contains { $0.value == .text("updated") } })
        node.stop()
        app = nil
        try vfs.time.durability.losePower()
        try? FileManager.default.removeItem(atPath: path + "-shm")
        let after = try vfs.opener.open(path: path)
        let row1 = try after.query("SELECT name FROM users WHERE id = 1")
        if bug.isEmpty {
            #expect(row1 == [["updated"]])
        } else {
            #expect(row1 != [["updated"]])
        }
    }
}
