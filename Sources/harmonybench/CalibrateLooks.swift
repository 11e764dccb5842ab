import ArgumentParser
import Foundation
import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite
import Synchronization

extension Calibrate {
    /// What a look that finds one single-row commit costs the core beyond its change and its message, and what
    /// marking that message published costs when its ack comes: CPU time, and the wall time on top (the commits'
    /// waits for the disk). Under single-row load every commit can be a look of its own, so these costs, which the
    /// per-change figures leave out, bound how often a sidecar can look.
    func measureLooks(scanChangeUs: Double, publishMessageUs: Double, looks: Int = 400) throws -> [String: Double] {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("calibrate-looks-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cores = try CalibrationCores(1, in: directory, schema: Self.benchSchema)
        defer { cores.stop() }
        let (node, log) = (cores.nodes[0], cores.logs[0])
        let app = try SQLiteOpener().open(path: "\(directory)/node1.db")
        let insert = try app.prepare("INSERT INTO bench (id, name, value, at) VALUES (?, ?, ?, ?)")
        var look = Spent(), ack = Spent()
        for id in 0..<looks {
            try insert.execute([.integer(Int64(id)), .text("row-\(id)"), .real(Double(id) / 3), .integer(Int64(id) * 7)])
            let sent = try look.time { try node.databaseChanged(); return log.take() }
            guard sent.count == 1 else { throw ValidationError("a look at one commit sent \(sent.count) messages") }
            try ack.time { try node.publishAcknowledged(tokens: sent.map(\.token)) }
        }
        let n = Double(looks)
        return [
            "look_us": max(0, look.cpuUs / n - scanChangeUs - publishMessageUs),
            "look_wait_us": max(0, (look.wallUs - look.cpuUs) / n),
            "ack_flush_us": ack.cpuUs / n,
            "ack_flush_wait_us": max(0, (ack.wallUs - ack.cpuUs) / n),
        ]
    }

    /// Wall and CPU time of this thread spent in some calls.
    struct Spent {
        var wallUs = 0.0, cpuUs = 0.0

        mutating func time<T>(_ body: () throws -> T) rethrows -> T {
            let wall = DispatchTime.now().uptimeNanoseconds, cpu = Self.threadCPUNanoseconds()
            defer {
                wallUs += Double(DispatchTime.now().uptimeNanoseconds - wall) / 1_000
                cpuUs += Double(Self.threadCPUNanoseconds() - cpu) / 1_000
            }
            return try body()
        }

        static func threadCPUNanoseconds() -> UInt64 {
            var t = timespec()
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t)
            return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
        }
    }

    /// How long an application's single-row commit holds SQLite's write lock (the upsert, the capture trigger and the
    /// commit with its fsync), with three applications committing back to back on three databases of this machine, as
    /// the three nodes of a live benchmark do at their highest rates.
    func measureApplicationCommit(seconds: Double = 2) throws -> Double {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("calibrate-commits-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var paths: [String] = []
        for i in 1...3 {
            let path = "\(directory)/node\(i).db"
            try SQLiteOpener().open(path: path).execute("CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
            // The core installs the capture triggers; the application then writes with them, as under a sidecar.
            let node = ReplicationNode(config: NodeConfig(nodeID: Int64(i), databasePath: path),
                                       environment: NodeEnvironment(clock: ManualClock(), log: CollectingLog(), opener: SQLiteOpener()))
            try node.start()
            node.stop()
            paths.append(path)
        }
        let held = Mutex<(ns: UInt64, commits: Int)>((0, 0))
        let failure = Mutex<String?>(nil)
        let done = DispatchGroup()
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9)
        for (i, path) in paths.enumerated() {
            done.enter()
            Thread {
                defer { done.leave() }
                do {
                    let db = try SQLiteOpener().open(path: path)
                    let upsert = try db.prepare("INSERT INTO kv (id, v) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET v = excluded.v")
                    var ns: UInt64 = 0, commits = 0
                    while DispatchTime.now().uptimeNanoseconds < deadline {
                        try db.execute("BEGIN IMMEDIATE")
                        let locked = DispatchTime.now().uptimeNanoseconds
                        try upsert.execute([.integer(Int64(commits % 1_000)), .text("n\(i)w\(commits)")])
                        try db.execute("COMMIT")
                        ns += DispatchTime.now().uptimeNanoseconds - locked
                        commits += 1
                    }
                    held.withLock { $0.ns += ns; $0.commits += commits }
                } catch {
                    failure.withLock { $0 = "application writer \(i + 1): \(error)" }
                }
            }.start()
        }
        done.wait()
        if let message = failure.withLock({ $0 }) { throw ValidationError(message) }
        let total = held.withLock { $0 }
        guard total.commits > 0 else { throw ValidationError("no application commit in \(seconds) s") }
        return Double(total.ns) / 1_000 / Double(total.commits)
    }

    /// The same hold while three harmonylite processes replicate what the applications write (`harmonybench rate`'s
    /// shape at `rate` writes/s over the three nodes): the sidecars' transactions and fsyncs share the disk, so each
    /// commit holds the lock longer than with the applications alone, and that longer hold is what the sidecars meet.
    func measureApplicationCommitReplicating(rate: Int = 6_000, seconds: Double = 3) throws -> Double {
        let cluster = try BenchCluster(nodes: 3, shards: 1, schema: BenchTables.schema(1), binary: binary)
        defer { cluster.stop() }
        let writers = BenchWriters.offering(rate, on: cluster, keys: 100_000)
        Thread.sleep(forTimeInterval: seconds)
        try writers.stop()
        guard writers.written > 0 else { throw ValidationError("no application commit in \(seconds) s beside the sidecars") }
        return writers.averageLockHoldUs
    }
}
