/// Known-wrong behaviours the simulator switches on to prove its checkers catch them.
/// All are off in production; each is tested only through `harmonysim`'s planted-bug suite.
public struct PlantedBugs: OptionSet, Sendable, Hashable {
    public let rawValue: UInt128
    public init(rawValue: UInt128) { self.rawValue = rawValue }

    /// Apply every change as it arrives, ignoring versions (last-arrival-wins).
    public static let applyInArrivalOrder = PlantedBugs(rawValue: 1 << 0)
    /// Treat changes that originated here as already applied.
    public static let skipOwnMessages = PlantedBugs(rawValue: 1 << 1)
    /// Mark a change published as soon as it is handed to the log.
    public static let markPublishedBeforeAck = PlantedBugs(rawValue: 1 << 2)
    /// Advance the checkpoint in its own transaction before applying.
    public static let checkpointOutsideApplyTransaction = PlantedBugs(rawValue: 1 << 3)
    /// Forget a row's version when a remote delete applies (no tombstone).
    public static let dropTombstones = PlantedBugs(rawValue: 1 << 4)
    /// Do not advance the local clock to the versions received.
    public static let noClockAdvanceOnReceipt = PlantedBugs(rawValue: 1 << 5)
    /// Ack and checkpoint a message whose schema does not match instead of pausing.
    public static let ackSchemaMismatch = PlantedBugs(rawValue: 1 << 6)
    /// Restore a snapshot but resume each stream at its head instead of at the snapshot's sequences.
    public static let restoreWithoutCheckpoints = PlantedBugs(rawValue: 1 << 7)
    /// Lose the schema hash when decoding, and treat a message without one as matching (as a legacy sender's).
    public static let dropSchemaHashOnDecode = PlantedBugs(rawValue: 1 << 8)
    /// Restore a snapshot without moving the node's clock past the versions it brings.
    public static let restoreWithoutClockAdvance = PlantedBugs(rawValue: 1 << 9)
    /// Capture a primary-key change as a write of the new key only, leaving the old key's row everywhere else.
    public static let keyChangeWithoutDelete = PlantedBugs(rawValue: 1 << 10)
    /// When an apply transaction fails (busy, disk full), acknowledge the batch as if it had applied.
    public static let ackFailedApply = PlantedBugs(rawValue: 1 << 11)
    /// When marking acknowledged changes published fails, forget them instead of sending them again.
    public static let dropChangesWhenMarkFails = PlantedBugs(rawValue: 1 << 12)
    /// Take a snapshot even while some of this node's own changes are not yet acknowledged by the log.
    public static let snapshotWithPendingChanges = PlantedBugs(rawValue: 1 << 13)
    /// Leave triggers on for the sidecar's own connection: every change it applies is captured again as a local
    /// write, stamped with a newer version and sent back out, so the cluster never goes quiet.
    public static let sidecarWritesCaptured = PlantedBugs(rawValue: 1 << 15)
    /// Send changes above `max_row_bytes` like any other instead of refusing them.
    public static let publishOversizedRows = PlantedBugs(rawValue: 1 << 16)
    /// Keep received parts of split messages in memory, not in the apply transaction: a crash loses them.
    public static let partsInMemory = PlantedBugs(rawValue: 1 << 17)
    /// Never recreate a consumer whose deliveries stopped while the stream holds more.
    public static let noResubscribeOnStall = PlantedBugs(rawValue: 1 << 18)
    /// Treat a message missing while later ones arrive like any stall: wait `deliveryStallResubscribeMs` (or for the
    /// log's ack wait) instead of `missingDeliveryResubscribeMs`.
    public static let stallIgnoresGaps = PlantedBugs(rawValue: 1 << 14)
    /// Capture versionless rows (after a -cleanup) with the current time, as real writes: stale copies win.
    public static let backfillAtCurrentTime = PlantedBugs(rawValue: 1 << 19)
    /// Pause on every schema this node does not know, even one whose columns it all has (an older one).
    public static let pauseOnOlderUnknownSchema = PlantedBugs(rawValue: 1 << 20)

