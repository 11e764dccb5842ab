import Dispatch
import Foundation
import HarmonySQLite
import Logging

#if canImport(Glibc)
import Glibc

/// inotify on the database's directory (a `-wal` created later is seen too), so other processes' writes wake the node in milliseconds without polling.
public final class FileChangeWatcher: @unchecked Sendable {
    /// The names (inside the watched directory) whose events count: the database and its WAL.
    /// `-shm` is left out on purpose: readers touch it too, which would wake the node for nothing.
    public let watchedNames: [String]
    public let directory: String
    private let source: DispatchSourceRead

    /// Starts watching at once; `onChange` runs on `queue`, at most once per batch of queued events.
    public init(databasePath: String, queue: DispatchQueue, onChange: @escaping @Sendable () -> Void) throws {
        let resolved = Self.resolve(databasePath)
        let url = URL(fileURLWithPath: resolved)
        directory = url.deletingLastPathComponent().path
        let base = url.lastPathComponent
        watchedNames = [base, base + "-wal"]

        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else { throw WatchError("inotify_init1: \(String(cString: strerror(errno)))") }
        let mask = UInt32(IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO)
        guard inotify_add_watch(fd, directory, mask) >= 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw WatchError("inotify_add_watch \(directory): \(reason)")
        }

        // One buffer for the watcher's life; the event and cancel handlers both run on `queue`, so never at once.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 64 * 1024, alignment: 8)
        let names = watchedNames.map { Array($0.utf8) }
        let source = DispatchSource.makeReadSource(fileDescriptor: fd, queue: queue)
        source.setEventHandler {
            if Self.drain(fd: fd, buffer: buffer, names: names) { onChange() }
        }
        source.setCancelHandler {
            close(fd)
            buffer.deallocate()
        }
        self.source = source
        source.resume()
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
    /// again while the descriptor stays readable) and says whether any concerned the database or its WAL.
    static func drain(fd: Int32, buffer: UnsafeMutableRawBufferPointer, names: [[UInt8]]) -> Bool {
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
                } else if !relevant && length > 0 && offset + header + length <= n {
                    let raw = UnsafeRawBufferPointer(rebasing: buffer[(offset + header)..<(offset + header + length)])
                    let name = raw.prefix { $0 != 0 }
                    relevant = names.contains { $0.elementsEqual(name) }
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
    /// Queue only, like every other field below.
    public private(set) var mode: Mode?
    private var connection: Database?
    private var lastDataVersion: Int64 = -1
    private var poll: DispatchSourceTimer?
    #if canImport(Glibc)
    private var watcher: FileChangeWatcher?
    #endif
    /// Re-checks after file events (see `filesChanged`); idle unless files changed in the last `followUpWindowMs`.
    private var followUp: DispatchSourceTimer?
    private var followUpPhase = FollowUpPhase.idle
    private var lastFileEventNs: UInt64 = 0
    private enum FollowUpPhase { case idle, fast, slow }
    /// Re-check every 1 ms for this long after the last file event…
    static let followUpFastMs: UInt64 = 20
    /// …then every 5 ms until this long after it.
    static let followUpWindowMs: UInt64 = 250

    /// `safetyPollMs` nil turns the slow poll off (tests use it to prove the inotify path alone wakes us);
    /// `watchFiles` false polls every `fallbackPollMs` as if inotify were unavailable.
    public init(databasePath: String, queue: DispatchQueue, safetyPollMs: Int? = 250, fallbackPollMs: Int = 5,
                watchFiles: Bool = true, logger: Logger, onChange: @escaping () throws -> Void) {
        self.databasePath = databasePath
        self.queue = queue
        self.safetyPollMs = safetyPollMs
        self.fallbackPollMs = fallbackPollMs
        self.watchFiles = watchFiles
        self.log = logger
        self.onChange = onChange
    }

    /// Opens the watching connection and starts inotify (or the fast poll). Call on `queue`, before the core
    /// first scans, so a commit landing in between still moves `data_version` past what was read here.
    public func start() throws {
        dispatchPrecondition(condition: .onQueue(queue))
        let connection = try SQLiteOpener().open(path: databasePath)
        self.connection = connection
        lastDataVersion = try connection.scalar("PRAGMA data_version")?.int64 ?? -1
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
    /// index, which is mmapped and raises no event: a look right at the event can be too early. So look now,
    /// then every 1 ms for `followUpFastMs` and every 5 ms until `followUpWindowMs` after the last change.
    /// A database nobody writes costs nothing.
    ///
    /// While the 1 ms looks run, inotify is not read: under a steady load each commit's events woke two threads (the
    /// event, then the queue). A change a look finds counts as an event, so the 1 ms looks go on while commits do;
    /// once they are `followUpFastMs` apart, inotify takes over again, with whatever it queued meanwhile.
    private func filesChanged() {
        check()
        noteActivity()
    }

    private func noteActivity() {
        lastFileEventNs = DispatchTime.now().uptimeNanoseconds
        if followUpPhase != .fast {
            followUpPhase = .fast
            followUp?.schedule(deadline: .now() + .milliseconds(1), repeating: .milliseconds(1), leeway: .microseconds(250))
            #if canImport(Glibc)
            watcher?.pause()
            #endif
        }
    }

    private func followUpFired() {
        if check() { noteActivity() }
        let sinceMs = (DispatchTime.now().uptimeNanoseconds &- lastFileEventNs) / 1_000_000
        if sinceMs >= Self.followUpWindowMs {
            followUpPhase = .idle
            followUp?.schedule(deadline: .distantFuture, repeating: .never)
        } else if sinceMs >= Self.followUpFastMs && followUpPhase == .fast {
            followUpPhase = .slow
            followUp?.schedule(deadline: .now() + .milliseconds(5), repeating: .milliseconds(5), leeway: .milliseconds(1))
            // Commits further apart than the fast looks' window are seen by inotify again, at once.
            #if canImport(Glibc)
            watcher?.unpause()
            #endif
        }
    }

    /// One cheap pragma: it moves only when some other connection committed since the last look. Returns whether
    /// it moved.
    @discardableResult
    func check() -> Bool {
        guard let connection else { return false }
        do {
            let version = try connection.scalar("PRAGMA data_version")?.int64 ?? -1
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
