import Foundation
@testable import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite
import Testing

/// A stream keeps its newest `max_entries` messages. A node that holds another node's message back (for its bulk
/// import's stamp, or for its application's lock) must not push that message out with its own backlog meanwhile.
@Suite("A node's own sending and its stream's retention")
struct LogRetentionTests {
    static let schema = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)"

    /// Delivers to both nodes, then hands node 1's messages to the log ten at a time and delivers again in between,
    /// as a live node consumes its own messages while it sends, until node 1 has nothing more to send.
    func sendInSteps(_ cluster: TestCluster) throws {
        try cluster.deliver(0)
        try cluster.deliver(1)
        try cluster.nodes[0].databaseChanged()
        let port = cluster.ports[0]
        for _ in 0..<10_000 {
            if port.pendingPublishes.isEmpty { return }
            let batch = Array(port.pendingPublishes.prefix(10))
            port.pendingPublishes.removeFirst(batch.count)
            try cluster.store(0, batch)
            try cluster.deliver(0)
            try cluster.deliver(1)
        }
    }

    /// Node 2 writes one row; node 1's application then imports 3,000 rows in one transaction, which node 1 stamps 100
    /// at a time and sends 10 rows a message (300 messages) into a stream that keeps 60.
    @Test("an import stops sending while another node's message waits for its stamp, and both reach every node")
    func importWaitsForTheHeldMessage() throws {
        let cluster = try TestCluster(nodes: 2, schema: Self.schema, maxEntries: 60) {
            $0.lockBatchRows = 100
            $0.publishBatchMax = 10
            $0.logMaxMessages = 60
        }
        try cluster.apps[1].execute("INSERT INTO kv VALUES (0, 'from node 2')")
        try cluster.publish(1)
        try cluster.apps[0].execute("BEGIN")
        for k in 1...3_000 { try cluster.apps[0].execute("INSERT INTO kv VALUES (\(k), 'import')") }
        try cluster.apps[0].execute("COMMIT")
        try sendInSteps(cluster)
        #expect(cluster.nodes[0].applyHeldForStamping, "node 2's message waits for the import's stamp")
        #expect(cluster.nodes[0].checkpoint(1) == 0)
        var reachMost: UInt64 = 0
        for _ in 0..<200 where cluster.nodes[0].checkpoint(1) == 0 && !cluster.nodes[0].restoreNeeded {
            _ = cluster.clocks[0].advance(byMs: 100)
            try cluster.nodes[0].timerFired(.bookkeepingResume)
            try sendInSteps(cluster)
            reachMost = max(reachMost, cluster.streams.lastSequence(shard: 1) - cluster.nodes[0].checkpoint(1))
        }
        #expect(!cluster.nodes[0].restoreNeeded, "node 1 is not behind its stream's start")
        #expect(reachMost <= 40, "node 1 sent about half the stream's 60 messages past node 2's, then waited")
        #expect(cluster.nodes[0].checkpoint(1) > 1, "node 2's message applied, and node 1's own after it")
        try cluster.nodes[0].timerFired(.publishContinue)
        try sendInSteps(cluster)
        try cluster.settle()
        for i in 0..<2 {
            #expect(try cluster.apps[i].scalar("SELECT count(*) FROM kv")?.int64 == 3_001)
        }
        #expect(!cluster.nodes[0].restoreNeeded && !cluster.nodes[1].restoreNeeded)
    }

    /// Node 1 sends a 3,000-row import (300 messages of 10 rows) into a stream that keeps 60, handing everything it
    /// can to the log before any of its own messages comes back.
    @Test("a node sends at most half its stream's retention past its checkpoint; its own messages let it go on")
    func ownBacklogWaitsForItsOwnMessages() throws {
        let cluster = try TestCluster(nodes: 2, schema: Self.schema, maxEntries: 60) {
            $0.publishBatchMax = 10
            $0.scanMaxChanges = 100  // a page of 10 messages, as live's 512 changes are 4 messages of 128
            $0.logMaxMessages = 60
        }
        try cluster.apps[0].execute("BEGIN")
        for k in 1...3_000 { try cluster.apps[0].execute("INSERT INTO kv VALUES (\(k), 'import')") }
        try cluster.apps[0].execute("COMMIT")
        var rounds = 0
        while try cluster.pendingChanges(0) > 0 && rounds < 100 {
            try cluster.publish(0)
            #expect(cluster.streams.lastSequence(shard: 1) <= cluster.nodes[0].checkpoint(1) + 40)
            try cluster.deliver(0)
            try cluster.deliver(1)
            try cluster.nodes[0].timerFired(.publishContinue)
            rounds += 1
        }
        #expect(rounds > 5, "sent in rounds, each after its own messages came back")
        try cluster.settle()
        #expect(!cluster.nodes[0].restoreNeeded && !cluster.nodes[1].restoreNeeded)
        for i in 0..<2 { #expect(try cluster.apps[i].scalar("SELECT count(*) FROM kv")?.int64 == 3_000) }
    }

    @Test("a node that only publishes does not hold its sending back: it never applies, so never catches up")
    func nodesThatCannotCatchUpSendOn() throws {
        let cluster = try TestCluster(nodes: 2, schema: Self.schema) {
            $0.publishBatchMax = 10
            $0.logMaxMessages = 60
            $0.replicate = false
        }
        for k in 1...1_000 { try cluster.apps[0].execute("INSERT INTO kv VALUES (\(k), 'v')") }
        try cluster.publish(0)
        #expect(cluster.streams.lastSequence(shard: 1) >= 100, "all of it, though its checkpoint never moves")
        #expect(try cluster.pendingChanges(0) == 0)
    }

    /// A stream deleted and made again starts its sequences over: what the node knew of the old one's reach would
    /// hold its sending until its checkpoint passed it.
    @Test("a restore forgets how far the stream reached, and the node sends its backlog again")
    func aRestoreForgetsTheStreamsReach() throws {
        let cluster = try TestCluster(nodes: 2, schema: Self.schema) {
            $0.publishBatchMax = 10
            $0.logMaxMessages = 1_000
        }
        for k in 1...10 { try cluster.apps[0].execute("INSERT INTO kv VALUES (\(k), 'v\(k)')") }
        try cluster.publish(0)
        try cluster.deliver(0)
        let (path, info) = try cluster.snapshot(0)
        cluster.nodes[1].streamReached(shard: 1, sequence: 10_000)  // the stream before it was made again
        cluster.truncateStreams(after: info)
        try cluster.nodes[1].timerFired(.cleanup)  // looks at where the streams start
        cluster.answerStreamStates(1)
        #expect(cluster.nodes[1].restoreNeeded)
        try cluster.nodes[1].snapshotReady(at: path)
        #expect(!cluster.nodes[1].restoreNeeded)
        try cluster.apps[1].execute("BEGIN")
        for k in 100..<1_100 { try cluster.apps[1].execute("INSERT INTO kv VALUES (\(k), 'node 2')") }
        try cluster.apps[1].execute("COMMIT")
        try cluster.publish(1)
        #expect(try cluster.pendingChanges(1) == 0, "all 100 messages sent, well within half of max_entries")
    }
}

