import HarmonyCodec
import HarmonySQLite

/// Repairing a hole in the log that no snapshot can fill.
///
/// A node behind a stream's first message needs a snapshot taken after that point. When every node is behind at
/// once (retention shorter than an outage, the only snapshot older than the log's start), no node can take one and
/// every node would wait for good. The messages that fell out of the log are not lost, though: each row's latest
/// state lives in the database of the node that wrote it (and of every node that applied it). So after waiting
/// `NodeConfig.holeRepairAfterMs` for a snapshot, a node
/// 1. asks every stream's range afresh, and moves its checkpoint to just before each stream's first message (the
///    hole is skipped, and said so);
/// 2. in the same transaction, queues every row, tombstone and schema definition it has to be sent again (with the
///    versions they have: another node's request may have been in the hole), and a repair request, which go out
///    once it has read up to where the streams ended at the repair;
/// 3. every other node answers the request by sending everything it has again, once.
/// Last-writer-wins makes the copies harmless where a node already has them and fills every hole: each node ends
/// with every row any node still holds. The cost is a copy of every node's tables on the log, so retention must
/// hold that much.
extension ReplicationNode {
    static let repairSchemaHash = "repair-1"

    /// When this node has waited long enough for a snapshot, asks every stream's range afresh; the hole is repaired
    /// once all have answered (`streamStateArrived`), so the skip ends where each stream starts now, not where it
    /// started at the last look (the log keeps moving). True when the repair is under way.
    func repairHoleIfDue() throws -> Bool {
        guard restoreNeeded, isRunning, let after = config.holeRepairAfterMs, let since = restoreNeededSinceMs,
              env.clock.nowMs - since >= after else { return false }
        holeRepairAnswers = []
        for shard in router.shards {
            streamStateRequested.remove(shard)  // an older request's answer would be stale
            requestStreamState(shard)
        }
        env.clock.schedule(.restoreRetry, afterMs: config.restoreRetryMs)  // if the log does not answer
        return true
    }

    /// One stream's fresh range for a repair under way; the last one repairs.
    func holeRepairStateArrived(shard: Int) {
        guard holeRepairAnswers != nil else { return }
        holeRepairAnswers!.insert(shard)
        guard router.shards.allSatisfy({ holeRepairAnswers!.contains($0) }) else { return }
        holeRepairAnswers = nil
        do {
            try repairHole()
        } catch {
            // A busy or failing disk: the next retry asks again.
            env.events?.record(.restoreFailed(reason: "the hole in the log could not be repaired yet: \(error)"))
        }
    }

    func repairHole() throws {
        guard restoreNeeded, isRunning, let since = restoreNeededSinceMs else { return }
        let db = requireDatabase()
        var skipped: [(shard: Int, from: UInt64, to: UInt64)] = []
        try writeTransaction(db) {
            for shard in router.shards {
                let at = checkpoint(shard), first = streamStates[shard]!.firstSequence
                guard at + 1 < first else { continue }
                try saveCheckpoint(db, shard: shard, sequence: first - 1)
                skipped.append((shard, at + 1, first - 1))
            }
            if !config.plantedBugs.contains(.holeRepairWithoutResend) {
                try sendEverythingAgain(db)
                try queueRequest(db, Bookkeeping.repairRequest)
            }
        }
        for s in skipped { checkpoints[s.shard] = s.to }
        forgetStreamPositions()  // the log may have been made again: its sequences start over
        // What it queued goes out once it has read up to where the streams end now: sent at once, it would push
        // out of a short log the very messages it is about to read, and the node would be behind again.
        publishHeldUntil = Dictionary(uniqueKeysWithValues: router.shards.map { ($0, streamStates[$0]!.lastSequence) })
        env.events?.record(.holeRepaired(skipped: skipped.map { "\(router.streamName(shard: $0.shard)) \($0.from)...\($0.to)" },
                                         waitedMs: env.clock.nowMs - since))
        try resumeAfterHole()
    }

