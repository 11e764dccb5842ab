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
    /// The periodic snapshot (`[snapshot] interval`).
    case snapshot
    /// The lease holder tries its snapshot again once its own changes may be acknowledged.
    case snapshotRetry
    /// Stamping a large queue, or deleting many published rows, goes on after leaving the write lock to the applications.
    case bookkeepingResume
    /// Publishing a backlog goes on with its next page (`NodeConfig.publishPagesPerCall`).
    case publishContinue
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
    /// Once the log stores it, the runtime also offers it to the other nodes as a hint (`hintArrived`).
    public var hint: Bool = false
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
    /// The log found the stream gone and made it again for this answer: a new stream, known at once (otherwise only
    /// told by ending before the checkpoint twice, which a busy cluster can fill past before the second answer).
    public var madeAgain: Bool

    public init(firstSequence: UInt64, lastSequence: UInt64, madeAgain: Bool = false) {
        self.firstSequence = firstSequence
        self.lastSequence = lastSequence
        self.madeAgain = madeAgain
    }
}

/// The replication log (JetStream live, a simulated one in harmonysim).
///
/// **Ports never block.** Every call returns at once and does no network or disk round trip on the caller's
/// thread: the core may be inside a SQLite transaction (holding the database's write lock) when it calls.
/// Results come back later as events on the node's own executor (`publishAcknowledged`, `publishFailed`,
/// `messagesArrived`, `streamStateArrived`), never from inside the call that asked for them.
public protocol ReplicationLog: AnyObject {
    /// Answered by exactly one `publishAcknowledged` or `publishFailed` carrying the message's token.
    func publish(_ message: OutgoingMessage)
    /// Starts (or restarts) delivery for one shard at `fromSequence`; the durable consumer resumes there.
    func subscribe(shard: Int, fromSequence: UInt64)
    func ack(shard: Int, sequence: UInt64)
    /// Asks for redelivery of this message (and, the core assumes, nothing after it applies first) after `delayMs`.
    func nak(shard: Int, sequence: UInt64, delayMs: Int64)
    /// Asks for the stream's retained range. Answered by exactly one `ReplicationNode.streamStateArrived(shard:_:)`,
    /// later, with nil when the log cannot tell (unreachable, timed out). Answers may arrive late and out of order.
    func requestStreamState(shard: Int)
}

