import HarmonyCodec
import HarmonySQLite

extension ReplicationNode {
    enum ApplyOutcome {
        /// Applied, or lost to a newer version, or parked: the checkpoint moves past it.
        case consumed
        /// Schema mismatch: hold it and everything after it on this shard.
        case paused(table: String, remoteHash: String)
    }

    /// Applies a batch from one shard in one transaction, strictly in sequence order from checkpoint + 1.
    ///
    /// The checkpoint is advanced in that same transaction, so a crash, a lost ack or a redelivery can
    /// never apply a message twice or skip one. Acks and naks go out only after the commit.
    public func messagesArrived(shard: Int, _ messages: [IncomingMessage]) throws {
        guard isRunning, config.replicate, !messages.isEmpty else { return }
        defer { resumeScanIfNoLongerAtRisk() }
        let db = requireDatabase()
        try refreshCaptureIfSchemaChanged()
        // Sequence order, each sequence once (a redelivery inside one batch changes nothing).
        var ordered: [IncomingMessage] = []
        ordered.reserveCapacity(messages.count)
        for m in messages.sorted(by: { $0.sequence < $1.sequence }) where m.sequence != ordered.last?.sequence { ordered.append(m) }
        let start = checkpoint(shard)
        streamReached(shard: shard, sequence: ordered.last!.sequence)
        // The next message came, so it is not missing, whatever follows: one that keeps failing (a full disk) is asked
        // for again and comes back; only one that stays away while later ones come is a lost delivery.
        if ordered.contains(where: { $0.sequence == start + 1 }) { gapSince[shard] = nil }
        if restoreNeeded {
            // Waiting for a snapshot: nothing may apply over the hole; the restore resubscribes every shard.
            for m in ordered where m.sequence > start { env.log.nak(shard: shard, sequence: m.sequence, delayMs: config.restoreRetryMs) }
            return
        }
        if !config.plantedBugs.contains(.applyStampsOneBatch), try stampBacklogIsLarge(db) {
            // Applying must stamp every queued local write first, and stamping a bulk import at once holds the write
            // lock for seconds. So these wait (asked for again after a pause) while the import is stamped a batch at
            // a time, the lock left to the applications in between.
            if !applyHeldForStamping {
                applyHeldForStamping = true
                env.events?.record(.stampingBulkImport(queued: try queuedWrites(db)))
            }
            let echoes = leadingEchoes(shard: shard, ordered, from: start)
            let committed = try stampLocalChangesIfQueued(alongside: echoes.last.map { last in
                { db in try self.saveCheckpoint(db, shard: shard, sequence: last.sequence) }
            })
            let consumed = try consumeLeadingEchoes(db, shard: shard, echoes, savedWithTheStamp: committed) ?? start
            holdBack(shard: shard, ordered.map(\.sequence).filter { $0 > consumed }, delayMs: config.retryDelayMs)
            shardsHeldForStamping.insert(shard)
            return
        }
        applyHeldForStamping = false
        // The first apply after an import's stamping held this shard's deliveries: what it sent back meanwhile is asked
        // for again in order (`askAgainInOrder`), so a message missing from this delivery is no gap.
        let askAfterStamping = shardsHeldForStamping.remove(shard) != nil && pausedShards[shard] == nil
            && (heldBack[shard]?.through ?? 0) > start
        // The first message this node sent back itself that a delivery skips when it should have come: asked for
        // again in order (`askAgainInOrder`), not reported as a gap.
        var sentBackSkipped: UInt64?
        var next = start + 1
        var acks: [UInt64] = []
        var naks: [(UInt64, Int64)] = []
        var resumed = false
        var pausedAt: UInt64?
        var gapSeen = false
        var lookedAhead = false
        var definitionsAppliedAhead = false
        var events: [ReplicationEvent] = []
        var echoes: [OwnEchoes.Key] = []
        /// This node's own definitions applied the full way: remembered only for `leadingEchoes`, forgotten now.
        var definitionEchoes: [OwnEchoes.Key] = []
        if config.plantedBugs.contains(.checkpointOutsideApplyTransaction), let last = ordered.last, last.sequence > start {
            try saveCheckpoint(db, shard: shard, sequence: last.sequence)
            try crashPoint(.afterCheckpointBeforeApply)
        }
        env.interleave?(.beforeApplyTransaction)
        // The core's turn at the write lock is brief, as a stamp's: an application committing back to back (a bulk load)
        // would otherwise keep the node's queue in SQLite's busy handler up to the busy timeout, its own small commits,
        // hints and acks waiting behind (an own message come back as a million-row load began held a single-row commit
        // 4.7 s). Missed, the delivery goes back to the log for `retry_delay` (`applyMissedTheLock`).
        let brief = queueRecordsWriters && !config.plantedBugs.contains(.ackFailedApply)
        do {
            try waitingBrieflyForTheLock(db, if: brief) {
                // Every local write committed before this transaction gets its version first: last-writer-wins below
                // compares against it.
                try writeTransaction(db, stamp: !config.plantedBugs.contains(.applyBeforeStamping),
                                     stampLimit: config.plantedBugs.contains(.applyStampsOneBatch) ? config.lockBatchRows : nil) {
                    var maxHLC: Int64 = 0
                    var halted = false
                    for message in ordered {
                        if message.sequence < next {
                            acks.append(message.sequence)
                            events.append(.duplicate(shard: shard, sequence: message.sequence))
                            continue
                        }
                        if (halted || message.sequence > next), pausedAt != nil || pausedShards[shard] != nil, !preExistingDefinitionsAskedAt.isEmpty,
                           try applyDefinitionsAhead(db, shard: shard, message, events: &events) {
                            // Delivered singly behind the held-back message (a live consumer redelivers each on its own).
                            definitionsAppliedAhead = true
                        }
                        if halted { naks.append((message.sequence, config.retryDelayMs)); continue }
                        if message.sequence > next {
                            halted = true
                            naks.append((message.sequence, config.retryDelayMs))
                            // Not a gap when this node itself sent `next` back for later while it stamped an import:
                            // the log delivers what follows meanwhile, and `next` comes again after its delay. Once
                            // that delay is long past, it did not come when due: it is asked for again.
                            let sentBack = sentBackHere(shard: shard, next)
                            if sentBack == .onItsWay { continue }
                            if pausedAt == nil, pausedShards[shard] == nil, askAfterStamping || sentBack == .overdue,
                               !config.plantedBugs.contains(.stallIgnoresGaps) {
                                sentBackSkipped = next
                            } else {
                                gapSeen = true
                                events.append(.gap(shard: shard, expected: next, got: message.sequence))
                            }
                            continue
                        }
                        if pausedAt == nil, pausedShards[shard] == nil, let echo = ownEchoes.match(message.payload) {
                            echoes.append(echo)
                            acks.append(message.sequence)
                            next += 1
                            continue
                        }
                        if let definition = ownEchoes.match(message.payload, definitions: true) { definitionEchoes.append(definition) }
                        preExistingTableMissing = nil
                        var outcome = try applyOne(db, shard: shard, message, maxHLC: &maxHLC, events: &events)
                        if case .paused = outcome, !lookedAhead, preExistingTableMissing != nil {
                            // The definitions it waits for may be further on this very stream (pre-existing ones, sent on
                            // request): those apply first, and it is tried once more.
                            lookedAhead = true
                            var found = false
                            for later in ordered where later.sequence > message.sequence {
                                if try applyDefinitionsAhead(db, shard: shard, later, events: &events) { found = true }
                            }
                            if found { outcome = try applyOne(db, shard: shard, message, maxHLC: &maxHLC, events: &events) }
                        }
                        switch outcome {
                        case .consumed:
                            acks.append(message.sequence)
                            next += 1
                            if pausedShards[shard] != nil { resumed = true }
                        case .paused(let table, let remoteHash):
                            if let missing = preExistingTableMissing {
                                try requestPreExistingDefinitions(db, table: missing, shard: shard, sequence: message.sequence, events: &events)
                            }
                            halted = true
                            pausedAt = message.sequence
                            naks.append((message.sequence, config.schemaPauseDelayMs))
                            events.append(.schemaPaused(shard: shard, sequence: message.sequence, table: table, remoteHash: remoteHash))
                        }
                    }
                    if next - 1 > start {
                        precondition(acks.last.map { $0 <= next - 1 } ?? false, "checkpoint \(next - 1) of shard \(shard) moves without an applied message")
                        try saveCheckpoint(db, shard: shard, sequence: next - 1)
                    }
                    let observed = config.plantedBugs.contains(.noClockAdvanceOnReceipt) ? 0 : maxHLC
                    try db.execute("UPDATE \(quoteIdentifier(Bookkeeping.clockTable)) SET hlc = max(hlc, ?)",
                                   [.integer(observed)])
                }
            }
        } catch let error as SQLiteError where error.isBusy && brief && briefWaitsOnBusy {
            applyMissedTheLock(shard: shard, error)
            holdBack(shard: shard, ordered.map(\.sequence).filter { $0 > start }, delayMs: config.retryDelayMs)
            return
        } catch let error as SQLiteError {
            // Busy, disk full, I/O: nothing was applied or checkpointed; ask for all of it again later (soon when
            // only a lock was in the way, after a longer pause when the disk failed).
            env.events?.record(.applyBatchFailed(shard: shard, error: "\(error.storageFailureSummary): \(error.description)"))
            if config.plantedBugs.contains(.ackFailedApply) {
                checkpoints[shard] = max(start, ordered.last!.sequence)
                for m in ordered { env.log.ack(shard: shard, sequence: m.sequence) }
                return
            }
            let delayMs = error.isBusy ? config.retryDelayMs : config.storageRetryDelayMs
            for m in ordered where m.sequence > start { env.log.nak(shard: shard, sequence: m.sequence, delayMs: delayMs) }
            return
        }
        precondition(next - 1 >= start, "checkpoint of shard \(shard) moved back from \(start) to \(next - 1)")
        checkpoints[shard] = next - 1
        applyLockMissedSinceMs[shard] = nil
        for echo in echoes + definitionEchoes { ownEchoes.remove(echo) }
        echoesConsumedCount += echoes.count
        if !echoes.isEmpty { events.append(.echoesConsumed(shard: shard, messages: echoes.count)) }
        try crashPoint(.afterApplyCommitBeforeAck)
        if let pausedAt {
            if pausedShards[shard] == nil { env.clock.schedule(.schemaCheck, afterMs: config.schemaCheckIntervalMs) }
            pausedShards[shard] = pausedAt
        } else if resumed {
            pausedShards[shard] = nil
            events.append(.schemaResumed(shard: shard))
        }
        for e in events { env.events?.record(e) }
        Self.checkDisjointAndOrdered(acks: acks, naks: naks.map(\.0))
        for seq in acks { env.log.ack(shard: shard, sequence: seq) }
        // What an import's stamping sent back comes again in whatever order the log redelivers it, each out-of-order
        // one sent back once more: 300 messages took 4 s that way, one 3 s more until it was found missing.
        if sentBackSkipped != nil || askAfterStamping && pausedAt == nil && (heldBack[shard]?.through ?? 0) > checkpoint(shard) {
            askAgainInOrder(shard: shard, afterStamping: askAfterStamping)
        } else {
            for (seq, delay) in naks { env.log.nak(shard: shard, sequence: seq, delayMs: delay) }
            if let first = naks.first?.0, let last = naks.last?.0 { noteSentBack(shard: shard, first...last) }
        }
        // Rows held back for a definition may fit now: ask for them again at once instead of after the pause delay.
        if events.contains(where: {
            if case .schemaChangeApplied = $0 { return true }
            if case .applied(_, _, Bookkeeping.ddlTable, _, _) = $0 { return true }  // a losing definition adds its names too
            return false
        }) {
            for other in pausedShards.keys.sorted() where other != shard { env.log.subscribe(shard: other, fromSequence: checkpoint(other) + 1) }
        }
        // Definitions a held-back message waits for were found further on: ask for it again now, not after the pause.
        if definitionsAppliedAhead, pausedShards[shard] != nil { env.log.subscribe(shard: shard, fromSequence: checkpoint(shard) + 1) }
        // A gap is a hole only if the stream no longer holds what we miss; the log's answer decides, and also
        // whether the missing message has stayed missing too long (`streamStateArrived`).
        if gapSeen {
            if gapSince[shard]?.checkpoint != checkpoint(shard) { gapSince[shard] = (checkpoint(shard), env.clock.nowMs) }
            requestStreamState(shard)
        }
    }

