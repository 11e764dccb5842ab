import Foundation
#if canImport(Glibc)
import Glibc
#endif

public struct SidecarLockHeld: Error, CustomStringConvertible {
    public var databasePath: String
    public var pid: Int32?
    /// Set instead when the lock file itself could not be opened.
    public var openFailure: String?
    public var description: String {
        if let openFailure { return "cannot open \(SidecarLock.path(forDatabase: databasePath)): \(openFailure)" }
        return "another harmonylite sidecar\(pid.map { " (pid \($0))" } ?? "") is running on \(databasePath); one sidecar per database"
    }
}

/// One sidecar per database file: an exclusive `flock` on `<db>.harmonylite-lock`, held while the node runs.
/// The kernel drops it when the process dies, however it dies, so a stale lock cannot outlive its owner.
/// `-cleanup` asks for it too: under a running sidecar it would pull the sidecar's bookkeeping away.
public final class SidecarLock: @unchecked Sendable {
    private var fd: Int32

    public static func path(forDatabase databasePath: String) -> String { databasePath + ".harmonylite-lock" }

    /// Takes the lock and writes this process's id into the file, or throws `SidecarLockHeld`.
    public init(databasePath: String) throws {
        let path = Self.path(forDatabase: databasePath)
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw SidecarLockHeld(databasePath: databasePath, openFailure: String(cString: strerror(errno))) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let pid = Self.readPID(fd)
            close(fd)
            throw SidecarLockHeld(databasePath: databasePath, pid: pid)
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }

    deinit { release() }

    /// Gives the lock back (idempotent); the file stays, empty of meaning once unlocked.
    public func release() {
        guard fd >= 0 else { return }
        close(fd)
        fd = -1
    }

    /// Who holds the lock on `databasePath` now: nil when no sidecar runs on it. Never creates the file.
    public static func holder(databasePath: String) -> SidecarLockHeld? {
        let fd = open(path(forDatabase: databasePath), O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        if flock(fd, LOCK_EX | LOCK_NB) == 0 { return nil }  // closing the descriptor unlocks it
        return SidecarLockHeld(databasePath: databasePath, pid: readPID(fd))
    }

    private static func readPID(_ fd: Int32) -> Int32? {
        var buffer = [UInt8](repeating: 0, count: 32)
        let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 31, 0) }
        guard n > 0 else { return nil }
        return Int32(String(decoding: buffer[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }
}
