import Dispatch
import Foundation
import HarmonySQLite
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc

/// inotify on the database and its WAL, so other processes' writes wake the node in milliseconds without polling.
///
/// Their writes are watched on the files themselves; the directory only for the two names appearing (a `-wal` made
/// after start, or after SQLite removed it, and a database renamed into place). Watched on the directory, every
/// write to any file there woke the node's threads: in `harmonybench live`, whose three nodes share a directory, a
/// receiver switched context 2-2.6 times as often, woken by the other nodes' WAL writes.
public final class FileChangeWatcher: @unchecked Sendable {
    /// The names (inside the watched directory) whose events count: the database and its WAL.
    /// `-shm` is left out on purpose: readers touch it too, which would wake the node for nothing.
    public let watchedNames: [String]
    public let directory: String
    private let source: DispatchSourceRead
    /// Times the descriptor woke the queue (tests read it: other files' writes must not).
    private let wakes = WakeCounter()
    public var wakeCount: Int { wakes.value }

    /// What a file of ours is watched for; the directory, for one of ours appearing.
    static let fileMask = UInt32(IN_MODIFY | IN_CLOSE_WRITE)
    static let directoryMask = UInt32(IN_CREATE | IN_MOVED_TO)

    /// Starts watching at once; `onChange` runs on `queue`, at most once per batch of queued events.
    public init(databasePath: String, queue: DispatchQueue, onChange: @escaping @Sendable () -> Void) throws {
        let resolved = Self.resolve(databasePath)
        let url = URL(fileURLWithPath: resolved)
        let directory = url.deletingLastPathComponent().path
        self.directory = directory
        let base = url.lastPathComponent
        watchedNames = [base, base + "-wal"]

        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { throw WatchError("inotify_init1: \(String(cString: strerror(errno)))") }
        // The directory first: a file made between the two steps is then seen appearing.
        guard inotify_add_watch(fd, directory, Self.directoryMask) >= 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw WatchError("inotify_add_watch \(directory): \(reason)")
        }
        for name in watchedNames { Self.watchFile(fd: fd, directory: directory, name: name) }

        // One buffer for the watcher's life; the event and cancel handlers both run on `queue`, so never at once.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 8)
        let names = watchedNames.map { Array($0.utf8) }
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        let wakes = self.wakes
        source.setEventHandler {
            wakes.add()
            if Self.drain(fd: fd, buffer: buffer, names: names, directory: directory) { onChange() }
        }
        source.setCancelHandler {
            close(fd)
            buffer.deallocate()
        }
        self.source = source
        source.resume()
    }

    /// Watches one of our files for writes, if it exists (absent, the directory's watch sees it appear). Watching a
    /// file already watched only renews the watch.
    static func watchFile(fd: Int32, directory: String, name: String) {
        _ = inotify_add_watch(fd, directory + "/" + name, fileMask)
    }

    /// Counts the descriptor's wakes (bumped on the queue, read by tests anywhere).
    final class WakeCounter: Sendable {
        private let count = Atomic<Int>(0)
        func add() { count.wrappingAdd(1, ordering: .relaxed) }
        var value: Int { count.load(ordering: .relaxed) }
    }

    /// Queue only (`pause`, `unpause` and `cancel` are called on the watcher's queue).
    private var paused = false

    deinit { cancel() }

    /// Stops watching; the descriptor is closed once the source has finished its last event.
    public func cancel() {
        unpause()  // libdispatch never runs the cancel handler of a suspended source, and traps releasing one
        source.cancel()
    }

    /// Stops reading events while something else looks often anyway: the kernel keeps (and merges) them, and
    /// `unpause` hands over what came meanwhile at once. Every event read is a thread woken, one per commit.
    public func pause() {
        guard !paused else { return }
        paused = true
        source.suspend()
    }

    public func unpause() {
        guard paused else { return }
        paused = false
        source.resume()
    }

    struct WatchError: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    /// Follows symlinks, so the directory watched is the one the writes really land in.
    static func resolve(_ path: String) -> String {
        guard let real = realpath(path, nil) else { return path }
        defer { free(real) }
        return String(cString: real)
    }

    /// Reads every queued event (bounded, so a writer faster than us cannot keep us here: the source fires
    /// again while the descriptor stays readable) and says whether any was a write to one of our files, or one of
    /// them appearing (then watched for writes from here on).
    static func drain(fd: Int32, buffer: UnsafeMutableRawBufferPointer, names: [[UInt8]], directory: String) -> Bool {
        var relevant = false
        let header = MemoryLayout<inotify_event>.size
        for _ in 0..<64 {
            let n = read(fd, buffer.baseAddress, buffer.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }  // EAGAIN: the queue is empty
            var offset = 0
            while offset + header <= n {
                let mask = buffer.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)
                let length = Int(buffer.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
                if mask & UInt32(IN_Q_OVERFLOW) != 0 {
                    relevant = true  // events were lost: assume the database changed
                } else if mask & UInt32(IN_IGNORED) != 0 {
                    // A file of ours went away (SQLite removes the WAL at its last close): nothing was written.
                } else if length == 0 {
                    relevant = true  // a write to one of our files, on its own watch
                } else if offset + header + length <= n {
                    let raw = UnsafeRawBufferPointer(rebasing: buffer[(offset + header)..<(offset + header + length)])
                    let name = Array(raw.prefix { $0 != 0 })
                    if names.contains(name) {
                        relevant = true
                        watchFile(fd: fd, directory: directory, name: String(decoding: name, as: UTF8.self))
                    }
                }
                offset += header + length
            }
        }
        return relevant
    }
}
#endif

