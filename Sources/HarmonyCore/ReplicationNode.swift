import HarmonyCodec
import HarmonySQLite

/// The replication core for one node: a synchronous, single-threaded state machine.
///
/// The environment calls it with events (`start`, `databaseChanged`, `timerFired`, `publishAcknowledged`,
/// `publishFailed`, `messagesArrived`) and it calls the environment back through `NodeEnvironment`.
/// It never reads the wall clock, sleeps, spawns work or draws random numbers, so the live runtime
/// and the simulator drive exactly the same code.
public final class ReplicationNode {
    public let config: NodeConfig
    public let router: ShardRouter
    let env: NodeEnvironment

    /// The sidecar's own connection; nil until `start()`.
    public private(set) var database: Database?
    public internal(set) var captured: [String: CapturedTable] = [:]
    /// Tables captured here once and dropped since: changes to them are discarded, not waited for.
    var droppedTables: Set<String> = []
    /// With replicated DDL: each table's state (definition version, or dropped), by name.
    var tableStates: [String: SchemaObject] = [:]
    /// Tables renamed here, old name -> current name (see `ChangeCapture.adoptRenamedTable`).
    var tableAliases: [String: TableAlias] = [:]
    /// Last applied sequence per shard, mirrored from the checkpoint table.
    public internal(set) var checkpoints: [Int: UInt64] = [:]
    /// Shards holding back a message because its schema does not match ours, with that message's sequence.
    public internal(set) var pausedShards: [Int: UInt64] = [:]
    /// A stream dropped messages this node never applied; nothing applies until a snapshot is restored.
    public internal(set) var restoreNeeded = false
    /// When this node found itself behind the log's start (for `NodeConfig.holeRepairAfterMs`).
    var restoreNeededSinceMs: Int64?
    /// Shards whose fresh range has arrived for a hole repair under way (nil: none under way).
    var holeRepairAnswers: Set<Int>?
    /// After a hole repair: the stream ends this node reads up to before it publishes again (nil: not held).
    var publishHeldUntil: [Int: UInt64]?
    /// Tables whose pre-existing definition this node asked other nodes for and does not have yet, with when (it
    /// asks again after a while).
    var preExistingDefinitionsAskedAt: [String: Int64] = [:]
    /// Keyless and virtual tables already reported as skipped: each capture install finds them again, and the
    /// warning came several times a second while a schema changed. Reported again once such a table was gone or fixed.
    var skippedTablesReported: Set<String> = []
    /// Set while a message is applied: the table whose rows wait for a definition only a request can bring.
    var preExistingTableMissing: String?
    /// The latest answer per shard to `requestStreamState`. A stream's first sequence only grows, so an old
    /// answer is a lower bound: it can hide that a stream moved past us, never invent it (a later gap shows it).
    public internal(set) var streamStates: [Int: StreamState] = [:]
    /// Shards with a stream-state request outstanding: at most one each, since the port answers every request once.
    var streamStateRequested: Set<Int> = []
    /// Per shard: the checkpoint a stream was first seen to hold messages past, and when (node clock).
    var stalledSince: [Int: (checkpoint: UInt64, sinceMs: Int64)] = [:]
    /// Per shard: the checkpoint at which a later message was first delivered while the next one was not, and when
    /// (node clock). Such a message is missing, not late: the consumer has moved past it (`missingDeliveryResubscribeMs`).
    var gapSince: [Int: (checkpoint: UInt64, sinceMs: Int64)] = [:]
    /// The snapshot this node is taking, if any, and when (node clock) the attempt began.
    var snapshotAttempt = SnapshotAttempt.idle
    var snapshotAttemptStartedMs: Int64 = 0
    public private(set) var isRunning = false