    /// An apply's brief wait missed the lock: the application's turn, not yet a failure. Reported as a failed try
    /// (`/health`'s reason for a shard that does not move, the failure count) once per busy timeout of misses, as
    /// often as plain waits, each lasting the busy timeout, were. Meanwhile the lane ahead of the stamp looks too.
    func applyMissedTheLock(shard: Int, _ error: SQLiteError) {
        let now = env.clock.nowMs
        if lockMissedSinceMs == nil { lockMissedSinceMs = now }
        let since = applyLockMissedSinceMs[shard] ?? now
        applyLockMissedSinceMs[shard] = since
        if now - since >= connectionBusyTimeoutMs {
            env.events?.record(.applyBatchFailed(shard: shard, error: "\(error.storageFailureSummary): \(error.description)"))
            applyLockMissedSinceMs[shard] = now
        }
    }

    /// Messages this node sent back for later while it stamped an import: `from...through` of one shard, due again
    /// before `untilMs`. (Only those: a schema pause or a failed batch still reports what is delivered past it as a
    /// gap and asks the log, whose answer also moves a stalled shard on.)
    struct HeldBack {
        var from: UInt64
        var through: UInt64
        var untilMs: Int64
    }

    /// Sends `sequences` (in order) back to the log for `delayMs`, and remembers them: what follows them may be
    /// delivered first, and that is no gap (`isHeldBackHere`). Remembered for twice the delay and a second more after
    /// the first of them was last sent back, so a message that never comes back (gone from the stream meanwhile) is
    /// still found missing, only that much later.
    func holdBack(shard: Int, _ sequences: [UInt64], delayMs: Int64) {
        for sequence in sequences { env.log.nak(shard: shard, sequence: sequence, delayMs: delayMs) }
        guard let first = sequences.first, let last = sequences.last else { return }
        noteSentBack(shard: shard, first...last)
        let untilMs = env.clock.nowMs + 2 * delayMs + 1_000
        if var held = heldBack[shard], env.clock.nowMs < held.untilMs, first <= held.through + 1, last + 1 >= held.from {
            if first <= held.from { held.untilMs = untilMs }
            held.from = min(held.from, first)
            held.through = max(held.through, last)
            heldBack[shard] = held
        } else {
            heldBack[shard] = HeldBack(from: first, through: last, untilMs: untilMs)
        }
    }