/// Tells the node another connection committed: inotify wakes it, `PRAGMA data_version` confirms, a slow poll covers what inotify misses.
public final class DatabaseChangeMonitor: @unchecked Sendable {
    public enum Mode: Sendable, Equatable { case inotify, polling }

    public let databasePath: String
    let queue: DispatchQueue
    let safetyPollMs: Int?
    let fallbackPollMs: Int
    let watchFiles: Bool
    let log: Logger
    let onChange: () throws -> Void
    /// Where looks read the counters from; nil: the monitor's own connection, which sees the sidecar's commits too.
    let sidecarCounters: (() throws -> SidecarCounters?)?
    /// Queue only, like every other field below.
    public private(set) var mode: Mode?
    private var connection: Database?
    private var lastDataVersion: Int64 = -1
    private var lastOwnWrites: Int64 = 0
    /// The sidecar's write count when the last file event was read: an event after it wrote is most likely its own
    /// commit's. Counted from events, not looks: a late look can run between its next commit and that commit's event.
    private var ownWritesAtLastEvent: Int64 = 0
    /// Looks taken so far: each is a thread woken and a pragma run.
    private(set) var looks = 0
    private var poll: DispatchSourceTimer?
    #if canImport(Glibc)
    private var watcher: FileChangeWatcher?
    #endif
    /// Re-checks after file events (see `filesChanged`); idle unless files changed in the last `followUpWindowMs`.
    private var followUp: DispatchSourceTimer?
    private var followUpPhase = FollowUpPhase.idle
    /// The follow-up timer's period while backing off (`followUpPeriodMs(sinceMs:)`); 0 while it is not repeating.
    private var followUpPeriodMs = 0
    private var lastActivityNs: UInt64 = 0
    private enum FollowUpPhase { case idle, backingOff, late }
    /// Looks back off to one every this many milliseconds at most…
    static let followUpPeriodMaxMs = 64
    /// …and stop this long after the last file event or change found.
    static let followUpWindowMs: UInt64 = 250
    /// inotify rests while looks come this often or more: a look is due soon anyway.
    static let inotifyRestsBelowMs = 4
    /// After a file event that was most likely the sidecar's own commit, one more look this much later.
    static let lateLookMs = 10

