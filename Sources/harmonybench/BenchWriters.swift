import ArgumentParser
import Foundation
import HarmonySQLite
import Synchronization

/// One application writer per node of a bench cluster: single-row upserts of random keys into `kv` (or, with
/// `tables` above 1, into one of `kv`, `kv2` ... drawn evenly), through `SQLiteOpener` (WAL, synchronous=FULL) as an
/// application would, until stopped.
final class BenchWriters: @unchecked Sendable {
    private let stopFlag = Atomic<Bool>(false)
    private let count = Atomic<Int>(0)
    private let waitNs = Atomic<Int>(0)
    private let holdNs = Atomic<Int>(0)
    private let failure = Mutex<String?>(nil)
    private let done = DispatchGroup()

    /// `intervalSeconds`: the gap each writer leaves after a write, drawn evenly from the range; with `openLoop`, the
    /// writes are instead scheduled at that mean rate from the start, so a slow commit is caught up, not skipped.
    init(cluster: BenchCluster, nodes: [Int], keys: Int, tables: Int = 1, intervalSeconds: ClosedRange<Double>, openLoop: Bool = false) {
        for node in nodes {
            let path = cluster.dbPath(node)
            done.enter()
            let thread = Thread { [self] in
                defer { done.leave() }
                do {
                    let db = try SQLiteOpener().open(path: path)
                    let upserts = try BenchTables.names(tables).map { table in
                        try db.prepare("INSERT INTO \(table) (id, v) VALUES (?, ?) ON CONFLICT (id) DO UPDATE SET v = excluded.v")
                    }
                    var n = 0
                    var next = Date()
                    while !stopFlag.load(ordering: .relaxed) {
                        n += 1
                        // One write transaction per row, as an autocommit upsert is, with the wait for the write lock
                        // (BEGIN IMMEDIATE) timed apart from how long the write then holds it.
                        let began = DispatchTime.now().uptimeNanoseconds
                        try db.execute("BEGIN IMMEDIATE")
                        let locked = DispatchTime.now().uptimeNanoseconds
                        try upserts[Int.random(in: 0..<upserts.count)].execute([.integer(Int64.random(in: 1...Int64(keys))), .text("n\(node)w\(n)")])
                        try db.execute("COMMIT")
                        let committed = DispatchTime.now().uptimeNanoseconds
                        waitNs.add(Int(locked - began), ordering: .relaxed)
                        holdNs.add(Int(committed - locked), ordering: .relaxed)
                        count.add(1, ordering: .relaxed)
                        let gap = Double.random(in: intervalSeconds)
                        if openLoop {
                            next = next.addingTimeInterval(gap)
                            let wait = next.timeIntervalSinceNow
                            if wait > 0 { Thread.sleep(forTimeInterval: wait) }
                        } else {
                            Thread.sleep(forTimeInterval: gap)
                        }
                    }
                } catch {
                    failure.withLock { $0 = "writer on node \(node): \(error)" }
                }
            }
            thread.start()
        }
    }

    /// Writers on nodes 1-3 offering `rate` writes/s together: each node a third of it, scheduled (open loop) so a
    /// slow commit is caught up, not skipped, as `harmonybench rate` offers its rates.
    static func offering(_ rate: Int, on cluster: BenchCluster, keys: Int, tables: Int = 1) -> BenchWriters {
        let mean = 3.0 / Double(rate)
        return BenchWriters(cluster: cluster, nodes: [1, 2, 3], keys: keys, tables: tables, intervalSeconds: mean * 0.5...mean * 1.5, openLoop: true)
    }

    var written: Int { count.load(ordering: .relaxed) }

    /// Average time one write waited for SQLite's write lock, in µs.
    var averageLockWaitUs: Double { Double(waitNs.load(ordering: .relaxed)) / 1_000 / Double(max(1, written)) }
    /// Average time one write held the write lock (its upsert and commit, fsync included), in µs: how long an
    /// application's commit keeps the sidecar from it (`app_commit_us` of the cost profile).
    var averageLockHoldUs: Double { Double(holdNs.load(ordering: .relaxed)) / 1_000 / Double(max(1, written)) }

    /// Stops every writer and waits for them; throws the first writer's failure.
    func stop() throws {
        stopFlag.store(true, ordering: .relaxed)
        done.wait()
        if let message = failure.withLock({ $0 }) { throw ValidationError(message) }
    }
}

/// The tables the writers spread over: `kv`, then `kv2` ... `kvN`, the same columns.
enum BenchTables {
    static func names(_ count: Int) -> [String] { ["kv"] + (1..<max(1, count)).map { "kv\($0 + 1)" } }

    static func schema(_ count: Int) -> String {
        names(count).map { "CREATE TABLE \($0) (id INTEGER PRIMARY KEY, v TEXT NOT NULL);" }.joined(separator: "\n")
    }
}

/// Read-only views of a bench cluster's databases, to tell when every node holds the same rows of `kv` (and of the
/// writers' other tables).
struct BenchReaders {
    let databases: [Database]
    let tables: [String]

    init(cluster: BenchCluster, nodes: ClosedRange<Int>, tables: Int = 1) throws {
        self.tables = BenchTables.names(tables)
        databases = try nodes.map { i in
            let db = try Database.readOnly(path: cluster.dbPath(i))
            try db.setBusyTimeout(ms: 5_000)  // a reader can meet a checkpoint's brief lock
            return db
        }
    }

    func content(_ db: Database) throws -> String {
        try tables.map { table in
            try db.scalar("SELECT count(*) || '|' || coalesce(group_concat(id || '=' || v, ','), '') FROM (SELECT id, v FROM \(table) ORDER BY id)")?.string ?? ""
        }.joined(separator: "\n")
    }

    var allEqual: Bool {
        get throws {
            let all = try databases.map(content)
            return all.allSatisfy { $0 == all[0] }
        }
    }

    /// Keys whose row differs between the first and the `other`th database (to tell a slow convergence from none).
    func differing(from other: Int) throws -> Int {
        let rows = try databases.map { db in
            Dictionary(uniqueKeysWithValues: try db.query("SELECT id, v FROM kv").map { ($0[0].int64 ?? 0, $0[1].string ?? "") })
        }
        return Set(rows[0].keys).union(rows[other].keys).filter { rows[0][$0] != rows[other][$0] }.count
    }
}