    /// Recreates a shard's consumer from the message after its checkpoint, so that what this node sent back for later
    /// comes again in order now, instead of one by one in the log's order (each out of order one sent back again).
    func askAgainInOrder(shard: Int, afterStamping: Bool) {
        env.events?.record(.sentBackAskedAgain(shard: shard, from: checkpoint(shard) + 1, afterStamping: afterStamping))
        recreateConsumer(shard: shard)
    }

    /// The log's fetch for `shard` was refused: the server has no such consumer. Made again from the checkpoint, as
    /// a new consumer: what this node knew of the old one's deliveries (sent back, missed) went with it.
    public func consumerLost(shard: Int) {
        precondition(router.shards.contains(shard), "consumer of shard \(shard), which this node does not have")
        guard isRunning, config.replicate else { return }
        env.events?.record(.consumerLost(shard: shard, from: checkpoint(shard) + 1))
        recreateConsumer(shard: shard)
    }

    /// Makes a shard's consumer again from the message after the checkpoint, and forgets what this node knew of the
    /// old one's deliveries: what it sent back, what it missed, since when nothing moved.
    func recreateConsumer(shard: Int) {
        heldBack[shard] = nil
        sentBackSpan[shard] = nil
        gapSince[shard] = nil
        stalledSince[shard] = nil
        env.log.subscribe(shard: shard, fromSequence: checkpoint(shard) + 1)
    }

