import ArgumentParser
import Foundation
import HarmonyCore
import HarmonyRuntime
import HarmonySQLite
import Synchronization

/// End-to-end figures for the live sidecar: throughput of a bulk load and commit-to-visible delay.
struct LiveBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "live",
        abstract: "3 harmonylite processes on one nats-server: bulk-load throughput and commit-to-visible latency.")

    @Option(help: "Rows inserted on node 1 (in transactions of --batch rows).") var rows = 100_000
    @Option(help: "Rows per transaction.") var batch = 1_000
    @Option(help: "Single-row latency samples per phase.") var samples = 200
    @Option(help: "Shards.") var shards = 4
    @Option(help: "Path to the harmonylite binary.") var binary = ".build/release/harmonylite"
    @Option(help: "Report path prefix (Markdown and JSON).") var report: String?

    func run() throws {
        let cluster = try BenchCluster(nodes: 3, shards: shards,
                                       schema: "CREATE TABLE bench (id INTEGER PRIMARY KEY, name TEXT NOT NULL, value REAL, at INTEGER)",
                                       binary: binary)
        defer { cluster.stop() }
        let dir = cluster.directory
        let dbs = try (1...3).map { try SQLiteOpener().open(path: cluster.dbPath($0)) }

        var nextID: Int64 = 10_000_000
        let idle = try latencies(dbs, count: samples, nextID: &nextID)
        print("idle latency: p50 \(msText(percentile(idle, 50))) ms, p99 \(msText(percentile(idle, 99))) ms")

        // Node 2's checkpoints sum to the messages the log delivered on every stream: messages per row.
        let messagesBefore = try loggedMessages(dbs[1])
        // Bulk load on node 1 while a second thread samples latency from node 1 to node 2.
        let start = Date()
        let loaderDone = Mutex<Double?>(nil)
        let loader = Thread {
            defer { loaderDone.withLock { $0 = Date().timeIntervalSince(start) } }
            do {
                let db = try SQLiteOpener().open(path: "\(dir)/node1.db")
                let insert = try db.prepare("INSERT INTO bench (id, name, value) VALUES (?, ?, ?)")
                for b in 0..<(rows / batch) {
                    try db.transaction {
                        for k in 0..<batch {
                            let id = Int64(b * batch + k)
                            try insert.execute([.integer(id), .text("row-\(id)"), .real(Double(id) / 3)])
                        }
                    }
                }
            } catch { print("loader: \(error)") }
        }
        // Completion is watched on its own thread, so the latency sampler below cannot stretch the measured time.
        let nodeDone = Mutex<[Double?]>([nil, nil, nil])
        let watcher = Thread {
            do {
                let readers = try (1...3).map { try SQLiteOpener().open(path: "\(dir)/node\($0).db") }
                let deadline = Date().addingTimeInterval(300)
                while Date() < deadline, nodeDone.withLock({ $0.contains(nil) }) {
                    for (i, db) in readers.enumerated() where nodeDone.withLock({ $0[i] == nil }) {
                        if try db.scalar("SELECT count(*) FROM bench WHERE id < 10000000")?.int64 == Int64(rows) {
                            let t = Date().timeIntervalSince(start)
                            nodeDone.withLock { $0[i] = t }
                        }
                    }
                    // Every 100 ms: counting the rows of three databases takes CPU the nodes share on a small machine.
                    Thread.sleep(forTimeInterval: 0.1)
                }
            } catch { print("watcher: \(error)") }
        }
        loader.start()
        watcher.start()
        // Probes only while the bulk load is still replicating: that is what "under load" means.
        var loaded = try latencies(dbs, count: samples, nextID: &nextID, stopWhen: {
            !nodeDone.withLock { $0.contains(nil) } || Date().timeIntervalSince(start) > 300
        })
        try waitFor(seconds: 300, "every node to have the bulk rows") { !nodeDone.withLock { $0.contains(nil) } }
        let done = nodeDone.withLock { $0.compactMap { $0 } }
        try waitFor(seconds: 30, "node 2 to apply the probes") { try dbs[1].scalar("SELECT count(*) FROM bench WHERE id >= 10000000")?.int64 == nextID - 10_000_000 }
        let bulkMessages = try loggedMessages(dbs[1]) - messagesBefore - loaded.count
        let messagesPerRow = String(format: "%.4f", Double(bulkMessages) / Double(rows))
        let elapsed = done.max()!
        // Where the time goes: the application's own inserts (with capture triggers) versus replication behind them.
        print(String(format: "loader committed everything at %.2f s; nodes complete at %@ s",
                     loaderDone.withLock { $0 } ?? .nan, done.map { String(format: "%.2f", $0) }.joined(separator: ", ")))
        let rate = Double(rows) / elapsed
        if loaded.isEmpty { loaded = [0] }
        print(String(format: "bulk: %d rows in %.2f s = %.0f rows/s end to end (every node has every row)", rows, elapsed, rate))
        print("messages per bulk row: \(messagesPerRow) (\(bulkMessages) messages)")
        print("latency under load: p50 \(msText(percentile(loaded, 50))) ms, p99 \(msText(percentile(loaded, 99))) ms (\(loaded.count) samples)")
        let machine = "\(ProcessInfo.processInfo.activeProcessorCount) cores"
        let rss = cluster.peakRSSMegabytes()
        print("peak RSS per node: \(rssText(rss))")
        let text = """
            # Live replication: throughput and visibility delay

            Command: `swift build -c release && .build/release/harmonybench live --rows \(rows) --batch \(batch) --shards \(shards)`
            Setup: one nats-server (JetStream, file store) and 3 harmonylite processes on this machine (\(machine)), \(shards) shards.
            Bulk: \(rows) rows inserted on node 1 in \(batch)-row transactions; timed until all 3 nodes have every row.
            Latency: a single-row commit on node 1 until a reader on node 2 sees it (polling every 0.2 ms), up to \(samples) samples;
            under load, probes are taken only until every node has the bulk rows.
            The application committed all bulk rows (with capture triggers) after \(String(format: "%.2f", loaderDone.withLock { $0 } ?? .nan)) s;
            the nodes had them all after \(done.map { String(format: "%.2f", $0) }.joined(separator: ", ")) s. Publishing is first in,
            first out, so a probe committed behind that backlog waits for it: that wait is the latency under load.

            | figure | value | target |
            |---|---|---|
            | end-to-end throughput | \(String(format: "%.0f", rate)) rows/s | ≥ 20,000 rows/s |
            | latency at idle, p50 | \(msText(percentile(idle, 50))) ms | < 10 ms |
            | latency at idle, p99 | \(msText(percentile(idle, 99))) ms | < 50 ms |
            | latency under load, p50 | \(msText(percentile(loaded, 50))) ms | |
            | latency under load, p99 | \(msText(percentile(loaded, 99))) ms | |
            | peak RSS per node (VmHWM) | \(rssText(rss)) | ≤ 64 MiB at 1M rows |
            | log messages per bulk row | \(messagesPerRow) | |

            """
        print(text)
        if let report {
            try text.write(toFile: report + ".md", atomically: true, encoding: .utf8)
            try """
                {"rows": \(rows), "batch": \(batch), "shards": \(shards), "rows_per_s": \(Int(rate)),
                 "idle_ms": {"p50": \(msText(percentile(idle, 50))), "p99": \(msText(percentile(idle, 99)))},
                 "load_ms": {"p50": \(msText(percentile(loaded, 50))), "p99": \(msText(percentile(loaded, 99)))},
                 "messages_per_row": \(messagesPerRow), "peak_rss_mib": [\(rss.map { String(format: "%.1f", $0) }.joined(separator: ", "))]}
                """.write(toFile: report + ".json", atomically: true, encoding: .utf8)
        }
    }

    /// Messages the log has delivered to this node on all its streams (its checkpoints are stream sequences).
    func loggedMessages(_ db: Database) throws -> Int {
        Int(try db.scalar("SELECT coalesce(sum(seq), 0) FROM \(Bookkeeping.checkpointTable)")?.int64 ?? 0)
    }

    /// Commit one row on node 1, time until node 2 can read it.
    func latencies(_ dbs: [Database], count: Int, nextID: inout Int64, stopWhen: () -> Bool = { false }) throws -> [Double] {
        var out: [Double] = []
        let reader = try dbs[1].prepare("SELECT 1 FROM bench WHERE id = ?")
        for _ in 0..<count {
            if stopWhen() { break }
            let id = nextID
            nextID += 1
            let t0 = DispatchTime.now().uptimeNanoseconds
            try dbs[0].execute("INSERT INTO bench (id, name, at) VALUES (?, 'probe', 0)", [.integer(id)])
            let deadline = t0 + 10_000_000_000
            while DispatchTime.now().uptimeNanoseconds < deadline {
                if try !reader.query([.integer(id)]).isEmpty { break }
                usleep(200)
            }
            out.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
            usleep(20_000)
        }
        return out
    }
}

func percentile(_ xs: [Double], _ p: Double) -> Double {
    let s = xs.sorted()
    guard !s.isEmpty else { return .nan }
    return s[min(s.count - 1, Int(Double(s.count - 1) * p / 100 + 0.5))]
}

func msText(_ x: Double) -> String { String(format: "%.1f", x) }
