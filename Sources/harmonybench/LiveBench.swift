import ArgumentParser
import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonyNATS
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
    @Flag(help: "Print each probe's commit time and its delay to the log, in commit order, and the bulk rows the log stored and node 2 had in each 100 ms.") var probeTimes = false
    @Flag(name: .customLong("no-hints"), help: "Run the nodes with replication_log.hints = false (the baseline for hints).") var noHints = false
    @Flag(help: "Run the nodes with replication_log.compress = true (zstd), as the seeds' production configuration does.") var compress = false
    @Option(help: "replication_log.max_entries of every node: 0 is no limit; harmonylite's default is 1024.") var maxEntries = 0
    @Option(help: "Node the single-row probes are committed on: 1 shares the bulk writer's SQLite file (and its write lock), 3 does not. Node 2 reads them.")
    var probeNode = 1

    func validate() throws {
        guard probeNode == 1 || probeNode == 3 else {
            throw ValidationError("--probe-node takes 1 (the bulk writer's node) or 3 (another node); node 2 is where probes are read")
        }
    }

    func run() throws { _ = try measure() }

    /// What `calibrate` takes from a live run: the benchmark's own probes and watchers share the cores with the
    /// nodes, so the cost model charges them (`observer_us_per_ms`).
    struct Figures {
        var rowsPerSecond: Double
        /// CPU of this process beyond the loader's inserts, per millisecond of the bulk load's replication.
        var observerUsPerMs: Double
    }

    /// Runs the benchmark; prints and writes the report unless `quiet`.
    func measure(quiet: Bool = false) throws -> Figures {
        let say: (String) -> Void = { if !quiet { print($0) } }
        let cluster = try BenchCluster(nodes: 3, shards: shards,
                                       schema: "CREATE TABLE bench (id INTEGER PRIMARY KEY, name TEXT NOT NULL, value REAL, at INTEGER)",
                                       binary: binary, hints: !noHints, compress: compress, maxEntries: maxEntries, metrics: true)
        defer { cluster.stop() }
        let dir = cluster.directory
        let dbs = try (1...3).map { try SQLiteOpener().open(path: cluster.dbPath($0)) }

        var nextID: Int64 = 10_000_000
        let idle = try latencies(dbs, count: samples, nextID: &nextID)
        say("idle latency: p50 \(msText(percentile(idle, 50))) ms, p99 \(msText(percentile(idle, 99))) ms")

        // Node 2's checkpoints sum to the messages the log delivered on every stream: messages per row.
        let messagesBefore = try loggedMessages(dbs[1])
        // Bulk load on node 1 while a second thread samples latency from the probe node to node 2.
        let cpuBefore = try cluster.cpuSeconds()
        let benchCPUBefore = Calibrate.cpuSeconds(getpid())
        let start = Date(), startUptimeNs = DispatchTime.now().uptimeNanoseconds
        let loaderDone = Mutex<Double?>(nil)
        // The loader's own CPU, apart from the probes' and watchers': the application's share of this process.
        let loaderCPU = Mutex<Double>(0)
        let loader = Thread {
            let cpuStart = threadCPUSeconds()
            defer {
                loaderCPU.withLock { $0 = threadCPUSeconds() - cpuStart }
                loaderDone.withLock { $0 = Date().timeIntervalSince(start) }
            }
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
        // Node 2's run of bulk rows at each of the watcher's looks (seconds from the start, rows): a receiver's pace.
        let node2Rows = Mutex<[(seconds: Double, rows: Int64)]>([])
        let watcher = Thread {
            do {
                let readers = try (1...3).map { try SQLiteOpener().open(path: "\(dir)/node\($0).db") }
                let deadline = Date().addingTimeInterval(300)
                // Each node's lowest id not seen yet: every look reads on from there, never the rows it already saw
                // (counting every row of three databases every 100 ms read up to 3 million rows a look on the cores
                // the nodes share). Rows only arrive, so the watermark only moves up.
                var seenBelow = [Int64](repeating: 0, count: 3)
                // In id order, stopping at the first id whose successor is missing: it reads only the run's new rows.
                let gap = "SELECT b.id + 1 FROM bench b WHERE b.id >= ? AND b.id < ? AND NOT EXISTS (SELECT 1 FROM bench c WHERE c.id = b.id + 1) ORDER BY b.id LIMIT 1"
                while Date() < deadline, nodeDone.withLock({ $0.contains(nil) }) {
                    for (i, db) in readers.enumerated() where nodeDone.withLock({ $0[i] == nil }) {
                        guard try db.scalar("SELECT count(*) FROM bench WHERE id = ?", [.integer(seenBelow[i])])?.int64 == 1 else { continue }
                        // The end of the run of ids that starts at the watermark (the bulk ids are 0..<rows).
                        seenBelow[i] = try db.scalar(gap, [.integer(seenBelow[i]), .integer(Int64(rows))])?.int64 ?? seenBelow[i]
                        if i == 1 { node2Rows.withLock { $0.append((Date().timeIntervalSince(start), seenBelow[1])) } }
                        if seenBelow[i] >= Int64(rows) {
                            let t = Date().timeIntervalSince(start)
                            nodeDone.withLock { $0[i] = t }
                        }
                    }
                    Thread.sleep(forTimeInterval: 0.1)
                }
            } catch { print("watcher: \(error)") }
        }
        loader.start()
        watcher.start()
        // Probes only while the bulk load is still replicating: that is what "under load" means.
        let watch = try LogWatch(natsPort: cluster.nats.port, firstProbe: nextID)
        defer { watch.close() }
        // How long each probe's own INSERT took: the application waiting for its node's write lock.
        var commitWaits: [Double] = []
        var loaded = try latenciesUnderLoad(dbs, count: samples, nextID: &nextID, watch: watch, commitWaits: &commitWaits, stopWhen: {
            !nodeDone.withLock { $0.contains(nil) } || Date().timeIntervalSince(start) > 300
        })
        try cluster.waitWhileHealthy(seconds: 300, "every node to have the bulk rows") { !nodeDone.withLock { $0.contains(nil) } }
        let done = nodeDone.withLock { $0.compactMap { $0 } }
        // CPU per bulk row of each process (the probes' share is a few hundred rows against the load's).
        let cpuPerRow = zip(try cluster.cpuSeconds(), cpuBefore).map { ($0 - $1) / Double(rows) * 1e6 }
        let cpuText = cpuPerRow.map { String(format: "%.1f", $0) }.joined(separator: " / ")
        // This process shares the cores: the application's inserts (with capture triggers), probes and watchers.
        let benchCPUSeconds = Calibrate.cpuSeconds(getpid()) - benchCPUBefore, window = Date().timeIntervalSince(start)
        let benchCPU = benchCPUSeconds / Double(rows) * 1e6
        let loaderSeconds = loaderCPU.withLock { $0 }
        let loaderCPUPerRow = loaderSeconds / Double(rows) * 1e6
        let observerUsPerMs = (benchCPUSeconds - loaderSeconds) * 1e6 / (window * 1_000)
        let benchCPUText = String(format: "%.1f (the application's inserts %.1f; probes and watchers %.1f, which is %.0f µs a millisecond)",
                                  benchCPU, loaderCPUPerRow, benchCPU - loaderCPUPerRow, observerUsPerMs)
        try waitFor(seconds: 30, "node 2 to apply the probes") { try dbs[1].scalar("SELECT count(*) FROM bench WHERE id >= 10000000")?.int64 == nextID - 10_000_000 }
        let bulkMessages = try loggedMessages(dbs[1]) - messagesBefore - loaded.count
        let messagesPerRow = String(format: "%.4f", Double(bulkMessages) / Double(rows))
        let elapsed = done.max()!
        // Where the time goes: the application's own inserts (with capture triggers) versus replication behind them.
        say(String(format: "loader committed everything at %.2f s; nodes complete at %@ s",
                     loaderDone.withLock { $0 } ?? .nan, done.map { String(format: "%.2f", $0) }.joined(separator: ", ")))
        let rate = Double(rows) / elapsed
        if loaded.isEmpty { loaded = [0] }
        say(String(format: "bulk: %d rows in %.2f s = %.0f rows/s end to end (every node has every row)", rows, elapsed, rate))
        say("messages per bulk row: \(messagesPerRow) (\(bulkMessages) messages)")
        say("CPU per bulk row, node 1 / 2 / 3 / nats-server: \(cpuText) µs; this benchmark: \(benchCPUText) µs")
        say("latency under load: p50 \(msText(percentile(loaded, 50))) ms, p99 \(msText(percentile(loaded, 99))) ms (\(loaded.count) samples)")
        try watch.readStoredTimes(shards: shards)
        let toLog = watch.delays(\.onLog), toHint = watch.delays(\.hinted)
        let sentAll = watch.lastBulkStoredSeconds(after: startUptimeNs)
        say(String(format: "the log stored the last bulk message at %.2f s (the nodes had every row after %.2f s)", sentAll ?? .nan, elapsed))
        // Stored times are read from the streams after the load: with a limit, the probes' messages may be gone.
        let storedTimesMissing = maxEntries > 0 ? "the streams keep only their newest \(maxEntries) messages" : "no probe's message found on the streams"
        if probeTimes {
            watch.printProbeTimes()
            say("bulk rows the log stored per 100 ms: " + watch.bulkRowsStoredPer100Ms(after: startUptimeNs).map(String.init).joined(separator: " "))
            // The watcher looks about every 100 ms: the rows node 2 gained since the look before, at each look.
            let looks = node2Rows.withLock { $0 }
            let gained = zip(looks, [(seconds: 0.0, rows: Int64(0))] + looks).map { (seconds: $0.seconds, rows: Int($0.rows - $1.rows)) }
            say("bulk rows node 2 had per 100 ms (the watcher's looks, about every 100 ms): " + rowsPer100Ms(gained).map(String.init).joined(separator: " "))
        }
        say("  of which commit to stored on the log: \(toLog.isEmpty ? "n/a (\(storedTimesMissing))" : "p50 \(msText(percentile(toLog, 50))) ms, p99 \(msText(percentile(toLog, 99))) ms (\(toLog.count))"); to sent as a hint: p50 \(msText(percentile(toHint, 50))) ms, p99 \(msText(percentile(toHint, 99))) ms (\(toHint.count))")
        say("probe INSERT under load (the application's own commit, waiting for the write lock): p50 \(msText(percentile(commitWaits, 50))) ms, p99 \(msText(percentile(commitWaits, 99))) ms, max \(msText(commitWaits.max() ?? .nan)) ms")
        let hintsApplied = Int(try Calibrate.metric("harmonylite_hints_applied_total", directory: dir, port: cluster.metricsPorts[1]))
        say("hints applied on node 2: \(hintsApplied)\(noHints ? " (hints off)" : "")")
        let machine = "\(ProcessInfo.processInfo.activeProcessorCount) cores"
        let rss = cluster.peakRSSMegabytes()
        say("peak RSS per node: \(rssText(rss))")
        let figures = Figures(rowsPerSecond: rate, observerUsPerMs: observerUsPerMs)
        if quiet { return figures }
        let text = """
            # Live replication: throughput and visibility delay

            Command: `swift build -c release && .build/release/harmonybench live --rows \(rows) --batch \(batch) --shards \(shards) --samples \(samples)\(noHints ? " --no-hints" : "")\(compress ? " --compress" : "")\(probeNode == 1 ? "" : " --probe-node \(probeNode)")\(maxEntries == 0 ? "" : " --max-entries \(maxEntries)")`
            Setup: one nats-server (JetStream, file store) and 3 harmonylite processes on this machine (\(machine)), \(shards) shards.
            Bulk: \(rows) rows inserted on node 1 in \(batch)-row transactions; timed until all 3 nodes have every row.
            Latency: a single-row commit on node \(probeNode)\(probeNode == 1 ? " (the bulk writer's)" : " (not the bulk writer's)") until a reader on node 2 sees it, up to \(samples) samples. At idle one probe
            at a time (polling every 0.2 ms); under load one every 20 ms without waiting for the last (node 2 looked at every
            1 ms), only until every node has the bulk rows. Hints \(noHints ? "off" : "on"): \(hintsApplied) applied on node 2.\(compress ? " Messages compressed (zstd)." : "")
            The application committed all bulk rows (with capture triggers) after \(String(format: "%.2f", loaderDone.withLock { $0 } ?? .nan)) s;
            the nodes had them all after \(done.map { String(format: "%.2f", $0) }.joined(separator: ", ")) s. A probe goes out through the
            sender's priority lane ahead of its backlog and, as a hint, skips the receiver's; the time the server stored
            the message carrying each probe (read from the streams after the load) splits its delay between sender and receiver.

            | figure | value | target |
            |---|---|---|
            | end-to-end throughput | \(String(format: "%.0f", rate)) rows/s | ≥ 20,000 rows/s |
            | the log stored the last bulk message, the nodes had every row | \(String(format: "%.2f", sentAll ?? .nan)) s, \(String(format: "%.2f", elapsed)) s | |
            | latency at idle, p50 | \(msText(percentile(idle, 50))) ms | < 10 ms |
            | latency at idle, p99 | \(msText(percentile(idle, 99))) ms | < 50 ms |
            | latency under load, p50 | \(msText(percentile(loaded, 50))) ms | |
            | latency under load, p99 | \(msText(percentile(loaded, 99))) ms | < 100 ms |
            | latency under load, samples | \(loaded.count) | |
            | commit to stored on the log under load, p50 / p99 | \(toLog.isEmpty ? "n/a (\(storedTimesMissing))" : "\(msText(percentile(toLog, 50))) / \(msText(percentile(toLog, 99))) ms") | |
            | the probe's own INSERT under load, p50 / p99 / max | \(msText(percentile(commitWaits, 50))) / \(msText(percentile(commitWaits, 99))) / \(msText(commitWaits.max() ?? .nan)) ms | |
            | peak RSS per node (VmHWM) | \(rssText(rss)) | ≤ 64 MiB at 1M rows |
            | log messages per bulk row | \(messagesPerRow) | |
            | CPU per bulk row, node 1 / 2 / 3 / nats-server | \(cpuText) µs | |
            | CPU per bulk row of this benchmark | \(benchCPUText) µs | |

            """
        say(text)
        if let report {
            try text.write(toFile: report + ".md", atomically: true, encoding: .utf8)
            try """
                {"rows": \(rows), "batch": \(batch), "shards": \(shards), "rows_per_s": \(Int(rate)), "last_bulk_stored_s": \(String(format: "%.3f", sentAll ?? -1)),
                 "idle_ms": {"p50": \(msText(percentile(idle, 50))), "p99": \(msText(percentile(idle, 99)))},
                 "load_ms": {"p50": \(msText(percentile(loaded, 50))), "p99": \(msText(percentile(loaded, 99))), "samples": \(loaded.count)},
                 "probe_node": \(probeNode), "hints": \(!noHints), "compress": \(compress), "hints_applied": \(hintsApplied),
                 "probe_insert_ms": {"p50": \(jsonMs(commitWaits, 50)), "p99": \(jsonMs(commitWaits, 99))},
                 "stored_ms": {"p50": \(jsonMs(toLog, 50)), "p99": \(jsonMs(toLog, 99))},
                 "messages_per_row": \(messagesPerRow), "cpu_us_per_row": [\(cpuPerRow.map { String(format: "%.2f", $0) }.joined(separator: ", "))], "peak_rss_mib": [\(rss.map { String(format: "%.1f", $0) }.joined(separator: ", "))]}
                """.write(toFile: report + ".json", atomically: true, encoding: .utf8)
        }
        return figures
    }

    /// Messages the log has delivered to this node on all its streams (its checkpoints are stream sequences).
    func loggedMessages(_ db: Database) throws -> Int {
        Int(try db.scalar("SELECT coalesce(sum(seq), 0) FROM \(Bookkeeping.checkpointTable)")?.int64 ?? 0)
    }

    /// A single-row commit on the probe node every `intervalMs` (without waiting for the previous one to show up), each
    /// timed until a reader on node 2 sees it: a probe stuck behind a backlog does not hold back the next ones, so
    /// the samples cover the whole load. Stops committing when `stopWhen` says so, then waits up to 30 s for the rest.
    /// The reader has a thread of its own: a probe INSERT waiting for its node's write lock must not stop the clock
    /// on the probes already committed.
    func latenciesUnderLoad(_ dbs: [Database], count: Int, intervalMs: Double = 20, nextID: inout Int64, watch: LogWatch,
                            commitWaits: inout [Double], stopWhen: () -> Bool) throws -> [Double] {
        var committedAt: [Int64: UInt64] = [:]
        let first = nextID
        let committedBelow = Mutex<Int64>(first)
        let firstSeen = Mutex<[Int64: UInt64]>([:])
        let stopReading = Mutex(false)
        let readerDone = DispatchSemaphore(value: 0)
        let node2 = dbs[1].path
        let reader = Thread {
            defer { readerDone.signal() }
            do {
                let db = try SQLiteOpener().open(path: node2)
                let look = try db.prepare("SELECT id FROM bench WHERE id >= ? AND id < ?")
                // Every millisecond, for probes not seen yet (a hint can show them out of order): from the lowest id
                // not seen, so a look reads the few probes in flight, not every probe of the run.
                var unseenFrom = first, seenAbove = Set<Int64>()
                while !stopReading.withLock({ $0 }) {
                    let below = committedBelow.withLock { $0 }
                    let lookedAt = DispatchTime.now().uptimeNanoseconds
                    if unseenFrom < below {
                        var seenNow: [Int64] = []
                        for row in try look.query([.integer(unseenFrom), .integer(below)]) {
                            if let id = row[0].int64, !seenAbove.contains(id) { seenNow.append(id) }
                        }
                        if !seenNow.isEmpty {
                            firstSeen.withLock { for id in seenNow where $0[id] == nil { $0[id] = lookedAt } }
                            seenAbove.formUnion(seenNow)
                            while seenAbove.remove(unseenFrom) != nil { unseenFrom += 1 }
                        }
                    }
                    usleep(1_000)
                }
            } catch { print("probe reader: \(error)") }
        }
        reader.start()
        defer {
            stopReading.withLock { $0 = true }
            readerDone.wait()
        }
        var nextCommit: UInt64 = 0
        var giveUpAt = UInt64.max
        while true {
            let now = DispatchTime.now().uptimeNanoseconds
            let committing = committedAt.count < count && !stopWhen()
            if !committing {
                if firstSeen.withLock({ $0.count }) >= committedAt.count || now > giveUpAt { break }
                giveUpAt = min(giveUpAt, now + 30_000_000_000)
            } else if now >= nextCommit {
                // The loader takes the write lock back to back, and SQLite's busy handler is not fair: once in about
                // ten million-row runs a probe waited out the whole busy timeout (5 s). An application tries again;
                // so does the probe, and its wait counts in full.
                for attempt in 1...6 {
                    do {
                        try dbs[probeNode - 1].execute("INSERT INTO bench (id, name, at) VALUES (?, 'probe', 0)", [.integer(nextID)])
                        break
                    } catch let error as SQLiteError where error.isBusy && attempt < 6 {
                        FileHandle.standardError.write(Data("probe \(nextID): its INSERT met the busy timeout (attempt \(attempt)); trying again\n".utf8))
                    }
                }
                let committed = DispatchTime.now().uptimeNanoseconds
                committedAt[nextID] = committed
                commitWaits.append(Double(committed - now) / 1e6)
                watch.committed(nextID, atNs: committed)
                nextID += 1
                committedBelow.withLock { $0 = nextID }
                nextCommit = now + UInt64(intervalMs * 1e6)
            }
            // Until the next commit is due, at most 1 ms (waking every 0.2 ms cost the cores the nodes share).
            let later = DispatchTime.now().uptimeNanoseconds
            let untilNext = committing ? (nextCommit > later ? (nextCommit - later) / 1_000 : 0) : 1_000
            usleep(UInt32(max(100, min(1_000, untilNext))))
        }
        // A probe can be seen a moment before its INSERT returned here: zero, not negative.
        return firstSeen.withLock { seen in
            committedAt.sorted { $0.key < $1.key }.compactMap { id, t0 in
                seen[id].map { t in
                    watch.seen(id, atNs: max(t, t0))
                    return Double(max(t, t0) - t0) / 1e6
                }
            }
        }
    }

    /// Commit one row on the probe node, time until node 2 can read it.
    func latencies(_ dbs: [Database], count: Int, nextID: inout Int64, stopWhen: () -> Bool = { false }) throws -> [Double] {
        var out: [Double] = []
        let reader = try dbs[1].prepare("SELECT 1 FROM bench WHERE id = ?")
        for _ in 0..<count {
            if stopWhen() { break }
            let id = nextID
            nextID += 1
            let t0 = DispatchTime.now().uptimeNanoseconds
            try dbs[probeNode - 1].execute("INSERT INTO bench (id, name, at) VALUES (?, 'probe', 0)", [.integer(id)])
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

/// A percentile for a JSON report: null when there were no samples (`nan` is not JSON), as `kvwrite` writes it.
func jsonMs(_ samples: [Double], _ p: Double) -> String { samples.isEmpty ? "null" : msText(percentile(samples, p)) }

/// Rows counted at moments (seconds from a start), summed per 100 ms from that start up to the last.
func rowsPer100Ms(_ counts: [(seconds: Double, rows: Int)]) -> [Int] {
    var tenths: [Int] = []
    for (seconds, rows) in counts {
        let i = Int(seconds * 10)
        if tenths.count <= i { tenths += Array(repeating: 0, count: i + 1 - tenths.count) }
        tenths[i] += rows
    }
    return tenths
}

/// Where a probe's time goes: when the log stored the message carrying each probe row (read from the streams
/// after the load, with the time the server stored it), and when a plain NATS subscriber on the hint subjects saw
/// it go by, next to its commit time.
///
/// The stored times used to come from a subscriber on the change subjects too, during the load: nats-server then
/// delivered every bulk message a fourth time and this process received it, about 1 µs of CPU per bulk row on the
/// cores the nodes share, counted in the throughput figure.
final class LogWatch: Sendable {
    struct Probe: Sendable {
        var committed: UInt64 = 0
        var onLog: UInt64 = 0
        /// Where the log stored the first message carrying it (shard, stream sequence), to find it in a node's trace.
        var storedAs: (shard: Int, sequence: UInt64)? = nil
        var hinted: UInt64 = 0
        var seen: UInt64 = 0
    }
    /// A class, so the subscription handlers can hold it before `self` is whole.
    final class Probes: Sendable { let all = Mutex<[Int64: Probe]>([:]) }
    private let probes = Probes()
    /// When the log stored the last message carrying a bulk row (uptime ns; 0: none read yet): the sender's end of
    /// the load, against which the nodes' completion says whether sending or applying set the pace.
    private let lastBulkStored = Mutex<UInt64>(0)
    /// Each stored message's bulk rows and when the log stored it (uptime ns): the sender's pace over the load.
    private let bulkStored = Mutex<[(atNs: UInt64, rows: Int)]>([])
    private let connection: NATSConnection
    private let subscriptions: [CoreSubscription]
    private let firstProbe: Int64

    init(natsPort: Int, firstProbe: Int64) throws {
        let connection = try NATSConnection(NATSConnectOptions(urls: ["nats://127.0.0.1:\(natsPort)"], name: "harmonybench-watch"))
        self.connection = connection
        self.firstProbe = firstProbe
        let probes = self.probes
        // Hints are small messages (probes and small commits), never bulk batches: seen as they go by.
        let hints = try connection.subscribe(subject: LiveNode.hintSubjectPrefix + ".*") { message in
            let now = DispatchTime.now().uptimeNanoseconds
            guard message.payload.count > 16 else { return }
            for id in Self.probeIDs(Array(message.payload.dropFirst(16)), from: firstProbe) {
                probes.all.withLock { if $0[id, default: Probe()].hinted == 0 { $0[id, default: Probe()].hinted = now } }
            }
        }
        subscriptions = [hints]
    }

    /// The probe rows (ids from `first` on) of a message small enough to be a probe's: decoding every bulk message
    /// (about 14 KiB) would cost as much as it costs a receiving node. A probe inside a full message goes without a
    /// time here (the report gives how many probes got one).
    static func probeIDs(_ payload: [UInt8], from first: Int64) -> [Int64] {
        guard payload.count < 4 * 1024, !EnvelopeCodec.isPart(payload), let records = try? EnvelopeCodec.decodeAll(payload) else { return [] }
        return records.compactMap { r in r.table == "bench" ? r.primaryKey.first?.value.int64.flatMap { $0 >= first ? $0 : nil } : nil }
    }

    /// Reads every message of the shards' streams once the load is over, noting for each probe when the server
    /// stored the first message carrying it (its wall clock, moved onto this process's uptime clock).
    func readStoredTimes(shards: Int) throws {
        let js = try connection.jetStream { _ in }  // publishes nothing
        defer { js.close() }
        let router = ShardRouter(shardCount: shards, streamPrefix: NodeConfig(nodeID: 1, databasePath: "").streamPrefix)
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let wallMinusUptime = Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec) - Int64(DispatchTime.now().uptimeNanoseconds)
        for shard in router.shards {
            let stream = router.streamName(shard: shard)
            let last = try js.streamState(name: stream).lastSequence
            let subscription = try js.pullSubscribe(stream: stream, subject: "\(LiveNode.subjectPrefix).\(shard)", durable: "harmonybench-stored-times",
                                                    startSequence: 1, ackWaitMs: 60_000, maxAckPending: 100_000)
            defer { subscription.close(); _ = try? js.deleteConsumer(stream: stream, durable: "harmonybench-stored-times") }
            var read: UInt64 = 0
            let deadline = Date().addingTimeInterval(60)
            while read < last, Date() < deadline {
                for m in try subscription.fetch(batch: 256, timeoutMs: 1_000) {
                    read = max(read, m.streamSequence)
                    let stored = UInt64(max(0, m.storedAtNs - wallMinusUptime))
                    if let rows = Self.bulkRows(m.payload, below: firstProbe) {
                        lastBulkStored.withLock { $0 = max($0, stored) }
                        bulkStored.withLock { $0.append((stored, rows)) }
                    }
                    for id in Self.probeIDs(m.payload, from: firstProbe) {
                        probes.all.withLock { all in
                            if all[id, default: Probe()].onLog == 0 || stored < all[id]!.onLog {
                                all[id, default: Probe()].onLog = stored
                                all[id]!.storedAs = (shard, m.streamSequence)
                            }
                        }
                    }
                }
            }
        }
    }

    /// The bulk rows (ids below the probes') a stored message carries; nil if none. A part of a split message is
    /// bulk, its rows uncounted (0): only a large message is split.
    static func bulkRows(_ payload: [UInt8], below firstProbe: Int64) -> Int? {
        guard !EnvelopeCodec.isPart(payload) else { return 0 }
        guard let records = try? EnvelopeCodec.decodeAll(payload) else { return nil }
        let rows = records.count { $0.table == "bench" && ($0.primaryKey.first?.value.int64 ?? firstProbe) < firstProbe }
        return rows > 0 ? rows : nil
    }

    /// Bulk rows the log stored in each 100 ms from `startNs` (uptime), up to the last.
    func bulkRowsStoredPer100Ms(after startNs: UInt64) -> [Int] {
        rowsPer100Ms(bulkStored.withLock { $0 }.filter { $0.atNs >= startNs }.map { (seconds: Double($0.atNs - startNs) / 1e9, rows: $0.rows) })
    }

    /// Seconds from `startNs` (uptime) to when the log stored the last bulk message (nil: none was read).
    func lastBulkStoredSeconds(after startNs: UInt64) -> Double? {
        let t = lastBulkStored.withLock { $0 }
        return t == 0 ? nil : (Double(t) - Double(startNs)) / 1e9
    }

    func committed(_ id: Int64, atNs: UInt64) { probes.all.withLock { $0[id, default: Probe()].committed = atNs } }
    func seen(_ id: Int64, atNs: UInt64) { probes.all.withLock { $0[id, default: Probe()].seen = atNs } }

    /// Commit to `stamp`, in ms, for the probes that got one.
    func delays(_ stamp: KeyPath<Probe, UInt64>) -> [Double] {
        probes.all.withLock { all in
            all.values.compactMap { p in p.committed > 0 && p[keyPath: stamp] >= p.committed ? Double(p[keyPath: stamp] - p.committed) / 1e6 : nil }
        }
    }

    /// One line per probe under load, in commit order: when it was committed (ms after the first probe) and how long
    /// it took to be stored on the log, sent as a hint and seen on node 2 (-1: never), so a tail can be placed in
    /// the load's timeline and on the sender's or the receiver's side.
    func printProbeTimes() {
        probes.all.withLock { all in
            let t0 = all.values.map(\.committed).filter { $0 > 0 }.min() ?? 0
            for (id, p) in all.sorted(by: { $0.value.committed < $1.value.committed }) where p.committed > 0 {
                func after(_ t: UInt64) -> String { t >= p.committed ? String(format: "%.1f", Double(t - p.committed) / 1e6) : "-1" }
                let at = p.storedAs.map { " (shard \($0.shard), sequence \($0.sequence))" } ?? ""
                print("probe \(id): committed at \(String(format: "%.1f", Double(p.committed - t0) / 1e6)) ms, stored on the log after \(after(p.onLog)) ms\(at), hinted after \(after(p.hinted)) ms, seen after \(after(p.seen)) ms")
            }
        }
    }

    func close() {
        for s in subscriptions { s.close() }
        connection.close()
    }
}

/// CPU time the calling thread has used (user and system): one thread's share of this process.
func threadCPUSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}
