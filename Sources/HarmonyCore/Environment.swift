import HarmonyCodec
import HarmonySQLite

/// Timers the core asks its environment to fire.
public enum NodeTimer: Hashable, Sendable, CaseIterable {
    /// Fallback scan for local changes when no change notification arrived.
    case scan
    /// Deletes published change-log rows (`cleanup_interval`).
    case cleanup
    /// Retries publishes the log refused or timed out.
    case publishRetry
    /// Re-reads local schemas while a stream is paused on a schema mismatch.
    case schemaCheck
    /// Asks again for a snapshot after none could be restored.
    case restoreRetry
}

/// Time as the node sees it. The live runtime reads the wall clock; the simulator skews and jumps it.
public protocol NodeClock: AnyObject {
    /// Milliseconds since the Unix epoch.
    var nowMs: Int64 { get }
    /// Asks for `ReplicationNode.timerFired(timer)` after `delayMs`; a second request for the same timer replaces the first.
    func schedule(_ timer: NodeTimer, afterMs delayMs: Int64)
}

/// A message the core hands to the log.
public struct OutgoingMessage: Sendable, Hashable {
    public var shard: Int
    /// JetStream's `Nats-Msg-Id`: the log drops a second publish with the same id inside its duplicate window.
    public var messageID: String
    public var payload: [UInt8]
    /// Returned in the acknowledgement so the core knows which change-log row to mark published.
    public var token: Int64
}

/// A message the log delivers to the core.
public struct IncomingMessage: Sendable, Hashable {
    public var sequence: UInt64
    public var payload: [UInt8]

    public init(sequence: UInt64, payload: [UInt8]) {
        self.sequence = sequence
        self.payload = payload
    }
}

/// First and last sequence a stream still holds; first > checkpoint + 1 means the log was truncated past us.
public struct StreamState: Sendable, Hashable {
    public var firstSequence: UInt64
    public var lastSequence: UInt64

    public init(firstSequence: UInt64, lastSequence: UInt64) {
        self.firstSequence = firstSequence
        self.lastSequence = lastSequence
    }
}

/// The replication log (JetStream live, a simulated one in harmonysim).
///
/// Every call is a request: results come back later as events on the node
/// (`publishAcknowledged`, `publishFailed`, `messagesArrived`), on the node's own executor.
public protocol ReplicationLog: AnyObject {
    func publish(_ message: OutgoingMessage)
    /// Starts (or restarts) delivery for one shard at `fromSequence`; the durable consumer resumes there.
    func subscribe(shard: Int, fromSequence: UInt64)
    func ack(shard: Int, sequence: UInt64)
    /// Asks for redelivery of this message (and, the core assumes, nothing after it applies first) after `delayMs`.
    func nak(shard: Int, sequence: UInt64, delayMs: Int64)
    /// The stream's retained range, or nil when the log cannot tell right now.
    func streamState(shard: Int) -> StreamState?
}

/// Things the core reports for logs and metrics; never needed for correctness.
public enum ReplicationEvent: Sendable, Hashable {
    case published(count: Int)
    case publishFailed(token: Int64)
    case applied(shard: Int, sequence: UInt64, table: String, version: RowVersion, won: Bool)
    case duplicate(shard: Int, sequence: UInt64)
    case parked(shard: Int, sequence: UInt64, reason: String)
    case schemaPaused(shard: Int, sequence: UInt64, table: String, remoteHash: String)
    case schemaResumed(shard: Int)
    case gap(shard: Int, expected: UInt64, got: UInt64)
    case behindLogStart(shard: Int, checkpoint: UInt64, firstSequence: UInt64)
    case restoreRequested
    case restoreFailed(reason: String)
    /// A snapshot replaced the database; replay resumes after these sequences (one per shard, in shard order).
    case restored(sequences: [UInt64])
    case snapshotTaken(name: String)
    case applyBatchFailed(shard: Int, error: String)
    case cleanedUp(rows: Int)
    case captureInstalled(tables: Int)
    case tableSkipped(table: String, reason: String)
}

/// Where a node that fell behind the log's retained range gets a snapshot (NATS object store, S3, a directory...).
public protocol SnapshotSource: AnyObject {
    /// Answer later, on the node's executor, with `ReplicationNode.snapshotReady(at:)` (a local copy of the
    /// newest snapshot) or `snapshotUnavailable(reason:)`.
    func requestNewestSnapshot()
}

public protocol ReplicationEventSink: AnyObject {
    func record(_ event: ReplicationEvent)
}

/// Everything outside the core, injected: the same core runs live and in the simulator.
public struct NodeEnvironment {
    public var clock: NodeClock
    public var log: ReplicationLog
    public var opener: DatabaseOpener
    public var events: ReplicationEventSink?
    /// Nil: a node behind the log's start only reports it (`behindLogStart`).
    public var snapshots: SnapshotSource?
    /// Asked at each `CrashPoint`; returning true makes the core throw `NodeCrashed` there. Live: always nil.
    public var crashPoint: ((CrashPoint) -> Bool)?

    public init(clock: NodeClock, log: ReplicationLog, opener: DatabaseOpener, events: ReplicationEventSink? = nil,
                snapshots: SnapshotSource? = nil, crashPoint: ((CrashPoint) -> Bool)? = nil) {
        self.clock = clock
        self.log = log
        self.opener = opener
        self.events = events
        self.snapshots = snapshots
        self.crashPoint = crashPoint
    }
}
