import CSQLite

/// How often the sidecar's storage fails, per I/O call (per mille). Zero everywhere: no storage faults.
public struct StorageFaultSettings: Sendable, Equatable {
    /// Another connection holds the write (or checkpoint) lock: taking it answers SQLITE_BUSY.
    public var busyPermille = 0
    /// A read fails with SQLITE_IOERR_READ.
    public var readErrorPermille = 0
    /// A write fails: SQLITE_FULL (disk full) or SQLITE_IOERR_WRITE, half the time after writing only its first half
    /// (a torn write).
    public var writeErrorPermille = 0
    /// An fsync fails with SQLITE_IOERR_FSYNC; what it should have made durable stays undone on a power loss.
    public var fsyncErrorPermille = 0

    public init() {}

    public var isEnabled: Bool { busyPermille + readErrorPermille + writeErrorPermille + fsyncErrorPermille > 0 }
}

/// Storage faults for one node's sidecar connections, drawn from a seeded stream, so a run is reproducible.
///
/// Zones: only the sidecar's own connections (its database and the snapshot files it writes) fail; the
/// application's connection never does, so every failure is one the core must handle. Locks of the WAL index
/// (taken exclusively by writers and checkpointers) give BUSY; reads, writes and syncs of any file give I/O
/// errors; a torn write leaves the first half of the new bytes on disk before failing. Off after the heal.
final class SimStorageFaults: @unchecked Sendable {
    enum Point { case busy, read, write, fsync }

    let settings: StorageFaultSettings
    private var random: SimRandom
    /// Switched off at the heal so liveness can be judged; used only from the simulation thread.
    var enabled = false
    private(set) var injected = 0

    init(settings: StorageFaultSettings, random: SimRandom) {
        self.settings = settings
        self.random = random
    }

    /// The error to answer at `point` instead of doing the I/O, or nil to do it.
    func inject(_ point: Point) -> Int32? {
        guard enabled else { return nil }
        let permille: Int
        switch point {
        case .busy: permille = settings.busyPermille
        case .read: permille = settings.readErrorPermille
        case .write: permille = settings.writeErrorPermille
        case .fsync: permille = settings.fsyncErrorPermille
        }
        guard permille > 0, random.chance(permille: permille) else { return nil }
        injected += 1
        switch point {
        case .busy: return SQLITE_BUSY
        case .read: return Self.ioerrRead
        case .fsync: return Self.ioerrFsync
        case .write: return random.chance(permille: 500) ? SQLITE_FULL : Self.ioerrWrite
        }
    }

    /// For a failed write: whether to leave its first half on disk first.
    func tearWrite() -> Bool { random.chance(permille: 500) }

    // Extended result codes (C macros Swift does not import): SQLITE_IOERR | (n << 8).
    static let ioerrRead = SQLITE_IOERR | (1 << 8)
    static let ioerrWrite = SQLITE_IOERR | (3 << 8)
    static let ioerrFsync = SQLITE_IOERR | (4 << 8)

    /// Errors an injected fault can surface as, so the simulator can tell them from bugs.
    static func isInjected(_ code: Int32) -> Bool {
        let primary = code & 0xFF
        return primary == SQLITE_BUSY || primary == SQLITE_FULL || primary == SQLITE_IOERR
    }
}