    /// What this node knows of its streams' sequences, forgotten when they may start over (a restore or a hole
    /// repair: the log may have been made again) and when it stops (its consumers are made again at start).
    func forgetStreamPositions() {
        streamLast.removeAll()
        heldBack.removeAll()
        sentBackSpan.removeAll()
        shardsHeldForStamping.removeAll()
    }

    /// The log holds a message at `sequence`: one delivered here, or one of this node's, stored there (its
    /// acknowledgement says where). How far the stream reaches, for `unappliedMessageAtRisk`.
    public func streamReached(shard: Int, sequence: UInt64) {
        streamLast[shard] = max(streamLast[shard, default: 0], sequence)
    }

    /// Whether a shard's stream reaches half its `max_entries` past this node's checkpoint (the farthest message
    /// delivered here or acknowledged to its publishes, and its messages not answered yet): sending its own backlog
    /// on would push messages it has yet to apply out of the stream. A 300,000-row import (2,350 messages) with
    /// another node writing every 20 ms left the importing node behind its stream's start at the default
    /// `max_entries` (1024), needing a snapshot, without the other node's rows: their messages waited for the
    /// import's stamp, or for the loader's lock, while it sent. A shard paused for a schema, or a node waiting for a
    /// snapshot, does not hold its sending back: neither catches up by applying.
    func unappliedMessageAtRisk() -> Bool { shardAtRisk() != nil }

    /// The first shard whose stream reaches half its `max_entries` past this node's checkpoint, with that reach.
    func shardAtRisk() -> (shard: Int, reach: UInt64)? {
        guard config.logMaxMessages > 0, config.replicate, !restoreNeeded else { return nil }
        for shard in router.shards where pausedShards[shard] == nil {
            let farthest = streamLast[shard, default: 0] + UInt64(unackedMessages[shard, default: 0])
            let at = checkpoint(shard)
            if farthest >= at + UInt64(config.logMaxMessages / 2) { return (shard, farthest - at) }
        }
        return nil
    }

    func noteSentBack(shard: Int, _ span: ClosedRange<UInt64>) {
        let known = sentBackSpan[shard] ?? span
        sentBackSpan[shard] = min(known.lowerBound, span.lowerBound)...max(known.upperBound, span.upperBound)
    }

    /// A message this node sent back to the log itself (`holdBack`): still on its way, or long past due (the log
    /// dropped its redelivery, or sends what this node sent back in another order).
    enum SentBack { case onItsWay, overdue }

    /// Whether, and how long ago, this node sent `sequence` back to the log itself (nil: it did not).
    func sentBackHere(shard: Int, _ sequence: UInt64) -> SentBack? {
        guard let held = heldBack[shard], held.from <= sequence, sequence <= held.through else { return nil }
        return env.clock.nowMs < held.untilMs ? .onItsWay : .overdue
    }

    /// One delivery's answers: every message is acked or nak'd at most once, each list in sequence order, and
    /// every ack precedes every nak (duplicates and applied messages first, then the first one held back onward).
    static func checkDisjointAndOrdered(acks: [UInt64], naks: [UInt64]) {
        for list in [acks, naks] {
            for (a, b) in zip(list, list.dropFirst()) { precondition(a < b, "acks or naks of one delivery out of order: \(a) then \(b)") }
        }
        if let lastAck = acks.last, let firstNak = naks.first {
            precondition(lastAck < firstNak, "ack of \(lastAck) after nak of \(firstNak) in one delivery")
        }
    }

    /// Writes the checkpoint row inside the caller's transaction. The apply path only moves it forward (asserted
    /// there); a restore sets it to the snapshot's sequences.
    func saveCheckpoint(_ db: Database, shard: Int, sequence: UInt64) throws {
        precondition(sequence <= UInt64(Int64.max), "checkpoint \(sequence) does not fit SQLite's INTEGER")
        try db.execute("""
            INSERT INTO \(quoteIdentifier(Bookkeeping.checkpointTable)) (stream, seq) VALUES (?, ?)
            ON CONFLICT (stream) DO UPDATE SET seq = excluded.seq
            """, [.text(router.streamName(shard: shard)), .integer(Int64(sequence))])
    }

