import HarmonySQLite
import HarmonyCodec

/// Events as sentences an operator can act on, for logs and traces (never a Swift enum dump).
extension ReplicationEvent: CustomStringConvertible {
    public var description: String {
        switch self {
        case .published(let count):
            return "published \(count) change(s)"
        case .publishFailed(let token):
            return "publishing change \(token) failed or timed out; it is sent again after a backoff"
        case .markPublishedFailed(let count, let error, let sentAgain):
            return "the log acknowledged \(count) change(s) but marking them published failed (\(error)); "
                + (sentAgain ? "they are sent again after a backoff" : "the mark is tried again until the write lock is free, and local writes wait to be stamped meanwhile")
        case .ownWritesResumed(let failedForMs):
            return "this node writes to its database again, \(failedForMs / 1000) s after stamping or marking published first failed; queued local writes are stamped and sent"
        case .applied(let shard, let sequence, let table, let version, let won):
            return "shard \(shard) message \(sequence): \(won ? "applied" : "skipped (the row already has a newer version)") change \(version) to \(quoteIdentifier(table))"
        case .duplicate(let shard, let sequence):
            return "shard \(shard) message \(sequence) was already applied; acknowledged again"
        case .hintApplied(let shard, let sequence, let changes, let won):
            return "shard \(shard) message \(sequence) applied ahead of its turn (a hint): \(won.count) of \(changes) change(s) won; its in-order copy will find them applied"
        case .nullKeyNotReplicated(let table, let key, let rows, let atInstall):
            let columns = key.map(quoteIdentifier).joined(separator: ", ")
            return "\(rows) \(atInstall ? "row(s) found" : "write(s)") in \(quoteIdentifier(table)) with NULL in the primary key (\(columns)) \(atInstall ? "are" : "were") not replicated and stay on this node only: SQLite allows NULL in a rowid table's key, but no other node could find such a row by it. Declare the key columns NOT NULL and give these rows a key"
        case .changeRefused(let table, let key, let bytes, let limit):
            return "a change to \(quoteIdentifier(table)) (\(key)) is \(bytes) bytes, above max_row_bytes or the largest change this node sends (\(limit) bytes; with replication_log.max_entries set, what half that many messages hold, since all of a row's parts must stay on the stream): it is not published and was parked in \(Bookkeeping.parkedTable); raise that limit and run -parked-retry, or -parked-discard it"
        case .discarded(let shard, let sequence, let table):
            return "shard \(shard) message \(sequence): a change to \(quoteIdentifier(table)), which was dropped on this node, was discarded (another node still writes to it)"
        case .schemaChangeApplied(let shard, let sequence, let object, let dropped, let version):
            return "shard \(shard) message \(sequence): another node's DDL \(dropped ? "dropping" : "defining") \(object) (version \(version)) was applied"
        case .schemaChangeFailed(let shard, let sequence, let object, let error):
            return "shard \(shard) message \(sequence): another node's DDL for \(object) could not be run here (\(error)); this node's \(object) now differs from the cluster's. Fix it by hand to match the other nodes (sqlite_schema), or run the DDL again on any node"
        case .schemaChangeWaiting(let shard, let sequence, let object, let table):
            return "shard \(shard) message \(sequence): another node's DDL for \(object) was made on a version of table \(quoteIdentifier(table)) that has not arrived here yet; it is made when that table's definition arrives"
        case .parked(let shard, let sequence, let reason):
            return "shard \(shard) message \(sequence) could not be applied and was parked in \(Bookkeeping.parkedTable): \(reason)"
        case .schemaPaused(let shard, let sequence, let table, let remoteHash):
            return "shard \(shard) paused at message \(sequence): its \(quoteIdentifier(table)) has schema \(remoteHash), which this node does not have yet; it resumes once this node's schema matches"
        case .schemaResumed(let shard):
            return "shard \(shard) resumed: this node's schema matches again"
        case .gap(let shard, let expected, let got):
            return "shard \(shard) delivered message \(got) while \(expected) is next; held back, and the stream's range is checked"
        case .streamStateUnknown(let shard):
            return "shard \(shard): the log could not say which messages its stream holds; asked again later"
        case .deliveryStalled(let shard, let checkpoint, let lastSequence, let forMs, false, _):
            return "shard \(shard): nothing applied past message \(checkpoint) for \(forMs / 1000) s while the stream holds up to \(lastSequence); recreating this node's consumer from \(checkpoint + 1) (another process running with this node_id, or a lost consumer, takes deliveries away)"
        case .deliveryStalled(let shard, let checkpoint, _, let forMs, true, true):
            // Seen after a million-row import on nats-server 2.9: a redelivery that finds no pull request waiting for
            // it (the one it was meant for ended, or ran out of max_bytes) is put back only after the ack wait.
            return "shard \(shard): message \(checkpoint + 1), which this node sent back to the log for later, has not come back for \(Double(forMs) / 1000) s while later ones did; recreating this node's consumer from it (the server can drop a redelivery that finds no fetch waiting for it, and would send it again only after the 30 s ack wait)"
        case .deliveryStalled(let shard, let checkpoint, _, let forMs, true, false):
            return "shard \(shard): message \(checkpoint + 1) never arrived while later ones did, for \(Double(forMs) / 1000) s; recreating this node's consumer from it (its delivery was lost when a connection dropped, or another process running with this node_id took it)"
        case .behindLogStart(let shard, let checkpoint, let firstSequence):
            return "shard \(shard): this node applied up to message \(checkpoint) but the stream now starts at \(firstSequence); it needs a snapshot"
        case .restoreRequested:
            return "asking the snapshot store for the newest snapshot"
        case .restoreFailed(let reason):
            return "no snapshot restored: \(reason); asking again later"
        case .restored(let sequences, let rows, let tables):
            return "restored a snapshot: \(rows) row(s) in \(tables) table(s) replaced this node's; replaying the streams from after messages \(sequences.map(String.init).joined(separator: ", "))"
        case .holeRepaired(let skipped, let waitedMs):
            return "no snapshot could be restored for \(waitedMs / 1000) s, so the hole in the log is repaired: skipped messages \(skipped.joined(separator: ", ")), sent every row this node has again, and asked every other node to do the same"
        case .streamStartedOver(let shard, let checkpoint, let lastSequence):
            return "shard \(shard): the stream ends at message \(lastSequence), before this node's checkpoint (\(checkpoint)), so it was deleted and made again (a lost or wiped NATS store, `nats stream rm`, another NATS cluster); its messages would have been taken for ones already applied. Reading it from its start, sending every row this node has again and asking every other node to do the same"
        case .repairRequested(let shard, let sequence, let by):
            return "shard \(shard) message \(sequence): node \(by) repaired a hole in the log; sending every row this node has again"
        case .preExistingDefinitionsAsked(let shard, let sequence, let table):
            return "shard \(shard) message \(sequence): rows of table \(quoteIdentifier(table)), which this node never had and which existed on their node before harmonylite was first installed there; asked every node to send the definitions of such tables"
        case .preExistingDefinitionsSent(let shard, let sequence, let by, let count):
            return "shard \(shard) message \(sequence): node \(by) asked for the definitions of objects that existed before the first install; sending this node's \(count)"
        case .snapshotTaken(let name):
            return "snapshot \(name) is in the store"
        case .snapshotSkipped(let reason):
            return "snapshot skipped: \(reason)"
        case .snapshotFailed(let reason):
            return "snapshot failed: \(reason)"
        case .applyBatchFailed(let shard, let error):
            return "shard \(shard): applying a batch failed (\(error)); nothing was applied and it is asked for again"
        case .cleanupFailed(let error, let retryInMs):
            return "deleting published change-log rows failed (\(error)); they stay, and it is tried again in \(retryInMs) ms"
        case .cleanedUp(let rows):
            return "deleted \(rows) published change-log row(s)"
        case .stampingBulkImport(let queued):
            return "\(queued) local writes are queued (a bulk import): they get their versions a batch at a time, leaving SQLite's write lock to applications in between; changes from other nodes apply once that is done"
        case .sendingWaitsForApplying(let shard, let checkpoint, let reach, let maxEntries):
            return "shard \(shard): the stream reaches \(reach) messages past this node's checkpoint (\(checkpoint)), half of max_entries (\(maxEntries)); this node holds back sending its backlog until it has applied more, so that it does not push messages it has yet to apply out of the stream"
        case .sentBackAskedAgain(let shard, let from, true):
            return "shard \(shard): the import is stamped; recreating this node's consumer from message \(from) so that the messages it sent back for later meanwhile come in order (the server redelivers them in no particular order, and can drop one)"
        case .sentBackAskedAgain(let shard, let from, false):
            return "shard \(shard): message \(from), which this node sent back to the log for later, did not come back when due while later ones did; recreating this node's consumer from it"
        case .consumerLost(let shard, let from):
            return "shard \(shard): the server no longer has this node's consumer (deleted by hand?); making it again from message \(from), the one after this node's checkpoint"
        case .echoesConsumed(let shard, let messages):
            return "shard \(shard): \(messages) of this node's own message(s) came back from the log and were consumed without applying them (this database already holds them)"
        case .stampFailed(let queued, let error, let retryInMs):
            return "stamping \(queued) queued local write(s) failed (\(error)); they stay queued, unsent, and the stamp is tried again in \(retryInMs) ms"
        case .localChangesStamped(let stamped):
            return "stamped versions on \(stamped.count) local change(s)"
        case .sentAheadOfStamp(let versions):
            return "sent \(versions.count) local change(s) ahead of a stamp backlog (queue ids \(versions.keys.min() ?? 0)...\(versions.keys.max() ?? 0))"
        case .captureInstalled(let tables):
            return "change capture installed on \(tables) table(s)"
        case .tableSkipped(let table, let reason):
            return "table \(quoteIdentifier(table)) is not replicated: \(reason)"
        case .definitionDroppedValues(let table, let columns, let rows):
            return "the cluster's definition of \(quoteIdentifier(table)) has no column \(columns.map(quoteIdentifier).joined(separator: ", ")): "
                + "making it here dropped the values this node held there in \(rows) row(s). To keep a column, add it with ALTER TABLE "
                + "on a node in the cluster (it replicates), then write the values again"
        }
    }
}