    /// What the sidecar's own connection says: `PRAGMA data_version` there moves only when another connection
    /// commits, and `total_changes()` only with the sidecar's own writes.
    public typealias SidecarCounters = (dataVersion: Int64, ownWrites: Int64)

    /// `safetyPollMs` nil turns the slow poll off (tests use it to prove the inotify path alone wakes us);
    /// `watchFiles` false polls every `fallbackPollMs` as if inotify were unavailable. `sidecarCounters` (nil
    /// while there is no sidecar connection) makes the sidecar's own commits count for nothing: a receiver applying
    /// a bulk load otherwise looked every millisecond of it, and scanned for local changes after each of its commits.
    public init(databasePath: String, queue: DispatchQueue, safetyPollMs: Int? = 250, fallbackPollMs: Int = 5,
                watchFiles: Bool = true, logger: Logger, sidecarCounters: (() throws -> SidecarCounters?)? = nil,
                onChange: @escaping () throws -> Void) {
        self.databasePath = databasePath
        self.queue = queue
        self.safetyPollMs = safetyPollMs
        self.fallbackPollMs = fallbackPollMs
        self.watchFiles = watchFiles
        self.log = logger
        self.sidecarCounters = sidecarCounters
        self.onChange = onChange
    }

    /// Opens the watching connection and starts inotify (or the fast poll). Call on `queue`, before the core
    /// first scans, so a commit landing in between still moves `data_version` past what was read here. With
    /// `sidecarCounters` and no core running yet there is nothing to read: the first look after it starts counts as
    /// a change, so the core looks for local writes once more.
    public func start() throws {
        dispatchPrecondition(condition: .onQueue(queue))
        if sidecarCounters == nil {
            let connection = try SQLiteOpener().open(path: databasePath)
            self.connection = connection
        }
        let first = try counters()
        lastDataVersion = first?.dataVersion ?? -1
        lastOwnWrites = first?.ownWrites ?? 0
        ownWritesAtLastEvent = lastOwnWrites
        var pollMs = safetyPollMs
        #if canImport(Glibc)
        do {
            guard watchFiles else { throw FileChangeWatcher.WatchError("file watching turned off") }
            watcher = try FileChangeWatcher(databasePath: databasePath, queue: queue) { [weak self] in self?.filesChanged() }
            mode = .inotify
            let timer = DispatchSource.makeTimerSource(queue: queue)
            timer.setEventHandler { [weak self] in self?.followUpFired() }
            timer.resume()
            followUp = timer
        } catch {
            log.warning("change detection: inotify unavailable (\(error)); polling every \(fallbackPollMs) ms instead")
            mode = .polling
            pollMs = fallbackPollMs
        }
        #else
        mode = .polling
        pollMs = fallbackPollMs
        #endif
        if let pollMs {
            let timer = DispatchSource.makeTimerSource(queue: queue)
            let leeway = max(1, pollMs / 5)
            timer.schedule(deadline: .now() + .milliseconds(pollMs), repeating: .milliseconds(pollMs), leeway: .milliseconds(leeway))
            timer.setEventHandler { [weak self] in self?.check() }
            timer.resume()
            poll = timer
        }
    }

    /// Cancels the watch and the polls and closes the connection. Call on `queue`.
    public func stop() {
        dispatchPrecondition(condition: .onQueue(queue))
        poll?.cancel()
        poll = nil
        followUp?.cancel()
        followUp = nil
        #if canImport(Glibc)
        watcher?.cancel()
        watcher = nil
        #endif
        connection = nil
    }