    /// Apply another node's DDL whatever its version: concurrent DDL ends in whichever order it arrived.
    public static let ddlLastArrivalWins = PlantedBugs(rawValue: 1 << 21)
    /// Leave a table as the ALTERs left it when they cannot reach the winning definition exactly.
    public static let ddlWithoutRebuild = PlantedBugs(rawValue: 1 << 22)
    /// Apply rows written under a definition not yet here, leaving out the columns this node lacks.
    public static let applyNewerDefinitionStripped = PlantedBugs(rawValue: 1 << 23)
    /// Let a later ALTER beat a DROP of the same table: a node that altered it re-creates a table the others dropped.
    public static let ddlDropNotFinal = PlantedBugs(rawValue: 1 << 24)
    /// Treat a column renamed here by a concurrent rename that lost as unknown: drop it, add the winner's empty.
    public static let lostRenameDropsColumn = PlantedBugs(rawValue: 1 << 25)
    /// Apply a row under a definition not seen here (another stream has it) at once, leaving out columns unknown here.
    public static let applyUnseenDefinitionStripped = PlantedBugs(rawValue: 1 << 26)
    /// Drop a table renamed elsewhere onto a name that is another table here, instead of merging its rows in.
    public static let renameOntoTableDropsRows = PlantedBugs(rawValue: 1 << 27)
    /// Apply a later generation of a table (dropped and made again elsewhere) onto the old one, keeping its rows.
    public static let generationJumpKeepsRows = PlantedBugs(rawValue: 1 << 28)
    /// Let a later concurrent ALTER bring back, empty, a column this node dropped (whole-table LWW only).
    public static let concurrentDropUndone = PlantedBugs(rawValue: 1 << 29)
    /// Read a table dropped and created again between two looks as an ALTER of the old one (its rows kept elsewhere).
    public static let recreatedTableSeenAsAlter = PlantedBugs(rawValue: 1 << 30)
    /// Take a rename seen together with an ADD of the same type for a DROP plus two ADDs (the values lost elsewhere).
    public static let ambiguousRenameDropsValues = PlantedBugs(rawValue: 1 << 31)
    /// Take a busy, full or failing disk during a DDL for SQLite refusing it: recorded as diverged, never retried.
    public static let ddlStorageFailureIsRefusal = PlantedBugs(rawValue: 1 << 32)
    /// Rebuild a table's column renames from this node's schema history alone at each local ALTER, forgetting the
    /// names other nodes' DDL (and losing renames) brought.
    public static let alterForgetsMergedRenames = PlantedBugs(rawValue: 1 << 33)
    /// Leave a concurrently dropped column in place when an index on it makes SQLite refuse to drop it again.
    public static let redropBlockedByIndex = PlantedBugs(rawValue: 1 << 34)
    /// Apply remote changes before stamping the local writes queued meanwhile: they are compared against stale versions.
    public static let applyBeforeStamping = PlantedBugs(rawValue: 1 << 52)
    /// Apply remote changes during a bulk import after stamping only one batch of it, as publishing may: the rest
    /// of the queue is compared against stale versions.
    public static let applyStampsOneBatch = PlantedBugs(rawValue: 1 << 56)
    /// Commit a stamp that stops short without syncing it, like a whole one: the first batches of an import go out
    /// carrying later writes still queued, and a power cut can take those writes while the copies stay out.
    public static let partialStampNotSynced = PlantedBugs(rawValue: 1 << 57)
    /// The priority lane moves the scan cursor past what it sent, so the backlog it jumped is never scanned.
    public static let laneMovesScanCursor = PlantedBugs(rawValue: 1 << 35)
    /// After a bulk import's stamping, the priority lane sends only the newest few of the small writes stamped behind
    /// it, and leaves the rest to the scan, behind the whole import.
    public static let laneTakesNewestOnly = PlantedBugs(rawValue: 1 << 58)
    /// Send writes ahead of their stamp under a version from the clock alone, not the milliseconds queued before them:
    /// the stamp then gives them another version than the one other nodes already hold.
    public static let aheadOfStampFromClockOnly = PlantedBugs(rawValue: 1 << 61)
    /// Send a small commit ahead of its stamp although a later write of the same row is queued: it carries that
    /// later write's row under its own, older version.
    public static let aheadLaneIgnoresLaterWrites = PlantedBugs(rawValue: 1 << 62)
    /// Let a stamp or a cleanup that meets a held write lock or a full disk throw out of the core, which then restarts
    /// (and meets the same lock) instead of trying again after a pause.
    public static let stampFailureRestartsCore = PlantedBugs(rawValue: 1 << 59)
    /// A snapshot restore keeps the remembered own messages, so one sent before it is skipped after it although the
    /// restored rows are older than what it carries.
    public static let echoesSurviveRestore = PlantedBugs(rawValue: 1 << 60)
    /// Send rows of any generation of a renamed table's old name to its new name, even those of a table made again
    /// under the old name and dropped since.
    public static let aliasAnyGeneration = PlantedBugs(rawValue: 1 << 36)
    /// Keep a RENAME TO local: the rows moved under the new name are not sent again, so a node that made the new
    /// name empty (its old table was dropped, or renamed elsewhere) never gets them.
    public static let renameKeepsRowsLocal = PlantedBugs(rawValue: 1 << 37)
    /// Send pending DDL in log order: an index's newest definition (on a renamed table) can go out before its table's.
    public static let definitionsInLogOrder = PlantedBugs(rawValue: 1 << 38)
    /// Keep reading pending rows after a capture refresh found new DDL: rows can go out ahead of their definition.
    public static let rowsAheadOfNewDefinitions = PlantedBugs(rawValue: 1 << 39)
    /// Repair a hole by skipping it only: nobody sends the rows the hole held again.
    public static let holeRepairWithoutResend = PlantedBugs(rawValue: 1 << 40)
    /// Leave other nodes' requests for pre-existing definitions unanswered: a table one node's application made
    /// before its first install never reaches the others, whose shards wait for good on its rows.
    public static let preExistingNeverSent = PlantedBugs(rawValue: 1 << 41)
    /// Make an index or trigger that was made on a table since dropped (and made again) on the new table.
    public static let dependentOutlivesItsTable = PlantedBugs(rawValue: 1 << 42)
    /// Let a view already broken (over a table dropped elsewhere) block the re-drop of a concurrently dropped column.
    public static let redropBlockedByBrokenView = PlantedBugs(rawValue: 1 << 43)
    /// At a local ALTER, take a renamed column's current name from this node's schema history even where the
    /// replicated state says otherwise (the history reads a winning definition applied here as local renames).
    public static let historyOverridesStateRenames = PlantedBugs(rawValue: 1 << 44)
    /// Take an index made elsewhere on a table this node has renamed since for one that went with a dropped table.
    public static let dependentOfRenamedTableDropped = PlantedBugs(rawValue: 1 << 45)
    /// At RENAME TO, give the new name only this node's schema history's column names, not the old name's state's.
    public static let renameToForgetsMergedNames = PlantedBugs(rawValue: 1 << 46)
    /// Remake a rebuilt table's indexes and triggers from their text as it was, naming columns by their old names.
    public static let rebuildRemakesDependentsByOldNames = PlantedBugs(rawValue: 1 << 47)
    /// Merge a table renamed onto another one's name by column name alone, dropping values of renamed columns.
    public static let mergeDropsRenamedColumns = PlantedBugs(rawValue: 1 << 48)
    /// Behind a row held back for a table no node sent, apply only version-zero definitions ahead (not a later ALTER
    /// of that pre-existing table, which its node then no longer answers with).
    public static let definitionsAheadOnlyVersionZero = PlantedBugs(rawValue: 1 << 49)
    /// Make another node's index or view with SQLite's legacy reading of a double-quoted column this node has dropped
    /// as a string: the object indexes a constant here, and every later DROP COLUMN on the database fails on it.
    public static let dependentOnDroppedColumnAsString = PlantedBugs(rawValue: 1 << 50)
    /// Apply a hint (a message offered ahead of its turn) as it comes, without comparing versions: an older change
    /// overwrites a newer one the backlog already brought.
    public static let hintIgnoresVersion = PlantedBugs(rawValue: 1 << 51)
    /// Take a DROP COLUMN of the last column plus an ADD COLUMN of the same definition, seen in one look, for a RENAME
    /// COLUMN although no value came over: the other nodes keep the dropped column's values under the new name.
    public static let dropAndAddReadAsRename = PlantedBugs(rawValue: 1 << 53)
    /// Record an index or trigger made on a newer generation of a table that is not here yet as gone with that
    /// table: when the table's definition arrives (applied ahead of it, behind a held-back row), the dependent is
    /// missing here for good.
    public static let dependentAheadOfItsTableDropped = PlantedBugs(rawValue: 1 << 54)
    /// Keep a view, index or trigger made before the first install to this node (the rule for tables, which rows ask
    /// for): one the application made on this node alone while the others replicated never reaches them.
    public static let preExistingDependentsKept = PlantedBugs(rawValue: 1 << 55)
    /// Tell a RENAME COLUMN from a DROP plus an ADD without the rows whose change this node has sent but not yet seen
    /// acknowledged: their values went out under the old name, and read as a DROP the other nodes lose them.
    public static let sentRowsTellNothing = PlantedBugs(rawValue: 1 << 63)
    /// Leave a column the look reads as added as it is on the other nodes (its default) whatever this node holds in it:
    /// values from a rename whose source one look cannot name, or from a write delivered whose acknowledgement a crash
    /// lost, stay on this node alone.
    public static let addedValuesKeptLocal = PlantedBugs(rawValue: 1 << 64)
    /// Keep an index or trigger that arrives for a table renamed here since under the old name, refused: where that
    /// name's generation is the higher, it outranks the moved texts the nodes that had it first publish, and this node
    /// never gets it.
    public static let dependentKeptUnderOldTable = PlantedBugs(rawValue: 1 << 65)
    /// Hold a row sent to a renamed table's old name, with a column this node cannot place, even when that name was
    /// dropped and made again here since: the definition it waits for is of a generation gone here, and never comes.
    public static let waitForAGoneGeneration = PlantedBugs(rawValue: 1 << 66)
    /// Let the indexes this node made on a renamed table's old name go with it when the rename's old half merges that
    /// table into one the new name already has here: every node the index reaches later moves it onto the new name,
    /// and this node's drop, ranked under the old table's generation, never reaches them.
    public static let mergedRenameDropsIndex = PlantedBugs(rawValue: 1 << 67)
    /// Keep quiet when a later index or trigger text loses to this node's state: a state no node sends (an index each
    /// node moved onto a renamed table by itself) never reaches the node whose later text lost to it.
    public static let movedDependentNeverSent = PlantedBugs(rawValue: 1 << 68)
    /// Keep a losing ALTER's column names, and the names a rename's merge mapped, off the table the old one was
    /// renamed to here: a row sent under the old name with a column the loser renamed loses that value, and a full
    /// copy of it at the same version is skipped.
    public static let lostRenameBeforeRenameTo = PlantedBugs(rawValue: 1 << 69)
    /// Give a definition's message the id of its version and key alone: another node's copy of a state it sends
    /// again under the author's version is dropped by JetStream as a duplicate of the author's first message.
    public static let resentDefinitionDeduplicated = PlantedBugs(rawValue: 1 << 70)
    /// Keep an index whose replacement SQLite refuses here: this node alone has an index the cluster's definition
    /// replaced.
    public static let outrankedIndexKept = PlantedBugs(rawValue: 1 << 71)
    /// Move an index that arrives for a renamed table onto whatever table has the new name now, even one made again
    /// after the renamed one was dropped: the nodes that had the index before that drop lost it with the table.
    public static let dependentFollowsToRemadeTable = PlantedBugs(rawValue: 1 << 72)
    /// Apply a row sent under a renamed table's old name to whatever table has the new name now, even one made again
    /// after the renamed one was dropped: the nodes that had the row before that drop lost it with the table.
    public static let rowFollowsToRemadeTable = PlantedBugs(rawValue: 1 << 73)
    /// Merge a snapshot's schema state in id order alone: an index made on a table before a rename comes before the
    /// table's new name, and the restoring node refuses it for good.
    public static let snapshotDependentsBeforeTables = PlantedBugs(rawValue: 1 << 74)
    /// Send nothing when the renaming node's definition of a renamed table loses to one made here with a column added
    /// to the old name meanwhile: the renaming node keeps the default where it left the column out of rows.
    public static let renameRaceValuesLeftOut = PlantedBugs(rawValue: 1 << 75)
    /// Apply other nodes' DDL with `legacy_alter_table` on only: a trigger naming its own table keeps the old name in
    /// its body after a rename applied here, and that text, recorded later, wins everywhere.
    public static let appliedRenameKeepsBodies = PlantedBugs(rawValue: 1 << 76)
    /// Apply other nodes' DDL to tables this node's include_tables / exclude_tables leave out, and record those tables
    /// dropped when the filter hides them: a node excluding a table deletes it from every other node.
    public static let filteredDefinitionsApplied = PlantedBugs(rawValue: 1 << 77)
    /// Take an index or trigger made again in its old text on a table rebuilt in one look for one that never changed:
    /// the other nodes drop it with the old table, and only this node has it.
    public static let rebuiltTableLosesDependents = PlantedBugs(rawValue: 1 << 78)
    /// Take a stream that ends before the checkpoint for one that has not caught up: a stream made again is read from
    /// the old checkpoint, and its first messages are taken for ones already applied.
    public static let streamStartOverUnnoticed = PlantedBugs(rawValue: 1 << 79)
    /// Send a row in more parts than half of max_entries: its first parts fall off the stream before its last land.
    public static let partsOutgrowTheStream = PlantedBugs(rawValue: 1 << 80)
    /// Send everything again at once when a stream started over: on a short stream the resend pushes out the other
    /// nodes' messages before this node reads them, and it is behind the stream's start.
    public static let startOverResendNotHeld = PlantedBugs(rawValue: 1 << 81)

