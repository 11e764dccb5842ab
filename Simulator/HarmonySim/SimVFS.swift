import CSQLite
import HarmonySQLite
import Synchronization

/// Where a node's SQLite reads the time (the node's simulated clock, in Unix milliseconds) and which
/// writes its files have not synced yet.
final class SimTimeSource: @unchecked Sendable {
    /// Written only by the simulation thread that owns the node; SQLite reads it on that same thread.
    var nowMs: Int64 = 0
    let durability = SimDurability()
    var base: UnsafeMutablePointer<sqlite3_vfs>?
}

/// A VFS per simulated node: SQLite's own default VFS for files, but `'now'` comes from the node's
/// simulated clock, so the capture triggers' timestamps are part of the seed-determined run, and every
/// write since the last fsync is tracked so a simulated power loss can drop it. A node has two: the
/// application's, and the sidecar's, which shares its clock and disk and may inject storage faults.
final class SimVFS: @unchecked Sendable {
    let name: String
    let time: SimTimeSource
    let faults: SimStorageFaults?
    private let vfs: UnsafeMutablePointer<sqlite3_vfs>
    private let nameStorage: UnsafeMutablePointer<CChar>

    /// What a registered VFS's C callbacks need; they are plain C functions and find it in `registry`.
    private struct Context {
        var time: SimTimeSource
        var faults: SimStorageFaults?
    }
    private static let registry = Mutex<[UInt: Context]>([:])

    /// `sharing`: another VFS of the same machine, whose clock and disk this one uses too.
    init(name: String, sharing other: SimVFS? = nil, faults: SimStorageFaults? = nil) {
        self.name = name
        self.time = other?.time ?? SimTimeSource()
        self.faults = faults
        guard let base = sqlite3_vfs_find(nil) else { fatalError("SQLite has no default VFS") }
        let storage = UnsafeMutablePointer<CChar>.allocate(capacity: name.utf8.count + 1)
        name.withCString { src in _ = strcpyCompat(storage, src, name.utf8.count + 1) }
        nameStorage = storage
        let vfs = UnsafeMutablePointer<sqlite3_vfs>.allocate(capacity: 1)
        self.vfs = vfs
        vfs.initialize(to: base.pointee)
        vfs.pointee.zName = UnsafePointer(storage)
        vfs.pointee.pNext = nil
        vfs.pointee.szOsFile = base.pointee.szOsFile + Int32(simFileHeaderBytes)
        time.base = base
        vfs.pointee.xOpen = { vfsPointer, name, file, flags, outFlags in
            guard let vfsPointer, let file,
                  let context = SimVFS.registry.withLock({ $0[UInt(bitPattern: vfsPointer)] }), let base = context.time.base
            else { return SQLITE_ERROR }
            return simOpen(base: base, durability: context.time.durability, faults: context.faults, name: name, file: file,
                           flags: flags, outFlags: outFlags)
        }
        vfs.pointee.xCurrentTimeInt64 = { vfsPointer, out in
            guard let vfsPointer, let out else { return SQLITE_ERROR }
            let ms = SimVFS.registry.withLock { $0[UInt(bitPattern: vfsPointer)]?.time.nowMs } ?? 0
            out.pointee = ms + 210_866_760_000_000  // Julian day 0 to the Unix epoch, in ms
            return SQLITE_OK
        }
        vfs.pointee.xCurrentTime = { vfsPointer, out in
            guard let vfsPointer, let out else { return SQLITE_ERROR }
            let ms = SimVFS.registry.withLock { $0[UInt(bitPattern: vfsPointer)]?.time.nowMs } ?? 0
            out.pointee = Double(ms) / 86_400_000.0 + 2_440_587.5
            return SQLITE_OK
        }
        let key = UInt(bitPattern: vfs)
        let context = Context(time: time, faults: faults)
        Self.registry.withLock { $0[key] = context }
        let rc = sqlite3_vfs_register(vfs, 0)
        precondition(rc == SQLITE_OK, "cannot register VFS \(name): \(rc)")
    }

    deinit {
        sqlite3_vfs_unregister(vfs)
        let key = UInt(bitPattern: vfs)
        _ = Self.registry.withLock { $0.removeValue(forKey: key) }
        vfs.deallocate()
        nameStorage.deallocate()
    }

    var opener: SQLiteOpener { SQLiteOpener(vfsName: name, busyTimeoutMs: 0, journalModeWAL: true) }
}

private func strcpyCompat(_ dst: UnsafeMutablePointer<CChar>, _ src: UnsafePointer<CChar>, _ n: Int) -> Int {
    for i in 0..<n { dst[i] = src[i] }
    return n
}
