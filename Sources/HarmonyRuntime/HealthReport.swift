import Foundation
import HarmonyCore

/// When each kind of progress last happened, kept from the core's events on the node's queue, so `/health` can
/// tell a node that is merely quiet from one that cannot move.
struct ProgressWatch: Sendable {
    /// Per shard: when its checkpoint last moved (or the node started).
    var lastProgressMs: [Int: Int64] = [:]
    /// Per shard: when the first delivery since the checkpoint last moved reached the core. A node quiet for an hour
    /// has been stuck since its next message came, not for the hour.
    var deliveredSinceProgressMs: [Int: Int64] = [:]
    /// Per shard: the highest sequence delivered to the core. The stream holds at least that much, also while the
    /// range the node last asked for is older (an application's long transaction keeps the answer queued behind
    /// applies that wait for its lock, and /health said "stream_last": 0 with ten messages waiting).
    var highestDelivered: [Int: UInt64] = [:]
    /// Per shard: why the last try to apply failed, until the checkpoint moves.
    var lastApplyFailure: [Int: String] = [:]
    /// Per shard: since when it waits for a schema this node does not have.
    var pausedSinceMs: [Int: Int64] = [:]
    /// Since when publishes fail without one succeeding.
    var publishFailingSinceMs: Int64?
    /// Since when the node waits for a snapshot, and why the last attempt failed.
    var restoreNeededSinceMs: Int64?
    var lastRestoreFailure: String?
    /// Since when a replicated DDL has been refused here with none applied after it, and SQLite's last reason.
    var schemaRefusedSinceMs: Int64?
    var lastSchemaRefusal: String?
    /// Since when an index or trigger waits for its table's definition with no DDL applied after it, and when DDL
    /// was last applied (an object may still wait after that, for another table).
    var schemaWaitingSinceMs: Int64?
    var lastSchemaAppliedMs: Int64?
    /// When local writes were last stamped: while a bulk import is stamped, that is the progress deliveries wait on.
    var lastStampMs: Int64?
    /// Since when the core's own writes (stamping local writes, marking acknowledged ones published) fail with none
    /// committed after, and the last reason: local writes then wait, unstamped or unmarked.
    var ownWritesFailingSinceMs: Int64?
    var lastOwnWriteFailure: String?

    /// Messages of `shard` up to `sequence` were handed to the core.
    mutating func delivered(shard: Int, through sequence: UInt64, nowMs: Int64) {
        if deliveredSinceProgressMs[shard] == nil { deliveredSinceProgressMs[shard] = nowMs }
        highestDelivered[shard] = max(highestDelivered[shard] ?? 0, sequence)
    }

    /// `shard`'s checkpoint moved: the deliveries waiting since are behind it.
    mutating func moved(shard: Int, nowMs: Int64) {
        lastProgressMs[shard] = nowMs
        deliveredSinceProgressMs[shard] = nil
        lastApplyFailure[shard] = nil
    }

    /// Since when `shard` has waited without its checkpoint moving: from its first delivery since it last moved, or
    /// (no delivery reached the core) from that move.
    func stalledSinceMs(shard: Int, nowMs: Int64) -> Int64 {
        deliveredSinceProgressMs[shard] ?? lastProgressMs[shard] ?? nowMs
    }

