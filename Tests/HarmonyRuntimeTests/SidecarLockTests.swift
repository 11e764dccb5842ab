import Foundation
import HarmonyRuntime
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
