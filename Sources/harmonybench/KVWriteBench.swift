import ArgumentParser
import Foundation
import HarmonyProcess
import HarmonyRuntime
import HarmonySQLite
import Synchronization

/// dqlite-benchmark's kvwrite workload on harmonylite, and on dqlite itself when `dqlite-benchmark` is installed
/// (Debian's go-dqlite): N workers doing INSERT OR REPLACE of random 32-byte keys with 1 KiB values for a fixed
/// time, on 3 nodes.
struct KVWriteBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kvwrite",
        abstract: "dqlite-benchmark's kvwrite workload on 3 harmonylite nodes, and on dqlite when dqlite-benchmark is installed.")

    @Option(help: "Worker counts to run, comma-separated.") var workers = "1,8"
    @Option(help: "Seconds per run.") var seconds = 10
    @Option(help: "Key size in bytes.") var keySize = 32
    @Option(help: "Value size in bytes.") var valueSize = 1024
    @Option(help: "Shards.") var shards = 1
    @Option(help: "Path to the harmonylite binary.") var binary = ".build/release/harmonylite"
    @Option(help: "Report path prefix (Markdown and JSON).") var report: String?

    struct Result {
        var system: String
        var workers: Int
        var writes: Int
        var errors: Int
        var seconds: Double
        var commitMs: [Double]
        var visibleMs: [Double]
        var note: String
        var rate: Double { Double(writes) / seconds }
    }

    func run() throws {
        let counts = workers.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        var results: [Result] = []
        for n in counts {
            results.append(try harmonylite(workers: n))
            print(line(results.last!))
            if let dqlite = try dqlite(workers: n) {
                results.append(dqlite)
                print(line(dqlite))
            }
        }
        let table = results.map { r in
            "| \(r.system) | \(r.workers) | \(String(format: "%.0f", r.rate)) | \(r.errors) | \(String(format: "%.2f", mean(r.commitMs))) | \(String(format: "%.2f", percentile(r.commitMs, 99))) | \(r.visibleMs.isEmpty ? "n/a" : String(format: "%.1f / %.1f", percentile(r.visibleMs, 50), percentile(r.visibleMs, 99))) | \(r.note) |"
        }
        let text = """
            # kvwrite: harmonylite beside dqlite

            Command: `swift build -c release && .build/release/harmonybench kvwrite --workers \(workers) --seconds \(seconds) --report reports/kvwrite`
            Machine: \(machineDescription()); SQLite \(sqliteVersion()); everything on this one machine.
            Workload (dqlite-benchmark's kvwrite): each worker runs `INSERT OR REPLACE INTO model(key, value) VALUES(?, ?)` with a
            random \(keySize)-byte key and a \(valueSize)-byte value (half one repeated letter, half random letters), one write per
            transaction, back to back, for \(seconds) s, on 3 nodes.
            - harmonylite: 3 `harmonylite` processes on one nats-server, \(shards) shard(s); the workers write node 1's database
              through SQLite (WAL, synchronous=FULL) with the capture triggers; a write is committed when SQLite commits locally.
              "Visible on all nodes" is measured by a probe thread that, every 50 ms during the run, writes one more key on node 1
              and polls nodes 2 and 3 every 0.5 ms until both have it. The table is `model(key TEXT PRIMARY KEY, value TEXT)`:
              harmonylite needs a key to replicate by, where dqlite's has `UNIQUE(key)` on a rowid table.
            - dqlite: `dqlite-benchmark --workload kvwrite --workers N --duration \(seconds)` with 3 nodes, the driver on the
              leader; a write is committed when a quorum of the Raft cluster has it. dqlite-benchmark does not measure visibility
              on the followers; its commit latency is its own measure (the leader and one follower have the write).

            | system | workers | writes/s | errors | commit latency avg ms | commit p99 ms | visible on all nodes p50 / p99 ms | notes |
            |---|---|---|---|---|---|---|---|
            \(table.joined(separator: "\n"))

            """
        print(text)
        if let report {
            try text.write(toFile: report + ".md", atomically: true, encoding: .utf8)
            let json = results.map { r in
                #"{"system": "\#(r.system)", "workers": \#(r.workers), "writes_per_s": \#(Int(r.rate)), "errors": \#(r.errors), "commit_avg_ms": \#(String(format: "%.3f", mean(r.commitMs))), "commit_p99_ms": \#(String(format: "%.3f", percentile(r.commitMs, 99))), "visible_p50_ms": \#(r.visibleMs.isEmpty ? "null" : String(format: "%.1f", percentile(r.visibleMs, 50))), "visible_p99_ms": \#(r.visibleMs.isEmpty ? "null" : String(format: "%.1f", percentile(r.visibleMs, 99)))}"#
            }
            try ("[" + json.joined(separator: ",\n ") + "]\n").write(toFile: report + ".json", atomically: true, encoding: .utf8)
        }
    }

    func line(_ r: Result) -> String {
        String(format: "%@, %d worker(s): %.0f writes/s, %d errors, commit avg %.2f ms p99 %.2f ms%@", r.system, r.workers, r.rate, r.errors,
               mean(r.commitMs), percentile(r.commitMs, 99),
               r.visibleMs.isEmpty ? "" : String(format: ", visible on all p50 %.1f ms p99 %.1f ms", percentile(r.visibleMs, 50), percentile(r.visibleMs, 99)))
    }

    /// dqlite-benchmark's key and value: random letters, and a value half one repeated letter.
    static func randomLetters(_ n: Int, _ rng: inout SystemRandomNumberGenerator) -> String {
        let letters = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
        return String((0..<n).map { _ in letters[Int(rng.next() % UInt64(letters.count))] })
    }

    func harmonylite(workers n: Int) throws -> Result {
        let cluster = try BenchCluster(nodes: 3, shards: shards, schema: "CREATE TABLE model (key TEXT PRIMARY KEY, value TEXT)", binary: binary)
        defer { cluster.stop() }
        let path = cluster.dbPath(1)
        let start = DispatchTime.now().uptimeNanoseconds
        let end = start + UInt64(seconds) * 1_000_000_000
        let collected = Mutex<(writes: Int, errors: Int, latencies: [Double])>((0, 0, []))
        let group = DispatchGroup()
        let keySize = self.keySize, valueSize = self.valueSize
        for _ in 0..<n {
            group.enter()
            Thread {
                defer { group.leave() }
                var rng = SystemRandomNumberGenerator()
                var latencies: [Double] = [], errors = 0
                do {
                    let db = try SQLiteOpener().open(path: path)
                    let insert = try db.prepare("INSERT OR REPLACE INTO model(key, value) VALUES(?, ?)")
                    while DispatchTime.now().uptimeNanoseconds < end {
                        let key = Self.randomLetters(keySize, &rng)
                        let value = String(repeating: Self.randomLetters(1, &rng), count: valueSize / 2) + Self.randomLetters(valueSize / 2, &rng)
                        let t0 = DispatchTime.now().uptimeNanoseconds
                        do {
                            try insert.execute([.text(key), .text(value)])
                            latencies.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
                        } catch {
                            errors += 1
                        }
                    }
                } catch {
                    print("worker: \(error)")
                }
                collected.withLock { $0.writes += latencies.count; $0.errors += errors; $0.latencies += latencies }
            }.start()
        }
        // The probe: one more key every 50 ms, timed until nodes 2 and 3 both have it.
        var visible: [Double] = []
        let writer = try SQLiteOpener().open(path: path)
        let readers = try [2, 3].map { try Database.readOnly(path: cluster.dbPath($0)) }
        var probe = 0
        while DispatchTime.now().uptimeNanoseconds < end {
            probe += 1
            let key = "probe-\(probe)"
            let t0 = DispatchTime.now().uptimeNanoseconds
            try writer.execute("INSERT OR REPLACE INTO model(key, value) VALUES(?, 'probe')", [.text(key)])
            var seen = Set<Int>()
            let deadline = t0 + 30_000_000_000
            while seen.count < readers.count && DispatchTime.now().uptimeNanoseconds < deadline {
                for (i, r) in readers.enumerated() where !seen.contains(i) {
                    if try r.scalar("SELECT 1 FROM model WHERE key = ?", [.text(key)]) != nil { seen.insert(i) }
                }
                if seen.count < readers.count { usleep(500) }
            }
            visible.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
            usleep(50_000)
        }
        group.wait()
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        // Every write reaches the other nodes: the run is only counted once they have all of it.
        let expected = try writer.scalar("SELECT count(*) FROM model")?.int64 ?? 0
        try waitFor(seconds: 120, "nodes 2 and 3 to have every key") {
            try readers.allSatisfy { try $0.scalar("SELECT count(*) FROM model")?.int64 == expected }
        }
        let drained = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 - elapsed
        let rss = cluster.peakRSSMegabytes()
        let stats = collected.withLock { $0 }
        return Result(system: "harmonylite", workers: n, writes: stats.writes, errors: stats.errors, seconds: elapsed, commitMs: stats.latencies,
                      visibleMs: visible, note: String(format: "all nodes equal %.1f s after the run; peak RSS %@", drained, rssText(rss)))
    }

    /// Runs dqlite-benchmark on 3 local nodes, or nil when it is not installed.
    func dqlite(workers n: Int) throws -> Result? {
        guard let executable = ["/usr/bin/dqlite-benchmark", "/usr/local/bin/dqlite-benchmark"].first(where: FileManager.default.isExecutableFile) else {
            print("dqlite-benchmark not found (apt install go-dqlite): dqlite not measured")
            return nil
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("dqlite-bench-\(UUID().uuidString.prefix(8))").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let ports = (0..<3).map { _ in EmbeddedNATSServer.freePort() }
        let addresses = ports.map { "127.0.0.1:\($0)" }
        var processes: [ChildProcess] = []
        defer { for p in processes { p.terminate(graceSeconds: 5) } }
        for i in 0..<3 {
            let dir = "\(directory)/node\(i + 1)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            var args = ["--db", addresses[i], "--dir", dir]
            if i == 0 {
                args += ["--driver", "--cluster", addresses.joined(separator: ","), "--workload", "kvwrite", "--workers", String(n),
                         "--duration", String(seconds), "--key-size", String(keySize), "--value-size", String(valueSize)]
            } else {
                args += ["--join", addresses[0]]
            }
            processes.append(try ChildProcess.spawn(executable, args, environment: ProcessInfo.processInfo.environment,
                                                    stdin: nil, stdout: nil, stderr: nil))
            if i == 0 { Thread.sleep(forTimeInterval: 1) }
        }
        guard processes[0].wait(timeoutSeconds: Double(seconds) + 180) != nil else {
            throw ValidationError("dqlite-benchmark's driver did not finish")
        }
        let results = "\(directory)/node1/\(addresses[0])/results"
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: results)) ?? []).filter { $0.contains("-exec-") }
        guard !files.isEmpty else { throw ValidationError("dqlite-benchmark wrote no results under \(results)") }
        var writes = 0, errors = 0
        var latencies: [Double] = []
        var errorSample: String?
        for file in files {
            let text = try String(contentsOfFile: "\(results)/\(file)", encoding: .utf8)
            var inMeasurements = false, inErrors = false
            for line in text.split(separator: "\n") {
                if inErrors, errorSample == nil { errorSample = line.split(separator: " ", maxSplits: 1).last.map(String.init) }
                if line.hasPrefix("n ") { writes += Int(line.dropFirst(2)) ?? 0 }
                if line.hasPrefix("n_err ") { errors += Int(line.dropFirst(6)) ?? 0 }
                if line.hasPrefix("measurements") { inMeasurements = true; continue }
                if line.hasPrefix("errors") { inMeasurements = false; inErrors = true; continue }
                if inMeasurements, let ms = line.split(separator: " ").last.flatMap({ Double($0) }) { latencies.append(ms) }
            }
        }
        return Result(system: "dqlite (go-dqlite \(dqliteVersion()))", workers: n, writes: writes, errors: errors, seconds: Double(seconds),
                      commitMs: latencies, visibleMs: [], note: errorSample.map { "errors such as: \($0)" } ?? "")
    }

    /// go-dqlite's package version, from dpkg's status file.
    func dqliteVersion() -> String {
        let status = (try? String(contentsOfFile: "/var/lib/dpkg/status", encoding: .utf8)) ?? ""
        let entry = status.components(separatedBy: "\n\n").first { $0.hasPrefix("Package: go-dqlite\n") } ?? ""
        return entry.split(separator: "\n").first { $0.hasPrefix("Version: ") }.map { String($0.dropFirst(9)) } ?? "?"
    }
}

func mean(_ xs: [Double]) -> Double { xs.isEmpty ? .nan : xs.reduce(0, +) / Double(xs.count) }
