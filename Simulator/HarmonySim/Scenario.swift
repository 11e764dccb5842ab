/// One simulated run's shape: cluster, workload, network, log limits and the fault schedule.
public struct Scenario: Sendable, Equatable {
    public var name = "scenario"
    public var seed: UInt64 = 1
    public var nodes = 3
    public var shards = 2
    /// Application writes happen in [0, durationMs); faults heal at `healAtMs` (default: durationMs).
    public var durationMs: Int64 = 60_000
    public var healAtMs: Int64?
    /// After healing, the cluster must quiesce within this much simulated time (liveness bound).
    public var quiesceWithinMs: Int64 = 60_000

    // Workload.
    public var keys = 40
    /// Tables the writes spread over: `kv` and, past 1, `kv2` ... `kvN` of the same columns, each write (or
    /// transaction) to one drawn evenly (the "many tables" shape). The oracle judges `kv`; the other tables must
    /// end equal on every node (`schema-convergence`), and every table's writes count for capacity figures.
    public var tables = 1
    public var writeIntervalMsMin: Int64 = 20
    public var writeIntervalMsMax: Int64 = 200
    /// Application transactions each writing node commits, one after the other, at each step of the workload: rates
    /// above one a millisecond, which integer-millisecond intervals cannot give (set by `--find-rate`).
    public var writesPerStep = 1
    /// Relative weights of the operation kinds.
    public var insertWeight = 4, updateWeight = 4, deleteWeight = 1, transactionWeight = 1
    /// Writes that move a row to another primary key (`UPDATE kv SET k = ...`), captured as delete + write.
    public var keyChangeWeight = 0
    /// Application writes made right after an ALTER, before the sidecar notices it (they race its re-install).
    public var writesRacingAlter = 0
    public var transactionOpsMax = 4
    /// Single writes go through a second application connection (a request handler beside a bulk loader): the
    /// sidecar can tell them from the transactions around them (`WriterStretches`).
    public var smallWritesOwnConnection = false
    /// `NodeConfig.publishPagesPerCall` of every node; nil: 1 with a cost model (time passes between a backlog's pages,
    /// as live), 0 without (the live node's one call). Not a scenario key: tests compare the two.
    public var publishPagesPerCall: Int?
    /// Chance (per mille) that a write's value is `largeValueBytes` long: above the payload limit, sent in parts.
    public var largeValuePermille = 0
    public var largeValueBytes = 6_000
    /// Chance (per mille) that a write first stores a value above `maxRowBytes` (refused, parked) and then, in the
    /// same transaction, a normal one, so the cluster still converges.
    public var oversizedValuePermille = 0
    /// Mean interval between schema-workload steps (0: none): DDL of every kind on side tables `s1`...`s6` and
    /// indexes of `kv`, from random nodes, and writes to those tables.
    public var ddlIntervalMs: Int64 = 0
    /// Which kinds of DDL the schema workload runs (see `Simulation.ddlKindNames`); all by default.
    public var ddlKinds: [String] = ["create-table", "add-column", "drop-column", "rename-column", "rename-table", "drop-table",
                                     "create-index", "drop-index", "view", "kv-index"]

    // Network between nodes and the NATS server.
    public var delayMsMin: Int64 = 1
    public var delayMsMax: Int64 = 20
    public var duplicatePermille = 0
    public var lostAckPermille = 0
    public var publishTimeoutMs: Int64 = 2_000
    /// How long after a write the sidecar notices it (change detection).
    public var detectDelayMsMax: Int64 = 5

    // JetStream.
    public var duplicateWindowMs: Int64 = 120_000
    public var maxEntries = 0
    public var ackWaitMs: Int64 = 3_000
    /// The server's `max_payload`: larger publishes are refused, as nats-server does.
    public var maxPayloadBytes = 1 << 20
    /// How a nak'd message comes again. false: the consumer rewinds to it after the delay, the ones after it behind it,
    /// in order. true (`redelivery = "scattered"`): nats-server's way, each on its own once due, in no particular order,
    /// while new ones keep coming.
    public var scatteredRedelivery = false
    /// With scattered redelivery: redeliveries dropped until the ack wait (nats-server drops one that finds no fetch
    /// waiting for it).
    public var droppedRedeliveryPermille = 0

    // Snapshots in the simulated object store (0 = never taken).
    public var snapshotIntervalMs: Int64 = 0
    /// Snapshots kept in the store, newest first.
    public var snapshotKeep = 3