    // Publishing state.
    var inFlight: Set<Int64> = []
    /// Change-log ids the log has (acknowledged, or found superseded) whose marking as published missed the write
    /// lock: an application held it, a bulk load's transactions back to back. Marked at the next try; meanwhile no
    /// read sends them again, and the core goes on (the priority lane, sends ahead of the stamp) instead of sleeping
    /// in SQLite's busy handler, where a single-row commit made as a million-row load began waited 3.5-7 s.
    var publishedUnmarked: Set<Int64> = []
    /// Messages of user rows this core sent and has not had back from the log yet (see `OwnEchoes`).
    var ownEchoes = OwnEchoes()
    /// Batched publishes: the token a message was sent with -> every change-log row it carries.
    var batchMembers: [Int64: [Int64]] = [:]
    /// Split messages: each part's token -> the whole message's token, and per message the parts not yet acked.
    var partOwners: [Int64: Int64] = [:]
    var partsUnacked: [Int64: Int] = [:]
    /// Planted bug `partsInMemory` only: received parts held outside the database.
    var memoryParts: [String: [Int: (count: Int, total: Int, bytes: [UInt8])]] = [:]
    /// Part tokens are negative, so they never meet a change-log id.
    var lastPartToken: Int64 = 0
    var scanCursor: Int64 = 0
    /// The newest change-log id the priority lane has looked at; it only looks above it (`publishNewestFirst`).
    var laneFloor: Int64 = 0
    /// Pending entries the lane is to walk through, newest first, on its next calls (ids strictly between the two):
    /// the last batch of a bulk import's stamping, with the small writes made meanwhile.
    var laneWalk: (above: Int64, below: Int64)?
    /// How far the lane ahead of the stamp has looked into the capture queue (`sendAheadOfStamp`); nil: not yet, or
    /// the queue it looked at was stamped to its end since.
    var aheadLane: AheadLane?
    /// Global-log ids of stamped writes that look like small commits (`WriterStretches`), oldest first: the priority
    /// lane sends them before anything else, wherever they sit in the backlog.
    var smallCommitsPending: [Int64] = []
    /// Where the stamps' writer stretches stood at the last write stamped.
    var stampWriterTail: WriterStretches.Tail?
    /// When publishing's brief wait for an application's write lock first missed it (`stampLocalChangesIfQueued`); nil
    /// once the core had the lock again. Meanwhile the lane ahead of the stamp keeps looking.
    var lockMissedSinceMs: Int64?
    /// Per shard: when an apply's brief wait first missed the lock since the last failure reported (`applyMissedTheLock`).
    var applyLockMissedSinceMs: [Int: Int64] = [:]
    /// Shards whose checkpoint moved past this node's own messages in memory only, while an import's loader kept the
    /// write lock (`consumeLeadingEchoes`); the node's next write transaction of any kind writes them.
    var echoCheckpointsUnsaved: Set<Int> = []
    /// How many of this node's own messages it has consumed without applying them: the runtime hands over the next
    /// part of a fetch at once while the parts are only these, which cost a lookup each.
    public internal(set) var echoesConsumedCount = 0
    /// When a failed stamp or mark was first reported with no write of the core committed since
    /// (`ownWritesResumed` is said at the next commit).
    var ownWriteFailureSinceMs: Int64?
    /// The core connection's `PRAGMA synchronous` and busy timeout as opened, which a stamp lowers for itself and
    /// puts back (read once at start, not on every stamp).
    var connectionSynchronous: Int64 = 2
    var connectionBusyTimeoutMs: Int64 = 0
    /// The capture queue has the `writer_changes` column: not before this process's first capture install (an
    /// older version's queue gains it there, and a stamp comes first).
    var queueRecordsWriters = false
    /// DDL may be waiting to be published (set by every capture refresh, cleared once none is pending).
    var definitionsToPublish = true
    /// Per shard, the checkpoint at which a stream state last said the stream ends before it (`streamStateArrived`).
    var streamBehindCheckpoint: [Int: UInt64] = [:]
    /// Local writes stamped inside the transaction now open: reported once it commits, forgotten if it rolls back.
    var stampsAwaitingCommit: [StampedChanges] = []
    /// When the pause after a batch of a large queue's stamping or of a large cleanup ends (node clock): until then
    /// SQLite's write lock is left to the applications (`lockBatchRows`, `lockPauseMs`). Work the core does
    /// meanwhile without the lock (reading and sending what is stamped) counts toward the pause, so a node busy
    /// publishing stamps its next batch as soon as the pause has passed, not when the timer gets its turn.
    var bookkeepingPausedUntilMs: Int64?
    /// How long the pause now running was set for: `lockPauseMs`, or a retry's delay after a failed stamp.
    var bookkeepingPauseMs: Int64 = 0
    var bookkeepingPaused: Bool {
        guard let until = bookkeepingPausedUntilMs else { return false }
        let now = env.clock.nowMs
        return now < until && now >= until - bookkeepingPauseMs  // a clock that jumped back ends the pause
    }
    /// The cleanup stopped after one batch and goes on when the pause ends.
    var cleanupUnfinished = false
    /// The capture queue's newest id when a stamp last stopped short (nil once a stamp took the whole queue).
    var queueNewestAtPartialStamp: Int64?

    /// Changes from other nodes are held back while a bulk import is stamped (reported once per import).
    var applyHeldForStamping = false
    /// Shards whose deliveries were sent back for later while an import was stamped, until one applies again.
    var shardsHeldForStamping: Set<Int> = []
    /// The scan stopped sending while a stream reached half its `max_entries` past a checkpoint
    /// (`stampWhileBacklogWaits`).
    var scanWaitsForUnapplied = false
    /// Per shard, the highest sequence delivered here or acknowledged to this node's publishes since it started.
    var streamLast: [Int: UInt64] = [:]
    /// This node's messages (and parts) handed to the log and not answered yet: the shard of each, and how many a
    /// shard has.
    var unackedShards: [Int64: Int] = [:]
    var unackedMessages: [Int: Int] = [:]
    /// Per shard, the messages this node last sent back to the log while it stamped an import (`HeldBack`).
    var heldBack: [Int: HeldBack] = [:]
    /// Per shard, the lowest and highest message this node sent back to the log for later since the shard's consumer
    /// was last recreated: one inside that stays away while later ones come was dropped by the log, not taken by
    /// another process (said so in `deliveryStalled`).
    var sentBackSpan: [Int: ClosedRange<UInt64>] = [:]
    var retryFrom: Int64?
    var retryDelayMs: Int64
    var schemaVersion: Int64 = -1
    /// Each table's primary key per schema epoch: the columns a change-log entry of that epoch names its row by.
    var epochKeys: [String: [Int64: [String]]] = [:]
    /// Apply statements per table shape; cleared whenever capture is re-installed (the schema may have moved).
    var applySQLCache: [ApplySQLKey: ApplySQL] = [:]
    /// Multi-row apply statements per table and row count (`applyRun`); cleared with the cache above.
    var batchApplySQLCache: [BatchApplyKey: BatchApplySQL] = [:]
    /// Tables with a unique index besides the key (hints skip them), read once per schema version.
    var uniqueIndexTables: [String: Bool] = [:]
    /// Column positions of each captured table's change log (`SELECT *`), per table name; cleared with the caches above.
    var changeLogLayouts: [String: ChangeLogLayout] = [:]
    /// `rowReadSQL` of each captured table, built once instead of once per published change (cleared with the caches
    /// above at every install, the only place a captured schema changes).
    var rowReadSQLCache: [String: (version: String, row: String, joined: String, joinedRange: String)] = [:]