    mutating func record(_ event: ReplicationEvent, nowMs: Int64) {
        switch event {
        case .applied(let shard, _, _, _, _), .duplicate(let shard, _), .parked(let shard, _, _), .echoesConsumed(let shard, _):
            moved(shard: shard, nowMs: nowMs)
        case .schemaPaused(let shard, _, _, _):
            if pausedSinceMs[shard] == nil { pausedSinceMs[shard] = nowMs }
        case .schemaResumed(let shard):
            pausedSinceMs[shard] = nil
            moved(shard: shard, nowMs: nowMs)
        case .publishFailed:
            if publishFailingSinceMs == nil { publishFailingSinceMs = nowMs }
        case .markPublishedFailed(let count, let error, _):
            // The log has them; this database could not record it (an application's lock, a full disk). Stamping
            // waits behind that mark, so it is the same failure as a stamp's, not a publish's.
            if ownWritesFailingSinceMs == nil { ownWritesFailingSinceMs = nowMs }
            lastOwnWriteFailure = "marking \(count) acknowledged change(s) published failed: \(error)"
        case .published:
            publishFailingSinceMs = nil
        case .behindLogStart:
            if restoreNeededSinceMs == nil { restoreNeededSinceMs = nowMs }
        case .restoreFailed(let reason):
            lastRestoreFailure = reason
        case .schemaChangeFailed(_, _, let object, let error):
            if schemaRefusedSinceMs == nil { schemaRefusedSinceMs = nowMs }
            lastSchemaRefusal = "\(object): \(error)"
        case .schemaChangeWaiting:
            if schemaWaitingSinceMs == nil { schemaWaitingSinceMs = nowMs }
        case .schemaChangeApplied:
            schemaRefusedSinceMs = nil  // refused ones are retried after each applied one: give them that chance
            schemaWaitingSinceMs = nil
            lastSchemaAppliedMs = nowMs
        case .localChangesStamped:
            lastStampMs = nowMs
            ownWritesFailingSinceMs = nil
            lastOwnWriteFailure = nil
        case .ownWritesResumed:
            ownWritesFailingSinceMs = nil
            lastOwnWriteFailure = nil
        case .applyBatchFailed(let shard, let error):
            lastApplyFailure[shard] = error
        case .stampFailed(let queued, let error, _):
            if ownWritesFailingSinceMs == nil { ownWritesFailingSinceMs = nowMs }
            lastOwnWriteFailure = "stamping \(queued) queued local write(s) failed: \(error)"
        case .restored, .holeRepaired, .streamStartedOver:
            restoreNeededSinceMs = nil
            lastRestoreFailure = nil
            for shard in lastProgressMs.keys { lastProgressMs[shard] = nowMs }
            deliveredSinceProgressMs.removeAll()
            highestDelivered.removeAll()  // the log may have been made again: its sequences start over
            lastApplyFailure.removeAll()
        default:
            break
        }
    }
}

/// `/health`: 200 while the node makes progress; 503, with the reason, once it has stopped for `stallMs` or needs
/// something it cannot get. A load balancer or a systemd watchdog can trust the status; the JSON body says why,
/// shard by shard.
struct HealthReport: Sendable {
    struct ShardState: Sendable, Equatable {
        var shard: Int
        var checkpoint: UInt64
        /// The stream's last sequence as last reported (nil: not known yet).
        var streamLast: UInt64?
        var state: String
        var seconds: Int64
    }

    var healthy: Bool
    var reasons: [String]
    var shards: [ShardState]
    var pendingChanges: Int64