/// Things the core reports for logs and metrics; never needed for correctness.
public enum ReplicationEvent: Sendable, Hashable {
    case published(count: Int)
    /// Local writes the triggers queued got their versions (`ChangeCapture.stampCaptured`).
    case localChangesStamped(StampedChanges)
    /// Local writes sent before their stamp (`sendAheadOfStamp`): each queue id's version, which the stamp must give.
    case sentAheadOfStamp(versions: [Int64: Int64])
    case publishFailed(token: Int64)
    /// The log acknowledged these changes but marking them published failed: sent again after a backoff
    /// (`sentAgain`, a storage failure), or kept and marked once the write lock is had again (an application's lock).
    case markPublishedFailed(count: Int, error: String, sentAgain: Bool)
    /// The core committed a write of its own again, `failedForMs` after a failed stamp or mark was first reported:
    /// `/health` stops saying the node cannot write, and the log says it recovered.
    case ownWritesResumed(failedForMs: Int64)
    case applied(shard: Int, sequence: UInt64, table: String, version: RowVersion, won: Bool)
    case duplicate(shard: Int, sequence: UInt64)
    /// This node's own messages back from the log, consumed without being applied: the database already holds what
    /// they carry (`OwnEchoes`).
    case echoesConsumed(shard: Int, messages: Int)
    /// A message applied ahead of its turn (`hintArrived`): its changes, and the versions of those that won.
    case hintApplied(shard: Int, sequence: UInt64, changes: Int, won: [RowVersion])
    case parked(shard: Int, sequence: UInt64, reason: String)
    /// A change to a table this node dropped: discarded (counted), never waited for.
    case discarded(shard: Int, sequence: UInt64, table: String)
    /// Another node's DDL, applied here.
    case schemaChangeApplied(shard: Int, sequence: UInt64, object: String, dropped: Bool, version: RowVersion)
    /// Another node's DDL that SQLite refused here: this node's schema now differs from the cluster's for that object.
    case schemaChangeFailed(shard: Int, sequence: UInt64, object: String, error: String)
    /// Another node's index or trigger made on a table whose definition has not arrived here yet: made when it does.
    case schemaChangeWaiting(shard: Int, sequence: UInt64, object: String, table: String)
    case schemaPaused(shard: Int, sequence: UInt64, table: String, remoteHash: String)
    case schemaResumed(shard: Int)
    case gap(shard: Int, expected: UInt64, got: UInt64)
    /// The log could not tell a stream's range (unreachable, timed out); the core asks again when it next needs it.
    case streamStateUnknown(shard: Int)
    case behindLogStart(shard: Int, checkpoint: UInt64, firstSequence: UInt64)
    /// Deliveries stopped: the stream holds up to `lastSequence`, the checkpoint stood at `checkpoint` for `forMs`;
    /// `laterDelivered`: messages after the missing one reached this node meanwhile; `sentBackHere`: the missing one
    /// is one this node itself sent back to the log for later (the log did not deliver it again).
    case deliveryStalled(shard: Int, checkpoint: UInt64, lastSequence: UInt64, forMs: Int64, laterDelivered: Bool, sentBackHere: Bool)
    case restoreRequested
    case restoreFailed(reason: String)
    /// A snapshot replaced the database (`rows` rows in `tables` tables); replay resumes after these sequences
    /// (one per shard, in shard order).
    case restored(sequences: [UInt64], rows: Int, tables: Int)
    /// No snapshot came for `waitedMs`: the checkpoints skipped these message ranges, this node sent all its rows
    /// again and asked every other node to (`ReplicationNode.repairHoleIfDue`).
    case holeRepaired(skipped: [String], waitedMs: Int64)
    /// A stream ends before this node's checkpoint (`lastSequence` < `checkpoint`), twice in a row: it was deleted and
    /// made again, its sequences started over. The checkpoint moved back to before its first message, and this node
    /// sent its rows again and asked every other node to (`ReplicationNode.streamStartedOver`).
    case streamStartedOver(shard: Int, checkpoint: UInt64, lastSequence: UInt64)
    /// Another node repaired a hole: this node queued all its rows to be sent again.
    case repairRequested(shard: Int, sequence: UInt64, by: Int64)
    /// Rows arrived for a table this node never had, which existed on their node before its first install: this
    /// node asked every node for such definitions.
    case preExistingDefinitionsAsked(shard: Int, sequence: UInt64, table: String)
    /// Another node asked for definitions of objects that existed before the first install: this node queued its own.
    case preExistingDefinitionsSent(shard: Int, sequence: UInt64, by: Int64, count: Int)
    /// A snapshot this node took is in the store (logged only once its upload succeeded).
    case snapshotTaken(name: String)
    /// No snapshot this time, and why (another node holds the lease, a recent one exists, changes pending...).
    case snapshotSkipped(reason: String)
    /// A snapshot was taken but could not be stored, or the store could not be asked.
    case snapshotFailed(reason: String)
    case applyBatchFailed(shard: Int, error: String)
    case cleanedUp(rows: Int)
    /// Deleting published change-log rows failed (busy, disk full, I/O): they stay, and it is tried again after
    /// `retryInMs`.
    case cleanupFailed(error: String, retryInMs: Int64)
    /// A bulk import's local writes are stamped a batch at a time; changes from other nodes wait until it is done.
    case stampingBulkImport(queued: Int64)
    /// The stream of `shard` reaches `reach` messages past this node's checkpoint, half its `max_entries`: the node
    /// holds its backlog until it has applied more (`unappliedMessageAtRisk`).
    case sendingWaitsForApplying(shard: Int, checkpoint: UInt64, reach: UInt64, maxEntries: Int64)
    /// Messages this node sent back to the log for later are asked for again in order, from `from`, by recreating
    /// its consumer: `afterStamping` when an import's stamping that held them is done, otherwise because `from` did
    /// not come back when due while later ones did.
    case sentBackAskedAgain(shard: Int, from: UInt64, afterStamping: Bool)
    /// The server no longer has this node's consumer of `shard` (deleted by hand, lost with its stream's leader): it
    /// is made again from `from`, the message after the checkpoint.
    case consumerLost(shard: Int, from: UInt64)
    /// Stamping the queued local writes failed (another connection held SQLite's write lock past the busy timeout,
    /// a full or failing disk): they stay queued and the stamp is tried again after `retryInMs`.
    case stampFailed(queued: Int64, error: String, retryInMs: Int64)
    /// A local change above `max_row_bytes`: parked locally and never published.
    case changeRefused(table: String, key: String, bytes: Int, limit: Int)
    /// Rows of `table` whose primary key (`key`) holds NULL, written (`atInstall`: found at capture install) and
    /// left on this node: no other node could find them by their key.
    case nullKeyNotReplicated(table: String, key: [String], rows: Int, atInstall: Bool)
    case captureInstalled(tables: Int)
    case tableSkipped(table: String, reason: String)
    /// Another node's definition of `table` won without `columns`, and making it here dropped their values in
    /// `rows` row(s) (a node that joined with a column the cluster's table lacks, say): said, not left to an INFO line.
    case definitionDroppedValues(table: String, columns: [String], rows: Int64)
}

/// A log that goes nowhere, for a core whose messages come from its caller rather than a stream (the simulator's
/// replay check, a command-line retry of parked messages): it drops whatever the core sends and never answers.
public final class DetachedLog: ReplicationLog {
    public init() {}
    public func publish(_ message: OutgoingMessage) {}
    public func subscribe(shard: Int, fromSequence: UInt64) {}
    public func ack(shard: Int, sequence: UInt64) {}
    public func nak(shard: Int, sequence: UInt64, delayMs: Int64) {}
    public func requestStreamState(shard: Int) {}
}