    /// Where each field sits in a change-log row, so publishing reads values by position instead of by name.
    struct ChangeLogLayout {
        var columnCount: Int
        var index: [String: Int]
        /// The `SELECT * … WHERE id = ?` that reads one entry.
        var readSQL: String
        var hlc: Int?, node: Int?, epoch: Int?
        /// Per epoch: positions of the key columns (nil: the log has no such column).
        var keyPositions: [Int64: [Int?]] = [:]
    }

    public init(config: NodeConfig, environment: NodeEnvironment) {
        precondition(config.validationErrors().isEmpty, "invalid config: \(config.validationErrors())")
        self.config = config
        self.env = environment
        self.router = ShardRouter(shardCount: config.shards, streamPrefix: config.streamPrefix)
        self.retryDelayMs = config.publishRetryDelayMsMin
    }

    /// Opens the database, installs capture, loads checkpoints, subscribes from checkpoint + 1 and publishes what is pending.
    public func start() throws {
        precondition(!isRunning, "node \(config.nodeID) started twice")
        let db = try env.opener.open(path: config.databasePath)
        // No trigger fires on the sidecar's own connection: applying a change must not run the user's triggers
        // again (their writes come from the node that made the change, captured there), and capture is for the
        // application's writes only. The application's connections are unaffected.
        // The triggers test nothing per row, so this is the only thing that keeps the sidecar's writes uncaptured.
        if !config.plantedBugs.contains(.sidecarWritesCaptured) { try db.setTriggersEnabled(false) }
        // Read once: only the stamp changes them on this connection, and it puts them back.
        connectionSynchronous = try db.scalar("PRAGMA synchronous")?.int64 ?? 2
        connectionBusyTimeoutMs = try db.scalar("PRAGMA busy_timeout")?.int64 ?? 0
        database = db
        try refreshCapture()
        for row in try db.query("SELECT stream, seq FROM \(quoteIdentifier(Bookkeeping.checkpointTable))") {
            guard let stream = row[0].string, let seq = row[1].int64 else { continue }
            guard seq >= 0 else { throw CorruptBookkeeping(description: "checkpoint of stream \(stream) is \(seq); sequences are never negative") }
            if let shard = router.shards.first(where: { router.streamName(shard: $0) == stream }) {
                checkpoints[shard] = UInt64(seq)
            }
        }
        isRunning = true
        precondition(checkpoints.keys.allSatisfy(router.shards.contains), "checkpoints loaded for shards this node does not have")
        if config.replicate {
            checkLogStart()
            for shard in router.shards {
                env.log.subscribe(shard: shard, fromSequence: checkpoint(shard) + 1)
            }
        }
        env.clock.schedule(.scan, afterMs: config.scanIntervalMs)
        env.clock.schedule(.cleanup, afterMs: config.cleanupIntervalMs)
        // A node that does not apply others' changes, or does not publish its own, never holds a snapshot others
        // may take (it lacks their writes, or holds writes the log never had): no timer at all.
        if config.snapshotIntervalMs > 0 && env.snapshots != nil && config.replicate && config.publish {
            env.clock.schedule(.snapshot, afterMs: config.snapshotIntervalMs)
        }
        try publishPending()
    }

    /// Stops reacting to events and closes the connection. Unacknowledged publishes stay pending in the change log.
    public func stop() {
        isRunning = false
        inFlight.removeAll()
        publishedUnmarked.removeAll()
        batchMembers.removeAll()
        partOwners.removeAll()
        partsUnacked.removeAll()
        ownEchoes.removeAll()
        streamStateRequested.removeAll()
        gapSince.removeAll()
        snapshotAttempt = .idle
        smallCommitsPending.removeAll()
        stampWriterTail = nil
        queueRecordsWriters = false
        lockMissedSinceMs = nil
        applyLockMissedSinceMs.removeAll()
        echoCheckpointsUnsaved.removeAll()
        scanWaitsForUnapplied = false
        forgetStreamPositions()
        unackedShards.removeAll()
        unackedMessages.removeAll()
        ownWriteFailureSinceMs = nil
        aheadLane = nil
        database = nil
    }

    public func checkpoint(_ shard: Int) -> UInt64 { checkpoints[shard] ?? 0 }

