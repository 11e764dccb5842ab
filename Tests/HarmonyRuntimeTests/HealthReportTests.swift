@testable import HarmonyCore
@testable import HarmonyRuntime
import HarmonyCodec
import Testing

/// `/health` is what a load balancer or a systemd watchdog trusts: quiet is healthy, stuck is not.
@Suite("Health: 503 once progress stops for stall_seconds or the node needs what it cannot get")
struct HealthReportTests {
    let stallMs: Int64 = 60_000

    func readings(checkpoints: [Int: UInt64] = [1: 10, 2: 10], lasts: [Int: UInt64] = [1: 10, 2: 10], paused: Set<Int> = [],
                  restoreNeeded: Bool = false, snapshots: Bool = true, pending: Int64 = 0) -> NodeReadings {
        NodeReadings(running: true, coreFailure: nil, natsConnected: true, replicate: true, snapshotsEnabled: snapshots,
                              checkpoints: checkpoints, streamLasts: lasts, pausedShards: paused, restoreNeeded: restoreNeeded,
                              pendingChanges: pending)
    }

    @Test func aQuietNodeThatIsCaughtUpIsHealthyForever() {
        let watch = ProgressWatch(lastProgressMs: [1: 0, 2: 0])
        let report = HealthReport.evaluate(readings(), watch: watch, nowMs: 10 * stallMs, stallMs: stallMs)
        #expect(report.healthy)
        #expect(report.shards.map(\.state) == ["ok", "ok"])
        // A stream's last sequence reported before the node applied more is not shown below its checkpoint (by hand,
        // /health said "checkpoint": 10, "stream_last": 6).
        let stale = HealthReport.evaluate(readings(checkpoints: [1: 10, 2: 10], lasts: [1: 6, 2: 12]), watch: watch, nowMs: 1, stallMs: stallMs)
        #expect(stale.shards.map(\.streamLast) == [10, 12])
    }

    @Test func aShardBehindItsStreamIsStalledOnlyAfterStallSecondsWithoutProgress() {
        var watch = ProgressWatch(lastProgressMs: [1: 0, 2: 0])
        let behind = readings(checkpoints: [1: 10, 2: 10], lasts: [1: 50, 2: 10])
        #expect(HealthReport.evaluate(behind, watch: watch, nowMs: stallMs - 1, stallMs: stallMs).healthy)
        let stuck = HealthReport.evaluate(behind, watch: watch, nowMs: stallMs, stallMs: stallMs)
        #expect(!stuck.healthy)
        #expect(stuck.reasons == ["shard 1 has not moved for 60 s at message 10 of 50"])
        #expect(stuck.shards.first?.state == "stalled")
        watch.record(.applied(shard: 1, sequence: 11, table: "t", version: RowVersion(hlc: 1, node: 2), won: true), nowMs: stallMs)
        #expect(HealthReport.evaluate(behind, watch: watch, nowMs: stallMs + 1, stallMs: stallMs).healthy)
    }

    /// A node quiet for longer than stall_seconds that then gets a message has been stuck since that message reached
    /// its core, not since its checkpoint last moved: held up 5 s by an application's lock, it used to say "has not
    /// moved for 17 s". Redeliveries of the same message do not restart the clock; progress does.
    @Test func aQuietNodeIsStalledOnlyStallSecondsAfterItsNextDelivery() {
        var watch = ProgressWatch(lastProgressMs: [1: 0, 2: 0])
        let behind = readings(checkpoints: [1: 10, 2: 10], lasts: [1: 11, 2: 10])
        let arrived = 10 * stallMs
        watch.delivered(shard: 1, through: 11, nowMs: arrived)
        #expect(HealthReport.evaluate(behind, watch: watch, nowMs: arrived + stallMs - 1, stallMs: stallMs).healthy)
        let stuck = HealthReport.evaluate(behind, watch: watch, nowMs: arrived + stallMs, stallMs: stallMs)
        #expect(stuck.reasons == ["shard 1 has not moved for 60 s at message 10 of 11"])
        watch.delivered(shard: 1, through: 11, nowMs: arrived + stallMs)
        #expect(!HealthReport.evaluate(behind, watch: watch, nowMs: arrived + stallMs + 1, stallMs: stallMs).healthy)
        watch.record(.applied(shard: 1, sequence: 11, table: "t", version: RowVersion(hlc: 1, node: 2), won: true), nowMs: arrived + stallMs + 2)
        #expect(HealthReport.evaluate(behind, watch: watch, nowMs: arrived + stallMs + 3, stallMs: stallMs).healthy)
    }

