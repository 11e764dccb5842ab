import CSQLite
import Foundation

/// What a file looked like at its last fsync: the bytes overwritten since, and its size then.
/// A simulated power loss writes the old bytes back and truncates, leaving exactly what was durable.
final class UnsyncedWrites: @unchecked Sendable {
    var undo: [(offset: Int64, bytes: [UInt8])] = []
    var syncedSize: Int64

    init(syncedSize: Int64) { self.syncedSize = syncedSize }

    var isDirty: Bool { !undo.isEmpty }
}

/// One node's files, tracked through its VFS. Used only from the simulation thread that owns the node.
final class SimDurability: @unchecked Sendable {
    private(set) var files: [String: UnsyncedWrites] = [:]
    var powerLosses = 0

    func tracker(path: String, currentSize: Int64) -> UnsyncedWrites {
        if let t = files[path] { return t }
        let t = UnsyncedWrites(syncedSize: currentSize)
        files[path] = t
        return t
    }

    /// Reverts every file to its last synced state. All connections must be closed first.
    func losePower() throws {
        powerLosses += 1
        for path in files.keys.sorted() {
            guard let t = files[path] else { continue }
            if FileManager.default.fileExists(atPath: path) {
                let fd = Foundation.open(path, O_RDWR)
                guard fd >= 0 else { throw SimulationError.invalid("power loss: cannot open \(path)") }
                for entry in t.undo.reversed() where entry.offset < t.syncedSize {
                    let n = min(Int64(entry.bytes.count), t.syncedSize - entry.offset)
                    _ = entry.bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, Int(n), off_t(entry.offset)) }
                }
                _ = ftruncate(fd, off_t(t.syncedSize))
                Foundation.close(fd)
            }
            t.undo.removeAll()
        }
        files.removeAll()  // sizes are re-read at the next open
    }

    /// The disk was replaced: nothing is remembered about the old files.
    func forgetAll() { files.removeAll() }
    /// A scratch file was deleted: stop tracking it, so a later file at the same path starts clean.
    func forget(path: String) { files[path] = nil }
}

/// Per open file: our header (methods pointer, state pointer) followed by the real VFS's file.
private let headerBytes = 2 * MemoryLayout<UnsafeRawPointer>.stride

final class SimFileState {
    let tracker: UnsyncedWrites?
    let faults: SimStorageFaults?
    init(tracker: UnsyncedWrites?, faults: SimStorageFaults?) {
        self.tracker = tracker
        self.faults = faults
    }
}

@inline(__always) private func inner(_ file: UnsafeMutablePointer<sqlite3_file>) -> UnsafeMutablePointer<sqlite3_file> {
    (UnsafeMutableRawPointer(file) + headerBytes).assumingMemoryBound(to: sqlite3_file.self)
}

@inline(__always) private func state(_ file: UnsafeMutablePointer<sqlite3_file>) -> SimFileState {
    let raw = (UnsafeMutableRawPointer(file) + MemoryLayout<UnsafeRawPointer>.stride).load(as: UnsafeMutableRawPointer.self)
    return Unmanaged<SimFileState>.fromOpaque(raw).takeUnretainedValue()
}

private func fileSize(_ f: UnsafeMutablePointer<sqlite3_file>) -> Int64 {
    var size: sqlite3_int64 = 0
    _ = f.pointee.pMethods.pointee.xFileSize(f, &size)
    return Int64(size)
}

/// Saves the bytes at [offset, offset+count) that were durable, before they are overwritten or cut off.
private func remember(_ t: UnsyncedWrites, _ f: UnsafeMutablePointer<sqlite3_file>, offset: Int64, count: Int64) {
    let end = min(offset + count, t.syncedSize, fileSize(f))
    guard end > offset else { return }
    var bytes = [UInt8](repeating: 0, count: Int(end - offset))
    let rc = bytes.withUnsafeMutableBytes { f.pointee.pMethods.pointee.xRead(f, $0.baseAddress, Int32($0.count), offset) }
    if rc == SQLITE_OK { t.undo.append((offset, bytes)) }
}