    /// Local changes captured but not yet acknowledged by the log (for metrics and status). With `publish = false`
    /// nothing is ever sent, so nothing is pending (the newest change-log row is kept, unsent, for its id).
    public func pendingChangeCount() throws -> Int64 {
        guard config.publish else { return 0 }
        return try ChangeCapture.unpublishedChanges(requireDatabase()) ?? 0
    }

    /// The local writes still queued while changes from other nodes wait for a bulk import's stamping (nil: none
    /// wait), so `/health` can tell a shard held back on purpose from a stalled one.
    public func bulkImportHoldingDeliveries() throws -> Int64? {
        guard applyHeldForStamping, let db = database else { return nil }
        let queued = try queuedWrites(db)
        return queued > Int64(config.lockBatchRows) ? queued : nil
    }

    /// Stamps the local writes queued since the last look, inside the caller's write transaction (see
    /// `ChangeCapture.stampCaptured`): the first thing every transaction that reads versions or the logs does.
    /// `limit`: only the oldest that many (a transaction that reads no versions); returns whether it stopped short.
    @discardableResult
    func stampLocalChanges(_ db: Database, limit: Int? = nil) throws -> Bool {
        precondition(db.isInTransaction, "local writes are stamped inside the transaction that reads their versions")
        guard let stamped = try ChangeCapture.stampCaptured(db, collectVersions: env.events?.wantsStampedVersions ?? false, limit: limit,
                                                            findSmallCommits: queueRecordsWriters, writerTail: stampWriterTail) else {
            return false
        }
        stampsAwaitingCommit.append(stamped)
        // Everything the lane ahead knew is stamped: the queue may be empty, and its ids may start again at 1.
        if let lane = aheadLane, stamped.lastQueueID >= lane.through { aheadLane = nil }
        return limit.map { stamped.count >= $0 } ?? false
    }

    /// Leaves SQLite's write lock to the applications for `lockPauseMs` (or `delayMs`) before the next batch of
    /// bookkeeping.
    func pauseBookkeeping(forMs delayMs: Int64? = nil) {
        let pause = delayMs ?? config.lockPauseMs
        bookkeepingPausedUntilMs = env.clock.nowMs + pause
        bookkeepingPauseMs = pause
        env.clock.schedule(.bookkeepingResume, afterMs: pause)
    }

    /// After a stamp that stopped short: pause for the applications, unless they are writing faster than a quarter
    /// of a batch per batch. A bulk load still running would then outrun a paced stamp and leave every newer commit
    /// (a small one included) unstamped, so unsendable, for seconds; unpaced, the stamp keeps up and the loader
    /// waits for the lock as it did before batches.
    func pauseUnlessOutrun(_ db: Database) throws {
        let newest = try db.scalar("SELECT max(id) FROM \(quoteIdentifier(Bookkeeping.captureQueue))")?.int64 ?? 0
        let grown = newest - (queueNewestAtPartialStamp ?? newest)
        queueNewestAtPartialStamp = newest
        if grown < Int64(max(config.lockBatchRows / 4, 1)) { pauseBookkeeping() }
    }

    /// Local writes queued (0 when none, or capture was never installed). Queue ids are consecutive (only a stamp
    /// deletes, from the oldest on), so this reads two index ends (one min or max per SELECT: SQLite scans the
    /// whole table for `max(id) - min(id)`, or for `count(*)`).
    func queuedWrites(_ db: Database) throws -> Int64 {
        guard try db.tableExists(Bookkeeping.captureQueue) else { return 0 }
        let queue = quoteIdentifier(Bookkeeping.captureQueue)
        return try db.scalar("SELECT (SELECT max(id) FROM \(queue)) - (SELECT min(id) FROM \(queue)) + 1")?.int64 ?? 0
    }

    /// The global log's newest id (0 when empty): one index lookup.
    func newestChangeLogID(_ db: Database) throws -> Int64 {
        try db.scalar("SELECT max(id) FROM \(quoteIdentifier(Bookkeeping.globalLog))")?.int64 ?? 0
    }

    /// More local writes queued than one stamping batch: a bulk import, stamped a batch at a time.
    func stampBacklogIsLarge(_ db: Database) throws -> Bool {
        try queuedWrites(db) > Int64(config.lockBatchRows)
    }

    /// Reports the stamps of the transaction that just ended, if it committed.
    func transactionEnded(committed: Bool) {
        if committed {
            lockMissedSinceMs = nil  // the core had the lock
            if let since = ownWriteFailureSinceMs {
                ownWriteFailureSinceMs = nil
                env.events?.record(.ownWritesResumed(failedForMs: env.clock.nowMs - since))
            }
            for stamped in stampsAwaitingCommit {
                env.events?.record(.localChangesStamped(stamped))
                for (table, writes) in stamped.nullKeyWrites.sorted(by: { $0.key < $1.key }) {
                    env.events?.record(.nullKeyNotReplicated(table: table, key: writes.key, rows: writes.count, atInstall: false))
                }
                stampWriterTail = stamped.writerTail
                smallCommitsPending = Array((smallCommitsPending + stamped.smallCommits).suffix(WriterStretches.keptMax))
            }
        }
        stampsAwaitingCommit.removeAll()
    }

