import HarmonyCodec
import HarmonyCore
import HarmonySQLite

/// A committed application write waiting for its version: its capture-queue id, and the row it left.
struct PendingCapture {
    var queueID: Int64
    var table = "kv"
    var key: Int64
    var deleted: Bool
    var row: [DatabaseValue]?
    var atMs: Int64
    /// The version it was sent under ahead of its stamp (`ReplicationEvent.sentAheadOfStamp`), if it was: it joined
    /// the history then, and the stamp must give it exactly that version.
    var aheadHLC: Int64?
}

/// One simulated machine: the application's connection, the sidecar's core, its clock and its links to NATS.
final class SimNode {
    let id: Int
    /// The application's VFS (never faulty).
    let vfs: SimVFS
    /// The sidecar's: same clock and disk, with the node's storage faults.
    let sidecarVFS: SimVFS
    let databasePath: String
    var app: Database? {
        didSet { if app == nil { smallWriter = nil } }
    }
    /// The application's second connection, for single writes (`Scenario.smallWritesOwnConnection`).
    var smallWriter: Database?
    /// Rows this node just sent ahead of their stamp, by version, until the event saying so checks them.
    var sentAheadRows: [Int64: ChangeRecord] = [:]
    var core: ReplicationNode?
    /// Bumped at every restart, so events addressed to a dead process are dropped.
    var incarnation = 0
    var sidecarUp = false
    /// False before a late join and while a wiped disk is being replaced.
    var machineUp = true
    /// Between a `cleanup` fault and the sidecar's restart: the keys the application wrote with no capture.
    var cleanedUpKeys: Set<Int64>?
    /// A `duplicate-id` fault: another process consumes as this node.
    var impostorRunning = false
    var canSend = true
    /// With a cost model: publishes made while cut off from NATS, held as libnats holds them (its reconnect buffer)
    /// and sent once the connection is back; `timedOut` once the core was told the publish failed.
    var reconnectBuffer: [(message: OutgoingMessage, departsMs: Int64, timedOut: Bool)] = []
    var canReceive = true
    var clockOffsetMs: Int64 = 0
    var driftPpm: Int64 = 0
    var driftSinceMs: Int64 = 0
    var timerGenerations: [NodeTimer: UInt64] = [:]
    /// The version of this node's latest application write; the next must be greater (reset by a power loss or wipe).
    var lastLocalHLC: Int64 = 0
    /// Application writes the triggers queued and the sidecar has not stamped yet, in commit order: they join the
    /// history, with their versions, when the core reports the stamp (`ReplicationEvent.localChangesStamped`).
    var pendingCaptures: [PendingCapture] = []
    /// Per shard, the highest checkpoint this node's cores have shown since its last restore or wiped disk.
    var highestCheckpoint: [Int: UInt64] = [:]
    /// Highest version this node applied from others (and won); any later local write must exceed it.
    var maxAppliedHLC: Int64 = 0
    var writeCounter = 0
    var hasExtraColumn = false
    /// A fresh database still owes the rolling ALTER, to run once its sidecar has captured the table.
    var migrationPending = false
    var pendingRestart = false
    /// The error contract: a core that threw is restarted after this backoff, as `LiveNode` does.
    var restartBackoff = CoreRestartBackoff(minMs: 250, maxMs: 8_000, healthyAfterMs: 20_000)

    init(id: Int, vfs: SimVFS, sidecarVFS: SimVFS, databasePath: String) {
        self.id = id
        self.vfs = vfs
        self.sidecarVFS = sidecarVFS
        self.databasePath = databasePath
    }

    /// Simulated time 0 is this wall-clock instant, so versions look like real hybrid-logical timestamps.
    static let epochMs: Int64 = 1_767_225_600_000  // 2026-01-01T00:00:00Z

    func nowMs(simMs: Int64) -> Int64 {
        var t = Self.epochMs + simMs + clockOffsetMs
        if driftPpm != 0 { t += (simMs - driftSinceMs) * driftPpm / 1_000_000 }
        return t
    }

    var connected: Bool { sidecarUp && canSend && canReceive }
}

/// What every port of a simulated node holds: the simulation and which node it serves.
class SimNodePort {
    unowned let sim: Simulation
    let node: Int
    init(sim: Simulation, node: Int) {
        self.sim = sim
        self.node = node
    }
    var simNode: SimNode { sim.nodes[node - 1] }
}

/// The node's clock as its core sees it: skewed, drifting, jumping simulated time.
final class SimNodeClock: SimNodePort, NodeClock {
    var nowMs: Int64 { sim.nodes[node - 1].nowMs(simMs: sim.coreNowSimMs(node)) }
    func schedule(_ timer: NodeTimer, afterMs delayMs: Int64) { sim.scheduleTimer(node: node, timer: timer, afterMs: delayMs) }
}

/// The node's view of the simulated JetStream; every call travels the simulated network.
final class SimLogPort: SimNodePort, ReplicationLog {
    func publish(_ message: OutgoingMessage) { sim.publish(from: node, message) }
    func subscribe(shard: Int, fromSequence: UInt64) { sim.subscribe(node: node, shard: shard, fromSequence: fromSequence) }
    func ack(shard: Int, sequence: UInt64) { sim.acknowledge(node: node, shard: shard, sequence: sequence, nakDelayMs: nil) }
    func nak(shard: Int, sequence: UInt64, delayMs: Int64) {
        sim.acknowledge(node: node, shard: shard, sequence: sequence, nakDelayMs: delayMs)
    }
    func requestStreamState(shard: Int) { sim.requestStreamState(node: node, shard: shard) }
}

/// Feeds the core's events into the trace and the causality tracking.
final class SimEventSink: SimNodePort, ReplicationEventSink {
    func record(_ event: ReplicationEvent) { sim.coreEvent(node: node, event) }
    /// The oracle judges every write by the version it got.
    var wantsStampedVersions: Bool { true }
}
