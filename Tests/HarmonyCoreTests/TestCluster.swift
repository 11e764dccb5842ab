import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite

/// The test cluster's log is the shared in-memory JetStream (the simulator's too), with a dedup window
/// longer than any test and time standing still: tests move messages by hand.
extension MemoryJetStream {
    static func forTests(maxEntries: Int = 0) -> MemoryJetStream { MemoryJetStream(duplicateWindowMs: Int64.max / 2, maxEntries: maxEntries) }

    /// Stores unless the id was seen before; returns whether it was stored.
    @discardableResult
    func append(shard: Int, messageID: String, payload: [UInt8]) -> Bool {
        store(shard: shard, messageID: messageID, payload: payload, nowMs: 0) != nil
    }

    /// Appends raw bytes without dedup, as a hostile or buggy publisher could.
    func appendRaw(shard: Int, payload: [UInt8]) { storeRaw(shard: shard, payload: payload) }

    func lastSequence(shard: Int) -> UInt64 { state(shard: shard).lastSequence }
}

/// One node's view of the log: publishes wait for the test to acknowledge them; consumption is a cursor per shard.
final class MemoryLogPort: ReplicationLog {
    let streams: MemoryJetStream
    var pendingPublishes: [OutgoingMessage] = []
    var deliverFrom: [Int: UInt64] = [:]
    var acks: [Int: [UInt64]] = [:]
    var naks: [Int: [UInt64]] = [:]
    /// Stream-state requests not answered yet, in order; `TestCluster.answerStreamStates` answers them.
    var stateRequests: [Int] = []

    init(streams: MemoryJetStream) { self.streams = streams }

    func publish(_ message: OutgoingMessage) { pendingPublishes.append(message) }
    func subscribe(shard: Int, fromSequence: UInt64) { deliverFrom[shard] = fromSequence }
    func ack(shard: Int, sequence: UInt64) { acks[shard, default: []].append(sequence) }
    func nak(shard: Int, sequence: UInt64, delayMs: Int64) {
        naks[shard, default: []].append(sequence)
        // Redelivery restarts at the lowest nak'd message, as a consumer with one outstanding message would.
        deliverFrom[shard] = min(deliverFrom[shard] ?? sequence, sequence)
    }
    func requestStreamState(shard: Int) { stateRequests.append(shard) }
    func streamState(shard: Int) -> StreamState { streams.state(shard: shard) }
}

/// Records the core's snapshot-store requests; tests answer them (`snapshotReady`, `snapshotLeaseAnswered`, ...).
final class SnapshotRequests: SnapshotStorePort {
    /// Requests for the newest snapshot to restore.
    var count = 0
    /// Every other request, in order: "newest", "lease", "release", "upload <name>", "prune <keep>", "discard".
    var log: [String] = []
    var uploads: [(path: String, name: String)] = []
    let directory: String
    private var scratch = 0

    init(directory: String = FileManager.default.temporaryDirectory.path) { self.directory = directory }

    func scratchPath() -> String {
        scratch += 1
        return (directory as NSString).appendingPathComponent("scratch-\(UUID().uuidString)-\(scratch).db")
    }
    /// Recorded only: tests hand the same snapshot file to several restores; the directory goes at the end.
    func discard(path: String) { log.append("discard") }
    func requestNewestName() { log.append("newest") }
    func acquireLease(durationMs: Int64) { log.append("lease") }
    func releaseLease() { log.append("release") }
    func upload(path: String, name: String) { log.append("upload \(name)"); uploads.append((path, name)) }
    func prune(keep: Int) { log.append("prune \(keep)") }
    func requestNewestSnapshot() { count += 1 }
}

final class EventLog: ReplicationEventSink {
    var events: [ReplicationEvent] = []
    func record(_ event: ReplicationEvent) { events.append(event) }
}

/// Several real cores on real SQLite files, exchanging changes through `MemoryStreams` under test control.
final class TestCluster {
    let directory: URL
    let streams: MemoryJetStream
    var nodes: [ReplicationNode] = []
    var ports: [MemoryLogPort] = []
    var clocks: [ManualClock] = []
    var events: [EventLog] = []
    var snapshotRequests: [SnapshotRequests] = []
    /// The application's connections, one per node (a separate connection, as a separate process would be).
    var apps: [Database] = []
    /// How nodes added from now on open their database (a test may shorten the busy timeout).
    var opener = SQLiteOpener()