    /// A write transaction of the core's: local writes committed before it are stamped first, and their stamps are
    /// reported only if it commits.
    /// `stampLimit`: stamp only that many of the oldest (see `stampLocalChanges`); a stamp that stops short
    /// pauses the node's bookkeeping, so the applications get the lock before the next batch.
    func writeTransaction<T>(_ db: Database, stamp: Bool = true, stampLimit: Int? = nil, _ body: () throws -> T) throws -> T {
        do {
            var stoppedShort = false
            var newestBeforeLastBatch: Int64?
            let unsaved = echoCheckpointsUnsaved.sorted()
            let result = try db.transaction(.immediate) {
                if stamp {
                    if queueNewestAtPartialStamp != nil { newestBeforeLastBatch = try newestChangeLogID(db) }
                    stoppedShort = try stampLocalChanges(db, limit: stampLimit)
                }
                // Before the body, which may move one of these further.
                for shard in unsaved { try saveCheckpoint(db, shard: shard, sequence: checkpoint(shard)) }
                return try body()
            }
            echoCheckpointsUnsaved.subtract(unsaved)
            transactionEnded(committed: true)
            if stoppedShort {
                // A read that fails here must not undo the report above: pause as for an application.
                if (try? pauseUnlessOutrun(db)) == nil { pauseBookkeeping() }
            } else if stamp {
                // The last batch of an import holds the small writes made while it was stamped: the priority lane
                // walks through all of it, not only its newest few (`publishNewestFirst`).
                if let newestBeforeLastBatch, !config.plantedBugs.contains(.laneTakesNewestOnly) {
                    laneWalk = (above: newestBeforeLastBatch, below: .max)
                }
                queueNewestAtPartialStamp = nil
            }
            return result
        } catch {
            transactionEnded(committed: false)
            throw error
        }
    }

    /// Stamps queued local writes in a transaction of their own, if there are any (one cheap read when there are none).
    ///
    /// That commit is not synced to disk (synchronous=NORMAL for it alone): a stamp lost to a power cut goes with the
    /// clock it advanced, so the next one gives the same writes the same versions, and any later synced commit makes it
    /// durable first (the WAL is written in order). Syncing it cost every application commit a second fsync's wait.
    /// A stamp that stops short is synced: publishing reads each row as it is now, so the first batches of an import
    /// can go out carrying a later write still queued behind them, and that write must then survive a power cut (its
    /// own stamp corrects the copies sent under the earlier version).
    ///
    /// At most `lockBatchRows` writes at a time: stamping a million-row import in one transaction held SQLite's write
    /// lock for seconds, and the application's next write waited (or failed with SQLITE_BUSY) all that time.
    /// `all`: the whole queue, pause or not (a capture install must find it empty).
    /// `alongside`: more to write in the stamp's transaction (own messages consumed during an import). Returns
    /// whether a stamp transaction committed.
    @discardableResult
    func stampLocalChangesIfQueued(all: Bool = false, alongside: ((Database) throws -> Void)? = nil) throws -> Bool {
        let db = requireDatabase()
        guard all || !bookkeepingPaused else { return false }
        let queued = try queuedWrites(db)
        guard queued > 0 else { return false }
        // Read before the transaction: an application committing more than a batch between this read and BEGIN
        // would make an unsynced stamp stop short, and its batch could go out before the next synced commit (the
        // mark of what was published) makes the later writes durable. A window of microseconds, left open.
        let partial = !all && queued > Int64(config.lockBatchRows) && !config.plantedBugs.contains(.partialStampNotSynced)
        let synchronous = connectionSynchronous
        // A checkpoint written alongside is acknowledged right after: it must survive a power cut.
        let lowered = synchronous > 1 && !partial && alongside == nil
        if lowered { try db.execute("PRAGMA synchronous = NORMAL") }
        defer { if lowered { try? db.execute("PRAGMA synchronous = \(synchronous)") } }
        // Publishing's own stamp waits for the lock only `lock_pause_ms`: an application committing back to back would
        // otherwise keep the core in SQLite's busy handler for its whole load, and the lane could send no small
        // commit ahead of its stamp meanwhile (that needs no lock). Missed, the stamp is tried again after a pause.
        let brief = !all && queueRecordsWriters
        do {
            try waitingBrieflyForTheLock(db, if: brief) {
                try writeTransaction(db, stampLimit: all ? nil : config.lockBatchRows) { try alongside?(db) }
            }
            return true
        } catch let error as SQLiteError where error.isBusy && brief && briefWaitsOnBusy && !config.plantedBugs.contains(.stampFailureRestartsCore) {
            lockMissed(error) { .stampFailed(queued: queued, error: $0, retryInMs: config.lockPauseMs) }
            return false
        } catch let error as SQLiteError where error.isTransientStorageFailure && !all && !config.plantedBugs.contains(.stampFailureRestartsCore) {
            // An application holding the write lock past the busy timeout, or a full disk: the writes stay queued
            // and nothing was stamped. Try again after a pause rather than restart the core, which would meet the
            // same lock; meanwhile the rest goes on (what is stamped is sent, deliveries are asked for again).
            let delayMs = error.isBusy ? config.retryDelayMs : config.storageRetryDelayMs
            ownWriteFailed(.stampFailed(queued: queued, error: "\(error.storageFailureSummary): \(error.description)", retryInMs: delayMs))
            pauseBookkeeping(forMs: delayMs)
            return false
        }
    }