    // The core's timers, shortened so short runs exercise them.
    public var scanIntervalMs: Int64 = 1_000
    public var cleanupIntervalMs: Int64 = 5_000
    /// Changes per published message (1: every change its own message, the path message ids matter most on).
    public var publishBatchMax = 128
    /// `replication_log.hints`: small messages also offered to the other nodes ahead of their turn.
    public var hints = true
    /// Change-log entries read per scan page, and changes in flight at once (small values make backlogs, which
    /// the publisher's priority lane then works on).
    public var scanMaxChanges = 512
    public var publishInFlightMax = 4_096
    /// How long a node behind the log's start waits for a snapshot before it repairs the hole (0: never). Shorter
    /// than the live default (10 minutes) so that runs reach it.
    public var holeRepairAfterMs: Int64 = 30_000
    /// `max_row_bytes` of every node.
    public var maxRowBytes = 64 << 20
    /// `replicate_ddl` of every node.
    public var replicateDDL = true
    /// Local writes stamped (and published rows deleted) per transaction, and the pause between such batches
    /// (`NodeConfig.lockBatchRows`, `lockPauseMs`): small values make a restarted sidecar's queue a "bulk import".
    public var lockBatchRows = 5_000
    public var lockPauseMs: Int64 = 20

    /// Chance (per mille) that the sidecar dies at each crash point the core passes (between two durable steps).
    public var crashPointPermille = 0
    /// Chance (per mille) of an application write at each point inside a core call where one can happen.
    public var interleavePermille = 0
    /// Storage faults on the sidecar's connections until the heal (`[storage]`).
    public var storageFaults = StorageFaultSettings()

    /// What each step costs (`[costs]`, or a profile `harmonybench calibrate` wrote): time then advances by these
    /// costs, for capacity planning. Nil: steps cost nothing beyond network delay (the correctness scenarios).
    public var costs: CostModel?
    /// A bulk load on node 1 from the start: this many rows of `kv` (keys above `keys`), `bulkBatch` per transaction.
    public var bulkRows = 0
    public var bulkBatch = 1_000
    /// Nodes whose application runs the workload (empty: every node; `writer_node` names one).
    public var writerNodes: [Int] = []

    public var faults: [Fault] = []
    /// Swarm mode: draw a random fault mix per seed (including none of some kinds).
    public var swarm = false
    /// Planted bugs switched on in every node's core (the planted-bug suite).
    public var plantedBugs: [String] = []

    public init() {}

    public var healMs: Int64 { healAtMs ?? durationMs }
}

/// The costs of one step on a measured machine (see `harmonybench calibrate`), in microseconds unless named
/// otherwise. Each node's sidecar is one serial worker (it reads, encodes and applies on one queue); the server
/// stores one message at a time.
public struct CostModel: Sendable, Equatable {
    /// One publish and its ack: half of it each way (it replaces the network delay).
    public var publishRttUs = 1_000.0
    /// The server's cost per stored message, and per payload byte (nanoseconds).
    public var serverMessageUs = 0.0
    public var serverByteNs = 0.0
    /// The sidecar reading and encoding a local change, and per message on top.
    public var scanChangeUs = 0.0
    public var publishMessageUs = 0.0
    /// The sidecar applying another node's changes: per delivered batch (a transaction), per message, per change.
    public var applyBatchUs = 0.0
    public var applyMessageUs = 0.0
    public var applyChangeUs = 0.0
    /// Applying a change whose key is scattered among many (a single-row writer's), not the next of a bulk load's:
    /// it lands on another page of the table and of its version table. nil: as `applyChangeUs`.
    public var applyScatteredChangeUs: Double?
    /// This node's own messages coming back, applied as no-ops, per change.
    public var applyOwnChangeUs = 0.0
    /// What the live processes spend per change beyond the core's work (libnats, fetching, acknowledging): on the
    /// publishing node, on each applying node, and in the server (storing, delivering to every node, acks).
    public var runtimePublishChangeUs = 0.0
    public var runtimeApplyChangeUs = 0.0
    public var serverChangeUs = 0.0
    /// The same runtimes' cost per message (fetched, acknowledged, delivered to every node).
    public var runtimePublishMessageUs = 0.0
    public var runtimeApplyMessageUs = 0.0
    public var runtimeServerMessageUs = 0.0
    /// The application inserting one row with the capture triggers, in transactions of 1,000 (the bulk load's pace).
    public var appInsertRowUs = 0.0
    /// How long one of the application's single-row commits holds SQLite's write lock (its fsync included), with
    /// three applications committing on the machine at once. 0: no lock model (the sidecar never waits for the lock).
    public var appCommitUs = 0.0
    /// Stamping one queued write (its version, change-log and global-log rows), in the stamp's own transaction, which
    /// holds the write lock: charged when the stamp happens, not when the change is read (`scanChangeUs` is without it).
    /// 0: stamping costs nothing apart from reading (profiles calibrated before it was measured apart).
    public var stampChangeUs = 0.0
    /// Each table beyond the first that a stamp's writes name (its statements per table, and reading the rows with
    /// each table's statements to send them), and that an apply transaction's changes name (each table's B-trees).
    /// 0: a table costs nothing of its own (profiles calibrated before it was measured).
    public var stampTableUs = 0.0
    public var applyTableUs = 0.0
    /// A look that finds commits, beyond its changes and messages (its stamp transaction): CPU, and wall time on top.
    public var lookUs = 0.0
    public var lookWaitUs = 0.0
    /// Marking a look's messages published when their acks come (one transaction): CPU, and wall time on top.
    public var ackFlushUs = 0.0
    public var ackFlushWaitUs = 0.0
    /// CPU the live benchmark's own probes and watchers take per millisecond while a bulk load replicates (its
    /// reader looks at a node every millisecond): they share the machine's cores with everything else.
    public var observerUsPerMs = 0.0
    /// Messages per delivery (the live sidecar fetches 256).
    public var deliverBatch = 256
    /// Payload bytes per delivery at most (the live sidecar fetches 1 MiB at most, `LiveNode.fetchBytesMax`): a
    /// receiver behind the log applies what it holds before it asks for more, and a message stored meanwhile waits.
    public var deliverBytesMax = 1 << 20
    /// Cores of the machine every process shares (the sidecars, the server and the application, as when a live
    /// benchmark runs them all on one machine); 0: each has a core of its own.
    public var cores = 0

