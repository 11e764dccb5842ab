import Dispatch
import Foundation
import HarmonyTestSupport
@testable import HarmonyRuntime
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

/// `app.db` (WAL) in a scratch directory, holding `table`, and the connection that made it (the application).
struct ScratchDatabase {
    let directory: String
    let writer: Database
    var path: String { directory + "/app.db" }

    init(table: String = "CREATE TABLE t (id INTEGER PRIMARY KEY)") throws {
        directory = try scratchDirectory()
        writer = try SQLiteOpener().open(path: directory + "/app.db")  // WAL mode
        try writer.execute(table)
    }

    func remove() { try? FileManager.default.removeItem(atPath: directory) }
}

@Suite("Change detection: inotify on the database and its WAL", .serialized)
struct ChangeDetectionTests {
    /// With the safety poll off, only inotify can wake the monitor: a commit from another connection must do so quickly.
    @Test func monitorWakesOnAnotherConnectionsCommitWithoutPolling() throws {
        let scratch = try ScratchDatabase(table: "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        defer { scratch.remove() }
        let path = scratch.path, writer = scratch.writer

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
        let scratch = try ScratchDatabase()
        defer { scratch.remove() }
        let dir = scratch.directory, path = scratch.path, writer = scratch.writer

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

    /// Another database in the same directory (a second application's, or another node's on a shared machine)
    /// commits without waking the watcher's thread at all: watched on the directory, each of its WAL writes did.
    @Test func anotherDatabaseInTheSameDirectoryWakesNothing() throws {
        let scratch = try ScratchDatabase()
        defer { scratch.remove() }
        let other = try SQLiteOpener().open(path: scratch.directory + "/other.db")  // WAL mode
        try other.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        let queue = DispatchQueue(label: "test.neighbour")
        let wakeups = Wakeups()
        let watcher = try FileChangeWatcher(databasePath: scratch.path, queue: queue) { wakeups.hit() }
        defer { watcher.cancel() }

        for id in 1...50 { try other.execute("INSERT INTO t (id) VALUES (?)", [.integer(Int64(id))]) }
        #expect(!wakeups.wait(ms: 150), "another database's commits reached the callback")
        #expect(queue.sync { watcher.wakeCount } == 0, "another database's commits woke the watcher")

        try scratch.writer.execute("INSERT INTO t (id) VALUES (1)")
        #expect(wakeups.wait(ms: 200), "no wakeup within 200 ms of a commit to the watched database")
    }

    /// The WAL does not exist while no connection is open (SQLite removes it at the last close): made after the
    /// watch started, it is watched from its first commit on, and again once it was removed and made anew.
    @Test func aWALMadeAfterTheWatchStartedIsWatched() throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/app.db"
        do {
            let setup = try SQLiteOpener().open(path: path)
            try setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        }
        #expect(!FileManager.default.fileExists(atPath: path + "-wal"), "the WAL outlived its last connection")
        let queue = DispatchQueue(label: "test.late-wal")
        let wakeups = Wakeups()
        let watcher = try FileChangeWatcher(databasePath: path, queue: queue) { wakeups.hit() }
        defer { watcher.cancel() }

        var next: Int64 = 1
        for generation in 1...2 {
            let writer = try SQLiteOpener().open(path: path)
            wakeups.drain()
            for _ in 1...3 {
                try writer.execute("INSERT INTO t (id) VALUES (?)", [.integer(next)])
                #expect(wakeups.wait(ms: 200), "no wakeup within 200 ms of commit \(next) (WAL number \(generation))")
                next += 1
                // The next commit must wake it through the WAL's own watch: wait out this one's events first.
                Thread.sleep(forTimeInterval: 0.02)
                wakeups.drain()
            }
            // The writer goes here: SQLite checkpoints and removes the WAL.
        }
    }

    /// A paused watcher reads nothing; unpaused, it hands over what came meanwhile at once. Cancelled while paused,
    /// it lets go of its descriptor (libdispatch traps on releasing a suspended source).
    @Test func aPausedWatcherHandsOverWhatCameMeanwhile() throws {
        let scratch = try ScratchDatabase()
        defer { scratch.remove() }
        let path = scratch.path, writer = scratch.writer
        let queue = DispatchQueue(label: "test.pause")
        let wakeups = Wakeups()
        let watcher = try FileChangeWatcher(databasePath: path, queue: queue) { wakeups.hit() }
        queue.sync { watcher.pause() }
        try writer.execute("INSERT INTO t (id) VALUES (1)")
        #expect(!wakeups.wait(ms: 150), "a paused watcher woke")
        queue.sync { watcher.unpause() }
        #expect(wakeups.wait(ms: 200), "the commit made while paused was not handed over")
        queue.sync { watcher.pause() }
        queue.sync { watcher.cancel() }
    }

    /// Commits every 2 ms: the monitor looks every millisecond while they come, with inotify resting, and the last
    /// commit is still seen at once; stopped in the middle of such a stretch, it stops cleanly.
    @Test func steadyCommitsAreSeenWhileInotifyRests() throws {
        let scratch = try ScratchDatabase()
        defer { scratch.remove() }
        let path = scratch.path, writer = scratch.writer
        let reader = try Database.readOnly(path: path)
        let queue = DispatchQueue(label: "test.steady")
        let seen = Mutex<Int64>(0)
        let monitor = DatabaseChangeMonitor(databasePath: path, queue: queue, safetyPollMs: nil, logger: Logger(label: "test")) {
            let newest = try reader.scalar("SELECT coalesce(max(id), 0) FROM t")?.int64 ?? 0
            seen.withLock { $0 = max($0, newest) }
        }
        try queue.sync { try monitor.start() }
        for round in 0..<3 {
            let first = Int64(round * 100)
            for id in first + 1...first + 100 {
                try writer.execute("INSERT INTO t (id) VALUES (?)", [.integer(id)])
                Thread.sleep(forTimeInterval: 0.002)
            }
            let deadline = DispatchTime.now() + .milliseconds(100)
            while seen.withLock({ $0 }) < first + 100 && DispatchTime.now() < deadline { Thread.sleep(forTimeInterval: 0.001) }
            #expect(seen.withLock { $0 } == first + 100, "round \(round): the last commit was not seen within 100 ms")
            // Quiet long enough for inotify to take over again (or not, in the last round: stopped while it rests).
            if round < 2 { Thread.sleep(forTimeInterval: 0.3) }
        }
        queue.sync { monitor.stop() }
    }

    /// Commits 60 ms apart (an application writing now and then): each is seen at once, and each costs a dozen
    /// looks. Looking every 1 ms for 20 ms and then every 5 ms, as the monitor used to, cost about 28 each.
    @Test func sparseCommitsCostAFewLooksEach() throws {
        let scratch = try ScratchDatabase()
        defer { scratch.remove() }
        let queue = DispatchQueue(label: "test.sparse")
        let wakeups = Wakeups()
        let monitor = DatabaseChangeMonitor(databasePath: scratch.path, queue: queue, safetyPollMs: nil,
                                            logger: Logger(label: "test")) { wakeups.hit() }
        try queue.sync { try monitor.start() }
        defer { queue.sync { monitor.stop() } }
        let before = queue.sync { monitor.looks }
        for id in 1...10 {
            wakeups.drain()
            try scratch.writer.execute("INSERT INTO t (id) VALUES (?)", [.integer(Int64(id))])
            #expect(wakeups.wait(ms: 100), "commit \(id) was not seen within 100 ms")
            Thread.sleep(forTimeInterval: 0.06)
        }
        let looks = queue.sync { monitor.looks } - before
        #expect(looks >= 10)
        #expect(looks < 200, "\(looks) looks for 10 commits 60 ms apart")
    }

    /// A started monitor that reads the counters of `scratch`'s sidecar connection (returned too), as the live node's does.
    static func startedWithSidecarCounters(_ scratch: ScratchDatabase, queue: DispatchQueue, wakeups: Wakeups) throws -> (Database, DatabaseChangeMonitor) {
        let sidecar = try SQLiteOpener().open(path: scratch.path)
        let monitor = DatabaseChangeMonitor(databasePath: scratch.path, queue: queue, safetyPollMs: nil, logger: Logger(label: "test"),
                                            sidecarCounters: {
            (try sidecar.scalar("PRAGMA data_version")?.int64 ?? -1, sidecar.totalChanges)
        }) { wakeups.hit() }
        try queue.sync { try monitor.start() }
        return (sidecar, monitor)
    }

    /// The live node hands the monitor its own connection's counters: the sidecar's commits (a receiver applying a
    /// bulk load) wake nothing and cost one late look each at most, and an application's commit, alone or among
    /// the sidecar's, is still seen at once.
    @Test func theSidecarsOwnCommitsWakeNothing() throws {
        let scratch = try ScratchDatabase()
        defer { scratch.remove() }
        let queue = DispatchQueue(label: "test.sidecar")
        let wakeups = Wakeups()
        let (sidecar, monitor) = try Self.startedWithSidecarCounters(scratch, queue: queue, wakeups: wakeups)
        defer { queue.sync { monitor.stop() } }
        let before = queue.sync { monitor.looks }
        for id in 1...30 {
            try queue.sync { try sidecar.execute("INSERT INTO t (id) VALUES (?)", [.integer(Int64(id))]) }
            Thread.sleep(forTimeInterval: 0.005)
        }
        #expect(!wakeups.wait(ms: 100), "the sidecar's own commits woke the node")
        let looks = queue.sync { monitor.looks } - before
        #expect(looks <= 60, "\(looks) looks for 30 of the sidecar's own commits")

        try scratch.writer.execute("INSERT INTO t (id) VALUES (100)")
        #expect(wakeups.wait(ms: 200), "an application's commit was not seen")
        Thread.sleep(forTimeInterval: 0.3)  // the looks after it are over
        wakeups.drain()
        for id in 101...120 {
            try queue.sync { try sidecar.execute("INSERT INTO t (id) VALUES (?)", [.integer(Int64(id))]) }
            if id == 110 { try scratch.writer.execute("INSERT INTO t (id) VALUES (1000)") }
            Thread.sleep(forTimeInterval: 0.002)
        }
        #expect(wakeups.wait(ms: 200), "an application's commit among the sidecar's was not seen")
    }

    /// The look `lateLookMs` after a sidecar commit can fall due while the sidecar makes its next commit, and run
    /// before that commit's file event is read. The event is still the sidecar's: one late look, not 1 ms looks for
    /// `followUpWindowMs`. Judged by the last look instead of the last event, each such commit cost about 18 looks
    /// (CI saw 63 for the 30 commits above on a loaded machine).
    @Test func aLateLookThatRunsBeforeTheNextCommitsEventLeavesItTheSidecars() throws {
        let scratch = try ScratchDatabase()
        defer { scratch.remove() }
        let queue = DispatchQueue(label: "test.latelook")
        let wakeups = Wakeups()
        let (sidecar, monitor) = try Self.startedWithSidecarCounters(scratch, queue: queue, wakeups: wakeups)
        defer { queue.sync { monitor.stop() } }
        try queue.sync { try sidecar.execute("INSERT INTO t (id) VALUES (1)") }
        let before = queue.sync { monitor.looks }
        for id in 2...6 {
            // The late look falls due during the sleep, so libdispatch queues it ahead of this commit's event.
            try queue.sync {
                Thread.sleep(forTimeInterval: Double(DatabaseChangeMonitor.lateLookMs + 5) / 1000)
                try sidecar.execute("INSERT INTO t (id) VALUES (?)", [.integer(Int64(id))])
            }
            Thread.sleep(forTimeInterval: 0.002)
        }
        Thread.sleep(forTimeInterval: Double(DatabaseChangeMonitor.followUpWindowMs) / 1000)
        let looks = queue.sync { monitor.looks } - before
        #expect(!wakeups.wait(ms: 0), "the sidecar's own commits woke the node")
        #expect(looks <= 15, "\(looks) looks for 5 of the sidecar's own commits")
    }

    /// Looks stay 1 ms apart while a steady load's commits come, then spread out, never past the cap.
    @Test func looksSpreadOutWhileNothingChanges() {
        let periods = (0..<250).map { DatabaseChangeMonitor.followUpPeriodMs(sinceMs: UInt64($0)) }
        #expect(periods[0..<4].allSatisfy { $0 == 1 })
        #expect(zip(periods, periods.dropFirst()).allSatisfy { $0 <= $1 })
        #expect(periods.allSatisfy { $0 <= DatabaseChangeMonitor.followUpPeriodMaxMs })
        for (since, period) in periods.enumerated() where since >= 4 { #expect(period * 4 > since || period == DatabaseChangeMonitor.followUpPeriodMaxMs) }
    }

    /// Without inotify the monitor polls every few milliseconds, and a commit still wakes it quickly.
    @Test func fallsBackToPollingWithoutInotify() throws {
        let scratch = try ScratchDatabase()
        defer { scratch.remove() }
        let path = scratch.path, writer = scratch.writer

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