    /// A stream deleted and made again (its last message before this node's checkpoint): every message on it would be
    /// taken for one already applied, and the old stream's are gone. As a hole repair does, the checkpoint moves to
    /// just before the stream's first message, and every row this node has goes out again with a request that every
    /// other node send its own (they may have read the old stream further, or not as far).
    func streamStartedOver(shard: Int, checkpoint at: UInt64, state: StreamState) throws {
        let db = requireDatabase()
        let to = max(state.firstSequence, 1) - 1
        try writeTransaction(db) {
            try saveCheckpoint(db, shard: shard, sequence: to)
            try sendEverythingAgain(db)
            try queueRequest(db, Bookkeeping.repairRequest)
        }
        checkpoints[shard] = to
        forgetStreamPositions()
        // As after a hole repair: what it queued goes out once this node has read the new stream up to where it ends
        // now, or on a short stream the resend would push out the messages it is about to read.
        if !config.plantedBugs.contains(.startOverResendNotHeld) {
            var until = publishHeldUntil ?? [:]
            until[shard] = max(until[shard] ?? 0, state.lastSequence)
            publishHeldUntil = until
        }
        env.events?.record(.streamStartedOver(shard: shard, checkpoint: at, lastSequence: state.lastSequence))
        recreateConsumer(shard: shard)
    }

    /// True while a repair's resend waits for this node to catch up (see `repairHole`); clears itself once it has.
    func publishingHeldForRepair() -> Bool {
        guard let until = publishHeldUntil else { return false }
        if until.allSatisfy({ checkpoint($0.key) >= $0.value }) {
            publishHeldUntil = nil
            return false
        }
        return true
    }

    /// Queues every row and tombstone of every captured table, and every schema definition, for sending again.
    func sendEverythingAgain(_ db: Database) throws {
        for name in captured.keys.sorted() {
            guard let table = captured[name] else { continue }
            try ChangeCapture.sendRowsAgain(db, table.schema, epoch: table.epoch)
        }
        guard config.replicateDDL, try db.tableExists(Bookkeeping.ddlTable) else { return }
        try db.execute("""
            INSERT INTO \(quoteIdentifier(Bookkeeping.globalLog)) (change_table_id, table_name)
            SELECT id, ? FROM \(SchemaObjects.table) WHERE hlc <> 0 OR node <> 0 ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, id
            """, [.text(Bookkeeping.ddlTable)])
        definitionsToPublish = true
    }

    /// Queues a request to every node (`Bookkeeping.repairRequest` or `.definitionRequest`), keyed by the clock
    /// reading it takes, inside the caller's transaction.
    func queueRequest(_ db: Database, _ kind: String) throws {
        let request = try SchemaObjects.nextVersion(db)
        try db.execute("INSERT INTO \(quoteIdentifier(Bookkeeping.globalLog)) (change_table_id, table_name) VALUES (?, ?)",
                       [.integer(request.hlc), .text(kind)])
    }

    /// The message for a queued request (`changeID`: the request's clock reading); nil for other log entries.
    func requestRecord(_ kind: String, changeID: Int64) -> ChangeRecord? {
        let hash: String
        switch kind {
        case Bookkeeping.repairRequest: hash = Self.repairSchemaHash
        case Bookkeeping.definitionRequest: hash = Self.definitionRequestSchemaHash
        default: return nil
        }
        let key = [ChangeRecord.Column("node", .integer(config.nodeID))]
        return ChangeRecord(originNode: config.nodeID, table: kind, operation: .upsert, primaryKey: key,
                            row: key, version: RowVersion(hlc: changeID, node: config.nodeID), schemaHash: hash)
    }

    /// Another node repaired a hole: this node sends what it has once, inside the apply transaction (a redelivered
    /// request sends it again, which costs but changes nothing).
    func applyRepairRequest(_ db: Database, shard: Int, _ message: IncomingMessage, _ record: ChangeRecord,
                            events: inout [ReplicationEvent]) throws -> ApplyOutcome {
        guard record.originNode != config.nodeID else { return .consumed }  // it sent its own when it asked
        try sendEverythingAgain(db)
        events.append(.repairRequested(shard: shard, sequence: message.sequence, by: record.originNode))
        return .consumed
    }
}