    public init() {}
}

/// A scheduled fault. Times are simulated milliseconds from the start of the run.
public struct Fault: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable {
        /// Node cannot reach NATS at all.
        case partition
        /// Node's publishes and acks do not reach NATS; deliveries still arrive.
        case partitionToNATS = "partition-to-nats"
        /// NATS's deliveries and publish acks do not reach the node; its publishes still land.
        case partitionFromNATS = "partition-from-nats"
        /// The sidecar process dies and restarts after `durationMs` (the application keeps writing).
        case crash
        /// The machine loses power: both processes die and unsynced writes are lost; back after `durationMs`.
        case powerLoss = "power-loss"
        /// The node loses its disk and rejoins with an empty database after `durationMs`.
        case wipe
        /// The node's clock jumps by `offsetMs` (negative: backwards) at `atMs`.
        case clockJump = "clock-jump"
        /// The node's clock drifts by `driftPpm` from `atMs`.
        case clockDrift = "clock-drift"
        /// The NATS server is down for `durationMs`.
        case serverRestart = "server-restart"
        /// `ALTER TABLE kv ADD COLUMN` on every node, one node every `durationMs`, starting at `atMs`.
        case rollingAlter = "rolling-alter"
        /// The node starts at `atMs` instead of 0, with an empty database.
        case lateJoin = "late-join"
        /// A second process runs with this node's id for `durationMs`, on its own database, sharing the node's
        /// durable consumers: it takes (and acks) about half of the node's deliveries. The claim on the id refuses
        /// such a process at start; this is what it cannot see (a claim that expired during a partition).
        case duplicateID = "duplicate-id"
        /// The seeds' procedure: stop the node's sidecar, `harmonylite -cleanup`, let the application go on writing
        /// (inserts and updates; no capture sees them), and start the sidecar again after `durationMs`.
        case cleanup
        /// The same, with the application's `ALTER TABLE kv ADD COLUMN extra` run while the sidecar is away
        /// (HarmonyLite's per-node migration).
        case cleanupMigrate = "cleanup-migrate"
        /// The server loses the node's durable consumers (an operator's `nats consumer rm`, a consumer lost with its
        /// stream's leader): deliveries stop until the node's fetch finds it gone and makes it again from its checkpoint.
        case consumerLost = "consumer-lost"
    }

    public var kind: Kind
    /// 1-based node; 0 means "every node" where that makes sense.
    public var node: Int
    public var atMs: Int64
    public var durationMs: Int64
    public var offsetMs: Int64 = 0
    public var driftPpm: Int64 = 0

    public init(kind: Kind, node: Int, atMs: Int64, durationMs: Int64 = 0, offsetMs: Int64 = 0, driftPpm: Int64 = 0) {
        self.kind = kind
        self.node = node
        self.atMs = atMs
        self.durationMs = durationMs
        self.offsetMs = offsetMs
        self.driftPpm = driftPpm
    }
}

extension Scenario {
    /// Why `harmonysim run` refuses this scenario without a cost model (nil: it does not). A bulk load is the
    /// capacity-planning workload: without costs every step is free and deliveries reach a node in any order, and a
    /// large load spends the run's events on batches held back and sent again (`scenarios/capacity/bulk-load.toml`,
    /// 100,000 rows, ran out of its 5,000,000 events after 93 s).
    public func needsACostModel(file: String) -> String? {
        guard bulkRows > 0, costs == nil else { return nil }
        return """
            \(file): bulk_rows = \(bulkRows) is a capacity-planning workload, run under a cost model: without one every \
            step is free and deliveries reach a node in any order, and the load's batches are held back and sent again until \
            the run's events run out. Give it a cost profile: `harmonysim run \(file) --profile reports/cost-profile.toml` \
            (`harmonybench calibrate` writes one), or `harmonysim bench \(file) --profile reports/cost-profile.toml` for the prediction.
            """
    }
}