    /// A WAL commit writes its frames (inotify sees those), syncs, and only then publishes them in the `-shm`
    /// index, which is mmapped and raises no event: a look right at the event can be too early. So look now, then
    /// every 1 ms, and while looks find nothing new, further apart (`followUpPeriodMs(sinceMs:)`), until
    /// `followUpWindowMs` after the last event or change. A database nobody writes costs nothing, a lone commit
    /// 16 looks and a commit every 100 ms 14 each (looking every 1 ms for 20 ms, then every 5 ms, cost 66 and 36).
    ///
    /// While looks find changes they stay 1 ms apart and inotify is not read: under a steady load each commit's
    /// events woke two threads (the event, then the queue). Once looks are `inotifyRestsBelowMs` apart or more,
    /// inotify takes over again, with whatever it queued meanwhile.
    ///
    /// A file event that brought no other connection's commit, after the sidecar wrote, was most likely the
    /// sidecar's own commit: one look `lateLookMs` later covers an application commit that came with it and had not
    /// yet published its index, and nothing else is armed.
    private func filesChanged() {
        let changed = check()
        let sidecarWrote = lastOwnWrites != ownWritesAtLastEvent
        ownWritesAtLastEvent = lastOwnWrites
        if changed || !sidecarWrote {
            lookAgainSoon()
        } else if followUpPhase == .idle {
            followUpPhase = .late
            followUp?.schedule(deadline: .now() + .milliseconds(Self.lateLookMs), repeating: .never, leeway: .milliseconds(1))
        }
    }

    /// An event or a change just now: looks 1 ms apart from here.
    private func lookAgainSoon() {
        lastActivityNs = DispatchTime.now().uptimeNanoseconds
        followUpPhase = .backingOff
        setFollowUpPeriod(1)
    }

    private func setFollowUpPeriod(_ ms: Int) {
        guard ms != followUpPeriodMs else { return }  // re-arming wakes libdispatch's timer thread: only on a change
        followUpPeriodMs = ms
        followUp?.schedule(deadline: .now() + .milliseconds(ms), repeating: .milliseconds(ms), leeway: .microseconds(250 * ms))
        #if canImport(Glibc)
        if ms < Self.inotifyRestsBelowMs { watcher?.pause() } else { watcher?.unpause() }
        #endif
    }

    private func followUpFired() {
        if followUpPhase == .late {
            followUpPhase = .idle
            if check() { lookAgainSoon() }
            return
        }
        guard followUpPhase == .backingOff else { return }
        if check() {
            lookAgainSoon()
            return
        }
        let sinceMs = (DispatchTime.now().uptimeNanoseconds &- lastActivityNs) / 1_000_000
        if sinceMs >= Self.followUpWindowMs {
            followUpPhase = .idle
            followUpPeriodMs = 0
            followUp?.schedule(deadline: .distantFuture, repeating: .never)
            #if canImport(Glibc)
            watcher?.unpause()
            #endif
        } else {
            setFollowUpPeriod(Self.followUpPeriodMs(sinceMs: sinceMs))
        }
    }

    /// Looks 1 ms apart for the first 4 ms after an event or change (a steady load's commits come that often), then
    /// a power of two between a quarter and half the time since, up to `followUpPeriodMaxMs`: a commit whose sync
    /// takes a while is still seen within about half that while again.
    static func followUpPeriodMs(sinceMs: UInt64) -> Int {
        guard sinceMs >= 4 else { return 1 }
        var period = 2
        while UInt64(period) * 4 <= sinceMs && period < followUpPeriodMaxMs { period *= 2 }
        return period
    }

    /// The counters now: from the sidecar's connection if given (nil while it has none), else from our own.
    private func counters() throws -> SidecarCounters? {
        if let sidecarCounters { return try sidecarCounters() }
        guard let connection else { return nil }
        return (try connection.scalar("PRAGMA data_version")?.int64 ?? -1, 0)
    }

    /// One cheap pragma: it moves only when some other connection committed since the last look. Returns whether
    /// it moved.
    @discardableResult
    func check() -> Bool {
        looks += 1
        do {
            guard let now = try counters() else { return false }
            lastOwnWrites = now.ownWrites
            let version = now.dataVersion
            guard version != lastDataVersion else { return false }
            lastDataVersion = version
            try onChange()
            return true
        } catch {
            log.error("change detection: \(error)")
            return false
        }
    }
}
