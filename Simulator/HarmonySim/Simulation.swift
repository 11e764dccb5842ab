import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite

/// A committed application write as the workload saw it: the row's version and full value afterwards.
public struct WriteRecord: Sendable {
    public var node: Int
    public var key: Int64
    public var version: RowVersion
    /// The whole row after the write, or nil when the write deleted it.
    public var row: [DatabaseValue]?
    public var atMs: Int64
    /// `kv`, or another of the workload's tables (`Scenario.tables`).
    public var table = "kv"
}

enum SimEvent {
    case timer(node: Int, timer: NodeTimer, generation: UInt64, incarnation: Int)
    /// `arrivalUs`: with a cost model, when it reached the server to the microsecond (the event runs at the next whole ms).
    case publishArrives(node: Int, message: OutgoingMessage, incarnation: Int, sentMs: Int64, arrivalUs: Double? = nil)
    /// `reached`: where the log stored it (its acknowledgement says so), which the core counts as its stream's reach.
    case publishResult(node: Int, token: Int64, ok: Bool, incarnation: Int, reached: (shard: Int, sequence: UInt64)? = nil)
    /// A publish held in a cut-off node's reconnect buffer (cost model) went unacknowledged for the publish timeout.
    case bufferedPublishTimedOut(node: Int, token: Int64, incarnation: Int)
    /// With a cost model: the acknowledgements that reached a busy sidecar, handed to its core together once it is
    /// free (as the live node's queue gathers them into one transaction).
    /// `lineTurn`: taken from the node's line of work waiting for its sidecar (`deliveryLine`), its turn come.
    case acksFlush(node: Int, incarnation: Int, lineTurn: Bool = false)
    case pump(node: Int, shard: Int)
    /// With a cost model: node N's fetch thread for a shard asks for the next batch, its last one applied.
    case fetchNext(node: Int, shard: Int, incarnation: Int)
    /// A node's fetch finds its consumer gone from the server (`consumer-lost`) and makes it again.
    case consumerGone(node: Int, shard: Int, incarnation: Int)
    /// `joinedLineMs`: taken from the node's line of deliveries waiting for its sidecar (`deliveryLine`), which it
    /// joined then.
    case deliver(node: Int, shard: Int, messages: [IncomingMessage], incarnation: Int, joinedLineMs: Int64? = nil)
    /// With a cost model: node N's fetch thread hands the rest of its batch over, the chunk before applied at `readyUs`.
    case nextChunk(node: Int, shard: Int, messages: [IncomingMessage], incarnation: Int, readyUs: Double)
    /// With a cost model: node N's sidecar may take the first delivery waiting in its line.
    case deliveryTurn(node: Int)
    /// Another node's message, stored at `sequence`, offered ahead of its turn over plain NATS (best effort).
    /// `handoff`: rescheduled to a hand-off point of its node's busy sidecar (`handoffsUs`), where it runs ahead.
    /// `waited`: it waited for the sidecar, in `hintsWaiting`.
    case hintArrives(node: Int, shard: Int, message: IncomingMessage, incarnation: Int, handoff: Bool = false, waited: Bool = false)
    case ackArrives(node: Int, shard: Int, sequence: UInt64, nakDelayMs: Int64?)
    case workload(node: Int)
    /// One step of the schema workload (see `Scenario.ddlIntervalMs`).
    case schemaStep
    /// The operator runs `-cleanup` again after it was refused for unpublished changes.
    case cleanupRetry(node: Int, migrate: Bool, untilMs: Int64)
    /// The application overwrites a value of its own that was above max_row_bytes.
    case correctOversized(node: Int, key: Int64)
    /// With a lock model, the application's busy handler wakes to try for the lock again (`SimWriteLock`).
    case applicationRetry(node: Int)
    case databaseChanged(node: Int, incarnation: Int)
    case faultStart(index: Int)
    case faultEnd(index: Int)
    case alter(node: Int)
    case restart(node: Int)
    /// A request to the snapshot store reaches the server (or is lost on the way: answered by its timeout).
    case storeRequestArrives(node: Int, request: SimStoreRequest, incarnation: Int, sentMs: Int64)
    case storeAnswer(node: Int, answer: SimStoreAnswer, incarnation: Int)
    case snapshotAnswer(node: Int, incarnation: Int)
    /// A stream-state request reaches the server, which reads the range then; the answer travels back.
    case streamStateRequestArrives(node: Int, shard: Int, incarnation: Int)
    case streamStateAnswer(node: Int, shard: Int, state: StreamState?, incarnation: Int)
    case heal
    case quiesceCheck
    /// The next transaction of the bulk load (`Scenario.bulkRows`), from row `offset`.
    case bulkStep(offset: Int)
    case observerTick
}

