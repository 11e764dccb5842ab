import ArgumentParser
import Foundation
import HarmonyProcess
import HarmonyCore
import HarmonyNATS
import HarmonyRuntime
import HarmonySQLite
import HarmonyTestSupport

/// Live harmonylite processes on one nats-server, on scratch databases, for the live benchmarks: started with
/// their capture installed, stopped (and their files removed) at the end, and asked for their peak memory.
final class BenchCluster {
    let directory: String
    let nats: EmbeddedNATSServer
    var processes: [ChildProcess] = []
    let nodes: Int
    let shards: Int
    /// Each node's Prometheus port (1-based node i at index i - 1), when made with `metrics`.
    let metricsPorts: [Int]
    /// Per node in `relayed`: the relay its NATS connection goes through, to cut it off from the log and heal it.
    var relays: [Int: TCPRelay] = [:]

    /// `schema` runs on every database first; `settings`: top-level keys of every node's config.toml; `extra(i)` is
    /// appended to node i's config.toml; `hints`: the `replication_log.hints` setting of every node.
    /// `relayed`: nodes that reach nats-server through a `TCPRelay` (`relays`). `metrics`: every node serves
    /// Prometheus metrics on a port of its own (`metricsPorts`). `maxEntries`: `replication_log.max_entries` (0, no
    /// limit, unless a benchmark asks for harmonylite's default of 1024 or another).
    init(nodes: Int, shards: Int, schema: String, binary: String, hints: Bool = true, compress: Bool = false, maxEntries: Int = 0, relayed: Set<Int> = [],
         metrics: Bool = false, settings: String = "", extra: (Int) -> String = { _ in "" }) throws {
        self.nodes = nodes
        self.shards = shards
        let metricsPorts = metrics ? (1...nodes).map { _ in EmbeddedNATSServer.freePort() } : []
        self.metricsPorts = metricsPorts
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("bench-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let port = EmbeddedNATSServer.freePort()
        nats = try EmbeddedNATSServer(bindAddress: "127.0.0.1:\(port)", storeDirectory: directory + "/nats", serverName: "bench")
        try nats.start()
        for i in relayed.sorted() { relays[i] = try TCPRelay(upstreamPort: port) }
        for i in 1...nodes {
            try SQLiteOpener().open(path: dbPath(i)).execute(schema)
            try """
                db_path = "\(dbPath(i))"
                node_id = \(i)
                \(settings)
                [replication_log]
                shards = \(shards)
                max_entries = \(maxEntries)
                hints = \(hints)
                compress = \(compress)
                [nats]
                urls = ["nats://127.0.0.1:\(relays[i]?.port ?? port)"]
                \(metrics ? "[prometheus]\nenable = true\nbind = \"127.0.0.1:\(metricsPorts[i - 1])\"" : "")
                \(extra(i))
                """.write(toFile: "\(directory)/node\(i).toml", atomically: true, encoding: .utf8)
            processes.append(try ChildProcess.spawn(binary, ["-config", "\(directory)/node\(i).toml"],
                                                    environment: ProcessInfo.processInfo.environment, stdin: nil,
                                                    stdout: "\(directory)/node\(i).log", stderr: "\(directory)/node\(i).log", appendOutput: true))
        }
        for i in 1...nodes {
            let db = try Database.readOnly(path: dbPath(i))
            do {
                try waitFor(seconds: 30, "node \(i)'s sidecar to install capture") {
                    try db.scalar("SELECT count(*) FROM sqlite_schema WHERE name = '__harmonylite___clock'")?.int64 == 1
                }
            } catch {
                // The node's own words say why (a port taken, a lock held...); the files stay for a look.
                keep = true
                let log = (try? String(contentsOfFile: "\(directory)/node\(i).log", encoding: .utf8)) ?? "(no log)"
                throw ValidationError("\(error); node \(i)'s log (\(directory)/node\(i).log) ends:\n\(log.split(separator: "\n").suffix(8).joined(separator: "\n"))")
            }
        }
        Thread.sleep(forTimeInterval: 0.5)
    }

    func dbPath(_ i: Int) -> String { "\(directory)/node\(i).db" }

    /// Each node's peak resident memory so far (VmHWM), in MiB.
    func peakRSSMegabytes() -> [Double] {
        processes.map { p in
            let status = (try? String(contentsOfFile: "/proc/\(p.pid)/status", encoding: .utf8)) ?? ""
            let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
            let kilobytes = Double(line.split(separator: " ").dropFirst().first ?? "") ?? .nan
            return kilobytes / 1024
        }
    }

    /// CPU time (s) each harmonylite process and then nats-server has used so far.
    func cpuSeconds() throws -> [Double] {
        guard let server = Calibrate.natsPID(nats) else { throw ValidationError("cannot find the nats-server process") }
        return (processes.map(\.pid) + [server]).map(Calibrate.cpuSeconds)
    }

    /// Transactions each node has applied delivered batches in so far (made with `metrics`).
    func appliedBatches() throws -> [Int] {
        try metricsPorts.map { try Calibrate.appliedBatches(directory: directory, port: $0) }
    }

    /// Hints each node has applied so far (made with `metrics`).
    func appliedHints() throws -> [Int] {
        try metricsPorts.map { Int(try Calibrate.metric("harmonylite_hints_applied_total", directory: directory, port: $0)) }
    }

    /// The first node whose `/health` answers 503, with the reasons it gives (made with `metrics`; nil without).
    func unhealthyNode() -> (node: Int, reasons: String)? {
        for (i, port) in metricsPorts.enumerated() {
            let out = "\(directory)/health-\(port).json"
            let curl = try? ChildProcess.spawn("/usr/bin/env", ["curl", "-s", "-o", out, "-w", "%{http_code}", "http://127.0.0.1:\(port)/health"],
                                               environment: ProcessInfo.processInfo.environment, stdin: nil,
                                               stdout: out + ".status", stderr: nil)
            guard curl?.wait(timeoutSeconds: 10) == 0,
                  (try? String(contentsOfFile: out + ".status", encoding: .utf8)) == "503",
                  let body = try? Data(contentsOf: URL(fileURLWithPath: out)) else { continue }
            let reasons = ((try? JSONSerialization.jsonObject(with: body)) as? [String: Any])?["reasons"] as? [String]
            return (i + 1, reasons?.joined(separator: "; ") ?? String(decoding: body, as: UTF8.self))
        }
        return nil
    }

    /// `waitFor`, giving up as soon as a node says on `/health` (twice, 2 s apart) that it cannot make progress: a run
    /// that cannot finish (a receiver behind a small stream's start with snapshots off) stops with the node's words
    /// instead of timing out minutes later without saying why.
    func waitWhileHealthy(seconds: Double, _ what: String, _ condition: () throws -> Bool) throws {
        var lastCheck = Date(), unhealthy: Int?
        try waitFor(seconds: seconds, what) {
            if try condition() { return true }
            guard Date().timeIntervalSince(lastCheck) >= 2 else { return false }
            lastCheck = Date()
            guard let (node, reasons) = unhealthyNode() else { unhealthy = nil; return false }
            if unhealthy == node {
                keep = true
                throw ValidationError("gave up waiting for \(what): node \(node) cannot make progress; its /health says: \(reasons) (its log: \(directory)/node\(node).log)")
            }
            unhealthy = node
            return false
        }
    }

    /// Messages every shard's stream holds.
    func storedMessages() throws -> Double {
        let connection = try NATSConnection(NATSConnectOptions(urls: ["nats://127.0.0.1:\(nats.port)"], name: "harmonybench"))
        defer { connection.close() }
        let js = try connection.jetStream { _ in }
        defer { js.close() }
        let router = ShardRouter(shardCount: shards)
        return try router.shards.reduce(0.0) { $0 + Double(try js.streamState(name: router.streamName(shard: $1)).messages) }
    }

    private var stopped = false
    /// Leave the files in place at `stop` (a failed run, for inspection).
    var keep = false

    func stop() {
        guard !stopped else { return }
        stopped = true
        for p in processes { p.terminate(graceSeconds: 10) }
        processes.removeAll()
        for r in relays.values { r.stop() }
        nats.stop()
        if !keep { try? FileManager.default.removeItem(atPath: directory) }
    }

    deinit { stop() }
}

/// Polls `condition` every 50 ms for at most `seconds`.
func waitFor(seconds: Double, _ what: String, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return }
        Thread.sleep(forTimeInterval: 0.05)
    }
    throw ValidationError("timed out after \(seconds) s waiting for \(what)")
}

func rssText(_ values: [Double]) -> String { values.map { String(format: "%.0f", $0) }.joined(separator: ", ") + " MiB" }