    /// Decodes, gates on schema, and applies one message with last-writer-wins inside a savepoint,
    /// so a constraint failure parks this message without undoing the rest of the batch.
    func applyOne(_ db: Database, shard: Int, _ message: IncomingMessage, maxHLC: inout Int64,
                  events: inout [ReplicationEvent]) throws -> ApplyOutcome {
        if EnvelopeCodec.isPart(message.payload) { return try applyPart(db, shard: shard, message, maxHLC: &maxHLC, events: &events) }
        let records: [ChangeRecord]
        do {
            records = try EnvelopeCodec.decodeAll(message.payload, decompressedLimit: messageBytesAccepted)
        } catch {
            try park(db, shard: shard, message, reason: "undecodable: \(error)", events: &events)
            return .consumed
        }
        if records.count == 1 { return try applyRecord(db, shard: shard, message, records[0], maxHLC: &maxHLC, events: &events) }
        // A batch applies atomically: if one record must wait for a schema, the whole message waits.
        let eventsBefore = events.count
        try db.execute("SAVEPOINT harmonylite_message", [])
        func applyAll(eachInSavepoint: Bool) throws -> ApplyOutcome {
            // Without a savepoint per record, consecutive upserts of one table go together (`applyRun`).
            var run: [ResolvedChange] = []
            for record in records {
                if !eachInSavepoint, let change = appendableChange(record) {
                    if let first = run.first, first.table.name != change.table.name {
                        try applyRun(db, shard: shard, message, run, events: &events)
                        run.removeAll(keepingCapacity: true)
                    }
                    maxHLC = max(maxHLC, record.version.hlc)
                    run.append(change)
                    continue
                }
                try applyRun(db, shard: shard, message, run, events: &events)
                run.removeAll(keepingCapacity: true)
                let outcome = try applyRecord(db, shard: shard, message, record, inBatch: true, inSavepoint: eachInSavepoint,
                                              maxHLC: &maxHLC, events: &events)
                if case .paused = outcome {
                    try db.execute("ROLLBACK TO harmonylite_message", [])
                    try db.execute("RELEASE harmonylite_message", [])
                    events.removeSubrange(eventsBefore...)
                    return outcome
                }
            }
            try applyRun(db, shard: shard, message, run, events: &events)
            try db.execute("RELEASE harmonylite_message", [])
            return .consumed
        }
        // Rows of user tables go without a savepoint each: a savepoint per record makes SQLite copy every page the
        // record touches into its sub-journal again. If one fails a constraint, the message is undone and applied
        // again with a savepoint per record, so that only the failing record is parked, as before.
        // Bookkeeping records (requests) always take the careful path.
        let userRowsOnly = records.allSatisfy { !$0.table.hasPrefix(Bookkeeping.prefix) }
        guard userRowsOnly else { return try applyAll(eachInSavepoint: true) }
        do {
            return try applyAll(eachInSavepoint: false)
        } catch is ConstraintFailedWithoutSavepoint {
            try db.execute("ROLLBACK TO harmonylite_message", [])
            events.removeSubrange(eventsBefore...)
            return try applyAll(eachInSavepoint: true)
        }
    }

    /// A record applied without a savepoint of its own failed a constraint: its message must be applied again with one.
    struct ConstraintFailedWithoutSavepoint: Error {}

