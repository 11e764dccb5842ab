import ArgumentParser
import Foundation
import HarmonyRuntime
import HarmonySQLite
import Synchronization

/// What a bulk import costs the application that makes it: how long its next small writes wait for SQLite's write
/// lock while the sidecar does the import's bookkeeping (stamping it, publishing it, deleting what was published).
struct ImportBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "import",
        abstract: "A bulk import in one transaction, then the application's single-row writes: their waits for the write lock.")

    @Option(help: "Rows the application imports in one transaction on node 1.") var rows = 1_000_000
    @Option(help: "harmonylite processes (the others receive the import).") var nodes = 1
    @Option(help: "How long the application keeps writing single rows after the import, one every 10 ms.") var seconds = 8.0
    @Option(help: "Path to the harmonylite binary.") var binary = ".build/release/harmonylite"
    @Option(help: "Report path prefix (Markdown and JSON).") var report: String?
    @Option(help: "config.toml lock_batch_rows of every node (default: harmonylite's).") var lockBatchRows: Int?
    @Option(help: "config.toml lock_pause_ms of every node (default: harmonylite's).") var lockPauseMs: Int?

    func validate() throws {
        guard rows >= 1 else { throw ValidationError("--rows takes a positive number of rows") }
        guard (1...5).contains(nodes) else { throw ValidationError("--nodes takes 1 to 5 harmonylite processes") }
        guard seconds > 0 && seconds <= 600 else { throw ValidationError("--seconds takes a duration from 0 to 600 s") }
        if let lockBatchRows, lockBatchRows < 1 { throw ValidationError("--lock-batch-rows takes a positive number of rows") }
        if let lockPauseMs, lockPauseMs < 0 { throw ValidationError("--lock-pause-ms takes 0 or more milliseconds") }
    }

    /// The bookkeeping settings given, as config.toml lines, and as they read in the report's command.
    var lockSettings: (toml: String, flags: String) {
        let keys = [lockBatchRows.map { ("lock_batch_rows", $0) }, lockPauseMs.map { ("lock_pause_ms", $0) }].compactMap { $0 }
        return (keys.map { "\($0.0) = \($0.1)" }.joined(separator: "\n"),
                keys.map { " --\($0.0.replacingOccurrences(of: "_", with: "-")) \($0.1)" }.joined())
    }

    struct Write {
        var atSeconds: Double
        var lockWaitMs: Double
        var totalMs: Double
    }

    func run() throws {
        let cluster = try BenchCluster(nodes: nodes, shards: 1,
                                       schema: "CREATE TABLE bench (id INTEGER PRIMARY KEY, name TEXT NOT NULL, value REAL)",
                                       binary: binary, settings: lockSettings.toml)
        defer { cluster.stop() }
        // The application's connection, as an application opens it (SQLite's busy handler, waiting up to 5 s).
        let app = try SQLiteOpener().open(path: cluster.dbPath(1))
        let insert = try app.prepare("INSERT INTO bench (id, name, value) VALUES (?, ?, ?)")
        let start = Date()
        try app.transaction {
            for id in 0..<rows { try insert.execute([.integer(Int64(id)), .text("row-\(id)"), .real(Double(id) / 3)]) }
        }
        let imported = Date().timeIntervalSince(start)
        // With other nodes: when node 2 first sees the first small write after the import (its own thread, so the
        // writes below keep their pace).
        let firstSmallSeen = Mutex<Double?>(nil)
        let stopWatching = Mutex(false)
        let watcherDone = DispatchSemaphore(value: 0)
        let node2 = nodes > 1 ? cluster.dbPath(2) : nil
        let firstSmall = Int64(rows)
        let watcher = Thread {
            defer { watcherDone.signal() }
            guard let node2, let db = try? SQLiteOpener().open(path: node2) else { return }
            while !stopWatching.withLock({ $0 }) {
                if (try? db.scalar("SELECT count(*) FROM bench WHERE id = ?", [.integer(firstSmall)])?.int64) == 1 {
                    firstSmallSeen.withLock { $0 = Date().timeIntervalSince(start) - imported }
                    return
                }
                usleep(10_000)
            }
        }
        watcher.start()
        var writes: [Write] = []
        var nextID = Int64(rows)
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            let t0 = DispatchTime.now().uptimeNanoseconds
            try app.execute("BEGIN IMMEDIATE")
            let t1 = DispatchTime.now().uptimeNanoseconds
            try insert.execute([.integer(nextID), .text("small"), .real(0)])
            try app.execute("COMMIT")
            let t2 = DispatchTime.now().uptimeNanoseconds
            nextID += 1
            writes.append(Write(atSeconds: Date().timeIntervalSince(start) - imported, lockWaitMs: Double(t1 - t0) / 1e6, totalMs: Double(t2 - t0) / 1e6))
            usleep(10_000)
        }
        var everywhere: Double?
        if nodes > 1 {
            let readers = try (2...nodes).map { try SQLiteOpener().open(path: cluster.dbPath($0)) }
            try waitFor(seconds: 300, "the other nodes to have the import") {
                try readers.allSatisfy { try $0.scalar("SELECT count(*) FROM bench")?.int64 == nextID }
            }
            everywhere = Date().timeIntervalSince(start)
        }
        stopWatching.withLock { $0 = true }
        watcherDone.wait()
        let smallVisible = firstSmallSeen.withLock { $0 }
        let waits = writes.map(\.lockWaitMs)
        let longest = writes.sorted { $0.lockWaitMs > $1.lockWaitMs }.prefix(3)
        let longestWhole = writes.max { $0.totalMs < $1.totalMs }
        let machine = machineDescription()
        let text = """
            # A bulk import and the application's next writes

            Command: `harmonybench import --rows \(rows) --nodes \(nodes) --seconds \(seconds)\(lockSettings.flags)`
            Machine: \(machine). One nats-server and \(nodes) harmonylite process(es) on it.
            The application imports \(rows) rows in one transaction on node 1 (\(String(format: "%.2f", imported)) s, capture triggers
            included), then writes one row every 10 ms for \(seconds) s: BEGIN IMMEDIATE (timed: its wait for SQLite's write
            lock, which the sidecar holds while it stamps, publishes and cleans up after the import), INSERT, COMMIT.

            | figure | value |
            |---|---|
            | single-row writes after the import | \(writes.count) |
            | wait for the write lock, p50 / p99 / max | \(msText(percentile(waits, 50))) / \(msText(percentile(waits, 99))) / \(msText(waits.max() ?? .nan)) ms |
            | the three longest waits (ms, at seconds after the import) | \(longest.map { "\(msText($0.lockWaitMs)) at +\(String(format: "%.2f", $0.atSeconds)) s" }.joined(separator: ", ")) |
            | longest whole write (wait, insert, commit with any checkpoint) | \(msText(longestWhole?.totalMs ?? .nan)) ms |
            \(smallVisible.map { "| the first small write after the import, seen on node 2 | \(String(format: "%.2f", $0)) s after the import committed |\n" } ?? "")\
            \(everywhere.map { "| every node has the import and the small writes | \(String(format: "%.2f", $0)) s after the import began |\n" } ?? "")
            """
        print(text)
        if let report {
            try text.write(toFile: report + ".md", atomically: true, encoding: .utf8)
            try """
                {"rows": \(rows), "nodes": \(nodes), "import_s": \(String(format: "%.3f", imported)), "writes": \(writes.count),
                 "lock_wait_ms": {"p50": \(msText(percentile(waits, 50))), "p99": \(msText(percentile(waits, 99))), "max": \(msText(waits.max() ?? .nan))},
                 "longest_write_ms": \(msText(longestWhole?.totalMs ?? .nan))\(smallVisible.map { ", \"first_small_write_visible_s\": \(String(format: "%.2f", $0))" } ?? "")\(everywhere.map { ", \"everywhere_s\": \(String(format: "%.2f", $0))" } ?? "")}
                """.write(toFile: report + ".json", atomically: true, encoding: .utf8)
        }
    }
}