    public static let all: [(name: String, bug: PlantedBugs)] = [
        ("apply-in-arrival-order", .applyInArrivalOrder),
        ("skip-own-messages", .skipOwnMessages),
        ("mark-published-before-ack", .markPublishedBeforeAck),
        ("checkpoint-outside-apply-transaction", .checkpointOutsideApplyTransaction),
        ("drop-tombstones", .dropTombstones),
        ("no-clock-advance-on-receipt", .noClockAdvanceOnReceipt),
        ("ack-schema-mismatch", .ackSchemaMismatch),
        ("restore-without-checkpoints", .restoreWithoutCheckpoints),
        ("drop-schema-hash-on-decode", .dropSchemaHashOnDecode),
        ("restore-without-clock-advance", .restoreWithoutClockAdvance),
        ("key-change-without-delete", .keyChangeWithoutDelete),
        ("ack-failed-apply", .ackFailedApply),
        ("drop-changes-when-mark-fails", .dropChangesWhenMarkFails),
        ("snapshot-with-pending-changes", .snapshotWithPendingChanges),
        ("sidecar-writes-captured", .sidecarWritesCaptured),
        ("publish-oversized-rows", .publishOversizedRows),
        ("parts-in-memory", .partsInMemory),
        ("no-resubscribe-on-stall", .noResubscribeOnStall),
        ("stall-ignores-gaps", .stallIgnoresGaps),
        ("backfill-at-current-time", .backfillAtCurrentTime),
        ("pause-on-older-unknown-schema", .pauseOnOlderUnknownSchema),
        ("ddl-last-arrival-wins", .ddlLastArrivalWins),
        ("ddl-without-rebuild", .ddlWithoutRebuild),
        ("apply-newer-definition-stripped", .applyNewerDefinitionStripped),
        ("ddl-drop-not-final", .ddlDropNotFinal),
        ("lost-rename-drops-column", .lostRenameDropsColumn),
        ("apply-unseen-definition-stripped", .applyUnseenDefinitionStripped),
        ("rename-onto-table-drops-rows", .renameOntoTableDropsRows),
        ("generation-jump-keeps-rows", .generationJumpKeepsRows),
        ("concurrent-drop-undone", .concurrentDropUndone),
        ("recreated-table-seen-as-alter", .recreatedTableSeenAsAlter),
        ("ambiguous-rename-drops-values", .ambiguousRenameDropsValues),
        ("ddl-storage-failure-is-refusal", .ddlStorageFailureIsRefusal),
        ("alter-forgets-merged-renames", .alterForgetsMergedRenames),
        ("redrop-blocked-by-index", .redropBlockedByIndex),
        ("lane-moves-scan-cursor", .laneMovesScanCursor),
        ("lane-takes-newest-only", .laneTakesNewestOnly),
        ("ahead-of-stamp-from-clock-only", .aheadOfStampFromClockOnly),
        ("ahead-lane-ignores-later-writes", .aheadLaneIgnoresLaterWrites),
        ("stamp-failure-restarts-core", .stampFailureRestartsCore),
        ("echoes-survive-restore", .echoesSurviveRestore),
        ("alias-any-generation", .aliasAnyGeneration),
        ("rename-keeps-rows-local", .renameKeepsRowsLocal),
        ("definitions-in-log-order", .definitionsInLogOrder),
        ("rows-ahead-of-new-definitions", .rowsAheadOfNewDefinitions),
        ("hole-repair-without-resend", .holeRepairWithoutResend),
        ("pre-existing-never-sent", .preExistingNeverSent),
        ("dependent-outlives-its-table", .dependentOutlivesItsTable),
        ("redrop-blocked-by-broken-view", .redropBlockedByBrokenView),
        ("apply-before-stamping", .applyBeforeStamping),
        ("apply-stamps-one-batch", .applyStampsOneBatch),
        ("partial-stamp-not-synced", .partialStampNotSynced),
        ("history-overrides-state-renames", .historyOverridesStateRenames),
        ("dependent-of-renamed-table-dropped", .dependentOfRenamedTableDropped),
        ("rename-to-forgets-merged-names", .renameToForgetsMergedNames),
        ("rebuild-remakes-dependents-by-old-names", .rebuildRemakesDependentsByOldNames),
        ("merge-drops-renamed-columns", .mergeDropsRenamedColumns),
        ("definitions-ahead-only-version-zero", .definitionsAheadOnlyVersionZero),
        ("dependent-on-dropped-column-as-string", .dependentOnDroppedColumnAsString),
        ("hint-ignores-version", .hintIgnoresVersion),
        ("drop-and-add-read-as-rename", .dropAndAddReadAsRename),
        ("dependent-ahead-of-its-table-dropped", .dependentAheadOfItsTableDropped),
        ("pre-existing-dependents-kept", .preExistingDependentsKept),
        ("sent-rows-tell-nothing", .sentRowsTellNothing),
        ("added-values-kept-local", .addedValuesKeptLocal),
        ("dependent-kept-under-old-table", .dependentKeptUnderOldTable),
        ("wait-for-a-gone-generation", .waitForAGoneGeneration),
        ("merged-rename-drops-index", .mergedRenameDropsIndex),
        ("moved-dependent-never-sent", .movedDependentNeverSent),
        ("lost-rename-before-rename-to", .lostRenameBeforeRenameTo),
        ("resent-definition-deduplicated", .resentDefinitionDeduplicated),
        ("outranked-index-kept", .outrankedIndexKept),
        ("dependent-follows-to-remade-table", .dependentFollowsToRemadeTable),
        ("row-follows-to-remade-table", .rowFollowsToRemadeTable),
        ("snapshot-dependents-before-tables", .snapshotDependentsBeforeTables),
        ("rename-race-values-left-out", .renameRaceValuesLeftOut),
        ("applied-rename-keeps-bodies", .appliedRenameKeepsBodies),
        ("filtered-definitions-applied", .filteredDefinitionsApplied),
        ("rebuilt-table-loses-dependents", .rebuiltTableLosesDependents),
        ("stream-start-over-unnoticed", .streamStartOverUnnoticed),
        ("parts-outgrow-the-stream", .partsOutgrowTheStream),
        ("start-over-resend-not-held", .startOverResendNotHeld),
    ]
}

/// Places between two durable steps where the simulator may crash the node.
public enum CrashPoint: String, Sendable, Hashable, CaseIterable {
    case afterApplyCommitBeforeAck
    case afterPublishHandoff
    case afterCheckpointBeforeApply
    case afterMarkPublished
    /// Inside the restore transaction, after the tables were replaced: the rollback must leave the old database.
    case beforeRestoreCommit
    case afterRestoreCommit
}

/// Places between two steps of one core call where the simulator may run an application write on the node's
/// own database (another connection), as a real application can at any moment.
public enum InterleavePoint: String, Sendable, Hashable, CaseIterable {
    /// Deliveries are about to be applied; no transaction of the core's is open.
    case beforeApplyTransaction
}

/// Thrown out of an event handler when the environment crashed the node at a crash point.
public struct NodeCrashed: Error, Sendable {
    public var point: CrashPoint
}