    /// One record: schema gate, shape check, then last-writer-wins inside its own savepoint.
    /// `inBatch`: the message carries other records too; a parked record then keeps only its own payload, so
    /// each parked row is one change an operator can retry or discard.
    /// `inSavepoint` false: the caller undoes the whole message if a constraint fails (`ConstraintFailedWithoutSavepoint`).
    func applyRecord(_ db: Database, shard: Int, _ message: IncomingMessage, _ decoded: ChangeRecord, inBatch: Bool = false,
                     inSavepoint: Bool = true, maxHLC: inout Int64, events: inout [ReplicationEvent]) throws -> ApplyOutcome {
        var record = decoded
        if config.plantedBugs.contains(.dropSchemaHashOnDecode) { record.schemaHash = "" }
        maxHLC = max(maxHLC, record.version.hlc)
        if config.plantedBugs.contains(.skipOwnMessages) && record.originNode == config.nodeID { return .consumed }
        if record.table == Bookkeeping.ddlTable { return try applyDefinition(db, shard: shard, message, record, events: &events) }
        if record.table == Bookkeeping.repairRequest { return try applyRepairRequest(db, shard: shard, message, record, events: &events) }
        if record.table == Bookkeeping.definitionRequest { return try applyDefinitionRequest(db, shard: shard, message, record, events: &events) }
        var standing = standing(of: record, in: record.table)
        var writtenAs: String?
        if captured[record.table] == nil || standing == .gone, let alias = tableAliases[record.table], alias.current != record.table,
           alias.generation == nil || record.definition == nil || alias.generation == record.definition?.generation
            || config.plantedBugs.contains(.aliasAnyGeneration) {
            // (Rows of a later table made under the old name are that table's: dropped here, they are discarded.)
            let current = alias.current
            if alias.filledTableIsGone(currentGeneration: tableStates[current]?.generation), !config.plantedBugs.contains(.rowFollowsToRemadeTable) {
                // The table the rename filled was dropped since (a table of that name made again is another one): the
                // row went with it, as on the nodes that had it before the drop.
                events.append(.discarded(shard: shard, sequence: message.sequence, table: record.table))
                return .consumed
            }
            writtenAs = record.table
            // Written under the name this table had before a RENAME TO here: under an older definition of it (the
            // new name's generation and versions are another object's).
            record.table = current
            standing = config.replicateDDL ? .older : .current
        }
        guard let table = captured[record.table], standing != .gone else {
            if !config.tables.admits(record.table) { return .consumed }  // excluded here on purpose
            // A table dropped here takes no more changes, unless they are for a table created again under its
            // name whose CREATE is on its way (a later generation).
            if standing == .gone || (droppedTables.contains(record.table) && standing != .newer) {
                // Another node still writes to a table dropped here: nothing can ever apply it.
                events.append(.discarded(shard: shard, sequence: message.sequence, table: record.table))
                return .consumed
            }
            if config.replicateDDL, tableStates[record.table] == nil, tableAliases[record.table] == nil,
               (record.definition?.version ?? .zero) == .zero {
                // No CREATE will come: the table existed on its node before that node's first install. (Asked once
                // the message is held back: a batch's savepoint is undone then.)
                preExistingTableMissing = record.table
            }
            return .paused(table: record.table, remoteHash: record.schemaHash)  // not created here yet
        }
        let sameSchema = record.schemaHash == table.schema.hash
            || (config.plantedBugs.contains(.dropSchemaHashOnDecode) && record.schemaHash.isEmpty)
        // Whether the row's columns fit the local schema: asked only when the schemas differ (every change of a
        // matching schema would pay for the comparison otherwise).
        func fits() -> Bool { !config.plantedBugs.contains(.pauseOnOlderUnknownSchema) && Self.fitsWithin(record, table.schema) }
        // With replicated DDL a row under a newer definition waits for it (its DDL is on its way), so it applies
        // under the schema it was written in; one under an older or losing definition applies mapped.
        // A row of a table created again (a later generation) waits even with the same columns: the old table here
        // is about to be dropped, with whatever applied to it.
        let laterGeneration = (record.definition?.generation ?? 0) > (tableStates[record.table]?.generation ?? Int64.max)
            && !config.plantedBugs.contains(.applyNewerDefinitionStripped)
        if standing == .newer && (!sameSchema || laterGeneration) { return .paused(table: record.table, remoteHash: record.schemaHash) }
        if standing == .older && !sameSchema && writtenUnderUnseenDefinition(record, table, writtenAs: writtenAs) {
            return .paused(table: record.table, remoteHash: record.schemaHash)
        }
        guard sameSchema || table.olderHashes.contains(record.schemaHash) || fits() || standing == .older else {
            if config.plantedBugs.contains(.ackSchemaMismatch) { return .consumed }
            return .paused(table: record.table, remoteHash: record.schemaHash)
        }
        let change: ResolvedChange
        do {
            // Renamed columns: as this node's own schema history saw them, and as the DDL's author recorded them.
            let renamed = sameSchema ? [:] : renames(of: record.table, table)
            change = try resolve(record, against: table.schema, strict: sameSchema, currentNameOf: renamed)
        } catch {
            try park(db, shard: shard, parkable(message, decoded, inBatch), reason: "\(error)", events: &events)
            return .consumed
        }

        if inSavepoint { try db.execute("SAVEPOINT harmonylite_apply", []) }  // cached statements: this runs once per message
        do {
            let won = try applyLWW(db, change)
            if won, writtenAs != nil, config.replicateDDL, !config.plantedBugs.contains(.renameKeepsRowsLocal) {
                // Written to the old name while the rename was on its way: a node where the old table was dropped
                // (not renamed) has lost it, so it is sent on under the new name.
                try ChangeCapture.logChange(db, table.schema, epoch: table.epoch, key: change.key, version: change.version,
                                            deleted: change.operation == .delete)
            }
            if inSavepoint { try db.execute("RELEASE harmonylite_apply", []) }
            events.append(.applied(shard: shard, sequence: message.sequence, table: record.table, version: record.version, won: won))
        } catch let error as SQLiteError where error.isConstraint || error.primaryCode == 20 /* SQLITE_MISMATCH */ {
            guard inSavepoint else { throw ConstraintFailedWithoutSavepoint() }
            try db.execute("ROLLBACK TO harmonylite_apply", [])
            try db.execute("RELEASE harmonylite_apply", [])
            try park(db, shard: shard, parkable(message, decoded, inBatch), reason: "cannot apply to \(quoteIdentifier(record.table)): \(error.message)", events: &events)
        }
        return .consumed
    }

    /// A row under an older definition that names a column this node never saw in any definition of the table:
    /// that definition (a concurrent rename that lost here, on another stream) has not arrived, and applying now
    /// would drop the value. It waits for it. Definitions of version zero were never sent; nothing to wait for.
    /// `writtenAs`: the name the row was sent to before a RENAME TO here; the columns that table had count as seen
    /// (the new name may since have taken another node's definition, without them).
    func writtenUnderUnseenDefinition(_ record: ChangeRecord, _ table: CapturedTable, writtenAs: String? = nil) -> Bool {
        guard !config.plantedBugs.contains(.applyUnseenDefinitionStripped), let theirs = record.definition,
              theirs.version != .zero, let state = tableStates[record.table] else { return false }
        let former = writtenAs.flatMap { tableStates[$0] }
        // The old name was dropped and made again here since the row's table was renamed away from it: a definition of
        // the row's generation under that name would be discarded on arrival, so waiting for one would be for good, and
        // the state that knew its columns is gone (harmonysim swarm seed 129). The row applies mapped.
        if let former, former.generation > theirs.generation, !config.plantedBugs.contains(.waitForAGoneGeneration) { return false }
        return record.row.contains { column in
            !table.schema.columns.contains(column.name) && state.columnRenames[column.name] == nil && !state.knownColumns.contains(column.name)
                && former?.knownColumns.contains(column.name) != true && former?.columnRenames[column.name] == nil
        }
    }

    /// Old -> current column names for rows under older schemas: with replicated DDL, the schema state's (what each
    /// DDL's author recorded, and losing renames' names); otherwise this node's schema history.
    func renames(of name: String, _ table: CapturedTable) -> [String: String] {
        if config.replicateDDL, let state = tableStates[name] { return state.columnRenames }
        return table.currentNameOf
    }

