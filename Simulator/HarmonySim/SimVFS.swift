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
/// write since the last fsync is tracked so a simulated power loss can drop it.
final class SimVFS: @unchecked Sendable {
    let name: String
    let time = SimTimeSource()
    private let vfs: UnsafeMutablePointer<sqlite3_vfs>
    private let nameStorage: UnsafeMutablePointer<CChar>

    /// Maps each registered VFS to its time source; callbacks are plain C functions and find it here.
    private static let registry = Mutex<[UInt: SimTimeSource]>([:])

    init(name: String) {
        self.name = name
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
                  let context = SimVFS.registry.withLock({ $0[UInt(bitPattern: vfsPointer)] }), let base = context.base
            else { return SQLITE_ERROR }
            return simOpen(base: base, durability: context.durability, name: name, file: file, flags: flags, outFlags: outFlags)
        }
        vfs.pointee.xCurrentTimeInt64 = { vfsPointer, out in
            guard let vfsPointer, let out else { return SQLITE_ERROR }
            let ms = SimVFS.registry.withLock { $0[UInt(bitPattern: vfsPointer)]?.nowMs } ?? 0
            out.pointee = ms + 210_866_760_000_000  // Julian day 0 to the Unix epoch, in ms
            return SQLITE_OK
        }
        vfs.pointee.xCurrentTime = { vfsPointer, out in
            guard let vfsPointer, let out else { return SQLITE_ERROR }
            let ms = SimVFS.registry.withLock { $0[UInt(bitPattern: vfsPointer)]?.nowMs } ?? 0
            out.pointee = Double(ms) / 86_400_000.0 + 2_440_587.5
            return SQLITE_OK
        }
        let key = UInt(bitPattern: vfs)
        let source = time
        Self.registry.withLock { $0[key] = source }
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