    /// `maxEntries`: the messages each shard's stream keeps (0: all).
    init(nodes count: Int, schema: String, maxEntries: Int = 0, configure: (inout NodeConfig) -> Void = { _ in }) throws {
        streams = MemoryJetStream.forTests(maxEntries: maxEntries)
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("harmony-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for _ in 0..<count { try addNode(schema: schema, configure: configure) }
    }

    /// Starts one more node (id = its position + 1) on a new database created with `schema` (may be empty).
    @discardableResult
    func addNode(schema: String, configure: (inout NodeConfig) -> Void = { _ in },
                 crashPoint: ((CrashPoint) -> Bool)? = nil) throws -> Int {
        let i = nodes.count + 1
        let path = directory.appendingPathComponent("node\(i).db").path
        let app = try SQLiteOpener().open(path: path)
        if !schema.isEmpty { try app.execute(schema) }
        apps.append(app)
        var config = NodeConfig(nodeID: Int64(i), databasePath: path)
        configure(&config)
        let clock = ManualClock(), port = MemoryLogPort(streams: streams), sink = EventLog(), snapshots = SnapshotRequests(directory: directory.path)
        let node = ReplicationNode(config: config, environment: NodeEnvironment(clock: clock, log: port, opener: opener, events: sink,
                                                                                snapshots: snapshots, crashPoint: crashPoint))
        nodes.append(node); ports.append(port); clocks.append(clock); events.append(sink); snapshotRequests.append(snapshots)
        try node.start()
        answerStreamStates(i - 1)
        return i - 1
    }

    deinit {
        for n in nodes { n.stop() }
        apps.removeAll()
        try? FileManager.default.removeItem(at: directory)
    }

    /// Stops node `i` and starts a new process of it on the same database, log port, clock and event log.
    func restart(_ i: Int) throws {
        nodes[i].stop()
        nodes[i] = ReplicationNode(config: nodes[i].config,
                                   environment: NodeEnvironment(clock: clocks[i], log: ports[i], opener: SQLiteOpener(), events: events[i]))
        try nodes[i].start()
        answerStreamStates(i)
    }

    /// Lets node `i` see its local writes and hands its publishes to the log, acknowledging them.
    func publish(_ i: Int) throws {
        try nodes[i].databaseChanged()
        for _ in 0..<10_000 {
            let batch = ports[i].pendingPublishes
            if batch.isEmpty { return }
            ports[i].pendingPublishes.removeAll()
            try store(i, batch)
        }
        fatalError("publish loop did not drain")
    }

    /// Node `i`'s publishes so far, taken off its port before the log has them: sent, not stored or acknowledged yet.
    func takePublishes(_ i: Int) -> [OutgoingMessage] {
        defer { ports[i].pendingPublishes.removeAll() }
        return ports[i].pendingPublishes
    }

    /// The log stores node `i`'s messages and acknowledges them, telling the core where they went (as the runtime
    /// passes on each acknowledgement's sequence).
    func store(_ i: Int, _ batch: [OutgoingMessage]) throws {
        for m in batch { streams.append(shard: m.shard, messageID: m.messageID, payload: m.payload) }
        for shard in Set(batch.map(\.shard)).sorted() {
            nodes[i].streamReached(shard: shard, sequence: streams.lastSequence(shard: shard))
        }
        try nodes[i].publishAcknowledged(tokens: batch.map(\.token))
    }

    /// A fresh file name for a snapshot in the cluster's directory.
    func snapshotPath(_ name: String = "snap") -> String {
        directory.appendingPathComponent("\(name)-\(UUID().uuidString.prefix(6)).db").path
    }

    /// Takes a snapshot on node `i`, expecting one.
    func snapshot(_ i: Int) throws -> (path: String, info: SnapshotInfo) {
        let path = snapshotPath()
        guard case .taken(let info) = try nodes[i].takeSnapshot(to: path) else {
            throw SnapshotTestError("node \(i + 1) skipped its snapshot")
        }
        return (path, info)
    }

    /// Drops everything up to and including what the snapshot covers, per shard: the log's retention moved past it.
    func truncateStreams(after info: SnapshotInfo) {
        for shard in nodes[0].router.shards {
            let covered = info.sequences[nodes[0].router.streamName(shard: shard)] ?? 0
            streams.truncate(shard: shard, before: covered + 1)
        }
    }

    /// Answers node `i`'s stream-state requests with the streams' ranges now (`unknown`: with nil, as an unreachable log).
    func answerStreamStates(_ i: Int, unknown: Bool = false) {
        for _ in 0..<100 {
            let asked = ports[i].stateRequests
            if asked.isEmpty { return }
            ports[i].stateRequests.removeAll()
            for shard in asked { nodes[i].streamStateArrived(shard: shard, unknown ? nil : ports[i].streamState(shard: shard)) }
        }
    }

    /// Delivers everything node `i` has not consumed yet, shard by shard, answering its stream-state requests.
    func deliver(_ i: Int) throws {
        answerStreamStates(i)
        defer { answerStreamStates(i) }
        for _ in 0..<100 {
            var progressed = false
            for shard in nodes[i].router.shards {
                guard let from = ports[i].deliverFrom[shard] else { continue }  // not subscribed
                let batch = streams.messages(shard: shard, from: from)
                guard !batch.isEmpty else { continue }
                ports[i].deliverFrom[shard] = batch.last!.sequence + 1
                let before = nodes[i].checkpoint(shard)
                try nodes[i].messagesArrived(shard: shard, batch)
                if nodes[i].checkpoint(shard) != before { progressed = true }
            }
            if !progressed { return }
        }
    }

    /// Publishes from every node, then delivers to every node, until nothing moves.
    func settle() throws {
        for _ in 0..<20 {
            for i in nodes.indices { try publish(i) }
            for i in nodes.indices { try deliver(i) }
            let pending = try nodes.indices.reduce(0) { $0 + (try pendingChanges($1)) }
            if pending == 0 && nodes.indices.allSatisfy({ ports[$0].pendingPublishes.isEmpty }) { return }
        }
    }

    func pendingChanges(_ i: Int) throws -> Int {
        Int(try ChangeCapture.unpublishedChanges(apps[i]) ?? 0)
    }

    func rows(_ i: Int, _ sql: String) throws -> [[DatabaseValue]] { try apps[i].query(sql) }

    func changeLogCount(_ i: Int) throws -> Int {
        // Captured changes: those logged, and those the triggers queued that the sidecar has not stamped yet.
        Int(try apps[i].scalar("SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.globalLog))")?.int64 ?? 0)
            + Int(try apps[i].scalar("SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.captureQueue))")?.int64 ?? 0)
    }
}

struct SnapshotTestError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
