import ArgumentParser
import Foundation
import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite

/// What `ALTER TABLE ... ADD COLUMN` on a large captured table costs the sidecar: messages and bytes it publishes
/// afterwards (the capture logs keys, so nothing should be re-sent), and the time of the ALTER and of the
/// capture's re-install. The first install's cost (every existing row captured once) is reported beside it.
struct AddColumnCost: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add-column",
        abstract: "Bytes published and time after ALTER TABLE ADD COLUMN on a large captured table.")

    @Option(help: "Rows in the table.") var rows = 1_000_000
    @Option(help: "Directory for the scratch database.") var directory = NSTemporaryDirectory()
    @Option(help: "Write a Markdown and JSON report with this path prefix (e.g. reports/add-column-cost).") var report: String?

    /// Counts what the core hands to the log and acknowledges it at once.
    final class CountingLog: ReplicationLog {
        var messages = 0
        var bytes = 0
        var tokens: [Int64] = []
        func publish(_ message: OutgoingMessage) { messages += 1; bytes += message.payload.count; tokens.append(message.token) }
        func subscribe(shard: Int, fromSequence: UInt64) {}
        func ack(shard: Int, sequence: UInt64) {}
        func nak(shard: Int, sequence: UInt64, delayMs: Int64) {}
        func requestStreamState(shard: Int) {}
    }

    func run() throws {
        let path = (directory as NSString).appendingPathComponent("harmonybench-addcolumn-\(UUID().uuidString).db")
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let app = try SQLiteOpener().open(path: path)
        try app.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER, price REAL)")
        try app.transaction(.immediate) {
            let insert = try app.prepare("INSERT INTO items VALUES (?, ?, ?, ?)")
            for i in 1...rows { try insert.execute([.integer(Int64(i)), .text("item \(i)"), .integer(Int64(i % 97)), .real(Double(i) / 7)]) }
        }
        var config = NodeConfig(nodeID: 1, databasePath: path)
        config.replicate = false
        config.publishInFlightMax = 1 << 20
        config.scanMaxChanges = 4_096
        let log = CountingLog()
        let core = ReplicationNode(config: config, environment: NodeEnvironment(clock: ManualClock(), log: log, opener: SQLiteOpener()))
        /// Publishes what is pending (after `before`, which may have published already) until nothing is in flight.
        func drain(_ before: () throws -> Void = {}) throws -> (messages: Int, bytes: Int, seconds: Double) {
            let start = Date()
            let (m0, b0) = (log.messages, log.bytes)
            try before()
            try core.databaseChanged()
            while !log.tokens.isEmpty {
                let tokens = log.tokens
                log.tokens.removeAll()
                try core.publishAcknowledged(tokens: tokens)
            }
            try core.cleanupPublished()
            return (log.messages - m0, log.bytes - b0, Date().timeIntervalSince(start))
        }
        let first = try drain { try core.start() }
        let firstSeconds = first.seconds

        let alterStart = Date()
        try app.execute("ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'none'")
        let alterSeconds = Date().timeIntervalSince(alterStart)
        let after = try drain()
        // One ordinary write afterwards, to show the new column travels.
        try app.execute("UPDATE items SET note = 'changed' WHERE id = 1")
        let write = try drain()
        core.stop()

        func mib(_ b: Int) -> String { String(format: "%.1f MiB", Double(b) / 1_048_576) }
        let text = """
            # ALTER TABLE ADD COLUMN on a captured table of \(rows) rows

            Command: `swift build -c release --product harmonybench && .build/release/harmonybench add-column --rows \(rows)`
            Machine: \(ProcessInfo.processInfo.activeProcessorCount) cores. The core publishes to a log that counts and acknowledges at once.

            | step | messages | bytes | time |
            |---|---|---|---|
            | first install (every existing row captured once, below any real write) | \(first.messages) | \(mib(first.bytes)) | \(String(format: "%.2f s", firstSeconds)) |
            | ALTER TABLE items ADD COLUMN note (SQLite) | | | \(String(format: "%.3f s", alterSeconds)) |
            | after the ALTER: capture re-installed, pending changes published | \(after.messages) | \(after.bytes) B | \(String(format: "%.3f s", after.seconds)) |
            | one UPDATE of the new column | \(write.messages) | \(write.bytes) B | \(String(format: "%.3f s", write.seconds)) |

            """
        print(text)
        if let report {
            try text.write(toFile: report + ".md", atomically: true, encoding: .utf8)
            let json = """
                {"rows": \(rows), "first_install": {"messages": \(first.messages), "bytes": \(first.bytes), "seconds": \(firstSeconds)},
                 "alter_seconds": \(alterSeconds), "after_alter": {"messages": \(after.messages), "bytes": \(after.bytes), "seconds": \(after.seconds)},
                 "one_update": {"messages": \(write.messages), "bytes": \(write.bytes)}}
                """
            try json.write(toFile: report + ".json", atomically: true, encoding: .utf8)
        }
        guard after.bytes == 0 else { throw ValidationError("ADD COLUMN re-published \(after.messages) messages (\(after.bytes) bytes)") }
    }
}