/// The snapshot store and its cluster-wide lease (NATS object store and KV live, S3, a directory...; an
/// in-memory store beside the simulated server in harmonysim).
///
/// Ports never block: every request returns at once and is answered later on the node's executor, exactly
/// once, by the `ReplicationNode` method named beside it. The policy (when to take one, under which lease,
/// how many to keep, when to restore) lives in the core, so both drivers run the same one.
public protocol SnapshotStorePort: AnyObject {
    /// A path where the core may write a snapshot file: unique, not existing yet, on the node's own disk. No I/O.
    func scratchPath() -> String
    /// The core is done with a file it wrote or was handed (uploaded, skipped, restored): delete it.
    func discard(path: String)
    /// Answered by `snapshotNewestNameArrived(_:error:)`: the name of the newest stored snapshot (nil: none).
    func requestNewestName()
    /// Answered by `snapshotLeaseAnswered(granted:error:)`. The lease expires by itself after `durationMs`.
    func acquireLease(durationMs: Int64)
    /// Gives the lease back early; no answer.
    func releaseLease()
    /// Answered by `snapshotUploaded(name:error:)`. A half-written upload must never be listed. The store deletes
    /// the file once the upload is over, whatever its outcome.
    func upload(path: String, name: String)
    /// Deletes all but the newest `keep` snapshots. Answered by `snapshotsPruned(error:)`.
    func prune(keep: Int)
    /// For a node behind the log's start: answered by `snapshotReady(at:)` (a local copy of the newest
    /// snapshot, which the core discards when done) or `snapshotUnavailable(reason:)`.
    func requestNewestSnapshot()
}

public protocol ReplicationEventSink: AnyObject {
    func record(_ event: ReplicationEvent)
    /// Whether `localChangesStamped` should carry every stamped write's version (an oracle's need; reading them
    /// back costs a pass over the queue, so logs and metrics go without).
    var wantsStampedVersions: Bool { get }
}

extension ReplicationEventSink {
    public var wantsStampedVersions: Bool { false }
}

/// Everything outside the core, injected: the same core runs live and in the simulator.
///
/// **The error contract.** An error thrown out of any `ReplicationNode` event handler means one thing in
/// every driver: the core's state may no longer match its database, so the driver stops that core and starts
/// a new one on the same database after a backoff (`CoreRestartBackoff`). Everything the core needs survives in
/// the database (checkpoints, the change log, versions), so a restart loses nothing; it resubscribes from
/// checkpoint + 1 and publishes what is still pending. Errors the core can handle itself (a busy or full
/// database during an apply, a refused snapshot) it handles and reports as events instead of throwing.
public struct NodeEnvironment {
    public var clock: NodeClock
    public var log: ReplicationLog
    public var opener: DatabaseOpener
    public var events: ReplicationEventSink?
    /// Nil: no snapshots; a node behind the log's start only reports it (`behindLogStart`).
    public var snapshots: SnapshotStorePort?
    /// Asked at each `CrashPoint`; returning true makes the core throw `NodeCrashed` there. Live: always nil.
    public var crashPoint: ((CrashPoint) -> Bool)?
    /// Called at each `InterleavePoint`, where the simulator may run an application write. Live: always nil.
    public var interleave: ((InterleavePoint) -> Void)?

    public init(clock: NodeClock, log: ReplicationLog, opener: DatabaseOpener, events: ReplicationEventSink? = nil,
                snapshots: SnapshotStorePort? = nil, crashPoint: ((CrashPoint) -> Bool)? = nil,
                interleave: ((InterleavePoint) -> Void)? = nil) {
        self.clock = clock
        self.log = log
        self.opener = opener
        self.events = events
        self.snapshots = snapshots
        self.crashPoint = crashPoint
        self.interleave = interleave
    }
}

/// How long a driver waits before restarting a core that threw (the error contract above): doubling from
/// `minMs` to `maxMs`, back to `minMs` once a restarted core has run for `healthyAfterMs` without throwing.
public struct CoreRestartBackoff: Sendable, Hashable {
    public var minMs: Int64 = 250
    public var maxMs: Int64 = 30_000
    public var healthyAfterMs: Int64 = 60_000
    public private(set) var nextDelayMs: Int64
    private var lastFailureMs: Int64?

    public init(minMs: Int64 = 250, maxMs: Int64 = 30_000, healthyAfterMs: Int64 = 60_000) {
        precondition(minMs > 0 && maxMs >= minMs, "backoff bounds must satisfy 0 < min <= max")
        self.minMs = minMs
        self.maxMs = maxMs
        self.healthyAfterMs = healthyAfterMs
        self.nextDelayMs = minMs
    }

    /// The core threw at `nowMs`: returns how long to wait before starting the next one.
    public mutating func failed(atMs nowMs: Int64) -> Int64 {
        if let last = lastFailureMs, nowMs - last >= healthyAfterMs + nextDelayMs { nextDelayMs = minMs }
        lastFailureMs = nowMs
        let delay = nextDelayMs
        nextDelayMs = min(nextDelayMs * 2, maxMs)
        precondition(delay >= minMs && delay <= maxMs, "restart delay \(delay) ms outside [\(minMs), \(maxMs)]")
        return delay
    }
}
