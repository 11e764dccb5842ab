import ArgumentParser
import Foundation

/// The live counterpart of `harmonysim bench ... --find-rate`: at each offered rate, every node's application writes
/// single-row upserts for a while, and the rate is kept up with when the cluster settles within a tenth of that time
/// (at least 1 s) once the writes stop, the model's criterion.
struct RateBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rate",
        abstract: "Offer single-row writes at rising rates on every node; report which rates the cluster keeps up with.")

    @Option(help: "Offered rates, writes per second over all three nodes, comma-separated.") var rates = "300,600,1200,1800,2400"
    @Option(help: "Keys the writers share: 10 for the hot-keys shape, 100000 for uniform.") var keys = 10
    @Option(help: "Tables the writes spread over (kv, kv2 ...), each write to one drawn evenly: 20 for the many-tables shape.") var tables = 1
    @Option(help: "Shards.") var shards = 1
    @Option(help: "Seconds of writing at each rate.") var seconds = 10.0
    @Option(help: "Path to the harmonylite binary.") var binary = ".build/release/harmonylite"
    @Option(help: "Report path prefix (Markdown and JSON).") var report: String?
    @Flag(name: .customLong("no-hints"), help: "Run the nodes with replication_log.hints = false.") var noHints = false

    struct Run {
        var offered: Int
        var written: Int
        var settledMs: Double?
        var keptUp: Bool
        /// What each written row cost, from the writes' start until every node was equal: CPU time (µs) of the three
        /// harmonylite processes and nats-server, messages the log stored, and transactions each applying node made.
        var cpuPerRowUs: [Double]
        var messagesPerRow: Double
        var applyBatchesPerRow: Double
        /// The application's average wait for the write lock, and how long each write then held it (µs).
        var lockWaitUs: Double
        var lockHoldUs: Double
    }

    func run() throws {
        let offered = rates.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }.filter { $0 > 0 }
        guard !offered.isEmpty, seconds > 0 else { throw ValidationError("give at least one positive rate and a positive --seconds") }
        guard (1...100).contains(tables) else { throw ValidationError("--tables must be between 1 and 100, got \(tables)") }
        let settleLimitMs = max(1_000, seconds * 100)
        var runs: [Run] = []
        for rate in offered {
            let cluster = try BenchCluster(nodes: 3, shards: shards, schema: BenchTables.schema(tables),
                                           binary: binary, hints: !noHints, metrics: true)
            defer { cluster.stop() }
            let batchesBefore = try cluster.appliedBatches()
            let cpuBefore = try cluster.cpuSeconds()
            let writers = BenchWriters.offering(rate, on: cluster, keys: keys, tables: tables)
            Thread.sleep(forTimeInterval: seconds)
            try writers.stop()
            let stopped = Date()
            let check = try BenchReaders(cluster: cluster, nodes: 1...3, tables: tables)
            var settled: Double? = nil
            do {
                try waitFor(seconds: 120, "every node to hold the same rows once the writes stop") { try check.allEqual }
                settled = Date().timeIntervalSince(stopped) * 1000
            } catch {
                cluster.keep = true
            }
            let rows = Double(max(1, writers.written))
            let cpu: [Double] = zip(try cluster.cpuSeconds(), cpuBefore).map { ($0 - $1) / rows * 1e6 }
            let batches = Double(zip(try cluster.appliedBatches(), batchesBefore).map { $0 - $1 }.reduce(0, +))
            let messages = try cluster.storedMessages()
            let hints = Double(try cluster.appliedHints().reduce(0, +))
            let keptUp = settled.map { $0 <= settleLimitMs } ?? false
            let run = Run(offered: rate, written: writers.written, settledMs: settled, keptUp: keptUp,
                          cpuPerRowUs: cpu, messagesPerRow: messages / rows, applyBatchesPerRow: batches / 3 / rows,
                          lockWaitUs: writers.averageLockWaitUs, lockHoldUs: writers.averageLockHoldUs)
            let outcome: String = settled.map { String(format: "every node equal %.0f ms after the writes stopped", $0) }
                ?? "not equal within 120 s (kept \(cluster.directory))"
            let costs = String(format: "; application write waited %.0f µs for the lock, held it %.0f µs; per row: %.3f messages, %.3f applied transactions and %.4f hints applied per node, CPU µs ",
                               run.lockWaitUs, run.lockHoldUs, run.messagesPerRow, run.applyBatchesPerRow, hints / 3 / rows)
                + cpu.map { String(format: "%.0f", $0) }.joined(separator: " / ") + " (nodes 1-3 / nats-server)"
            print("offered \(rate) writes/s: \(run.written) written (\(Int(Double(run.written) / seconds)) rows/s); " + outcome + costs)
            runs.append(run)
        }
        let best = runs.filter(\.keptUp).map { Int(Double($0.written) / seconds) }.max()
        let lines = runs.map { r in
            "| \(r.offered) | \(Int(Double(r.written) / seconds)) | \(r.settledMs.map { String(format: "%.0f ms", $0) } ?? "not in 120 s") | \(r.keptUp ? "yes" : "no") | "
                + String(format: "%.0f / %.0f µs | %.3f | %.3f | ", r.lockWaitUs, r.lockHoldUs, r.messagesPerRow, r.applyBatchesPerRow)
                + r.cpuPerRowUs.map { String(format: "%.0f", $0) }.joined(separator: " / ") + " |"
        }
        let text = """
            # Sustainable write rate, live

            Command: `swift build -c release && .build/release/harmonybench rate --rates \(rates) --keys \(keys)\(tables > 1 ? " --tables \(tables)" : "") --shards \(shards) --seconds \(seconds)\(noHints ? " --no-hints" : "")`
            Machine: \(machineDescription()); SQLite \(sqliteVersion()); one nats-server and 3 harmonylite processes on it.
            Every node's application upserts random keys of \(keys)\(tables > 1 ? " in one of \(tables) tables drawn evenly" : "") (single-row autocommit, WAL, synchronous=FULL) at a third
            of the offered rate, open loop, for \(seconds) s. Kept up with: every node holds the same rows within
            \(Int(settleLimitMs)) ms of the writes stopping (a tenth of the writing, at least 1 s: `--find-rate`'s criterion).

            Application write: how long one upsert (BEGIN IMMEDIATE, the upsert, COMMIT) waited for SQLite's write lock,
            and how long it then held it, fsync included (averages).
            Per row written, from the writes' start until every node was equal: messages the log stored, transactions each
            applying node made (average of the three), and CPU time of each harmonylite process and of nats-server.

            | offered writes/s | rows written/s | every node equal after the writes stop | kept up | application write: lock wait / held | messages per row | applied transactions per row | CPU µs per row: nodes 1 / 2 / 3 / nats-server |
            |---|---|---|---|---|---|---|---|
            \(lines.joined(separator: "\n"))

            Highest rate kept up with: \(best.map { "\($0) rows/s" } ?? "none of those offered").

            """
        print(text)
        if let report {
            try text.write(toFile: report + ".md", atomically: true, encoding: .utf8)
            let json = runs.map { r in
                #"{"offered": \#(r.offered), "written": \#(r.written), "settled_ms": \#(r.settledMs.map { String(Int($0)) } ?? "null"), "kept_up": \#(r.keptUp), "lock_wait_us": \#(Int(r.lockWaitUs)), "lock_hold_us": \#(Int(r.lockHoldUs)), "#
                + #""messages_per_row": \#(r.messagesPerRow), "applied_transactions_per_row": \#(r.applyBatchesPerRow), "#
                + #""cpu_us_per_row": [\#(r.cpuPerRowUs.map { String(format: "%.1f", $0) }.joined(separator: ", "))]}"#
            }
            try ("[" + json.joined(separator: ",\n ") + "]\n").write(toFile: report + ".json", atomically: true, encoding: .utf8)
        }
    }
}