    static func evaluate(_ r: NodeReadings, watch: ProgressWatch, nowMs: Int64, stallMs: Int64) -> HealthReport {
        var reasons: [String] = []
        if !r.running { reasons.append(r.coreFailure ?? "the replication core is not running") }
        if !r.natsConnected { reasons.append("not connected to NATS") }
        if r.restoreNeeded {
            let waited = watch.restoreNeededSinceMs.map { nowMs - $0 } ?? 0
            if !r.snapshotsEnabled {
                reasons.append("this node is behind the log's start and needs a snapshot, but [snapshot] enabled = false: "
                               + "enable snapshots (on this node and one that can take them); otherwise, after "
                               + "replication_log.hole_repair_after_seconds, every node sends its rows again to fill the hole")
            } else if waited >= stallMs {
                let repair = r.holeRepairAfterMs.map { "; without one, the hole is repaired in \(max($0 - waited, 0) / 1000) s (it is skipped and every node sends its rows again)" } ?? ""
                reasons.append("waiting \(waited / 1000) s for a snapshot it can restore: \(watch.lastRestoreFailure ?? "none answered yet")\(repair)")
            }
        }
        var shards: [ShardState] = []
        for shard in r.checkpoints.keys.sorted() {
            let checkpoint = r.checkpoints[shard] ?? 0
            // As last reported (at subscribe and on the cleanup timer): the node has applied up to its checkpoint and
            // was delivered up to `highestDelivered`, so the stream holds at least that much, whatever an older report said.
            let delivered = watch.highestDelivered[shard]
            let last = (r.streamLasts[shard] ?? delivered).map { max($0, checkpoint, delivered ?? 0) }
            var state = ShardState(shard: shard, checkpoint: checkpoint, streamLast: last, state: "ok", seconds: 0)
            if !r.replicate {
                state.state = "not replicating"
            } else if r.restoreNeeded {
                state.state = "waiting for a snapshot"
            } else if let since = watch.pausedSinceMs[shard], r.pausedShards.contains(shard) {
                state.state = "paused on schema"
                state.seconds = (nowMs - since) / 1000
                if nowMs - since >= stallMs {
                    reasons.append("shard \(shard) has waited \(state.seconds) s at message \(checkpoint + 1) for a schema this node does not have: "
                                   + "run the same schema change here")
                }
            } else if let queued = r.bulkImportQueued, let last, last > checkpoint {
                // Held back on purpose: applying must wait until every local write has its version. Stuck only if
                // the stamping itself stopped.
                let idleMs = nowMs - max(watch.lastStampMs ?? 0, watch.lastProgressMs[shard] ?? nowMs)
                state.state = "waiting for a bulk import to be stamped"
                state.seconds = idleMs / 1000
                if idleMs >= stallMs {
                    reasons.append("shard \(shard) waits at message \(checkpoint) of \(last) until \(queued) queued local writes (a bulk import) "
                                   + "are stamped, and none has been stamped for \(state.seconds) s: see the log for why (a long transaction holding "
                                   + "SQLite's write lock, a full disk)")
                }
            } else if let last, last > checkpoint {
                let idleMs = nowMs - watch.stalledSinceMs(shard: shard, nowMs: nowMs)
                state.state = "catching up"
                state.seconds = idleMs / 1000
                if idleMs >= stallMs {
                    state.state = "stalled"
                    let why = watch.lastApplyFailure[shard].map { "; the last try to apply failed: \($0)" } ?? ""
                    reasons.append("shard \(shard) has not moved for \(state.seconds) s at message \(checkpoint) of \(last)\(why)")
                }
            }
            shards.append(state)
        }
        if !r.divergedSchemaObjects.isEmpty, nowMs - (watch.schemaRefusedSinceMs ?? 0) >= stallMs {
            let objects = r.divergedSchemaObjects.prefix(5).joined(separator: ", ") + (r.divergedSchemaObjects.count > 5 ? ", ..." : "")
            reasons.append("this node's schema differs from the cluster's for \(r.divergedSchemaObjects.count) object(s) (\(objects)): SQLite refused "
                           + "the replicated DDL here\(watch.lastSchemaRefusal.map { " (last: \($0))" } ?? ""). Make each object match another "
                           + "node's sqlite_schema by hand, or run the DDL again on any node")
        }
        let waitingSince = watch.schemaWaitingSinceMs ?? watch.lastSchemaAppliedMs ?? 0
        if !r.schemaObjectsWaitingForTheirTable.isEmpty, nowMs - waitingSince >= stallMs {
            let objects = r.schemaObjectsWaitingForTheirTable.prefix(5).joined(separator: ", ") + (r.schemaObjectsWaitingForTheirTable.count > 5 ? ", ..." : "")
            reasons.append("\(r.schemaObjectsWaitingForTheirTable.count) replicated index(es) or trigger(s) wait for a table whose definition has "
                           + "not reached this node (\(objects)). If that table exists only on the node that made them (created there "
                           + "before its sidecar first ran, with no rows, so nothing asks for it), create it here as it is there")
        }
        if let since = watch.ownWritesFailingSinceMs, r.pendingChanges > 0, nowMs - since >= stallMs {
            reasons.append("local writes have not been stamped or marked published for \((nowMs - since) / 1000) s, so they wait to be sent "
                           + "(\(watch.lastOwnWriteFailure ?? "no reason given")): another connection holds SQLite's write lock (a long "
                           + "transaction), or the disk is full or failing")
        }
        if let since = watch.publishFailingSinceMs, r.pendingChanges > 0, nowMs - since >= stallMs {
            reasons.append("publishes have failed for \((nowMs - since) / 1000) s; \(r.pendingChanges) local change(s) wait to be sent")
        }
        return HealthReport(healthy: reasons.isEmpty, reasons: reasons, shards: shards, pendingChanges: r.pendingChanges)
    }

    /// The JSON body: status, reasons, and each shard's state.
    var json: String {
        func quoted(_ s: String) -> String {
            let data = try? JSONSerialization.data(withJSONObject: [s], options: [])
            return data.map { String(decoding: $0.dropFirst().dropLast(), as: UTF8.self) } ?? "\"\""
        }
        let shardObjects = shards.map { s in
            "{\"shard\": \(s.shard), \"checkpoint\": \(s.checkpoint), \"stream_last\": \(s.streamLast.map(String.init) ?? "null"), "
                + "\"state\": \(quoted(s.state)), \"seconds\": \(s.seconds)}"
        }
        return "{\"status\": \(quoted(healthy ? "ok" : "unhealthy")), \"reasons\": [\(reasons.map(quoted).joined(separator: ", "))], "
            + "\"pending_changes\": \(pendingChanges), \"shards\": [\(shardObjects.joined(separator: ", "))]}\n"
    }
}
