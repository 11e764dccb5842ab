import ArgumentParser
import Foundation
import HarmonyProcess
import HarmonyCodec
import HarmonyCore
import HarmonyCoreTesting
import HarmonyNATS
import HarmonyRuntime
import HarmonySQLite
import HarmonySim
import HarmonyTestSupport
import Synchronization

/// Measures, on this machine, the costs a capacity model needs: the real nats-server's publish round trip and
/// per-message cost on a stream, and the real core's cost to read and encode local changes and to apply other
/// nodes' changes to a real SQLite file. Writes them as a profile (`reports/cost-profile.toml`).
struct Calibrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure publish, server and apply costs on this machine and write a cost profile.")

    @Option(help: "Rows for the core's publish and apply measurements.") var rows = 20_000
    @Option(help: "Messages per server throughput measurement.") var messages = 20_000
    @Option(help: "Rounds; the median of each figure is kept.") var rounds = 3
    @Option(help: "Where to write the profile.") var output = "reports/cost-profile.toml"
    @Option(help: "Rows for the live phase (3 harmonylite processes), whose CPU time per row is measured.") var liveRows = 30_000
    @Option(help: "Path to the harmonylite binary.") var binary = ".build/release/harmonylite"
    @Flag(help: "Measure only the core's costs on real SQLite files (no servers), print them and write nothing.")
    var coreOnly = false

    func run() throws {
        var figures: [String: [Double]] = [:]
        if coreOnly {
            for round in 1...rounds {
                var core = try measureCore().figures
                core.merge(try measureLooks(scanChangeUs: core["scan_change_us"] ?? 0, publishMessageUs: core["publish_message_us"] ?? 0)) { a, _ in a }
                core.merge(try measureTables()) { a, _ in a }
                core["app_commit_us"] = try measureApplicationCommit()
                print("round \(round): " + core.keys.sorted().map { "\($0) \(String(format: "%.2f", core[$0]!))" }.joined(separator: ", "))
            }
            return
        }
        var liveRounds: [LiveRound] = []
        for round in 1...rounds {
            var core = try measureCore()
            core.figures.merge(try measureLooks(scanChangeUs: core.figures["scan_change_us"] ?? 0,
                                                publishMessageUs: core.figures["publish_message_us"] ?? 0)) { a, _ in a }
            core.figures.merge(try measureTables()) { a, _ in a }
            core.figures["app_commit_us"] = try measureApplicationCommitReplicating()
            let server = try measureServer(payloadBytes: Int(core.bytesPerChange * 128))
            liveRounds.append(try measureLive(core: core.figures))
            for (k, v) in core.figures.merging(server, uniquingKeysWith: { a, _ in a }) {
                figures[k, default: []].append(v)
            }
            figures["observer_us_per_ms", default: []].append(try measureObservers())
            print("round \(round): " + figures.keys.sorted().map { "\($0) \(String(format: "%.2f", figures[$0]!.last!))" }.joined(separator: ", "))
        }
        var m = figures.mapValues { median($0) }
        let runtime = fitRuntime(liveRounds)
        m.merge(runtime) { _, fitted in fitted }
        print("the runtime's costs, fitted over the \(liveRounds.count * 2) live runs: " + runtime.keys.sorted().map { "\($0) \(String(format: "%.2f", runtime[$0]!))" }.joined(separator: ", "))
        let text = """
            # Cost profile: what one step costs on the machine that measured it. Read by `harmonysim bench --profile`.
            # Measured by `harmonybench calibrate --rows \(rows) --messages \(messages) --rounds \(rounds) --live-rows \(liveRows)` (medians of the rounds,
            # the runtime's costs below fitted over every round's live runs)
            # on \(machineDescription()), SQLite \(sqliteVersion()), one nats-server (JetStream, file store) on loopback.
            [costs]
            # A publish and its ack, one at a time, as the sidecar publishes (asynchronously, through libnats): the
            # round trip to the server and back, with libnats's flush of asynchronous publishes.
            publish_rtt_us = \(f(m["publish_rtt_us"]))
            # The server's cost per stored message on one stream with many in flight (streams are serialized),
            # and per payload byte (fitted from \(Self.smallPayload)-byte and full 128-change messages).
            server_message_us = \(f(m["server_message_us"]))
            server_byte_ns = \(f(m["server_byte_ns"]))
            # The same load spread over 4 streams at once: the server's cost per message when streams overlap.
            server_message_us_4_streams = \(f(m["server_message_us_4_streams"]))
            # The sidecar reading its change log and encoding: per change (its stamp apart), and per message on top.
            scan_change_us = \(f(max(0, (m["scan_change_us"] ?? 0) - (m["stamp_change_us"] ?? 0))))
            # Stamping one queued write (\(NodeConfig(nodeID: 1, databasePath: "").lockBatchRows) per transaction, which holds the write lock): charged when the
            # stamp happens. Publishing timed the two together: \(f(m["scan_change_us"])) µs per change.
            stamp_change_us = \(f(m["stamp_change_us"]))
            publish_message_us = \(f(m["publish_message_us"]))
            # The sidecar applying another node's changes to its SQLite file: per delivered batch (one transaction,
            # its commit), per message in it, and per change.
            apply_batch_us = \(f(m["apply_batch_us"]))
            apply_message_us = \(f(m["apply_message_us"]))
            apply_change_us = \(f(m["apply_change_us"]))
            # The same per change when the keys are scattered (a fifth of 100,000 keys, at random) instead of one after
            # another: what the single-row writers' changes cost (the bulk load's rows keep apply_change_us).
            apply_scattered_change_us = \(f(m["apply_scattered_change_us"]))
            # Each table beyond the first that a stamp's writes name (its statements per table, and reading the rows
            # with each table's statements to send them), and that an apply transaction's changes name (each table's
            # B-trees): CPU time, from looks of 20 single-row commits on one table against one on each of 20 tables.
            stamp_table_us = \(f(m["stamp_table_us"]))
            apply_table_us = \(f(m["apply_table_us"]))
            # The application inserting one row with the capture triggers, 1,000 rows per transaction.
            app_insert_row_us = \(f(m["app_insert_row_us"]))
            # How long one of the application's single-row commits holds SQLite's write lock (upsert, capture trigger,
            # commit and fsync), three applications writing 6,000 rows/s together while 3 harmonylite processes
            # replicate them (their fsyncs share the disk). A sidecar that finds the lock held sleeps in SQLite's busy
            # handler (1, 2, 5, 10 ... ms) and takes every commit made meanwhile.
            app_commit_us = \(f(m["app_commit_us"]))
            # A look that finds one commit, beyond its change and its message (its stamp transaction), and marking
            # its message published on the ack: CPU time, and the wall time on top (the commits' fsync).
            look_us = \(f(m["look_us"]))
            look_wait_us = \(f(m["look_wait_us"]))
            ack_flush_us = \(f(m["ack_flush_us"]))
            ack_flush_wait_us = \(f(m["ack_flush_wait_us"]))
            # This node's own messages coming back, applied as no-ops (they are delivered to every node).
            apply_own_change_us = \(f(m["apply_own_change_us"]))
            # What the live processes spend per row beyond the core's work above (the runtime: libnats, fetching,
            # acknowledging, metrics), from their CPU time while \(liveRows) rows replicate through 3 harmonylite
            # processes: on the node that publishes them, on each node that applies them, and in nats-server.
            # Each is fitted per change and per message by a least-squares line through every round's runs at 1 shard and
            # at 8 (smaller messages); the applying nodes' transactions, counted from their metrics, are charged at
            # apply_batch_us first.
            runtime_publish_change_us = \(f(m["runtime_publish_change_us"]))
            runtime_publish_message_us = \(f(m["runtime_publish_message_us"]))
            runtime_apply_change_us = \(f(m["runtime_apply_change_us"]))
            runtime_apply_message_us = \(f(m["runtime_apply_message_us"]))
            server_change_us = \(f(m["server_change_us"]))
            runtime_server_message_us = \(f(m["runtime_server_message_us"]))
            # What `harmonybench live`'s own probes and watchers take per millisecond while a bulk load replicates
            # (its reader looks at node 2 every millisecond): CPU of that benchmark beyond the application's inserts,
            # from a live run of \(liveRows) rows at 4 shards. They share the cores with the nodes.
            observer_us_per_ms = \(f(m["observer_us_per_ms"]))
            # Encoded size of one change of the benchmark table (id, name, value, at), in a 128-change message.
            bytes_per_change = \(f(m["bytes_per_change"]))
            # Cores every process on this machine shares (the live benchmarks run the server, three sidecars and the
            # application on one machine).
            cores = \(ProcessInfo.processInfo.activeProcessorCount)
            # The live sidecar's settings these costs go with.
            deliver_batch = 256
            deliver_bytes_max = \(LiveNode.fetchBytesMax)
            max_ack_pending = 4096
            publish_batch_max = \(NodeConfig(nodeID: 1, databasePath: "").publishBatchMax)
            publish_in_flight_max = \(NodeConfig(nodeID: 1, databasePath: "").publishInFlightMax)
            # How long a publish waits for its ack before it counts as failed and is sent again after a backoff.
            publish_ack_timeout_ms = \(NATSConnection.defaultPublishAckTimeoutMs)

            """
        print(text)
        try text.write(toFile: output, atomically: true, encoding: .utf8)
        print("wrote \(output)")
    }

    static let smallPayload = 200

    func f(_ x: Double?) -> String { String(format: "%.3f", x ?? .nan) }

    // MARK: The core on real SQLite files

    /// Publish and apply costs of the real core: node 1's application inserts `rows` rows (1,000 per transaction);
    /// node 1's core publishes them, once with 128 changes per message and once with one; node 2's core applies
    /// them in batches of 256 messages, and the one-change messages also one per batch. Per-change, per-message and
    /// per-batch costs are the solution of those runs' totals.
    func measureCore() throws -> (figures: [String: Double], bytesPerChange: Double) {
        let batched = try publishAndApply(changesPerMessage: 128, messagesPerBatch: 256)
        let single = try publishAndApply(changesPerMessage: 1, messagesPerBatch: 256)
        let alone = try publishAndApply(changesPerMessage: 1, messagesPerBatch: 1, rows: max(500, rows / 10))
        // Publishing: t = changes * scan + messages * perMessage.
        let (scan, perMessage) = solve2((Double(batched.changes), Double(batched.messages), batched.publishSeconds),
                                        (Double(single.changes), Double(single.messages), single.publishSeconds))
        // Applying: t = batches * perBatch + messages * perMessage + changes * perChange. The two one-change runs
        // give the batch cost; with it, the batched runs give the message and change costs.
        let perSingle = single.applySeconds / Double(single.messages)  // ≈ applyMessage + applyChange + batch/256
        let perAlone = alone.applySeconds / Double(alone.messages)     // ≈ batch + applyMessage + applyChange
        let batch = max(0, (perAlone - perSingle) / (1 - 1 / 256.0))
        let (change, message) = solve2(
            (Double(batched.changes), Double(batched.messages), batched.applySeconds - Double(batched.batches) * batch),
            (Double(single.changes), Double(single.messages), single.applySeconds - Double(single.batches) * batch))
        // The batched run again with the rows' keys scattered: each change lands on another page of the table and of
        // its version table, where the bulk load's keys fill one page after another.
        let scattered = try publishAndApply(changesPerMessage: 128, messagesPerBatch: 256, scattered: true)
        let scatteredChange = (scattered.applySeconds - Double(scattered.batches) * batch - Double(scattered.messages) * max(0, message))
            / Double(scattered.changes)
        return ([
            "scan_change_us": max(0, scan) * 1e6, "publish_message_us": max(0, perMessage) * 1e6,
            "stamp_change_us": try measureStamp() * 1e6,
            "apply_batch_us": batch * 1e6, "apply_message_us": max(0, message) * 1e6, "apply_change_us": max(0, change) * 1e6,
            "apply_scattered_change_us": max(0, scatteredChange) * 1e6,
            "bytes_per_change": batched.bytesPerChange, "app_insert_row_us": batched.appSeconds / Double(batched.changes) * 1e6,
            "apply_own_change_us": batched.ownApplySeconds / Double(batched.changes) * 1e6,
        ], batched.bytesPerChange)
    }

    /// Seconds per write of the core's stamp: `rows` queued writes stamped `lock_batch_rows` at a time, each batch in a
    /// transaction of its own with the writers' stretches found, as the sidecar stamps a bulk load. Publishing above
    /// timed it too (inside `scan_change_us`); the model charges it apart, when the stamp happens, holding the lock.
    func measureStamp() throws -> Double {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("calibrate-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let db = try SQLiteOpener().open(path: "\(directory)/stamp.db")
        try db.execute(Self.benchSchema)
        try ChangeCapture.install(db, nodeID: 1, filter: TableFilter())
        try Self.insertBenchRows(into: db, count: rows)
        let batch = NodeConfig(nodeID: 1, databasePath: "").lockBatchRows
        var stamped = 0, tail: WriterStretches.Tail?
        let started = DispatchTime.now().uptimeNanoseconds
        while let s = try db.transaction(.immediate, {
            try ChangeCapture.stampCaptured(db, limit: batch, findSmallCommits: true, writerTail: tail)
        }), s.count > 0 {
            stamped += s.count
            tail = s.writerTail
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        guard stamped == rows else { throw ValidationError("stamped \(stamped) of \(rows) queued writes") }
        return seconds / Double(rows)
    }

    /// Solves a*x + b*y = t for (x, y) from two measurements (a, b, t).
    func solve2(_ p: (Double, Double, Double), _ q: (Double, Double, Double)) -> (Double, Double) {
        let det = p.0 * q.1 - p.1 * q.0
        guard det != 0 else { return (p.2 / p.0, 0) }
        return ((p.2 * q.1 - p.1 * q.2) / det, (p.0 * q.2 - p.2 * q.0) / det)
    }

    struct CoreRun {
        var changes = 0, messages = 0, batches = 0
        var publishSeconds = 0.0, applySeconds = 0.0, bytesPerChange = 0.0, appSeconds = 0.0, ownApplySeconds = 0.0
    }

    func publishAndApply(changesPerMessage: Int, messagesPerBatch: Int, rows count: Int? = nil, scattered: Bool = false) throws -> CoreRun {
        let rows = count ?? self.rows
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("calibrate-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cores = try CalibrationCores(2, in: directory, schema: Self.benchSchema) { $0.publishBatchMax = changesPerMessage }
        defer { cores.stop() }
        let (nodes, logs, clocks) = (cores.nodes, cores.logs, cores.clocks)
        let app = try SQLiteOpener().open(path: "\(directory)/node1.db")
        let appStarted = DispatchTime.now().uptimeNanoseconds
        try Self.insertBenchRows(into: app, count: rows, scattered: scattered)
        var run = CoreRun()
        run.appSeconds = Double(DispatchTime.now().uptimeNanoseconds - appStarted) / 1e9
        var stored: [IncomingMessage] = []
        var bytes = 0
        var clock = DispatchTime.now().uptimeNanoseconds
        var spent: UInt64 = 0
        var idleLooks = 0
        while try nodes[0].pendingChangeCount() > 0 {
            try nodes[0].databaseChanged()
            let sent = logs[0].take()
            guard !sent.isEmpty else {
                // A load above lock_batch_rows is stamped a batch at a time, with a pause for the applications in
                // between: let the pause pass, as the live node's timer does.
                idleLooks += 1
                guard idleLooks < 1_000 else { throw ValidationError("the core published nothing with changes pending") }
                for timer in clocks[0].advance(byMs: 1_000) { try nodes[0].timerFired(timer) }
                continue
            }
            idleLooks = 0
            try nodes[0].publishAcknowledged(tokens: sent.map(\.token))
            let now = DispatchTime.now().uptimeNanoseconds
            spent += now - clock
            for m in sent {
                run.changes += try EnvelopeCodec.decodeAll(m.payload).count
                bytes += m.payload.count
                stored.append(IncomingMessage(sequence: UInt64(stored.count + 1), payload: m.payload))
            }
            clock = DispatchTime.now().uptimeNanoseconds
        }
        run.publishSeconds = Double(spent) / 1e9
        run.messages = stored.count
        run.bytesPerChange = Double(bytes) / Double(max(1, run.changes))
        guard run.changes == rows else { throw ValidationError("published \(run.changes) changes for \(rows) rows") }
        let started = DispatchTime.now().uptimeNanoseconds
        for first in stride(from: 0, to: stored.count, by: messagesPerBatch) {
            try nodes[1].messagesArrived(shard: 1, Array(stored[first..<min(stored.count, first + messagesPerBatch)]))
            run.batches += 1
        }
        run.applySeconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        let ownStarted = DispatchTime.now().uptimeNanoseconds
        for first in stride(from: 0, to: stored.count, by: messagesPerBatch) {
            try nodes[0].messagesArrived(shard: 1, Array(stored[first..<min(stored.count, first + messagesPerBatch)]))
        }
        run.ownApplySeconds = Double(DispatchTime.now().uptimeNanoseconds - ownStarted) / 1e9
        let applied = try SQLiteOpener().open(path: "\(directory)/node2.db").scalar("SELECT count(*) FROM bench")?.int64 ?? 0
        guard applied == Int64(rows) else { throw ValidationError("node 2 applied \(applied) of \(rows) rows") }
        return run
    }

    static let benchSchema = "CREATE TABLE bench (id INTEGER PRIMARY KEY, name TEXT NOT NULL, value REAL, at INTEGER)"

    /// The application's load in every measurement: rows 0..<count, 1,000 per transaction, as `harmonybench live` does.
    /// `scattered`: the same count of rows with ids spread at random over five times as many (a fixed sequence), as the
    /// single-row writers of `harmonybench rate` spread theirs over 100,000 keys.
    static func insertBenchRows(into app: Database, count: Int, scattered: Bool = false) throws {
        let insert = try app.prepare("INSERT INTO bench (id, name, value, at) VALUES (?, ?, ?, ?)")
        var ids = Array(0..<count)
        if scattered {
            var generator = SplitMix64(state: 15)  // a fixed sequence: every calibration scatters the same keys
            ids = Array(Array(0..<(5 * count)).shuffled(using: &generator).prefix(count))
        }
        for start in stride(from: 0, to: count, by: 1_000) {
            try app.transaction {
                for id in ids[start..<min(count, start + 1_000)] {
                    try insert.execute([.integer(Int64(id)), .text("row-\(id)"), .real(Double(id) / 3), .integer(Int64(id) * 7)])
                }
            }
        }
    }

    // MARK: The live processes

    /// One round's live runs, with the core's figures measured in the same round (subtracted from its own runs).
    struct LiveRound {
        var core: [String: Double]
        var one: LiveRun
        var eight: LiveRun
    }

    /// CPU time per row of each live process while `liveRows` rows replicate (1,000 per transaction on node 1), at 1
    /// shard and at 8: more shards split the same rows into more, smaller messages, so the runs separate the runtime's
    /// cost per message from its cost per change (`fitRuntime`).
    func measureLive(core: [String: Double]) throws -> LiveRound {
        let one = try liveCPU(shards: 1), eight = try liveCPU(shards: 8)
        for (name, run) in [("1 shard", one), ("8 shards", eight)] {
            print(String(format: "live bulk load, %@: per row %.4f messages, %.4f applied transactions per applying node, CPU µs ",
                         name, run.messagesPerRow, run.batchesPerRow) + run.cpu.map { String(format: "%.1f", $0) }.joined(separator: " / "))
        }
        return LiveRound(core: core, one: one, eight: eight)
    }

    /// The live processes' CPU per row beyond what the core's figures account for (the runtime's share), split into a
    /// cost per change and one per message by a least-squares line over every round's runs at once. A round's own two
    /// runs gave 85-164 µs a message on one machine, swung by how many messages one 8-shard run happened to send, and
    /// the median of each figure apart could take one round's slope with another's intercept.
    func fitRuntime(_ rounds: [LiveRound]) -> [String: Double] {
        func fit(_ point: (LiveRun, [String: Double]) -> Double) -> (change: Double, message: Double) {
            let points = rounds.flatMap { r in [r.one, r.eight].map { (x: $0.messagesPerRow, y: point($0, r.core)) } }
            let (change, message) = CostFit.nonNegativeLine(points)
            return (change, message)
        }
        let publish = fit { run, core in run.cpu[0] - (core["scan_change_us"] ?? 0) - (core["apply_own_change_us"] ?? 0) }
        // The applying nodes' transactions as they were counted live: a batch's commit is the core's cost, not the runtime's.
        let applying = fit { run, core in
            (run.cpu[1] + run.cpu[2]) / 2 - (core["apply_change_us"] ?? 0) - run.batchesPerRow * (core["apply_batch_us"] ?? 0)
        }
        let server = fit { run, _ in run.cpu[3] }
        return [
            "runtime_publish_change_us": publish.change, "runtime_publish_message_us": publish.message,
            "runtime_apply_change_us": applying.change, "runtime_apply_message_us": applying.message,
            "server_change_us": server.change, "runtime_server_message_us": server.message,
        ]
    }

    /// CPU per millisecond of `harmonybench live`'s probes and watchers, from a quiet run of that benchmark.
    func measureObservers() throws -> Double {
        let figures = try LiveBench.parse(["--rows", "\(liveRows)", "--shards", "4", "--samples", "300", "--binary", binary]).measure(quiet: true)
        print(String(format: "live benchmark at 4 shards: %.0f rows/s; its probes and watchers %.1f µs of CPU a millisecond",
                     figures.rowsPerSecond, figures.observerUsPerMs))
        return figures.observerUsPerMs
    }

    /// What one live run cost per row: CPU time of each process (the 3 harmonylite processes, then nats-server),
    /// messages the log stored, and transactions each applying node made.
    struct LiveRun {
        var cpu: [Double]
        var messagesPerRow: Double
        var batchesPerRow: Double
    }

    func liveCPU(shards: Int) throws -> LiveRun {
        let cluster = try BenchCluster(nodes: 3, shards: shards, schema: Self.benchSchema, binary: binary, metrics: true)
        defer { cluster.stop() }
        let before = try cluster.cpuSeconds()
        let app = try SQLiteOpener().open(path: cluster.dbPath(1))
        try Self.insertBenchRows(into: app, count: liveRows)
        let readers = try (2...3).map { try Database.readOnly(path: cluster.dbPath($0)) }
        try waitFor(seconds: 300, "every node to have the rows") {
            try readers.allSatisfy { try $0.scalar("SELECT count(*) FROM bench")?.int64 == Int64(liveRows) }
        }
        Thread.sleep(forTimeInterval: 0.5)  // the last acknowledgements
        let spent = zip(try cluster.cpuSeconds(), before).map { ($0 - $1) / Double(liveRows) * 1e6 }
        let messages = try cluster.storedMessages()
        let batches = try cluster.appliedBatches().dropFirst()
        return LiveRun(cpu: spent, messagesPerRow: messages / Double(liveRows),
                       batchesPerRow: Double(batches.reduce(0, +)) / Double(batches.count) / Double(liveRows))
    }

    /// Transactions a live node applied delivered batches in, from its Prometheus endpoint.
    static func appliedBatches(directory: String, port: Int) throws -> Int {
        Int(try metric("harmonylite_apply_batch_seconds_count", directory: directory, port: port))
    }

    /// One unlabelled sample of a live node's Prometheus endpoint (read with curl).
    static func metric(_ name: String, directory: String, port: Int) throws -> Double {
        let out = "\(directory)/metrics-\(port).txt"
        let curl = try ChildProcess.spawn("/usr/bin/env", ["curl", "-sf", "http://127.0.0.1:\(port)/metrics"],
                                          environment: ProcessInfo.processInfo.environment, stdin: nil, stdout: out, stderr: nil)
        guard curl.wait(timeoutSeconds: 10) == 0, let text = try? String(contentsOfFile: out, encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix(name + " ") }),
              let value = Double(line.split(separator: " ").last ?? "") else {
            throw ValidationError("cannot read \(name) from the node's metrics on port \(port)")
        }
        return value
    }

    static func natsPID(_ server: EmbeddedNATSServer) -> pid_t? {
        (try? String(contentsOfFile: server.pidFile, encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// User plus system CPU time a process has used, from /proc/<pid>/stat.
    static func cpuSeconds(_ pid: pid_t) -> Double {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return .nan }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // After the command: state is field 3, utime and stime are fields 14 and 15.
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return .nan }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    // MARK: The real nats-server

    /// Publish round trip (one at a time) and the per-message cost of many in flight on one stream and on four.
    func measureServer(payloadBytes: Int) throws -> [String: Double] {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("calibrate-nats-\(UUID().uuidString.prefix(8))").path
        let port = EmbeddedNATSServer.freePort()
        let server = try EmbeddedNATSServer(bindAddress: "127.0.0.1:\(port)", storeDirectory: directory, serverName: "calibrate")
        try server.start()
        defer { server.stop(); try? FileManager.default.removeItem(atPath: directory) }
        let connection = try NATSConnection(NATSConnectOptions(urls: ["nats://127.0.0.1:\(port)"], name: "harmonybench-calibrate"))
        defer { connection.close() }
        // The round trip is timed to the ack callback itself (waiting for publishes polls in whole milliseconds).
        let acked = DispatchSemaphore(value: 0)
        let timingRoundTrips = Mutex(true)
        let js = try connection.jetStream(publishAsyncMaxPending: 4096) { _ in
            if timingRoundTrips.withLock({ $0 }) { acked.signal() }
        }
        defer { js.close() }
        for s in 1...4 { _ = try js.ensureStream(name: "CAL\(s)", subjects: ["cal.\(s)"], maxMessages: 0, replicas: 1, duplicateWindowMs: 0) }
        var counter = 0
        func publish(_ stream: Int, _ payload: [UInt8]) throws {
            counter += 1
            try js.publishAsync(subject: "cal.\(stream)", payload: payload, messageID: "cal-\(counter)")
        }
        let small = [UInt8](repeating: 0x61, count: Self.smallPayload), large = [UInt8](repeating: 0x62, count: max(payloadBytes, Self.smallPayload + 1))
        var rtts: [Double] = []
        for _ in 0..<300 {
            let t = DispatchTime.now().uptimeNanoseconds
            try publish(1, small)
            guard acked.wait(timeout: .now() + 10) == .success else { throw ValidationError("no publish ack within 10 s") }
            rtts.append(Double(DispatchTime.now().uptimeNanoseconds - t) / 1e3)
        }
        timingRoundTrips.withLock { $0 = false }
        func perMessage(_ payload: [UInt8], streams: Int) throws -> Double {
            let t = DispatchTime.now().uptimeNanoseconds
            for i in 0..<messages { try publish(1 + i % streams, payload) }
            try js.waitForPublishes(timeoutMs: 60_000)
            return Double(DispatchTime.now().uptimeNanoseconds - t) / 1e3 / Double(messages)
        }
        let smallCost = try perMessage(small, streams: 1)
        let largeCost = try perMessage(large, streams: 1)
        let perByte = max(0, (largeCost - smallCost) / Double(large.count - small.count))
        let fourCost = try perMessage(small, streams: 4)
        return [
            "publish_rtt_us": median(rtts),
            "server_byte_ns": perByte * 1e3,
            "server_message_us": max(0, smallCost - perByte * Double(small.count)),
            "server_message_us_4_streams": max(0, fourCost - perByte * Double(small.count)),
        ]
    }
}

/// Keeps what the core publishes, for the calibration to acknowledge and hand to the other node.
final class CollectingLog: ReplicationLog {
    private var sent: [OutgoingMessage] = []
    func take() -> [OutgoingMessage] { defer { sent.removeAll() }; return sent }
    func publish(_ message: OutgoingMessage) { sent.append(message) }
    func subscribe(shard: Int, fromSequence: UInt64) {}
    func ack(shard: Int, sequence: UInt64) {}
    func nak(shard: Int, sequence: UInt64, delayMs: Int64) {}
    func requestStreamState(shard: Int) {}
}