    /// An application's long transaction keeps a node from applying while the range it last asked the log for is
    /// older than what was delivered since (by hand: 20 s into a 25 s hold, /health said 200 with "stream_last": 0 and
    /// ten messages waiting). What reached the core counts as part of the stream, and the stall says why.
    @Test func deliveriesTheCoreCouldNotApplyCountAsBehindEvenWhenTheStreamsRangeIsOld() {
        var watch = ProgressWatch(lastProgressMs: [1: 0, 2: 0])
        let old = readings(checkpoints: [1: 0, 2: 0], lasts: [1: 0, 2: 0])
        watch.delivered(shard: 1, through: 10, nowMs: 1_000)
        watch.record(.applyBatchFailed(shard: 1, error: "database busy (another connection holds the lock)"), nowMs: 6_000)
        let waiting = HealthReport.evaluate(old, watch: watch, nowMs: 1_000 + stallMs - 1, stallMs: stallMs)
        #expect(waiting.healthy)
        #expect(waiting.shards.map(\.streamLast) == [10, 0])
        #expect(waiting.shards.map(\.state) == ["catching up", "ok"])
        let stuck = HealthReport.evaluate(old, watch: watch, nowMs: 1_000 + stallMs, stallMs: stallMs)
        #expect(!stuck.healthy)
        #expect(stuck.reasons == ["shard 1 has not moved for 60 s at message 0 of 10; the last try to apply failed: "
                                  + "database busy (another connection holds the lock)"])
        // A stream whose range was never reported shows what was delivered.
        let unknown = readings(checkpoints: [1: 0, 2: 0], lasts: [:])
        #expect(HealthReport.evaluate(unknown, watch: watch, nowMs: 1_000 + stallMs, stallMs: stallMs).shards.map(\.streamLast) == [10, nil])
        // Once it applies, the reason goes with the stall.
        watch.record(.applied(shard: 1, sequence: 10, table: "t", version: RowVersion(hlc: 1, node: 2), won: true), nowMs: 1_000 + stallMs)
        let applied = HealthReport.evaluate(readings(checkpoints: [1: 10, 2: 0], lasts: [1: 0, 2: 0]), watch: watch,
                                            nowMs: 2_000 + stallMs, stallMs: stallMs)
        #expect(applied.healthy && applied.shards.map(\.state) == ["ok", "ok"])
        #expect(watch.lastApplyFailure.isEmpty)
        // A restore may come from a log made again, whose sequences start over: what was delivered before says nothing.
        watch.record(.restored(sequences: [3, 0], rows: 1, tables: 1), nowMs: 3_000 + stallMs)
        #expect(HealthReport.evaluate(readings(checkpoints: [1: 3, 2: 0], lasts: [1: 3, 2: 0]), watch: watch, nowMs: 4_000 + 2 * stallMs,
                                      stallMs: stallMs).healthy)
    }

    /// Deliveries held back while a bulk import of many millions of rows is stamped are not a stall while batches
    /// keep being stamped; once stamping stops for stall_seconds the node says so, and why it waits.
    @Test func aShardHeldForABulkImportIsHealthyWhileStampingMoves() {
        var watch = ProgressWatch(lastProgressMs: [1: 0, 2: 0])
        var r = readings(lasts: [1: 50, 2: 10])
        r.bulkImportQueued = 4_000_000
        let stamp = StampedChanges(firstQueueID: 1, lastQueueID: 5_000, count: 5_000, hlcs: [:])
        for at in stride(from: Int64(1_000), through: 3 * stallMs, by: 1_000) { watch.record(.localChangesStamped(stamp), nowMs: at) }
        let moving = HealthReport.evaluate(r, watch: watch, nowMs: 3 * stallMs + 500, stallMs: stallMs)
        #expect(moving.healthy, "\(moving.reasons)")
        #expect(moving.shards.first?.state == "waiting for a bulk import to be stamped")
        let stopped = HealthReport.evaluate(r, watch: watch, nowMs: 4 * stallMs, stallMs: stallMs)
        #expect(!stopped.healthy)
        #expect(stopped.reasons.first?.hasPrefix("shard 1 waits at message 10 of 50 until 4000000 queued local writes (a bulk import) are stamped, and none has been stamped for 60 s") == true)
        // The same shard without an import to wait for is simply stalled.
        r.bulkImportQueued = nil
        #expect(HealthReport.evaluate(r, watch: watch, nowMs: 3 * stallMs + 500, stallMs: stallMs).shards.first?.state == "stalled")
    }

    /// Stamping that keeps failing (an application's long transaction) leaves local writes unsendable: retried
    /// quietly for stall_seconds, then 503 with SQLite's reason, and healthy again at the next stamp.
    @Test func stampsThatKeepFailingTurnUnhealthyWithTheReason() {
        var watch = ProgressWatch(lastProgressMs: [1: 0, 2: 0])
        var r = readings()
        r.pendingChanges = 3
        for at in stride(from: Int64(1_000), through: stallMs + 1_000, by: 250) {
            watch.record(.stampFailed(queued: 3, error: "database busy (another connection holds the lock): database is locked", retryInMs: 250), nowMs: at)
        }
        #expect(HealthReport.evaluate(r, watch: watch, nowMs: stallMs, stallMs: stallMs).healthy)
        let report = HealthReport.evaluate(r, watch: watch, nowMs: stallMs + 1_000, stallMs: stallMs)
        #expect(report.reasons == ["local writes have not been stamped or marked published for 60 s, so they wait to be sent (stamping 3 queued "
                                   + "local write(s) failed: database busy (another connection holds the lock): database is locked): another "
                                   + "connection holds SQLite's write lock (a long transaction), or the disk is full or failing"])
        watch.record(.localChangesStamped(StampedChanges(firstQueueID: 1, lastQueueID: 3, count: 3, hlcs: [:])), nowMs: stallMs + 1_500)
        #expect(HealthReport.evaluate(r, watch: watch, nowMs: stallMs + 2_000, stallMs: stallMs).healthy)
    }

    /// An application's lock that meets the mark of what the log acknowledged, not a stamp: the stamp waits behind
    /// that mark, so the reason is the lock, not "publishes have failed" (publishing works). The mark that commits
    /// at last clears it, even with nothing left to stamp.
    @Test func marksThatKeepFailingSayTheLockNotThePublishes() {
        var watch = ProgressWatch(lastProgressMs: [1: 0, 2: 0])
        var r = readings()
        r.pendingChanges = 1_900
        watch.record(.published(count: 100), nowMs: 500)
        for at in stride(from: Int64(5_000), through: stallMs + 5_000, by: 5_000) {
            watch.record(.markPublishedFailed(count: 100, error: "database busy (another connection holds the lock): database is locked", sentAgain: false), nowMs: at)
        }
        #expect(HealthReport.evaluate(r, watch: watch, nowMs: stallMs + 4_000, stallMs: stallMs).healthy)
        let report = HealthReport.evaluate(r, watch: watch, nowMs: stallMs + 5_000, stallMs: stallMs)
        #expect(report.reasons == ["local writes have not been stamped or marked published for 60 s, so they wait to be sent (marking 100 "
                                   + "acknowledged change(s) published failed: database busy (another connection holds the lock): database is "
                                   + "locked): another connection holds SQLite's write lock (a long transaction), or the disk is full or failing"])
        watch.record(.ownWritesResumed(failedForMs: stallMs), nowMs: stallMs + 6_000)
        r.pendingChanges = 1
        #expect(HealthReport.evaluate(r, watch: watch, nowMs: stallMs + 7_000, stallMs: stallMs).healthy)
    }

    @Test func aSchemaPauseTurnsUnhealthyAfterStallSecondsAndSaysWhatToDo() {
        var watch = ProgressWatch(lastProgressMs: [1: 0, 2: 0])
        watch.record(.schemaPaused(shard: 2, sequence: 11, table: "t", remoteHash: "x"), nowMs: 1_000)
        let r = readings(lasts: [1: 10, 2: 20], paused: [2])
        #expect(HealthReport.evaluate(r, watch: watch, nowMs: 30_000, stallMs: stallMs).healthy)
        let report = HealthReport.evaluate(r, watch: watch, nowMs: 61_000, stallMs: stallMs)
        #expect(!report.healthy)
        #expect(report.reasons.first?.contains("run the same schema change here") == true)
        watch.record(.schemaResumed(shard: 2), nowMs: 62_000)
        #expect(HealthReport.evaluate(readings(lasts: [1: 10, 2: 20]), watch: watch, nowMs: 63_000, stallMs: stallMs).healthy)
    }

    /// A replicated DDL SQLite refused here leaves this node's schema unlike the cluster's: the node still moves, but
    /// it must say so. It gets stall_seconds (a later DDL may make it fit), then the reason names the object.
    @Test func aRefusedSchemaChangeTurnsUnhealthyAfterStallSecondsAndNamesTheObject() {
        var watch = ProgressWatch(lastProgressMs: [1: 0, 2: 0])
        watch.record(.schemaChangeFailed(shard: 1, sequence: 5, object: "index \"ix\"", error: "no such column: c"), nowMs: 1_000)
        var r = readings()
        r.divergedSchemaObjects = ["index \"ix\""]
        #expect(HealthReport.evaluate(r, watch: watch, nowMs: 60_000, stallMs: stallMs).healthy)
        let report = HealthReport.evaluate(r, watch: watch, nowMs: 61_000, stallMs: stallMs)
        #expect(!report.healthy)
        #expect(report.reasons == ["this node's schema differs from the cluster's for 1 object(s) (index \"ix\"): SQLite refused the replicated DDL "
                                   + "here (last: index \"ix\": no such column: c). Make each object match another node's sqlite_schema by hand, "
                                   + "or run the DDL again on any node"])
        // Fixed by hand (or by a later DDL): healthy again.
        #expect(HealthReport.evaluate(readings(), watch: watch, nowMs: 62_000, stallMs: stallMs).healthy)
    }

    /// An index made on a table whose definition has not arrived waits for it: healthy while DDL still arrives,
    /// unhealthy once stall_seconds pass without any, with advice for the one case where it never comes.
    @Test func anIndexWaitingForItsTableTurnsUnhealthyAfterStallSeconds() {
        var watch = ProgressWatch(lastProgressMs: [1: 0, 2: 0])
        watch.record(.schemaChangeWaiting(shard: 1, sequence: 5, object: "index \"ix\"", table: "s"), nowMs: 1_000)
        var r = readings()
        r.schemaObjectsWaitingForTheirTable = ["index \"ix\" on \"s\""]
        #expect(HealthReport.evaluate(r, watch: watch, nowMs: 60_000, stallMs: stallMs).healthy)
        watch.record(.schemaChangeApplied(shard: 1, sequence: 6, object: "table \"t\"", dropped: false, version: .zero), nowMs: 30_000)
        #expect(HealthReport.evaluate(r, watch: watch, nowMs: 89_000, stallMs: stallMs).healthy)
        let report = HealthReport.evaluate(r, watch: watch, nowMs: 90_000, stallMs: stallMs)
        #expect(!report.healthy)
        #expect(report.reasons.first?.hasPrefix("1 replicated index(es) or trigger(s) wait for a table whose definition has not reached this node "
                                                + "(index \"ix\" on \"s\")") == true)
        #expect(HealthReport.evaluate(readings(), watch: watch, nowMs: 91_000, stallMs: stallMs).healthy)
    }

    @Test func needingASnapshotWithSnapshotsDisabledIsUnhealthyAtOnce() {
        var watch = ProgressWatch(lastProgressMs: [1: 0, 2: 0])
        watch.record(.behindLogStart(shard: 1, checkpoint: 0, firstSequence: 90), nowMs: 0)
        let disabled = HealthReport.evaluate(readings(restoreNeeded: true, snapshots: false), watch: watch, nowMs: 1, stallMs: stallMs)
        #expect(!disabled.healthy)
        #expect(disabled.shards.allSatisfy { $0.state == "waiting for a snapshot" })
        // With snapshots on, a restore gets stall_seconds to happen; then the last failure is the reason.
        watch.record(.restoreFailed(reason: "no snapshot in the store yet"), nowMs: 5_000)
        #expect(HealthReport.evaluate(readings(restoreNeeded: true), watch: watch, nowMs: 59_000, stallMs: stallMs).healthy)
        let late = HealthReport.evaluate(readings(restoreNeeded: true), watch: watch, nowMs: 60_000, stallMs: stallMs)
        #expect(late.reasons == ["waiting 60 s for a snapshot it can restore: no snapshot in the store yet"])
        // With a hole repair configured, the reason says when it comes.
        var repairing = readings(restoreNeeded: true)
        repairing.holeRepairAfterMs = 600_000
        #expect(HealthReport.evaluate(repairing, watch: watch, nowMs: 60_000, stallMs: stallMs).reasons
                == ["waiting 60 s for a snapshot it can restore: no snapshot in the store yet; without one, the hole is repaired in 540 s "
                    + "(it is skipped and every node sends its rows again)"])
    }

    @Test func publishesFailingForStallSecondsWithChangesWaitingIsUnhealthy() {
        var watch = ProgressWatch(lastProgressMs: [1: 0, 2: 0])
        watch.record(.publishFailed(token: 7), nowMs: 0)
        #expect(!HealthReport.evaluate(readings(pending: 3), watch: watch, nowMs: stallMs, stallMs: stallMs).healthy)
        #expect(HealthReport.evaluate(readings(pending: 0), watch: watch, nowMs: stallMs, stallMs: stallMs).healthy)
        watch.record(.published(count: 3), nowMs: stallMs)
        #expect(HealthReport.evaluate(readings(pending: 3), watch: watch, nowMs: 2 * stallMs, stallMs: stallMs).healthy)
    }

    @Test func theBodyIsJSONWithEveryShard() throws {
        let report = HealthReport.evaluate(readings(lasts: [1: 12, 2: 10]), watch: ProgressWatch(lastProgressMs: [1: 0, 2: 0]),
                                           nowMs: 1_000, stallMs: stallMs)
        #expect(report.json == """
            {"status": "ok", "reasons": [], "pending_changes": 0, "shards": [{"shard": 1, "checkpoint": 10, "stream_last": 12, "state": "catching up", "seconds": 1}, {"shard": 2, "checkpoint": 10, "stream_last": 10, "state": "ok", "seconds": 0}]}

            """)
    }
}