    /// A change from a schema this node does not know (not even in its history), whose every column this table has
    /// (same key): written
    /// before a column was added here (an older schema, even one this node's history lost to a -cleanup). It
    /// applies with the missing columns at their defaults, as a previous-schema change does. A change with a
    /// column this table lacks is from a newer schema and waits for this node's migration.
    static func fitsWithin(_ record: ChangeRecord, _ schema: TableSchema) -> Bool {
        guard record.primaryKey.map(\.name) == schema.primaryKey else { return false }
        return record.row.allSatisfy { schema.columns.contains($0.name) }
    }

    /// The message to park for one failing record: the record alone when it came in a batch (encoded only here,
    /// off the common path).
    func parkable(_ message: IncomingMessage, _ record: ChangeRecord, _ inBatch: Bool) -> IncomingMessage {
        guard inBatch, let alone = try? EnvelopeCodec.encode(record) else { return message }
        return IncomingMessage(sequence: message.sequence, payload: alone)
    }

    func park(_ db: Database, shard: Int, _ message: IncomingMessage, reason: String, events: inout [ReplicationEvent]) throws {
        precondition(!reason.isEmpty && db.isInTransaction, "a message is parked with its reason, inside the apply transaction")
        try db.execute("INSERT INTO \(quoteIdentifier(Bookkeeping.parkedTable)) (stream, seq, payload, error) VALUES (?, ?, ?, ?)",
                       [.text(router.streamName(shard: shard)), .integer(Int64(message.sequence)), .blob(message.payload), .text(reason)])
        events.append(.parked(shard: shard, sequence: message.sequence, reason: reason))
    }

    /// A change checked against the local schema, with its key in local key order.
    struct ResolvedChange {
        var table: TableSchema
        var operation: ChangeOperation
        var key: [DatabaseValue]
        var row: [ChangeRecord.Column]
        /// Local columns the sender's (previous) schema did not have: an upsert sets them to their default,
        /// as the sender's own row will read once it upgrades.
        var defaultedColumns: [(name: String, defaultSQL: String)] = []
        var version: RowVersion
        /// The row is exactly the local columns in local order, so the table's one shared statement set applies.
        var exactShape = false
    }

    struct ShapeMismatch: Error, CustomStringConvertible {
        var description: String
    }

    /// `currentNameOf` (old name -> current name): an older-schema change names renamed columns the old way.
    func resolve(_ original: ChangeRecord, against schema: TableSchema, strict: Bool, currentNameOf: [String: String] = [:]) throws -> ResolvedChange {
        var record = original
        if !currentNameOf.isEmpty {
            func rename(_ c: ChangeRecord.Column) -> ChangeRecord.Column { ChangeRecord.Column(currentNameOf[c.name] ?? c.name, c.value) }
            record.primaryKey = record.primaryKey.map(rename)
            record.row = record.row.map(rename)
        }
        if let exact = try resolveExactShape(record, against: schema) { return exact }
        let keyValues = Dictionary(record.primaryKey.map { ($0.name, $0.value) }, uniquingKeysWith: { a, _ in a })
        guard Set(keyValues.keys) == Set(schema.primaryKey) else {
            throw ShapeMismatch(description: "primary key columns \(record.primaryKey.map(\.name)) do not match \(schema.primaryKey) of \(quoteIdentifier(schema.name))")
        }
        let local = Set(schema.columns)
        var row = record.row
        if strict {
            if let unknown = row.first(where: { !local.contains($0.name) }) {
                throw ShapeMismatch(description: "column \(quoteIdentifier(unknown.name)) does not exist in \(quoteIdentifier(schema.name))")
            }
        } else {
            row = row.filter { local.contains($0.name) }  // previous schema: drop columns removed since
        }
        if record.operation == .upsert {
            let rowNames = Set(row.map(\.name))
            guard schema.primaryKey.allSatisfy(rowNames.contains) else {
                throw ShapeMismatch(description: "upsert row for \(quoteIdentifier(schema.name)) lacks key columns")
            }
            // The row's own key values must agree with the key it is filed under.
            for c in row where keyValues[c.name] != nil && keyValues[c.name] != c.value {
                throw ShapeMismatch(description: "key column \(quoteIdentifier(c.name)) disagrees between key and row")
            }
        }
        let sent = Set(row.map(\.name))
        let defaulted = strict || record.operation == .delete ? [] : zip(schema.columns, schema.defaults).filter { !sent.contains($0.0) }
        return ResolvedChange(table: schema, operation: record.operation,
                              key: schema.primaryKey.map { keyValues[$0]! }, row: row,
                              defaultedColumns: defaulted.map { (name: $0.0, defaultSQL: $0.1) }, version: record.version)
    }

    /// The common case, checked without building sets: the record carries exactly the local columns and key,
    /// in local order (what a sender with the same schema writes). Nil means "take the general path".
    func resolveExactShape(_ record: ChangeRecord, against schema: TableSchema) throws -> ResolvedChange? {
        guard record.primaryKey.count == schema.primaryKey.count else { return nil }
        for (c, name) in zip(record.primaryKey, schema.primaryKey) where c.name != name { return nil }
        switch record.operation {
        case .delete:
            guard record.row.isEmpty else { return nil }
        case .upsert:
            guard record.row.count == schema.columns.count else { return nil }
            for (c, name) in zip(record.row, schema.columns) where c.name != name { return nil }
            for k in record.primaryKey where !record.row.contains(where: { $0.name == k.name && $0.value == k.value }) {
                throw ShapeMismatch(description: "key column \(quoteIdentifier(k.name)) disagrees between key and row")
            }
        }
        return ResolvedChange(table: schema, operation: record.operation, key: record.primaryKey.map(\.value), row: record.row,
                              version: record.version, exactShape: true)
    }

