@testable import HarmonyCore
import HarmonySQLite
import Testing

/// Every node behind the log's start with no snapshot to restore: after `holeRepairAfterMs` each node skips its
/// hole, sends its rows again and asks the others to; every row any node holds ends on every node.
@Suite("Hole repair")
struct HoleRepairTests {
    /// Each node writes while the other is cut off, and the log drops those messages before the other reads them:
    /// both are behind, and the snapshot store has nothing. Without a repair both wait for good; with it, both end
    /// with all rows (`hole-repair-without-resend` skips the hole only, and each keeps just its own).
    @Test(arguments: [PlantedBugs(), .holeRepairWithoutResend])
    func bothNodesBehindTheLogStartRepairAndConverge(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT);") {
            $0.plantedBugs = bug
            $0.holeRepairAfterMs = 60_000
        }
        try c.apps[0].execute("INSERT INTO kv VALUES (1, 'before')")
        try c.settle()
        for k in 10..<20 { try c.apps[0].execute("INSERT INTO kv VALUES (\(k), 'node 1')") }
        try c.publish(0)
        for k in 20..<30 { try c.apps[1].execute("INSERT INTO kv VALUES (\(k), 'node 2')") }
        try c.publish(1)
        // The log keeps only the newest message: neither node read the other's.
        c.streams.truncate(shard: 1, before: c.streams.lastSequence(shard: 1))
        for i in 0..<2 {
            try c.nodes[i].timerFired(.cleanup)
            c.answerStreamStates(i)
            #expect(c.nodes[i].restoreNeeded)
            c.nodes[i].snapshotUnavailable(reason: "no snapshot in the store")
        }
        for i in 0..<2 {
            _ = c.clocks[i].advance(byMs: 61_000)
            try c.nodes[i].timerFired(.restoreRetry)
            c.answerStreamStates(i)
            #expect(!c.nodes[i].restoreNeeded)
        }
        try c.settle()
        let all = "SELECT count(*) FROM kv"
        #expect(try (c.rows(0, all) == c.rows(1, all)) == bug.isEmpty)
        if bug.isEmpty { #expect(try c.rows(0, all) == [[21]]) }
        #expect(c.events.allSatisfy { log in log.events.contains { if case .holeRepaired = $0 { return true } else { return false } } })
    }
}