    /// Whether the busy timeout is longer than `lock_pause_ms`, so that a brief wait is shorter than a plain one.
    var briefWaitsOnBusy: Bool { connectionBusyTimeoutMs > config.lockPauseMs }

    /// Runs `body` with the connection's busy timeout cut to `lock_pause_ms` (when `brief` and it is longer), so a
    /// write transaction that finds an application holding the lock gives up soon instead of sleeping in SQLite's
    /// busy handler for as long as that application keeps it.
    func waitingBrieflyForTheLock<T>(_ db: Database, if brief: Bool, _ body: () throws -> T) throws -> T {
        let cut = brief && briefWaitsOnBusy
        if cut { try db.setBusyTimeout(ms: Int32(clamping: config.lockPauseMs)) }
        defer { if cut { try? db.setBusyTimeout(ms: Int32(clamping: connectionBusyTimeoutMs)) } }
        return try body()
    }

    /// A brief wait for the lock missed: an application's turn, not yet a failure. Said as one (`failure`) once the
    /// lock was missed for as long as a plain wait would have lasted; the bookkeeping pauses and tries again.
    func lockMissed(_ error: SQLiteError, failure: (String) -> ReplicationEvent) {
        let since = lockMissedSinceMs ?? env.clock.nowMs
        lockMissedSinceMs = since
        if env.clock.nowMs - since >= connectionBusyTimeoutMs {
            ownWriteFailed(failure("\(error.storageFailureSummary): \(error.description)"))
            lockMissedSinceMs = nil
        }
        pauseBookkeeping()
    }

    /// Reports a failed stamp or mark (`failure`); the next write the core commits reports the recovery.
    func ownWriteFailed(_ failure: ReplicationEvent) {
        if ownWriteFailureSinceMs == nil { ownWriteFailureSinceMs = env.clock.nowMs }
        env.events?.record(failure)
    }

    /// `PRAGMA data_version` on the sidecar's connection (it moves only when another connection commits) and the
    /// connection's `total_changes()` (only with the sidecar's own writes): how the runtime tells an application's
    /// commit from the sidecar's. Nil before `start` and after `stop`.
    public func connectionCounters() throws -> (dataVersion: Int64, ownWrites: Int64)? {
        guard isRunning, let db = database else { return nil }
        return (try db.scalar("PRAGMA data_version")?.int64 ?? -1, db.totalChanges)
    }

    /// A local write may have happened: re-read the schema if DDL ran, then publish pending changes.
    public func databaseChanged() throws {
        guard isRunning else { return }
        try refreshCaptureIfSchemaChanged()
        try publishPending()
    }

    public func timerFired(_ timer: NodeTimer) throws {
        guard isRunning else { return }
        switch timer {
        case .scan:
            env.clock.schedule(.scan, afterMs: config.scanIntervalMs)
            try databaseChanged()
        case .cleanup:
            env.clock.schedule(.cleanup, afterMs: config.cleanupIntervalMs)
            try cleanupPublished()
            checkLogStart()
        case .publishRetry:
            if let from = retryFrom {
                scanCursor = min(scanCursor, from - 1)
                retryFrom = nil
            }
            try publishPending()
        case .schemaCheck:
            try refreshCapture()
            if !pausedShards.isEmpty { env.clock.schedule(.schemaCheck, afterMs: config.schemaCheckIntervalMs) }
        case .restoreRetry:
            guard restoreNeeded, try !repairHoleIfDue() else { break }
            requestSnapshot()
        case .snapshot:
            env.clock.schedule(.snapshot, afterMs: config.snapshotIntervalMs)
            beginSnapshot(forced: false)
        case .snapshotRetry:
            try retrySnapshotIfWaiting()
        case .publishContinue:
            if config.publish { try publishPending() }
        case .bookkeepingResume:
            bookkeepingPausedUntilMs = nil
            // What the log has and a missed lock left unmarked, with a batch of the stamp; then stamping, whether or
            // not the publish window has room: changes from other nodes wait for it.
            if !publishedUnmarked.isEmpty { try markPublishedIfTheLockAllows([]) }
            try stampLocalChangesIfQueued()
            if config.publish { try publishPending() }
            // Deleting published rows can wait until the import is stamped (one batch per pause, not both).
            if !bookkeepingPaused && cleanupUnfinished {
                cleanupUnfinished = false
                try cleanupPublished()
            }
        }
    }

    /// A gap shows a hole only once something newer arrives; at start and on the cleanup timer the node also
    /// asks what each stream still holds, so an idle stream cannot hide one. The answers decide (`streamStateArrived`).
    func checkLogStart() {
        guard config.replicate else { return }
        for shard in router.shards { requestStreamState(shard) }
    }

    /// Asks the log for one stream's range unless a request for it is already on its way.
    func requestStreamState(_ shard: Int) {
        guard isRunning, !streamStateRequested.contains(shard) else { return }
        streamStateRequested.insert(shard)
        env.log.requestStreamState(shard: shard)
    }