/// io methods that forward to the real file and keep undo data for unsynced writes. Version 2: no mmap.
/// Built once and never mutated afterwards, so sharing it across simulation threads is safe.
nonisolated(unsafe) let simIOMethods: UnsafeMutablePointer<sqlite3_io_methods> = {
    let m = UnsafeMutablePointer<sqlite3_io_methods>.allocate(capacity: 1)
    m.initialize(to: sqlite3_io_methods())
    m.pointee.iVersion = 2
    m.pointee.xClose = { f in
        guard let f else { return SQLITE_OK }
        let i = inner(f)
        let rc = i.pointee.pMethods?.pointee.xClose(i) ?? SQLITE_OK
        let raw = (UnsafeMutableRawPointer(f) + MemoryLayout<UnsafeRawPointer>.stride).load(as: UnsafeMutableRawPointer.self)
        Unmanaged<SimFileState>.fromOpaque(raw).release()
        return rc
    }
    m.pointee.xRead = { f, buf, amt, off in
        if let rc = state(f!).faults?.inject(.read) { return rc }
        let i = inner(f!)
        return i.pointee.pMethods.pointee.xRead(i, buf, amt, off)
    }
    m.pointee.xWrite = { f, buf, amt, off in
        let i = inner(f!)
        let st = state(f!)
        if let t = st.tracker { remember(t, i, offset: off, count: Int64(amt)) }
        if let faults = st.faults, let rc = faults.inject(.write) {
            // A torn write: the first half reaches the file, then the write fails.
            if amt > 1 && faults.tearWrite() { _ = i.pointee.pMethods.pointee.xWrite(i, buf, amt / 2, off) }
            return rc
        }
        return i.pointee.pMethods.pointee.xWrite(i, buf, amt, off)
    }
    m.pointee.xTruncate = { f, size in
        let i = inner(f!)
        if let t = state(f!).tracker { remember(t, i, offset: size, count: Int64.max / 2) }
        return i.pointee.pMethods.pointee.xTruncate(i, size)
    }
    m.pointee.xSync = { f, flags in
        if let rc = state(f!).faults?.inject(.fsync) { return rc }
        let i = inner(f!)
        let rc = i.pointee.pMethods.pointee.xSync(i, flags)
        if rc == SQLITE_OK, let t = state(f!).tracker {
            t.undo.removeAll()
            t.syncedSize = fileSize(i)
        }
        return rc
    }
    m.pointee.xFileSize = { f, out in let i = inner(f!); return i.pointee.pMethods.pointee.xFileSize(i, out) }
    m.pointee.xLock = { f, l in let i = inner(f!); return i.pointee.pMethods.pointee.xLock(i, l) }
    m.pointee.xUnlock = { f, l in let i = inner(f!); return i.pointee.pMethods.pointee.xUnlock(i, l) }
    m.pointee.xCheckReservedLock = { f, out in let i = inner(f!); return i.pointee.pMethods.pointee.xCheckReservedLock(i, out) }
    m.pointee.xFileControl = { f, op, arg in let i = inner(f!); return i.pointee.pMethods.pointee.xFileControl(i, op, arg) }
    m.pointee.xSectorSize = { f in let i = inner(f!); return i.pointee.pMethods.pointee.xSectorSize(i) }
    m.pointee.xDeviceCharacteristics = { f in let i = inner(f!); return i.pointee.pMethods.pointee.xDeviceCharacteristics(i) }
    m.pointee.xShmMap = { f, pg, sz, extend, pp in let i = inner(f!); return i.pointee.pMethods.pointee.xShmMap(i, pg, sz, extend, pp) }
    m.pointee.xShmLock = { f, off, n, flags in
        // Taking a WAL-index lock exclusively (to write, checkpoint or recover) may find another connection there.
        let takingExclusive = flags & SQLITE_SHM_LOCK != 0 && flags & SQLITE_SHM_EXCLUSIVE != 0
        if takingExclusive, let rc = state(f!).faults?.inject(.busy) { return rc }
        let i = inner(f!)
        return i.pointee.pMethods.pointee.xShmLock(i, off, n, flags)
    }
    m.pointee.xShmBarrier = { f in let i = inner(f!); i.pointee.pMethods.pointee.xShmBarrier(i) }
    m.pointee.xShmUnmap = { f, del in let i = inner(f!); return i.pointee.pMethods.pointee.xShmUnmap(i, del) }
    return m
}()

/// xOpen for a node's VFS: opens the real file inside our wrapper and attaches its undo tracker.
func simOpen(base: UnsafeMutablePointer<sqlite3_vfs>, durability: SimDurability?, faults: SimStorageFaults?, name: UnsafePointer<CChar>?,
             file: UnsafeMutablePointer<sqlite3_file>, flags: Int32, outFlags: UnsafeMutablePointer<Int32>?) -> Int32 {
    let i = inner(file)
    file.pointee.pMethods = nil
    let rc = base.pointee.xOpen(base, name, i, flags, outFlags)
    guard rc == SQLITE_OK else { return rc }
    var tracker: UnsyncedWrites?
    if let durability, let name, i.pointee.pMethods != nil {
        tracker = durability.tracker(path: String(cString: name), currentSize: fileSize(i))
    }
    let st = Unmanaged.passRetained(SimFileState(tracker: tracker, faults: faults)).toOpaque()
    (UnsafeMutableRawPointer(file) + MemoryLayout<UnsafeRawPointer>.stride).storeBytes(of: st, as: UnsafeMutableRawPointer.self)
    file.pointee.pMethods = UnsafePointer(simIOMethods)
    return SQLITE_OK
}

let simFileHeaderBytes = headerBytes
