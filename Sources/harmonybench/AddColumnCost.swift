import ArgumentParser
import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite

/// What `ALTER TABLE ... ADD COLUMN` on a large captured table costs: the messages and bytes the sidecar publishes
/// afterwards (the DDL itself, one message; no row, since the capture logs keys), the time of the ALTER and of the
/// capture's re-install, and the time another node with the same rows takes to apply that DDL. The first install's
/// cost (every existing row captured once) is reported beside it.
struct AddColumnCost: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add-column",
        abstract: "Bytes published and time after ALTER TABLE ADD COLUMN on a large captured table.")

    @Option(help: "Rows in the table.") var rows = 1_000_000
    @Option(help: "Directory for the scratch database.") var directory = NSTemporaryDirectory()
    @Option(help: "Write a Markdown and JSON report with this path prefix (e.g. reports/add-column-cost).") var report: String?

    /// Counts what the core hands to the log and acknowledges it at once; keeps the payloads while `keeping`.
    final class CountingLog: ReplicationLog {
        var messages = 0
        var bytes = 0
        var tokens: [Int64] = []
        var keeping = false
        var kept: [(shard: Int, payload: [UInt8])] = []
        func publish(_ message: OutgoingMessage) {
            messages += 1
            bytes += message.payload.count
            tokens.append(message.token)
            if keeping { kept.append((message.shard, message.payload)) }
        }
        func subscribe(shard: Int, fromSequence: UInt64) {}
        func ack(shard: Int, sequence: UInt64) {}
        func nak(shard: Int, sequence: UInt64, delayMs: Int64) {}
        func requestStreamState(shard: Int) {}
    }

    func run() throws {
        let id = UUID().uuidString
        let paths = [1, 2].map { (directory as NSString).appendingPathComponent("harmonybench-addcolumn-\(id)-\($0).db") }
        defer { for path in paths { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } } }
        // Two nodes with the same rows (each its own copy, as after a migration by file copy).
        var apps: [Database] = []
        for path in paths {
            let app = try SQLiteOpener().open(path: path)
            try app.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, qty INTEGER, price REAL)")
            try app.transaction(.immediate) {
                let insert = try app.prepare("INSERT INTO items VALUES (?, ?, ?, ?)")
                for i in 1...rows { try insert.execute([.integer(Int64(i)), .text("item \(i)"), .integer(Int64(i % 97)), .real(Double(i) / 7)]) }
            }
            apps.append(app)
        }
        let app = apps[0]
        func node(_ i: Int, _ log: CountingLog) -> ReplicationNode {
            var config = NodeConfig(nodeID: Int64(i + 1), databasePath: paths[i])
            config.replicate = i == 1
            config.publish = i == 0
            config.publishInFlightMax = 1 << 20
            config.scanMaxChanges = 4_096
            return ReplicationNode(config: config, environment: NodeEnvironment(clock: ManualClock(), log: log, opener: SQLiteOpener()))
        }
        let log = CountingLog()
        let core = node(0, log)
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

        let receiver = node(1, CountingLog())
        try receiver.start()
        for shard in receiver.router.shards { receiver.streamStateArrived(shard: shard, StreamState(firstSequence: 1, lastSequence: 0)) }

        let alterStart = Date()
        try app.execute("ALTER TABLE items ADD COLUMN note TEXT DEFAULT 'none'")
        let alterSeconds = Date().timeIntervalSince(alterStart)
        log.keeping = true
        let after = try drain()
        log.keeping = false
        let afterRecords = try log.kept.flatMap { try EnvelopeCodec.decodeAll($0.payload) }
        let rowsResent = afterRecords.filter { $0.table != Bookkeeping.ddlTable }.count
        // The other node applies what was published: the DDL, on its own 1,000,000 rows.
        let applyStart = Date()
        for (i, message) in log.kept.enumerated() {
            try receiver.messagesArrived(shard: message.shard, [IncomingMessage(sequence: UInt64(i + 1), payload: message.payload)])
        }
        let applySeconds = Date().timeIntervalSince(applyStart)
        let receiverSQL = try apps[1].scalar("SELECT sql FROM sqlite_schema WHERE name = 'items'")?.string ?? ""
        let senderSQL = try app.scalar("SELECT sql FROM sqlite_schema WHERE name = 'items'")?.string ?? ""
        // One ordinary write afterwards, to show the new column travels.
        try app.execute("UPDATE items SET note = 'changed' WHERE id = 1")
        let write = try drain()
        core.stop()
        receiver.stop()

        func mib(_ b: Int) -> String { String(format: "%.1f MiB", Double(b) / 1_048_576) }
        let text = """
            # ALTER TABLE ADD COLUMN on a captured table of \(rows) rows

            Command: `swift build -c release --product harmonybench && .build/release/harmonybench add-column --rows \(rows)`
            Machine: \(ProcessInfo.processInfo.activeProcessorCount) cores. The core publishes to a log that counts and acknowledges at once;
            a second node with its own copy of the rows applies what was published.

            | step | messages | bytes | time |
            |---|---|---|---|
            | first install (every existing row captured once, below any real write) | \(first.messages) | \(mib(first.bytes)) | \(String(format: "%.2f s", firstSeconds)) |
            | ALTER TABLE items ADD COLUMN note (SQLite) | | | \(String(format: "%.3f s", alterSeconds)) |
            | after the ALTER: capture re-installed, pending changes published (the DDL; rows re-sent: \(rowsResent)) | \(after.messages) | \(after.bytes) B | \(String(format: "%.3f s", after.seconds)) |
            | the other node applies it to its \(rows) rows (same `sqlite_schema` text after: \(receiverSQL == senderSQL ? "yes" : "NO")) | | | \(String(format: "%.3f s", applySeconds)) |
            | one UPDATE of the new column | \(write.messages) | \(write.bytes) B | \(String(format: "%.3f s", write.seconds)) |

            """
        print(text)
        if let report {
            try text.write(toFile: report + ".md", atomically: true, encoding: .utf8)
            let json = """
                {"rows": \(rows), "first_install": {"messages": \(first.messages), "bytes": \(first.bytes), "seconds": \(firstSeconds)},
                 "alter_seconds": \(alterSeconds), "after_alter": {"messages": \(after.messages), "bytes": \(after.bytes), "seconds": \(after.seconds), "rows_resent": \(rowsResent)},
                 "receiver_apply_seconds": \(applySeconds), "receiver_schema_matches": \(receiverSQL == senderSQL),
                 "one_update": {"messages": \(write.messages), "bytes": \(write.bytes)}}
                """
            try json.write(toFile: report + ".json", atomically: true, encoding: .utf8)
        }
        guard rowsResent == 0, afterRecords.count == 1 else {
            throw ValidationError("ADD COLUMN published \(afterRecords.count) records, \(rowsResent) of them rows (\(after.bytes) bytes)")
        }
        guard receiverSQL == senderSQL else { throw ValidationError("the other node's table is \(receiverSQL), not \(senderSQL)") }
    }
}