    /// The log's answer to `requestStreamState`: nil when it could not tell. A stream that no longer holds the
    /// message after this node's checkpoint means only a snapshot can bring the node back.
    ///
    /// A stream that holds messages past the checkpoint while the checkpoint has not moved for
    /// `deliveryStallResubscribeMs` means deliveries stopped reaching this node: another process consuming as
    /// this node_id acked them, or the consumer was lost. The consumer is recreated from checkpoint + 1.
    public func streamStateArrived(shard: Int, _ state: StreamState?) {
        precondition(router.shards.contains(shard), "stream state for shard \(shard), which this node does not have")
        streamStateRequested.remove(shard)
        guard isRunning else { return }
        guard let state else {
            env.events?.record(.streamStateUnknown(shard: shard))
            return
        }
        precondition(state.firstSequence <= state.lastSequence + 1, "stream \(shard) reports first \(state.firstSequence) after last \(state.lastSequence) + 1")
        streamStates[shard] = state
        holeRepairStateArrived(shard: shard)
        guard config.replicate, !restoreNeeded else { return }
        let at = checkpoint(shard)
        // A stream the log made again itself is new for certain: read from its start unless the checkpoint is there.
        let startedOver = state.madeAgain ? at > max(state.firstSequence, 1) - 1 : state.lastSequence < at
        if startedOver, !config.plantedBugs.contains(.streamStartOverUnnoticed) {
            // Sequences never go back on a stream: it was made again. Taken so only when the next answer (the cleanup
            // timer asks every few seconds) says the same with the checkpoint unmoved, so an answer taken before this
            // node applied its latest messages is not read as one.
            if state.madeAgain || streamBehindCheckpoint[shard] == at {
                streamBehindCheckpoint[shard] = nil
                do { try streamStartedOver(shard: shard, checkpoint: at, state: state) } catch {
                    env.events?.record(.restoreFailed(reason: "stream \(router.streamName(shard: shard)) was made again, and reading it from its start failed for now: \(error)"))
                }
            } else {
                streamBehindCheckpoint[shard] = at
            }
            stalledSince[shard] = nil  // as for any answer at or below the checkpoint: nothing to wait for
            return
        }
        streamBehindCheckpoint[shard] = nil
        guard state.firstSequence <= at + 1 else {
            env.events?.record(.behindLogStart(shard: shard, checkpoint: at, firstSequence: state.firstSequence))
            needRestore()
            return
        }
        // A shard held back on purpose (waiting for this node's schema, or for a bulk import's stamping) is not stalled.
        guard state.lastSequence > at, pausedShards[shard] == nil, (try? bulkImportHoldingDeliveries()) == nil else {
            stalledSince[shard] = nil
            return
        }
        if let gap = gapSince[shard], gap.checkpoint == at, !config.plantedBugs.contains(.stallIgnoresGaps) {
            // Later messages came and this one did not: the consumer moved past it (its delivery lost when a
            // connection dropped, or taken by another process as this node). JetStream sends it again only after its
            // ack wait (30 s), or never; every message after it waits here meanwhile.
            let missingMs = env.clock.nowMs - gap.sinceMs
            if missingMs >= config.missingDeliveryResubscribeMs {
                resubscribeStalled(shard: shard, checkpoint: at, lastSequence: state.lastSequence, forMs: missingMs, laterDelivered: true)
                return
            }
        }
        guard let since = stalledSince[shard], since.checkpoint == at else {
            stalledSince[shard] = (at, env.clock.nowMs)
            return
        }
        let stalledMs = env.clock.nowMs - since.sinceMs
        guard stalledMs >= config.deliveryStallResubscribeMs else { return }
        resubscribeStalled(shard: shard, checkpoint: at, lastSequence: state.lastSequence, forMs: stalledMs, laterDelivered: false)
    }

    /// Recreates a shard's consumer from the message after its checkpoint: deliveries stopped reaching this node.
    private func resubscribeStalled(shard: Int, checkpoint: UInt64, lastSequence: UInt64, forMs: Int64, laterDelivered: Bool) {
        guard !config.plantedBugs.contains(.noResubscribeOnStall) else { return }
        let sentBack = sentBackSpan[shard]?.contains(checkpoint + 1) ?? false
        env.events?.record(.deliveryStalled(shard: shard, checkpoint: checkpoint, lastSequence: lastSequence, forMs: forMs,
                                            laterDelivered: laterDelivered, sentBackHere: laterDelivered && sentBack))
        recreateConsumer(shard: shard)
    }

    /// Lets the simulator crash the node between two durable steps.
    func crashPoint(_ point: CrashPoint) throws {
        if env.crashPoint?(point) == true {
            stop()
            throw NodeCrashed(point: point)
        }
    }

    func requireDatabase() -> Database {
        guard let db = database else { preconditionFailure("node \(config.nodeID) used before start()") }
        return db
    }

