import Dispatch
import Foundation
import HarmonyTestSupport
import HarmonyRuntime
import HarmonySQLite
import Logging
import Synchronization
import Testing

/// Counts callbacks and lets a test wait for the next one, bounded in time.
final class Wakeups: Sendable {
    private let count = Mutex(0)
    private let signal = DispatchSemaphore(value: 0)
    func hit() {
        count.withLock { $0 += 1 }
        signal.signal()
    }
    var total: Int { count.withLock { $0 } }
    /// True when a callback came within `ms`.
    func wait(ms: Int) -> Bool { signal.wait(timeout: .now() + .milliseconds(ms)) == .success }
    func drain() { while signal.wait(timeout: .now()) == .success {} }
}

func scratchDirectory() throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("changes-\(UUID().uuidString.prefix(8))").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

@Suite("Change detection: inotify on the database and its WAL", .serialized)
struct ChangeDetectionTests {
    /// With the safety poll off, only inotify can wake the monitor: a commit from another connection must do so quickly.
    @Test func monitorWakesOnAnotherConnectionsCommitWithoutPolling() throws {
        let dir = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/app.db"
        let writer = try SQLiteOpener().open(path: path)  // WAL mode
        try writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")

        let queue = DispatchQueue(label: "test.monitor")
        let wakeups = Wakeups()
        let monitor = DatabaseChangeMonitor(databasePath: path, queue: queue, safetyPollMs: nil,
                                            logger: Logger(label: "test")) { wakeups.hit() }
        try queue.sync { try monitor.start() }
        defer { queue.sync { monitor.stop() } }
        #expect(queue.sync { monitor.mode } == .inotify)

        for i in 0..<20 {
            wakeups.drain()
            let t0 = DispatchTime.now().uptimeNanoseconds
            try writer.execute("INSERT INTO t (id, v) VALUES (?, 'row')", [.integer(Int64(i))])
            #expect(wakeups.wait(ms: 200), "no wakeup within 200 ms of commit \(i)")
            let elapsedMs = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6
            #expect(elapsedMs < 200)
        }
        // Another process (the sqlite3 shell) committing wakes it too.
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/sqlite3") {
            wakeups.drain()
            try runSQLiteShell(path, "INSERT INTO t (id, v) VALUES (100, 'from the shell');", arguments: ["-cmd", ".timeout 5000"])
            #expect(wakeups.wait(ms: 200), "no wakeup within 200 ms of the shell's commit")
        }
        // Quiet database, quiet monitor: its own reads and the events it drained do not wake it again.
        wakeups.drain()
        let before = wakeups.total
        #expect(!wakeups.wait(ms: 300))
        #expect(wakeups.total == before)
    }

    /// The raw watcher reports the database's and WAL's writes and ignores other files in the same directory.
    @Test func watcherFiltersToTheDatabaseAndItsWAL() throws {
        let dir = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/app.db"
        let writer = try SQLiteOpener().open(path: path)
        try writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")

        let queue = DispatchQueue(label: "test.watcher")
        let wakeups = Wakeups()
        let watcher = try FileChangeWatcher(databasePath: path, queue: queue) { wakeups.hit() }
        defer { watcher.cancel() }
        #expect(watcher.watchedNames == ["app.db", "app.db-wal"])

        try Data("unrelated".utf8).write(to: URL(fileURLWithPath: dir + "/other.txt"))
        try Data("lookalike".utf8).write(to: URL(fileURLWithPath: dir + "/app.db-journal-not"))
        #expect(!wakeups.wait(ms: 150), "a write to another file woke the watcher")

        try writer.execute("INSERT INTO t (id) VALUES (1)")
        #expect(wakeups.wait(ms: 200), "no wakeup within 200 ms of a WAL commit")
    }

    /// Without inotify the monitor polls every few milliseconds, and a commit still wakes it quickly.
    @Test func fallsBackToPollingWithoutInotify() throws {
        let dir = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/app.db"
        let writer = try SQLiteOpener().open(path: path)
        try writer.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")

        let queue = DispatchQueue(label: "test.polling")
        let wakeups = Wakeups()
        let monitor = DatabaseChangeMonitor(databasePath: path, queue: queue, safetyPollMs: nil, watchFiles: false,
                                            logger: Logger(label: "test")) { wakeups.hit() }
        try queue.sync { try monitor.start() }
        defer { queue.sync { monitor.stop() } }
        #expect(queue.sync { monitor.mode } == .polling)
        try writer.execute("INSERT INTO t (id) VALUES (1)")
        #expect(wakeups.wait(ms: 200), "no wakeup within 200 ms of a commit while polling")
    }

    /// The watcher refuses a directory it cannot watch (the monitor then polls instead).
    @Test func watcherRefusesAMissingDirectory() {
        #expect(throws: (any Error).self) {
            _ = try FileChangeWatcher(databasePath: "/nonexistent-\(UUID().uuidString)/app.db", queue: DispatchQueue(label: "x")) {}
        }
    }
}