/// Runs one scenario with one seed: the real `ReplicationNode` on real SQLite files, driven by a
/// single-threaded event loop over virtual time, with every random choice drawn from the seed.
public final class Simulation {
    /// The scenario as run: in swarm mode with the drawn retention and snapshot settings filled in.
    public private(set) var scenario: Scenario
    public let seed: UInt64
    let directory: String
    var nodes: [SimNode] = []
    var jetStream: MemoryJetStream
    var nowMs: Int64 = 0
    var serverUp = true
    private var queue = EventQueue<SimEvent>()
    private var tieRandom: SimRandom
    var netRandom: SimRandom
    /// The server's order of redeliveries due at once, and which it drops (`Scenario.scatteredRedelivery`).
    var redeliveryRandom: SimRandom
    var workRandom: SimRandom
    var ddlRandom: SimRandom
    /// Hints draw their losses, delays and tie-breaks from their own stream: a run where no hint applies keeps the
    /// fault schedule it had without hints.
    var hintRandom: SimRandom
    /// Hints each node's core applied (`ReplicationEvent.hintApplied`): only those cost apply time, and
    /// `harmonybench live` reports node 2's.
    var hintsAppliedOn: [Int: Int] = [:]
    /// Names the schema workload has used (columns, indexes, views), so each new one is new.
    var ddlCounter = 0
    private var crashRandom: SimRandom
    private var interleaveRandom: SimRandom
    var snapshotStore = SimSnapshotStore()
    var scratchCounter = 0
    private let plantedBugs: PlantedBugs
    let traceEnabled: Bool
    public private(set) var traceLines: [String] = []
    private var traceHash: UInt64 = 0xcbf2_9ce4_8422_2325
    public internal(set) var history: [WriteRecord] = []
    /// Every version some message in the log carries (retention does not forget them): what a snapshot may hold.
    var landedVersions: Set<RowVersion> = []
    /// Versions the sidecar gave rows written while capture was absent (after -cleanup): below every real write's.
    var versionlessCaptures: Set<RowVersion> = []
    /// Parts of split messages the log has stored, joined so `landedVersions` sees the changes they carry.
    var landedParts = PartJoiner()
    /// Writes destroyed by a wiped disk or a power loss before any copy reached the log: owed to no one.
    var lostWrites: Set<RowVersion> = []
    /// Writes made on a node before it lost its disk or its power: lost unless their message landed.
    var lossCandidates: [RowVersion] = []
    /// Writes made before a power loss, checked against the disk when the machine comes back.
    var awaitingPowerBack: [Int: [WriteRecord]] = [:]
    var violations: [String] = []
    private var eventsProcessed = 0
    var faultsInjected = 0
    var conflictsResolved = 0
    /// Cores restarted under the error contract after a storage fault they could not handle themselves.
    private(set) var storageFaultRestarts = 0
    var healed = false
    var quiescedAtMs: Int64?
    var livenessFailure: String?
    /// With a cost model: when each node's sidecar, the server and the application's loader are next free
    /// (microseconds of simulated time), when each node first had each version, and what the log stored.
    var busyUntilUs: [CostWorker: Double] = [:]
    /// CPU time each worker has used so far (for the reports and tests).
    var cpuUsedUs: [CostWorker: Double] = [:]
    /// The part of a core each running worker gets for the rest of its work (`runJob`).
    var shareOf: [CostWorker: Double] = [:]
    /// With a cost model, hints waiting for node N's busy sidecar (`hintArrives`), taken before its next chunk.
    var hintsWaiting: [Int: [WaitingHint]] = [:]
    /// With a cost model: the bulk load's versions, and how many of them each node has had (`observerTick` runs until
    /// every node has them all).
    var bulkVersions: Set<RowVersion> = []
    var bulkApplied: [Int: Int] = [:]
    /// With a cost model, when the last bulk row applied so far becomes visible (its transaction commits).
    var bulkVisibleMs: Int64 = 0
    /// When the application committed the bulk load's last transaction (with a cost model).
    var bulkCommittedMs: Int64?
    /// When the log stored the last message carrying bulk rows (with a cost model).
    var bulkStoredMs: Int64?
    /// With a cost model: bulk rows in the messages the log stored, by the millisecond it stored them.
    var bulkRowsStoredByMs: [Int64: Int] = [:]
    /// With a cost model: when the log first stored each workload write's version (bulk rows apart: nothing reads them).
    var storedAtMs: [RowVersion: Int64] = [:]
    /// With a cost model: when a subscriber first had each version as a hint, sent after the log stored it (`noteHintSent`).
    var hintSentAtMs: [RowVersion: Int64] = [:]
    /// With a cost model, while a core call continues node N's backlog: when its sidecar ended the page before, to
    /// the microsecond (its work starts then, not at the whole millisecond the event ran at).
    var resumeAtUs: [Int: Double] = [:]
    /// With a cost model, during a call into node N's core: when the work it charged so far ends (µs). Live, the core's
    /// clock moves on while a call works, and its calls follow each other on one queue: the core's clock
    /// (`coreNowSimMs`) reads from there, and so does a timer the call sets.
    var coreCallWorkEndsUs: [Int: Double] = [:]
    /// With a cost model: where node N's last core call left its clock (simulated ms), which the next call does not go
    /// back behind.
    var coreClockMs: [Int: Int64] = [:]
    /// With a cost model, versions the core call under way applied: visible once their transaction's cost is
    /// charged (`commitVisible`).
    var applying: Set<RowVersion> = []
    /// With a cost model, deliveries waiting for node N's sidecar, in the order they came: the live node's fetch
    /// threads hand their batches to its one serial queue, which takes them first come first served.
    var deliveryLine: [Int: [WaitingDelivery]] = [:]
    /// When node N's next `.deliveryTurn` is due.
    var deliveryTurnAtMs: [Int: Int64] = [:]

    /// With a cost model: CPU time (µs) each node's sidecar and the server used in the run, nodes first.
    public var cpuUsedBySidecarsAndServerUs: [Double] {
        nodes.map { cpuUsedUs[.sidecar($0.id), default: 0] }
            + [(1...max(1, scenario.shards)).reduce(0.0) { $0 + cpuUsedUs[.server($1), default: 0] + cpuUsedUs[.serverRelay($1), default: 0] }]
    }
    /// With a cost model: the moments each node's sidecar could turn to other work inside what is queued on it now
    /// (ascending): the end of each page of the scan and of each apply chunk. The live core looks for new commits
    /// between pages, and the live runtime applies a delivery in chunks of `ApplyChunks.bytesMax`, so a small
    /// commit or a hint waits for one page or chunk, not for all of them.
    var handoffsUs: [Int: [Double]] = [:]
    /// Changes read since the last page end, per node.
    var pageChanges: [Int: Int] = [:]
    /// With a cost model: when each node's waiting look at its database runs (one look for every commit made while
    /// its sidecar was busy, as the live change watcher queues one look on the node's serial queue).
    var lookDeferredToMs: [Int: Int64] = [:]
    /// With a cost model, nodes whose core read a page of a backlog and goes on with the next once its sidecar is done
    /// (`NodeConfig.publishPagesPerCall`), with the incarnation that asked: the live core reads the pages in one call,
    /// so what queues on its sidecar meanwhile (acks, looks, deliveries) waits for the last page.
    var publishContinuing: [Int: Int] = [:]
    /// With a cost model: when the work of each of a node's looks ends on its sidecar (a later look can run there).
    var lookEndsUs: [Int: [Double]] = [:]
    /// With a lock model: the lock model's state (`SimWriteLock`).
    var writeLock = SimWriteLock()
    /// Nodes whose look is running now: its first message carries the look's own cost.
    var lookPublishing: Set<Int> = []
    /// When the stamp transaction of each node's running look began and ended (it held the write lock meanwhile).
    var lookStampUs: [Int: (startUs: Double, endUs: Double)] = [:]
    /// Per worker: when its last job began (after whatever it queued behind), for the write lock's holds.
    var jobStartUs: [CostWorker: Double] = [:]
    /// With a lock model: how often sidecars slept for the write lock, and for how long in all.
    public internal(set) var lockWaits = 0
    public internal(set) var lockWaitedMs: Int64 = 0
    /// With a lock model: how long the application's writes waited for the lock in all, in µs (`harmonybench rate`
    /// reports the live writers' average).
    public internal(set) var applicationLockWaitUs = 0.0
    var appliedAtMs: [RowVersion: [Int: Int64]] = [:]
    var storedMessages = 0, storedBytes = 0
    /// With a cost model, as the live fetch loop: one batch per node and shard delivered and not yet applied.
    var deliveryOutstanding: Set<[Int]> = []
    /// With a cost model: acknowledged publish tokens waiting for their node's sidecar (`acksFlush`).
    var acksWaiting: [Int: [Int64]] = [:]
    /// The fault schedule this run used (drawn per seed in swarm mode), for `shrink` to start from.
    public private(set) var faults: [Fault]