    /// Applies the change only if its version is greater than the row's current version (including a
    /// tombstone or an unpublished local write). Returns whether it won.
    func applyLWW(_ db: Database, _ change: ResolvedChange) throws -> Bool {
        precondition(change.key.count == change.table.primaryKey.count, "change to \(change.table.name) with \(change.key.count) key values")
        precondition(db.isInTransaction, "a change applies only inside the apply (or restore) transaction")
        let sql = applySQL(change)
        let version: [DatabaseValue] = [.integer(change.version.hlc), .integer(change.version.node),
                                        .integer(change.operation == .delete ? 1 : 0)]
        if !config.plantedBugs.contains(.applyInArrivalOrder) && !config.plantedBugs.contains(.dropTombstones) {
            // One statement compares and records the version (SQLite counts no change when the DO UPDATE's WHERE
            // is false); the row is written only when it won. A failed write rolls the version back with it.
            try db.execute(sql.stampVersionIfNewer, change.key + version)
            guard db.changes > 0 else { return false }
            try db.execute(sql.write, change.operation == .delete ? change.key : change.row.map(\.value))
            return true
        }
        if let current = try db.query(sql.currentVersion, change.key).first,
           let hlc = current[0].int64, let node = current[1].int64,
           RowVersion(hlc: hlc, node: node) >= change.version,
           !config.plantedBugs.contains(.applyInArrivalOrder)
        {
            return false
        }
        try db.execute(sql.write, change.operation == .delete ? change.key : change.row.map(\.value))
        if change.operation == .delete && config.plantedBugs.contains(.dropTombstones) {
            try db.execute(sql.forgetVersion, change.key)
            return true
        }
        try db.execute(sql.stampVersion, change.key + version)
        return true
    }

    /// The statements one change needs, built once per table and column set (messages of one table
    /// almost always carry the same columns) instead of once per message.
    /// `columns` nil: the exact local shape, the key nearly every message has (no per-message column list to hash).
    struct ApplySQLKey: Hashable {
        var table: String
        var delete: Bool
        var columns: [String]?
    }

    struct ApplySQL {
        var currentVersion: String
        var write: String
        var stampVersion: String
        /// `stampVersion` only where the change's version is above the stored one (nothing stored wins too).
        var stampVersionIfNewer: String
        var forgetVersion: String
    }

    func applySQL(_ change: ResolvedChange) -> ApplySQL {
        let schema = change.table
        var key = ApplySQLKey(table: schema.name, delete: change.operation == .delete, columns: nil)
        if !change.exactShape {
            key.columns = change.row.map(\.name) + change.defaultedColumns.map { "=" + $0.name }
        }
        if let cached = applySQLCache[key] { return cached }
        let table = quoteIdentifier(schema.name)
        let versionTable = quoteIdentifier(Bookkeeping.versionTable(schema.name))
        let keyMatch = schema.versionKeyMatch
        let write: String
        switch change.operation {
        case .upsert:
            let names = change.row.map { quoteIdentifier($0.name) } + change.defaultedColumns.map { quoteIdentifier($0.name) }
            // Defaults come from the local schema (constants, as ADD COLUMN requires), never from the message.
            let placeholders = (Array(repeating: "?", count: change.row.count) + change.defaultedColumns.map { "(\($0.defaultSQL))" })
                .joined(separator: ", ")
            let keyList = schema.primaryKey.map(quoteIdentifier).joined(separator: ", ")
            let updates = (change.row.map(\.name) + change.defaultedColumns.map(\.name)).filter { !schema.primaryKey.contains($0) }
                .map { "\(quoteIdentifier($0)) = excluded.\(quoteIdentifier($0))" }
            let onConflict = updates.isEmpty ? "DO NOTHING" : "DO UPDATE SET " + updates.joined(separator: ", ")
            write = "INSERT INTO \(table) (\(names.joined(separator: ", "))) VALUES (\(placeholders)) ON CONFLICT (\(keyList)) \(onConflict)"
        case .delete:
            write = "DELETE FROM \(table) WHERE \(schema.rowKeyMatch)"
        }
        let keyNames = schema.primaryKey.map { quoteIdentifier(Bookkeeping.keyColumn($0)) }.joined(separator: ", ")
        let keyPlaceholders = Array(repeating: "?", count: schema.primaryKey.count).joined(separator: ", ")
        let sql = ApplySQL(
            currentVersion: "SELECT hlc, node FROM \(versionTable) WHERE \(keyMatch)",
            write: write,
            stampVersion: """
                INSERT INTO \(versionTable) (\(keyNames), hlc, node, deleted) VALUES (\(keyPlaceholders), ?, ?, ?)
                ON CONFLICT DO UPDATE SET hlc = excluded.hlc, node = excluded.node, deleted = excluded.deleted
                """,
            stampVersionIfNewer: """
                INSERT INTO \(versionTable) (\(keyNames), hlc, node, deleted) VALUES (\(keyPlaceholders), ?, ?, ?)
                ON CONFLICT DO UPDATE SET hlc = excluded.hlc, node = excluded.node, deleted = excluded.deleted
                WHERE (excluded.hlc, excluded.node) > (\(versionTable).hlc, \(versionTable).node)
                """,
            forgetVersion: "DELETE FROM \(versionTable) WHERE \(keyMatch)")
        applySQLCache[key] = sql
        return sql
    }
}
