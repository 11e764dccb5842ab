import Foundation
import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

/// The snapshot policy lives in the core, so the live sidecar and the simulator run the same one. Each test
/// drives one node's requests and answers by hand.
@Suite("Snapshot policy: when, under which lease, and what is logged")
struct SnapshotPolicyTests {
    static let schema = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT);"

    func cluster(intervalMs: Int64 = 60_000) throws -> TestCluster {
        let c = try TestCluster(nodes: 1, schema: Self.schema) { config in
            config.snapshotIntervalMs = intervalMs
            config.snapshotKeep = 2
        }
        try c.apps[0].execute("INSERT INTO kv VALUES (1, 'a')")
        try c.settle()
        return c
    }

    func outcomes(_ c: TestCluster) -> [ReplicationEvent] {
        c.events[0].events.filter {
            switch $0 {
            case .snapshotTaken, .snapshotSkipped, .snapshotFailed: return true
            default: return false
            }
        }
    }

    @Test("every interval: ask for the newest, take the lease, copy, upload, then log it, prune and give the lease back")
    func periodicSnapshotGoesThroughTheStore() throws {
        let c = try cluster()
        let store = c.snapshotRequests[0]
        #expect(c.clocks[0].scheduled[.snapshot] == c.clocks[0].nowMs + 60_000)
        try c.nodes[0].timerFired(.snapshot)
        #expect(store.log == ["newest"])
        c.nodes[0].snapshotNewestNameArrived(nil, error: nil)
        #expect(store.log == ["newest", "lease"])
        try c.nodes[0].snapshotLeaseAnswered(granted: true, error: nil)
        let upload = try #require(store.uploads.first)
        #expect(FileManager.default.fileExists(atPath: upload.path))
        #expect(outcomes(c).isEmpty)  // not taken until it is stored
        c.nodes[0].snapshotUploaded(name: upload.name, error: nil)
        #expect(store.log == ["newest", "lease", "upload \(upload.name)", "prune 2", "release"])
        #expect(outcomes(c) == [.snapshotTaken(name: upload.name)])
    }

    @Test("a snapshot younger than two thirds of the interval in the store means no new one")
    func recentSnapshotIsEnough() throws {
        let c = try cluster()
        let recent = SnapshotInfo.name(hlc: (c.clocks[0].nowMs - 10_000) << RowVersion.logicalBits, node: 2)
        try c.nodes[0].timerFired(.snapshot)
        c.nodes[0].snapshotNewestNameArrived(recent, error: nil)
        #expect(c.snapshotRequests[0].log == ["newest"])
        #expect(outcomes(c) == [.snapshotSkipped(reason: "the store's newest snapshot \(recent) is recent enough")])
        // An old one does not stop it.
        let old = SnapshotInfo.name(hlc: (c.clocks[0].nowMs - 50_000) << RowVersion.logicalBits, node: 2)
        try c.nodes[0].timerFired(.snapshot)
        c.nodes[0].snapshotNewestNameArrived(old, error: nil)
        #expect(c.snapshotRequests[0].log.last == "lease")
    }

    @Test("another node's lease, or a store that cannot be reached, ends the attempt with the reason and no copy")
    func leaseDeniedOrStoreDown() throws {
        let c = try cluster()
        c.nodes[0].snapshotNow()
        try c.nodes[0].snapshotLeaseAnswered(granted: false, error: nil)
        c.nodes[0].snapshotNow()
        try c.nodes[0].snapshotLeaseAnswered(granted: false, error: "timed out")
        #expect(c.snapshotRequests[0].uploads.isEmpty)
        #expect(outcomes(c) == [.snapshotSkipped(reason: "another node holds the snapshot lease"),
                                .snapshotFailed(reason: "cannot take the snapshot lease: timed out")])
        // A late grant for an attempt that is over is given back at once.
        try c.nodes[0].snapshotLeaseAnswered(granted: true, error: nil)
        #expect(c.snapshotRequests[0].log.last == "release")
    }

    @Test("the lease holder waits for its own changes to be acknowledged and takes the snapshot at the last ack")
    func waitsForAcknowledgementsUnderTheLease() throws {
        let c = try cluster()
        try c.apps[0].execute("INSERT INTO kv VALUES (2, 'b')")
        try c.nodes[0].databaseChanged()  // in flight, not acknowledged
        c.nodes[0].snapshotNow()
        try c.nodes[0].snapshotLeaseAnswered(granted: true, error: nil)
        #expect(c.snapshotRequests[0].uploads.isEmpty)
        #expect(c.clocks[0].scheduled[.snapshotRetry] != nil)
        #expect(!c.snapshotRequests[0].log.contains("release"))  // still holds the lease
        try c.publish(0)  // the acknowledgement arrives: the copy is taken right then
        let upload = try #require(c.snapshotRequests[0].uploads.first)
        let copy = try Database(path: upload.path)
        #expect(try copy.scalar("SELECT count(*) FROM kv")?.int64 == 2)
        c.nodes[0].snapshotUploaded(name: upload.name, error: "connection reset")
        #expect(outcomes(c) == [.snapshotFailed(reason: "uploading \(upload.name) failed: connection reset")])
        #expect(c.snapshotRequests[0].log.last == "release")
    }

    @Test("after its tries the holder gives up for this interval, says why, and gives the lease back")
    func givesUpAfterItsTries() throws {
        let c = try cluster()
        try c.apps[0].execute("INSERT INTO kv VALUES (2, 'b')")
        try c.nodes[0].databaseChanged()
        c.nodes[0].snapshotNow()
        try c.nodes[0].snapshotLeaseAnswered(granted: true, error: nil)
        for _ in 0..<ReplicationNode.snapshotAcknowledgementTries { try c.nodes[0].timerFired(.snapshotRetry) }
        #expect(c.snapshotRequests[0].log.last == "release")
        #expect(outcomes(c) == [.snapshotSkipped(reason: "1 local change(s) still not acknowledged by the log after \(ReplicationNode.snapshotAcknowledgementTries) tries")])
        // The next interval starts afresh.
        try c.nodes[0].timerFired(.snapshot)
        #expect(c.snapshotRequests[0].log.last == "newest")
    }

    @Test("a node behind the log's start, or with replicate = false, does not even ask the store")
    func blockedNodesDoNotAsk() throws {
        let c = try TestCluster(nodes: 1, schema: Self.schema) { $0.replicate = false; $0.snapshotIntervalMs = 1_000 }
        try c.nodes[0].timerFired(.snapshot)
        #expect(c.snapshotRequests[0].log.isEmpty)
        #expect(outcomes(c) == [.snapshotSkipped(reason: "replicate = false: this node does not hold the others' changes")])
    }

    @Test("a node with publish = false or replicate = false runs no snapshot timer, and publish = false has nothing pending")
    func oneWayNodesRunNoSnapshotTimer() throws {
        for configure in [{ (c: inout NodeConfig) in c.publish = false }, { (c: inout NodeConfig) in c.replicate = false }] {
            let c = try TestCluster(nodes: 1, schema: Self.schema) { config in
                config.snapshotIntervalMs = 1_000
                configure(&config)
            }
            #expect(c.clocks[0].scheduled[.snapshot] == nil)
            try c.apps[0].execute("INSERT INTO kv VALUES (1, 'a')")
            try c.nodes[0].databaseChanged()
            try c.nodes[0].timerFired(.cleanup)
            #expect(try c.nodes[0].pendingChangeCount() == (c.nodes[0].config.publish ? 1 : 0))
        }
    }
}