    static let schema = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT, n INTEGER);"

    public init(scenario: Scenario, seed: UInt64, trace: Bool = false, workDirectory: String? = nil) throws {
        self.scenario = scenario
        self.seed = seed
        self.traceEnabled = trace
        let root = SimRandom(seed: seed)
        tieRandom = root.fork("tie-break")
        netRandom = root.fork("network")
        redeliveryRandom = root.fork("redelivery")
        workRandom = root.fork("workload")
        crashRandom = root.fork("crash-points")
        interleaveRandom = root.fork("interleave")
        ddlRandom = root.fork("schema-workload")
        hintRandom = root.fork("hints")
        writeLock.random = root.fork("write-lock")
        var bugs: PlantedBugs = []
        for name in scenario.plantedBugs {
            guard let bug = PlantedBugs.all.first(where: { $0.name == name })?.bug else {
                throw SimulationError.invalid("unknown planted bug '\(name)'")
            }
            bugs.insert(bug)
        }
        plantedBugs = bugs
        faults = scenario.swarm
            ? SwarmMix.withConsumerLosses(SwarmMix.draw(scenario: scenario, random: root.fork("swarm")), scenario: scenario,
                                          random: root.fork("swarm-consumer-lost"))
            : scenario.faults
        if scenario.swarm {
            SwarmMix.drawRetention(&self.scenario, random: root.fork("swarm-retention"))
            SwarmMix.drawStorage(&self.scenario, random: root.fork("swarm-storage"))
            SwarmMix.drawLargeRows(&self.scenario, random: root.fork("swarm-large-rows"))
            SwarmMix.drawSchemaWorkload(&self.scenario, random: root.fork("swarm-ddl"), renames: root.fork("swarm-rename-table"))
            SwarmMix.drawRedelivery(&self.scenario, random: root.fork("swarm-redelivery"))
        }
        jetStream = MemoryJetStream(duplicateWindowMs: scenario.duplicateWindowMs,
                                 maxEntries: self.scenario.maxEntries, ackWaitMs: scenario.ackWaitMs,
                                 deliverBatchMax: scenario.costs?.deliverBatch ?? 64,
                                 deliverBytesMax: scenario.costs?.deliverBytesMax ?? .max)
        let base = workDirectory ?? (FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory())
        directory = (base as NSString).appendingPathComponent("harmonysim-\(ProcessInfo.processInfo.processIdentifier)-\(seed)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let storageRandom = root.fork("storage")
        for id in 1...scenario.nodes {
            let vfs = SimVFS(name: "harmonysim-\(UUID().uuidString)-\(id)")
            let faults = self.scenario.storageFaults.isEnabled
                ? SimStorageFaults(settings: self.scenario.storageFaults, random: storageRandom.fork("node-\(id)")) : nil
            let sidecarVFS = SimVFS(name: vfs.name + "-sidecar", sharing: vfs, faults: faults)
            nodes.append(SimNode(id: id, vfs: vfs, sidecarVFS: sidecarVFS,
                                 databasePath: (directory as NSString).appendingPathComponent("node\(id).db")))
        }
        if scenario.scatteredRedelivery {
            jetStream.scatterRedeliveries = { [unowned self] due in self.redeliveryRandom.shuffle(&due) }
            jetStream.dropRedelivery = { [unowned self] in self.redeliveryRandom.chance(permille: self.scenario.droppedRedeliveryPermille) }
        }
    }

    deinit {
        for n in nodes { n.core?.stop(); n.core = nil; n.app = nil }
        try? FileManager.default.removeItem(atPath: directory)
    }

    // MARK: Running

    public func run() -> SimulationResult {
        let lateJoiners = Set(faults.filter { $0.kind == .lateJoin }.map(\.node))
        for node in nodes where !lateJoiners.contains(node.id) { bootMachine(node) }
        for node in nodes { node.machineUp = !lateJoiners.contains(node.id) }
        for (i, f) in faults.enumerated() { push(.faultStart(index: i), at: f.atMs) }
        push(.heal, at: scenario.healMs)
        if scenario.ddlIntervalMs > 0 { push(.schemaStep, at: ddlRandom.int(0...scenario.ddlIntervalMs)) }
        if scenario.bulkRows > 0 {
            push(.bulkStep(offset: 0), at: 0)
            if (scenario.costs?.observerUsPerMs ?? 0) > 0 { push(.observerTick, at: 0) }
        }
        var eventsMax = 5_000_000
        while let entry = queue.pop() {
            eventsMax -= 1
            if eventsMax == 0 { livenessFailure = "event budget exhausted at \(nowMs) ms"; break }
            nowMs = entry.timeMs
            eventsProcessed += 1
            handle(entry.event)
            checkState()
            if quiescedAtMs != nil || livenessFailure != nil { break }
        }
        return finish()
    }

    func push(_ event: SimEvent, at timeMs: Int64) {
        if case .hintArrives = event {
            queue.push(event, at: max(timeMs, nowMs), tieBreak: hintRandom.next())
        } else {
            queue.push(event, at: max(timeMs, nowMs), tieBreak: tieRandom.next())
        }
    }

    func trace(_ line: @autoclosure () -> String) {
        let text = "\(nowMs) \(line())"
        for b in text.utf8 { traceHash = (traceHash ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        traceHash = (traceHash ^ 0x0A) &* 0x0000_0100_0000_01B3
        if traceEnabled { traceLines.append(text) }
    }

    func networkDelay() -> Int64 {
        if let costs = scenario.costs { return Self.ms(costs.publishRttUs / 2) }
        return netRandom.int(scenario.delayMsMin...max(scenario.delayMsMin, scenario.delayMsMax))
    }

    // MARK: Node lifecycle

    func bootMachine(_ node: SimNode) {
        node.vfs.time.nowMs = node.nowMs(simMs: nowMs)
        do {
            let app = try node.vfs.opener.open(path: node.databasePath)
            // A typical WAL application: commits are not fsynced until a checkpoint; a power loss can drop them.
            try app.execute("PRAGMA synchronous=NORMAL")
            try app.disableCheckpointOnClose()
            for table in workloadTables {
                try app.execute("CREATE TABLE IF NOT EXISTS \(table) (k INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
            }
            node.app = app
            if scenario.smallWritesOwnConnection {
                let second = try node.vfs.opener.open(path: node.databasePath)
                try second.execute("PRAGMA synchronous=NORMAL")
                try second.disableCheckpointOnClose()
                node.smallWriter = second
            }
            // A write that survived the power loss on its own disk is owed to everyone; only vanished ones may be lost.
            for w in awaitingPowerBack.removeValue(forKey: node.id) ?? [] {
                let current = try versionOf(app, key: w.key)
                if current == nil || current!.version < w.version { lossCandidates.append(w.version) }
            }
            try reloadPendingCaptures(node, app)
            // The power loss may have undone the correction of a value above max_row_bytes but not the value.
            if scenario.oversizedValuePermille > 0 {
                for row in try app.query("SELECT k FROM kv WHERE length(v) > ? ORDER BY k", [.integer(Int64(scenario.maxRowBytes))]) {
                    push(.correctOversized(node: node.id, key: row[0].int64 ?? 0), at: nowMs + 1)
                }
            }
        } catch {
            violations.append("node \(node.id): cannot open its database: \(error)")
            return
        }
        node.machineUp = true
        // A fresh node runs the application's migrations in order once its sidecar has captured the table, so it
        // knows the previous schema and can replay old messages. (Starting directly at the new schema needs a
        // snapshot.) A sidecar whose first start failed on a storage fault migrates when a restart succeeds.
        if node.hasExtraColumn, let app = node.app,
           (try? app.scalar("SELECT count(*) FROM pragma_table_info('kv') WHERE name = 'extra'")?.int64) == 0 {
            node.hasExtraColumn = false
            node.migrationPending = true
        }
        startSidecar(node)
        if scenario.writerNodes.isEmpty || scenario.writerNodes.contains(node.id) {
            push(.workload(node: node.id), at: nowMs + workRandom.int(0...scenario.writeIntervalMsMax))
        }
    }

    func startSidecar(_ node: SimNode) {
        node.incarnation += 1
        node.reconnectBuffer.removeAll()  // the old process's client and what it held are gone
        acksWaiting[node.id] = nil
        node.timerGenerations.removeAll()
        var config = NodeConfig(nodeID: Int64(node.id), databasePath: node.databasePath)
        config.shards = scenario.shards
        config.scanIntervalMs = scenario.scanIntervalMs
        config.publishBatchMax = scenario.publishBatchMax
        config.scanMaxChanges = scenario.scanMaxChanges
        config.publishInFlightMax = scenario.publishInFlightMax
        config.holeRepairAfterMs = scenario.holeRepairAfterMs > 0 ? scenario.holeRepairAfterMs : nil
        config.messageBytesMax = scenario.maxPayloadBytes
        config.rowBytesMax = scenario.maxRowBytes
        config.replicateDDL = scenario.replicateDDL
        config.hints = scenario.hints
        config.cleanupIntervalMs = scenario.cleanupIntervalMs
        config.lockBatchRows = scenario.lockBatchRows
        config.lockPauseMs = scenario.lockPauseMs
        config.logMaxMessages = Int64(scenario.maxEntries)
        config.plantedBugs = plantedBugs
        config.restoreRetryMs = 2_000
        config.deliveryStallResubscribeMs = 4 * scenario.ackWaitMs
        config.snapshotIntervalMs = scenario.snapshotIntervalMs
        config.snapshotKeep = scenario.snapshotKeep
        config.snapshotLeaseMs = 30_000
        // Time passes between the pages of a backlog only if each is a call of its own (the order of steps is the same).
        config.publishPagesPerCall = scenario.publishPagesPerCall ?? (scenario.costs == nil ? 0 : 1)
        let env = NodeEnvironment(clock: SimNodeClock(sim: self, node: node.id), log: SimLogPort(sim: self, node: node.id),
                                  opener: SimOpener(vfs: node.sidecarVFS), events: SimEventSink(sim: self, node: node.id),
                                  snapshots: SimSnapshotPort(sim: self, node: node.id),
                                  crashPoint: { [unowned self] point in self.crashAt(point, node: node.id) },
                                  interleave: { [unowned self] point in self.interleaveAt(point, node: node.id) })
        let core = ReplicationNode(config: config, environment: env)
        node.core = core
        node.sidecarVFS.faults?.enabled = !healed
        node.sidecarUp = true
        trace("node \(node.id) sidecar start #\(node.incarnation)")
        callCore(node) { try $0.start() }
        recordCleanedUpWrites(node)
        if node.sidecarUp && node.migrationPending {
            node.migrationPending = false
            alterTable(node)
        }
    }

    func crashSidecar(_ node: SimNode, reason: String) {
        guard node.sidecarUp else { return }
        trace("node \(node.id) sidecar crash (\(reason))")
        node.core?.stop()
        node.core = nil
        node.sidecarUp = false
        jetStream.unsubscribeAll(node: node.id)
        faultsInjected += 1
    }

    /// The core asks at each crash point; crash faults make some of them fatal.
    func crashAt(_ point: CrashPoint, node: Int) -> Bool {
        guard !healed, scenario.crashPointPermille > 0, crashRandom.chance(permille: scenario.crashPointPermille) else { return false }
        trace("node \(node) crash point \(point.rawValue)")
        nodes[node - 1].pendingRestart = true
        push(.restart(node: node), at: nowMs + crashRandom.int(200...2_000))
        return true
    }

    /// Inside a core call, the application on the same machine may write at any moment: sometimes it does here.
    func interleaveAt(_ point: InterleavePoint, node id: Int) {
        guard !healed, scenario.interleavePermille > 0, interleaveRandom.chance(permille: scenario.interleavePermille),
              nowMs < scenario.durationMs else { return }
        trace("node \(id) application write at \(point.rawValue)")
        performWrite(nodes[id - 1])
    }

    /// Calls into a node's core with its clock set; a crash at a crash point is an expected outcome.
    /// A core call that may stamp the application's queued commits and send them, as a look does: with a cost model
    /// its first message carries the look's own cost, and its stamp holds the write lock.
    func callCoreAsLook(_ node: SimNode, _ body: (ReplicationNode) throws -> Void) {
        if scenario.costs != nil { lookPublishing.insert(node.id) }
        callCore(node, body)
        lookPublishing.remove(node.id)
        let stamp = lookStampUs.removeValue(forKey: node.id)
        sidecarHoldsWriteLock(node.id, fromUs: stamp?.startUs, untilUs: stamp?.endUs)
    }

    func callCore(_ node: SimNode, _ body: (ReplicationNode) throws -> Void) {
        guard node.sidecarUp, let core = node.core else { return }
        node.vfs.time.nowMs = node.nowMs(simMs: nowMs)
        let injectedBefore = node.sidecarVFS.faults?.injected ?? 0
        coreCallWorkEndsUs[node.id] = nowUs
        defer {
            if let ends = coreCallWorkEndsUs.removeValue(forKey: node.id), scenario.costs != nil {
                coreClockMs[node.id] = max(coreClockMs[node.id] ?? 0, Self.ms(ends))
            }
        }
        do {
            try body(core)
        } catch is NodeCrashed {
            node.core = nil
            crashSidecar(node, reason: "crash point")
        } catch {
            // The error contract (NodeEnvironment): stop this core, start a new one after a backoff. A throw that
            // an injected storage fault explains is expected; any other is also a bug worth failing the run for.
            let injected = (node.sidecarVFS.faults?.injected ?? 0) > injectedBefore
            if injected, let e = error as? SQLiteError, SimStorageFaults.isInjected(e.code) {
                storageFaultRestarts += 1
                trace("node \(node.id) core threw on a storage fault: \(e.storageFailureSummary) (SQLite error \(e.code))")
            } else {
                violations.append("node \(node.id) core threw at \(nowMs) ms: \(error)")
            }
            crashSidecar(node, reason: "error")
            node.pendingRestart = true
            push(.restart(node: node.id), at: nowMs + node.restartBackoff.failed(atMs: nowMs))
        }
    }

    /// Node `node`'s core clock in simulated ms: now, or with a cost model, past the work its calls charged so far.
    func coreNowSimMs(_ node: Int) -> Int64 {
        guard scenario.costs != nil else { return nowMs }
        return max(nowMs, coreClockMs[node] ?? 0, coreCallWorkEndsUs[node].map { Self.ms($0) } ?? 0)
    }

    func scheduleTimer(node: Int, timer: NodeTimer, afterMs: Int64) {
        let n = nodes[node - 1]
        if timer == .publishContinue { publishContinuing[node] = n.incarnation }
        let generation = (n.timerGenerations[timer] ?? 0) + 1
        n.timerGenerations[timer] = generation
        // With costs, from the core's clock: a stamp's pause for the applications starts once its transaction has
        // committed, as live, not when the call began (the next batch then came as soon as the last ended, and
        // stamping took node 1's sidecar from the pages waiting to be sent).
        push(.timer(node: node, timer: timer, generation: generation, incarnation: n.incarnation), at: coreNowSimMs(node) + max(afterMs, 0))
    }

    // MARK: Event handling

    func handle(_ event: SimEvent) {
        switch event {
        case .timer(let id, let timer, let generation, let incarnation):
            let node = nodes[id - 1]
            guard node.incarnation == incarnation, node.timerGenerations[timer] == generation else { return }
            // The rest of a backlog goes on once the sidecar is done with the page before (and whatever queued on it
            // meanwhile, as on the live serial queue).
            if timer == .publishContinue {
                if let free = sidecarFreeAtMs(id), free > nowMs {
                    push(.timer(node: id, timer: timer, generation: generation, incarnation: incarnation), at: free)
                    return
                }
                // While the application's load holds the write lock, the walk sleeps for it: it stamps the rows it
                // reaches, which the load keeps adding.
                if writeLock.loadHoldsLock(node: id, atUs: nowUs), let until = waitForWriteLock(.walk(node: id), node: id) {
                    push(.timer(node: id, timer: timer, generation: generation, incarnation: incarnation), at: until)
                    return
                }
                publishContinuing[id] = nil
                // The live serial queue takes the next page the moment the page before ends; this event woke at
                // the next whole millisecond.
                if let ended = busyUntilUs[.sidecar(id)], ended > nowUs - 1_000 { resumeAtUs[id] = ended }
            }
            trace("node \(id) timer \(timer)")
            callCore(node) { try $0.timerFired(timer) }
            resumeAtUs[id] = nil

        case .publishArrives(let id, let message, let incarnation, let sentMs, let arrivalUs):
            guard serverUp else {
                push(.publishResult(node: id, token: message.token, ok: false, incarnation: incarnation), at: sentMs + scenario.publishTimeoutMs)
                return
            }
            guard message.payload.count + message.messageID.utf8.count <= scenario.maxPayloadBytes else {
                // nats-server refuses a message above its max_payload; the publisher hears it at once.
                trace("refuse shard \(message.shard) id \(message.messageID): \(message.payload.count) bytes above max_payload")
                push(.publishResult(node: id, token: message.token, ok: false, incarnation: incarnation), at: nowMs + networkDelay())
                return
            }
            let seq = jetStream.store(shard: message.shard, messageID: message.messageID, payload: message.payload, nowMs: nowMs)
            trace("store shard \(message.shard) id \(message.messageID) -> \(seq.map(String.init) ?? "duplicate")")
            // With costs, the server takes its time over each message (stored now, in arrival order, but delivered
            // and acknowledged only once the server is done with it).
            let storedUs = chargeServer(message, arrivalUs: arrivalUs)
            let storedMs = Self.ms(storedUs)
            if seq != nil {
                pumpAll(shard: message.shard, fromMs: storedMs)
                for r in landedParts.records(in: message.payload) {
                    landedVersions.insert(r.version)
                    let bytes = r.row.reduce(0) { $0 + ($1.value.string?.utf8.count ?? $1.value.bytes?.count ?? 0) }
                    if bytes > scenario.maxRowBytes {
                        violations.append("a change of \(bytes) bytes to key \(r.primaryKey.first?.value.int64 ?? 0), above max_row_bytes (\(scenario.maxRowBytes)), reached the log")
                    }
                }
            }
            let n = nodes[id - 1]
            if n.canReceive && !netRandom.chance(permille: scenario.lostAckPermille) {
                // With costs, one hop back from the moment the server is done, to the microsecond.
                let ackedUs = hopUs.map { storedUs + $0 }
                let ackedMs = ackedUs.map { Self.ms($0) } ?? storedMs + networkDelay()
                push(.publishResult(node: id, token: message.token, ok: true, incarnation: incarnation, reached: seq.map { (message.shard, $0) }),
                     at: ackedMs)
                if let seq, message.hint {
                    sendHint(from: id, shard: message.shard, IncomingMessage(sequence: seq, payload: message.payload), atMs: ackedMs, atUs: ackedUs)
                }
            } else {
                push(.publishResult(node: id, token: message.token, ok: false, incarnation: incarnation), at: sentMs + scenario.publishTimeoutMs)
            }

        case .bufferedPublishTimedOut(let id, let token, let incarnation):
            let node = nodes[id - 1]
            guard node.incarnation == incarnation, let i = node.reconnectBuffer.firstIndex(where: { $0.message.token == token && !$0.timedOut })
            else { return }
            node.reconnectBuffer[i].timedOut = true
            push(.publishResult(node: id, token: token, ok: false, incarnation: incarnation), at: nowMs)

        case .publishResult(let id, let token, let ok, let incarnation, let reached):
            let node = nodes[id - 1]
            guard node.incarnation == incarnation else { return }
            // As live: the acknowledgement's stream sequence reaches the core when it arrives, before the ack's flush.
            if let reached, node.sidecarUp, let core = node.core { core.streamReached(shard: reached.shard, sequence: reached.sequence) }
            if ok, let free = sidecarFreeAtMs(id) {
                acksWaiting[id, default: []].append(token)
                if acksWaiting[id]!.count == 1 { push(.acksFlush(node: id, incarnation: incarnation), at: max(free, nowMs)) }
                return
            }
            trace("node \(id) publish \(token) \(ok ? "acked" : "failed")")
            callCore(node) { core in
                if ok { try core.publishAcknowledged(tokens: [token]) } else { core.publishFailed(token: token) }
            }

        case .acksFlush(let id, let incarnation, let lineTurn):
            let node = nodes[id - 1]
            guard node.incarnation == incarnation, acksWaiting[id]?.isEmpty == false else {
                acksWaiting[id] = nil
                return
            }
            // Batches wait for the sidecar: the acks' block lines up behind them, as live (unless it had its turn, or
            // sleeps for the write lock).
            if !lineTurn, writeLock.waiting[.acks(node: id)] == nil,
               waitsInLine(.acks, node: id, incarnation: incarnation) { return }
            let tokens = acksWaiting.removeValue(forKey: id) ?? []
            if let later = waitsForPublishLoop(id) {
                acksWaiting[id] = tokens
                push(.acksFlush(node: id, incarnation: incarnation), at: later)
                return
            }
            if let free = sidecarFreeAtMs(id), free > nowMs {
                acksWaiting[id] = tokens
                push(.acksFlush(node: id, incarnation: incarnation), at: free)
                return
            }
            if let until = waitForWriteLock(.acks(node: id), node: id) {
                acksWaiting[id] = tokens
                push(.acksFlush(node: id, incarnation: incarnation), at: until)
                return
            }
            trace("node \(id) takes \(tokens.count) acks together")
            if let costs = scenario.costs, costs.ackFlushUs + costs.ackFlushWaitUs > 0 {
                let doneUs = runJob(.sidecar(id), costs.ackFlushUs, waitUs: costs.ackFlushWaitUs)
                sidecarHoldsWriteLock(id, fromUs: jobStartUs[.sidecar(id)], untilUs: doneUs)
            }
            // Marking them published stamps the commits queued meanwhile, which then leave as a look's would.
            callCoreAsLook(node) { try $0.publishAcknowledged(tokens: tokens) }

        case .pump(let id, let shard):
            let node = nodes[id - 1]
            guard serverUp, node.sidecarUp, node.canReceive else { return }
            if scenario.costs != nil && deliveryOutstanding.contains([id, shard]) { return }  // pumped again once applied
            let paused = jetStream.pausedUntil(node: id, shard: shard)
            if paused > nowMs { push(.pump(node: id, shard: shard), at: paused); return }
            _ = jetStream.expireAcks(node: id, shard: shard, nowMs: nowMs)
            let batch = jetStream.takeBatch(node: id, shard: shard, nowMs: nowMs)
            if !batch.isEmpty && node.impostorRunning && netRandom.chance(permille: 500) {
                // The other process with this node's id fetched this batch, applied it to its own database and acked it.
                trace("impostor of node \(id) takes shard \(shard) seq \(batch.first!.sequence)...\(batch.last!.sequence)")
                for m in batch { jetStream.ack(node: id, shard: shard, sequence: m.sequence) }
                if jetStream.hasWork(node: id, shard: shard) { push(.pump(node: id, shard: shard), at: nowMs + 1) }
            } else if !batch.isEmpty {
                if scenario.costs != nil { deliveryOutstanding.insert([id, shard]) }
                let arrival = nowMs + networkDelay()
                push(.deliver(node: id, shard: shard, messages: batch, incarnation: node.incarnation), at: arrival)
                if netRandom.chance(permille: scenario.duplicatePermille) {
                    push(.deliver(node: id, shard: shard, messages: batch, incarnation: node.incarnation), at: arrival + networkDelay())
                }
            }
            if let deadline = jetStream.nextAckDeadline(node: id, shard: shard) {
                push(.pump(node: id, shard: shard), at: deadline)
            }

        case .deliver(let id, let shard, let messages, let incarnation, let joinedLineMs):
            let node = nodes[id - 1]
            guard node.incarnation == incarnation, node.canReceive else {
                if deliveryOutstanding.remove([id, shard]) != nil { push(.pump(node: id, shard: shard), at: nowMs + 1) }
                return
            }
            let fromLine = joinedLineMs != nil
            let delivery = WaitingDelivery(shard: shard, messages: messages, incarnation: incarnation, joinedMs: joinedLineMs ?? nowMs)
            // With costs, a delivery waits behind those already in line, first come first served.
            if !fromLine, deliveryLine[id]?.isEmpty == false {
                return joinDeliveryLine(id, delivery, turnAtMs: deliveryTurnAtMs[id] ?? nowMs)
            }
            /// Tries again at `ms`; with costs from the line, keeping its place (the head, if it came from there).
            func wait(until ms: Int64) {
                if scenario.costs != nil { return joinDeliveryLine(id, delivery, first: fromLine, turnAtMs: ms) }
                push(.deliver(node: id, shard: shard, messages: messages, incarnation: incarnation), at: ms)
            }
            if let free = sidecarFreeAtMs(id), free > nowMs { return wait(until: free) }
            if let later = waitsForPublishLoop(id) { return wait(until: later) }
            if let until = waitForWriteLock(.apply(node: id, shard: shard), node: id) { return wait(until: until) }
            // With costs, as the live fetch thread hands its batch over: a chunk at a time, each its own transaction,
            // the hints that came meanwhile taken first.
            var messages = messages, rest: [IncomingMessage] = []
            if scenario.costs != nil {
                for hint in hintsWaiting.removeValue(forKey: id) ?? [] where hint.incarnation == incarnation { takeHint(node, shard: hint.shard, hint.message, ahead: false) }
                let chunk = Self.firstApplyChunk(messages.map(\.payload.count))
                rest = Array(messages[chunk...])
                messages = Array(messages[..<chunk])
            }
            trace("node \(id) receives shard \(shard) seq \(messages.first!.sequence)...\(messages.last!.sequence)")
            applying = []
            callCore(node) { try $0.messagesArrived(shard: shard, messages) }
            let applied = chargeApply(node: id, messages)
            let appliedUs = applied?.endUs
            sidecarHoldsWriteLock(id, fromUs: applied?.startUs, untilUs: appliedUs)
            applying = []
            if let appliedUs, !rest.isEmpty {
                // The fetch thread hands the next chunk over once this one is applied (behind whatever came meanwhile),
                // and asks for its next batch after the last.
                push(.nextChunk(node: id, shard: shard, messages: rest, incarnation: incarnation, readyUs: appliedUs), at: Self.ms(appliedUs))
                return
            }
            if let appliedUs, let hop = hopUs {
                // The live fetch thread waits until the core has applied its batch, then asks for the next one:
                // none is fetched meanwhile, and the request takes a hop to the server.
                push(.fetchNext(node: id, shard: shard, incarnation: incarnation), at: Self.ms(appliedUs + hop))
                return
            }
            deliveryOutstanding.remove([id, shard])
            if jetStream.hasWork(node: id, shard: shard) { push(.pump(node: id, shard: shard), at: nowMs + 1) }

        case .nextChunk(let id, let shard, let messages, let incarnation, let readyUs):
            guard nodes[id - 1].incarnation == incarnation, nodes[id - 1].canReceive else {
                if deliveryOutstanding.remove([id, shard]) != nil { push(.pump(node: id, shard: shard), at: nowMs + 1) }
                return
            }
            trace("node \(id) shard \(shard) hands over the next chunk of its batch")
            // Joined when the chunk before it was applied, to the microsecond (`deliveryTurn` starts it no earlier).
            let chunk = WaitingDelivery(shard: shard, messages: messages, incarnation: incarnation, joinedMs: Int64((readyUs / 1_000).rounded(.down)))
            joinDeliveryLine(id, chunk, turnAtMs: nowMs)

        case .fetchNext(let id, let shard, let incarnation):
            guard deliveryOutstanding.remove([id, shard]) != nil, nodes[id - 1].incarnation == incarnation else { return }
            trace("node \(id) shard \(shard) asks for its next batch")
            handle(.pump(node: id, shard: shard))

        case .consumerGone(let id, let shard, let incarnation):
            consumerGone(nodes[id - 1], shard: shard, incarnation: incarnation)

        case .deliveryTurn(let id):
            guard deliveryTurnAtMs[id] == nowMs else { return }  // a later or earlier turn replaced this one
            deliveryTurnAtMs[id] = nil
            guard var line = deliveryLine[id], !line.isEmpty else { return }
            if let free = sidecarFreeAtMs(id), free > nowMs { return scheduleDeliveryTurn(id, atMs: free) }
            let first = line.removeFirst()
            deliveryLine[id] = line
            // The queue takes the next batch the moment the work before it ends (or it came), not at the whole
            // millisecond this turn woke at.
            if let ended = busyUntilUs[.sidecar(id)], ended > nowUs - 1_000 { resumeAtUs[id] = max(ended, Double(first.joinedMs) * 1_000) }
            switch first.work {
            case .batch:
                handle(.deliver(node: id, shard: first.shard, messages: first.messages, incarnation: first.incarnation, joinedLineMs: first.joinedMs))
            case .look:
                lookDeferredToMs[id] = nowMs  // its turn: it waits for nothing queued behind it
                handle(.databaseChanged(node: id, incarnation: first.incarnation))
            case .acks:
                handle(.acksFlush(node: id, incarnation: first.incarnation, lineTurn: true))
            }
            resumeAtUs[id] = nil
            if deliveryLine[id]?.isEmpty == false && deliveryTurnAtMs[id] == nil {
                scheduleDeliveryTurn(id, atMs: max(nowMs, sidecarFreeAtMs(id) ?? nowMs))
            }

        case .hintArrives(let id, let shard, let message, let incarnation, let handoff, let waited):
            let node = nodes[id - 1]
            guard node.incarnation == incarnation, node.canReceive else { return }
            // A delivery already waits for the sidecar: the hint goes with it, taken just before its first chunk. Live,
            // a hint's queue block lines up behind the chunks already queued, and each chunk takes the hints pending
            // first. Taken on its own whenever the sidecar came free, a stream of hints kept a busy receiver's
            // in-order batches waiting for seconds (1.7 s in a trace of single-row writes at 8 shards), and the
            // cluster settled only once they had their turn.
            if scenario.costs != nil, deliveryLine[id]?.isEmpty == false {
                // One that waited is in `hintsWaiting` already (or was taken by a chunk since).
                if !waited { hintsWaiting[id, default: []].append(WaitingHint(shard: shard, message: message, incarnation: incarnation)) }
                return
            }
            if waited {
                // Unless the turn of a chunk took it first (`.deliver`, as the live queue takes its pending hints
                // before each chunk).
                guard let i = hintsWaiting[id]?.firstIndex(where: { $0.shard == shard && $0.message.sequence == message.sequence }) else { return }
                hintsWaiting[id]!.remove(at: i)
            }
            if !handoff, let free = sidecarFreeAtMs(id), free > nowMs {
                hintsWaiting[id, default: []].append(WaitingHint(shard: shard, message: message, incarnation: incarnation))
                if let next = nextHandoffUs(id) {
                    push(.hintArrives(node: id, shard: shard, message: message, incarnation: incarnation, handoff: true, waited: true), at: Self.ms(next))
                } else {
                    push(.hintArrives(node: id, shard: shard, message: message, incarnation: incarnation, waited: true), at: free)
                }
                return
            }
            takeHint(node, shard: shard, message, ahead: handoff)

        case .ackArrives(let id, let shard, let sequence, let nakDelayMs):
            guard serverUp else { return }
            if let delay = nakDelayMs {
                jetStream.nak(node: id, shard: shard, sequence: sequence, delayMs: delay, nowMs: nowMs)
                push(.pump(node: id, shard: shard), at: nowMs + delay)
            } else {
                jetStream.ack(node: id, shard: shard, sequence: sequence)
            }

        case .cleanupRetry(let id, let migrate, let untilMs):
            let node = nodes[id - 1]
            if node.machineUp && node.cleanedUpKeys == nil { runCleanup(node, migrate: migrate, until: untilMs) }

        case .correctOversized(let id, let key):
            correctOversized(nodes[id - 1], key: key)

        case .applicationRetry(let id):
            retryApplicationWrites(nodes[id - 1])

        case .workload(let id):
            let node = nodes[id - 1]
            guard nowMs < scenario.durationMs, node.machineUp else { return }
            // While the application's load holds the write lock, its other connection sleeps in its busy handler:
            // its next write goes in after the load (live, a probe's INSERT waited for the whole load).
            if !writeLock.loadHoldsLock(node: id, atUs: nowUs) {
                let slots = max(1, scenario.writesPerStep)
                for slot in 0..<slots { performWrite(node, slot: slot, of: slots) }
            }
            push(.workload(node: id), at: nowMs + workRandom.int(scenario.writeIntervalMsMin...scenario.writeIntervalMsMax))

        case .schemaStep:
            guard nowMs < scenario.durationMs else { return }
            let up = nodes.filter { $0.machineUp && $0.app != nil }
            if !up.isEmpty { performSchemaStep(up[Int(ddlRandom.below(UInt64(up.count)))]) }
            push(.schemaStep, at: nowMs + ddlRandom.int(scenario.ddlIntervalMs / 2...scenario.ddlIntervalMs * 3 / 2))

        case .databaseChanged(let id, let incarnation):
            let node = nodes[id - 1]
            guard node.incarnation == incarnation else { return }
            /// The look runs at `ms` instead; `joining`: unless one already waits for later, which takes this commit too.
            func deferLook(to ms: Int64, joining: Bool = true) {
                if joining, let pending = lookDeferredToMs[id], pending > nowMs { return }
                lookDeferredToMs[id] = ms
                push(.databaseChanged(node: id, incarnation: incarnation), at: ms)
            }
            // The live core looks between a backlog's pages itself, inside its call: not a block on the queue.
            if let later = waitsForPublishLoop(id) { return deferLook(to: later, joining: false) }
            // Batches wait for the sidecar: the look lines up behind them, as the live monitor's block does on the
            // serial queue (one look in line takes every commit made until its turn).
            if lookDeferredToMs[id] != nowMs, waitsInLine(.look, node: id, incarnation: incarnation) { return }
            // Another job sleeps for the write lock: the look is queued behind it, whatever its turn.
            if let sleepEndMs = lookWaitsForLockSleep(id) { return deferLook(to: sleepEndMs) }
            // A look that waited runs at its turn, whatever was queued on the sidecar behind it meanwhile.
            if lookDeferredToMs[id] != nowMs, let freeMs = lookWaitsForSidecar(id) { return deferLook(to: freeMs) }
            // This look sleeps for the lock itself.
            if let until = waitForWriteLock(.look(node: id), node: id) { return deferLook(to: until, joining: false) }
            lookDeferredToMs[id] = nil
            writeLock.unlooked.remove(id)
            callCoreAsLook(node) { try $0.databaseChanged() }
            // The live core goes back to its serial queue when the look's work is done: a look queued meanwhile runs
            // there, not after everything queued on the node since.
            if scenario.costs != nil, let busy = busyUntilUs[.sidecar(id)], busy > nowUs {
                lookEndsUs[id] = lookEndsUs[id, default: []].filter { $0 > nowUs } + [busy]  // past ends are of no use
            }

        case .faultStart(let index):
            startFault(faults[index], index: index)

        case .faultEnd(let index):
            endFault(faults[index])

        case .alter(let id):
            alterTable(nodes[id - 1])

        case .restart(let id):
            let node = nodes[id - 1]
            node.pendingRestart = false
            if node.machineUp && !node.sidecarUp { startSidecar(node) }

        case .snapshotAnswer(let id, let incarnation):
            let node = nodes[id - 1]
            guard node.incarnation == incarnation else { return }
            deliverSnapshot(node)

        case .streamStateRequestArrives(let id, let shard, let incarnation):
            let n = nodes[id - 1]
            let answer = serverUp && n.canReceive ? jetStream.state(shard: shard) : nil
            push(.streamStateAnswer(node: id, shard: shard, state: answer, incarnation: incarnation),
                 at: nowMs + (answer == nil ? scenario.publishTimeoutMs : networkDelay()))

        case .streamStateAnswer(let id, let shard, let state, let incarnation):
            let node = nodes[id - 1]
            guard node.incarnation == incarnation else { return }
            trace("node \(id) stream \(shard) range \(state.map { "\($0.firstSequence)...\($0.lastSequence)" } ?? "unknown")")
            callCore(node) { $0.streamStateArrived(shard: shard, state) }

        case .storeRequestArrives(let id, let request, let incarnation, let sentMs):
            storeRequestArrives(node: id, request, incarnation: incarnation, sentMs: sentMs)

        case .storeAnswer(let id, let answer, let incarnation):
            storeAnswerArrives(node: id, answer, incarnation: incarnation)

        case .heal:
            heal()

        case .quiesceCheck:
            checkQuiescence()

        case .bulkStep(let offset):
            bulkStep(offset: offset)

        case .observerTick:
            observerTick()
        }
    }

    func finish() -> SimulationResult {
        var landed: Set<String> = []
        for shard in 1...scenario.shards {
            var parts = PartJoiner()
            for m in jetStream.archive[shard] ?? [] {
                for r in parts.records(in: m.payload) { landed.insert("\(r.version.node)-\(r.version.hlc)") }
            }
        }
        lostWrites = Set(lossCandidates.filter { !landed.contains("\($0.node)-\($0.hlc)") })
        var failures = violations
        var checks: [String] = []
        if livenessFailure == nil && quiescedAtMs == nil { livenessFailure = "event queue drained before quiescence" }
        if livenessFailure == nil {
            let (passed, failed) = SimulationCheckers.run(self)
            checks = passed
            failures += failed
        }
        return SimulationResult(
            scenario: scenario.name, seed: seed, simulatedMs: nowMs, events: eventsProcessed, faultsInjected: faultsInjected,
            writes: history.count, writesLost: lostWrites.count, conflictsResolved: conflictsResolved, traceHash: traceHash,
            correctnessFailures: failures, livenessFailure: livenessFailure, checksPassed: checks, trace: traceLines,
            capacity: capacityFigures())
    }
}

public enum SimulationError: Error, CustomStringConvertible {
    case invalid(String)
    public var description: String {
        switch self { case .invalid(let m): return m }
    }
}

/// Opens the sidecar's connections through the node's VFS, fsyncing every commit as the live sidecar does.
struct SimOpener: DatabaseOpener {
    let vfs: SimVFS
    func open(path: String) throws -> Database {
        let db = try vfs.opener.open(path: path)
        try db.execute("PRAGMA synchronous=FULL")
        try db.disableCheckpointOnClose()
        return db
    }
}

public struct SimulationResult: Sendable {
    public var scenario: String
    public var seed: UInt64
    public var simulatedMs: Int64
    public var events: Int
    public var faultsInjected: Int
    public var writes: Int
    /// Writes that died with a disk or a power loss before they were durable or published.
    public var writesLost: Int
    public var conflictsResolved: Int
    public var traceHash: UInt64
    public var correctnessFailures: [String]
    public var livenessFailure: String?
    public var checksPassed: [String]
    public var trace: [String]
    /// With a cost model: lag, throughput and log figures for capacity planning.
    public var capacity: CapacityFigures?

    public var passed: Bool { correctnessFailures.isEmpty && livenessFailure == nil }
    public var traceHashHex: String {
        let s = String(traceHash, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}