    /// Why a table without a primary key is left out, and what to do about it.
    static let virtualReason = "it is a virtual table (FTS, R*Tree...): its module keeps its own storage, which is not captured, and "
        + "its CREATE is not sent, so other nodes do not have it; make it on each node and fill it there (for FTS, from "
        + "triggers on a replicated table, or with its 'rebuild' command for an external-content index)"
    static let keylessReason = "it has no PRIMARY KEY (rowids differ from node to node, so its rows cannot be matched across nodes); "
        + "add a PRIMARY KEY to replicate it, or list it under exclude_tables if it is meant to stay on this node"

    /// Installs or refreshes triggers for the current schema and forgets cached shapes.
    /// Inside the apply transaction after remote DDL, the install joins that transaction. `afterOwnDDL`: the schema
    /// changed by the sidecar's own hand (remote DDL applied, a restore), never a table the application recreated.
    func refreshCapture(afterOwnDDL: Bool = false) throws {
        let db = requireDatabase()
        // Local writes first, so the install's own stamp finds the queue empty: inside the caller's transaction (a
        // `writeTransaction`) that transaction stamped them, and outside one they are stamped (and reported) here. The
        // install then runs in a write transaction of the core's, so a write committed in between is stamped and
        // reported too, not stamped unreported by the install.
        if !db.isInTransaction { try stampLocalChangesIfQueued(all: true) }
        var keyless: Set<String> = [], virtual: [String] = []
        let install = {
            // Keyless tables are skipped and reported, at start as while running: refused at start, one made through
            // the HTTP API or psql (its CREATE replicates) stopped every node at its next restart.
            let installed = try ChangeCapture.install(db, nodeID: self.config.nodeID, filter: self.config.tables, refuseKeyless: false,
                                                      replicateDDL: self.config.replicateDDL, findRecreated: !afterOwnDDL,
                                                      plantedBugs: self.config.plantedBugs,
                                                      sentChanges: self.inFlight.union(self.publishedUnmarked)) { skipped in
                keyless = skipped
            }
            virtual = try SchemaReader.virtualTables(db).filter(self.config.tables.admits)
            return installed
        }
        captured = try db.isInTransaction ? install() : writeTransaction(db, install)
        // Said once per table (see `skippedTablesReported`): keyless tables, and virtual ones (an FTS index made
        // through the API or psql), which are neither captured nor sent as DDL, so other nodes never have them.
        let skipped = keyless.map { ($0, Self.keylessReason) } + virtual.map { ($0, Self.virtualReason) }
        for (table, reason) in skipped.sorted(by: { $0.0 < $1.0 }) where !skippedTablesReported.contains(table) {
            env.events?.record(.tableSkipped(table: table, reason: reason))
        }
        skippedTablesReported = Set(skipped.map(\.0))
        precondition(captured.values.allSatisfy { !$0.schema.primaryKey.isEmpty }, "a keyless table was captured")
        queueRecordsWriters = true
        preExistingDefinitionsAskedAt = preExistingDefinitionsAskedAt.filter { captured[$0.key] == nil }  // answered
        epochKeys.removeAll()
        applySQLCache.removeAll()
        batchApplySQLCache.removeAll()
        uniqueIndexTables.removeAll()
        changeLogLayouts.removeAll()
        rowReadSQLCache.removeAll()
        tableAliases = try ChangeCapture.tableAliases(db)
        tableStates = config.replicateDDL ? try SchemaObjects.tableStates(db) : [:]
        definitionsToPublish = config.replicateDDL
        droppedTables = Set(try db.query("""
            SELECT DISTINCT table_name FROM \(quoteIdentifier(Bookkeeping.schemaTable))
            WHERE table_name NOT IN (SELECT name FROM sqlite_schema WHERE type = 'table') ORDER BY table_name
            """).compactMap { $0[0].string })
        schemaVersion = try db.scalar("PRAGMA schema_version")?.int64 ?? -1
        precondition(schemaVersion >= 0, "PRAGMA schema_version unreadable on \(config.databasePath)")
        env.events?.record(.captureInstalled(tables: captured.count))
        for (table, c) in captured.sorted(by: { $0.key < $1.key }) where c.nullKeyRows > 0 {
            env.events?.record(.nullKeyNotReplicated(table: table, key: c.schema.primaryKey, rows: c.nullKeyRows, atInstall: true))
        }
        if config.replicateDDL, !afterOwnDDL, try retryUnappliedAfterLocalDDL(db) { try refreshCapture(afterOwnDDL: true) }
    }

    /// One cheap pragma per call; DDL by the application (e.g. ALTER TABLE ADD COLUMN) triggers a re-install.
    func refreshCaptureIfSchemaChanged() throws {
        let current = try requireDatabase().scalar("PRAGMA schema_version")?.int64 ?? -1
        if current != schemaVersion { try refreshCapture() }
    }

    func primaryKey(table: String, epoch: Int64) throws -> [String]? {
        if let key = epochKeys[table]?[epoch] { return key }
        for e in try ChangeCapture.epochs(requireDatabase(), table: table) { epochKeys[table, default: [:]][e.epoch] = e.primaryKey }
        return epochKeys[table]?[epoch]
    }
}

/// The node's own bookkeeping holds a value the core never writes (edited by hand, or a damaged file).
public struct CorruptBookkeeping: Error, CustomStringConvertible, Sendable {
    public var description: String
}
