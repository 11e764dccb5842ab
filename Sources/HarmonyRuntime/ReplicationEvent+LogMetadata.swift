import HarmonyCore
import Logging

extension ReplicationEvent {
    /// The sentence's facts as log fields (`shard`, `table`, `sequence`, `reason`...), so JSON logs can be filtered
    /// and counted without parsing text; integers stay numbers.
    var logMetadata: Logger.Metadata {
        func n<T: BinaryInteger & Sendable>(_ v: T) -> Logger.MetadataValue { .stringConvertible(Int64(v)) }
        switch self {
        case .published(let count): return ["event": "published", "count": n(count)]
        case .publishFailed(let token): return ["event": "publish_failed", "change": n(token)]
        case .markPublishedFailed(let count, let error, let sentAgain):
            return ["event": "mark_published_failed", "count": n(count), "reason": .string(error), "sent_again": .string("\(sentAgain)")]
        case .ownWritesResumed(let failedForMs): return ["event": "own_writes_resumed", "failed_ms": n(failedForMs)]
        case .applied(let shard, let sequence, let table, let version, let won):
            return ["event": "applied", "shard": n(shard), "sequence": n(sequence), "table": .string(table),
                    "version": .string(version.description), "result": .string(won ? "won" : "lost")]
        case .duplicate(let shard, let sequence): return ["event": "duplicate", "shard": n(shard), "sequence": n(sequence)]
        case .echoesConsumed(let shard, let messages): return ["event": "echoes_consumed", "shard": n(shard), "messages": n(messages)]
        case .hintApplied(let shard, let sequence, let changes, let won):
            return ["event": "hint_applied", "shard": n(shard), "sequence": n(sequence), "changes": n(changes), "won": n(won.count)]
        case .discarded(let shard, let sequence, let table):
            return ["event": "discarded", "shard": n(shard), "sequence": n(sequence), "table": .string(table)]
        case .schemaChangeApplied(let shard, let sequence, let object, let dropped, let version):
            return ["event": "schema_change_applied", "shard": n(shard), "sequence": n(sequence), "object": .string(object),
                    "dropped": .string(dropped ? "true" : "false"), "version": .string(version.description)]
        case .schemaChangeFailed(let shard, let sequence, let object, let error):
            return ["event": "schema_change_failed", "shard": n(shard), "sequence": n(sequence), "object": .string(object), "reason": .string(error)]
        case .schemaChangeWaiting(let shard, let sequence, let object, let table):
            return ["event": "schema_change_waiting", "shard": n(shard), "sequence": n(sequence), "object": .string(object), "table": .string(table)]
        case .parked(let shard, let sequence, let reason):
            return ["event": "parked", "shard": n(shard), "sequence": n(sequence), "reason": .string(reason)]
        case .schemaPaused(let shard, let sequence, let table, let remoteHash):
            return ["event": "schema_paused", "shard": n(shard), "sequence": n(sequence), "table": .string(table), "schema": .string(remoteHash)]
        case .schemaResumed(let shard): return ["event": "schema_resumed", "shard": n(shard)]
        case .gap(let shard, let expected, let got): return ["event": "gap", "shard": n(shard), "expected": n(expected), "sequence": n(got)]
        case .streamStateUnknown(let shard): return ["event": "stream_range_unknown", "shard": n(shard)]
        case .deliveryStalled(let shard, let checkpoint, let last, let forMs, let laterDelivered, let sentBackHere):
            return ["event": "delivery_stalled", "shard": n(shard), "checkpoint": n(checkpoint), "last_sequence": n(last), "stalled_ms": n(forMs),
                    "later_delivered": .stringConvertible(laterDelivered), "sent_back_here": .stringConvertible(sentBackHere)]
        case .behindLogStart(let shard, let checkpoint, let first):
            return ["event": "behind_log_start", "shard": n(shard), "checkpoint": n(checkpoint), "first_sequence": n(first)]
        case .restoreRequested: return ["event": "restore_requested"]
        case .restoreFailed(let reason): return ["event": "restore_failed", "reason": .string(reason)]
        case .restored(_, let rows, let tables): return ["event": "restored", "rows": n(rows), "tables": n(tables)]
        case .streamStartedOver(let shard, let checkpoint, let lastSequence):
            return ["event": "stream_started_over", "shard": n(shard), "checkpoint": n(checkpoint), "last_sequence": n(lastSequence)]
        case .holeRepaired(let skipped, let waitedMs): return ["event": "hole_repaired", "skipped": .string(skipped.joined(separator: ", ")), "waited_ms": n(waitedMs)]
        case .repairRequested(let shard, let sequence, let by): return ["event": "repair_requested", "shard": n(shard), "seq": n(sequence), "by": n(by)]
        case .preExistingDefinitionsAsked(let shard, let sequence, let table):
            return ["event": "pre_existing_definitions_asked", "shard": n(shard), "seq": n(sequence), "table": .string(table)]
        case .preExistingDefinitionsSent(let shard, let sequence, let by, let count):
            return ["event": "pre_existing_definitions_sent", "shard": n(shard), "seq": n(sequence), "by": n(by), "count": n(count)]
        case .snapshotTaken(let name): return ["event": "snapshot_taken", "snapshot": .string(name)]
        case .snapshotSkipped(let reason): return ["event": "snapshot_skipped", "reason": .string(reason)]
        case .snapshotFailed(let reason): return ["event": "snapshot_failed", "reason": .string(reason)]
        case .applyBatchFailed(let shard, let error): return ["event": "apply_batch_failed", "shard": n(shard), "reason": .string(error)]
        case .nullKeyNotReplicated(let table, let key, let rows, let atInstall):
            return ["event": "null_key_not_replicated", "table": .string(table), "key": .string(key.joined(separator: ", ")), "rows": n(rows),
                    "found_at_install": .string(atInstall ? "true" : "false")]
        case .changeRefused(let table, let key, let bytes, let limit):
            return ["event": "change_refused", "table": .string(table), "key": .string(key), "bytes": n(bytes), "limit": n(limit)]
        case .cleanedUp(let rows): return ["event": "cleaned_up", "rows": n(rows)]
        case .stampingBulkImport(let queued): return ["event": "stamping_bulk_import", "queued": n(queued)]
        case .sendingWaitsForApplying(let shard, let checkpoint, let reach, let maxEntries):
            return ["event": "sending_waits_for_applying", "shard": n(shard), "checkpoint": n(checkpoint), "reach": n(reach),
                    "max_entries": n(maxEntries)]
        case .sentBackAskedAgain(let shard, let from, let afterStamping):
            return ["event": "sent_back_asked_again", "shard": n(shard), "from": n(from), "after_stamping": .stringConvertible(afterStamping)]
        case .consumerLost(let shard, let from): return ["event": "consumer_lost", "shard": n(shard), "from": n(from)]
        case .cleanupFailed(let error, let retryInMs): return ["event": "cleanup_failed", "reason": .string(error), "retry_in_ms": n(retryInMs)]
        case .stampFailed(let queued, let error, let retryInMs):
            return ["event": "stamp_failed", "queued": n(queued), "reason": .string(error), "retry_in_ms": n(retryInMs)]
        case .localChangesStamped(let stamped): return ["event": "local_changes_stamped", "changes": n(stamped.count)]
        case .sentAheadOfStamp(let versions): return ["event": "sent_ahead_of_stamp", "changes": n(versions.count)]
        case .captureInstalled(let tables): return ["event": "capture_installed", "tables": n(tables)]
        case .tableSkipped(let table, let reason): return ["event": "table_skipped", "table": .string(table), "reason": .string(reason)]
        case .definitionDroppedValues(let table, let columns, let rows):
            return ["event": "definition_dropped_values", "table": .string(table), "columns": .string(columns.joined(separator: ",")), "rows": .stringConvertible(rows)]
        }
    }
}
