import Foundation
@testable import HarmonyRuntime
import Testing

@Suite("One sidecar per database")
struct SidecarLockTests {
    @Test func aSecondHolderIsRefusedWithTheFirstOnesPIDUntilItLetsGo() throws {
        let db = FileManager.default.temporaryDirectory.appendingPathComponent("lock-\(UUID().uuidString).db").path
        defer { try? FileManager.default.removeItem(atPath: SidecarLock.path(forDatabase: db)) }
        #expect(SidecarLock.holder(databasePath: db) == nil)
        #expect(!FileManager.default.fileExists(atPath: SidecarLock.path(forDatabase: db)))  // asking creates nothing

        let first = try SidecarLock(databasePath: db)
        #expect(SidecarLock.holder(databasePath: db)?.pid == getpid())
        #expect(throws: SidecarLockHeld.self) { _ = try SidecarLock(databasePath: db) }
        do {
            _ = try SidecarLock(databasePath: db)
        } catch let held as SidecarLockHeld {
            #expect(held.description.contains("pid \(getpid())") && held.description.contains(db))
        }

        first.release()
        // A process another test spawns at this moment holds a copy of the descriptor (and so the flock) between its
        // fork and its exec, when O_CLOEXEC closes it: in CI this once kept the lock 'held' right after release.
        let deadline = Date().addingTimeInterval(5)
        while SidecarLock.holder(databasePath: db) != nil && Date() < deadline { usleep(10_000) }
        #expect(SidecarLock.holder(databasePath: db) == nil)
        let second = try SidecarLock(databasePath: db)
        second.release()
    }
}

/// A node's claim on its node_id after `kill -9`, as the restart that follows finds it.
@Suite struct NodeIdentityClaimTests {
    /// A process that died and was not reaped yet (a zombie, as after `kill -9` under a slow init) holds nothing: its
    /// claim is stale at once. Before, it answered kill(pid, 0) and the restart was refused as a duplicate node_id.
    @Test func aZombieHoldsNoClaim() throws {
        var pid: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
        defer { argv.forEach { free($0) } }
        #expect(posix_spawn(&pid, "/bin/true", nil, nil, argv, environ) == 0)
        let deadline = Date().addingTimeInterval(10)
        while !NodeIdentityClaim.isZombie(pid) && Date() < deadline { usleep(10_000) }
        #expect(kill(pid, 0) == 0, "a zombie still answers signals")
        let me = NodeIdentityClaim.Holder(node: 1, instance: "b", pid: getpid(), host: "h", database: "/x.db", expiresMs: 0)
        var dead = me
        dead.instance = "a"
        dead.pid = pid
        #expect(NodeIdentityClaim.isGone(dead, from: me))
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        #expect(NodeIdentityClaim.isGone(dead, from: me))
        var alive = dead
        alive.pid = getppid()
        #expect(!NodeIdentityClaim.isGone(alive, from: me))
    }
}
