import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite

/// The fault injector: partitions, crashes, power loss, wiped disks, clock jumps and drift, server restarts,
/// the rolling ALTER and late joiners; and the heal that lifts them all.
extension Simulation {
    func startFault(_ f: Fault, index: Int) {
        let targets = f.node == 0 ? nodes : [nodes[f.node - 1]]
        faultsInjected += 1
        trace("fault start \(f.kind.rawValue) node \(f.node)")
        switch f.kind {
        case .partition:
            for n in targets { n.canSend = false; n.canReceive = false }
        case .partitionToNATS:
            for n in targets { n.canSend = false }
        case .partitionFromNATS:
            for n in targets { n.canReceive = false }
        case .crash:
            for n in targets { crashSidecar(n, reason: "fault") }
        case .wipe:
            for n in targets {
                crashSidecar(n, reason: "disk lost")
                lossCandidates += history.filter { $0.node == n.id }.map(\.version)
                n.app = nil
                n.machineUp = false
                writeLock.applicationWaiting[n.id] = nil  // writes never committed
                n.vfs.time.durability.forgetAll()
                for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: n.databasePath + suffix) }
                n.maxAppliedHLC = 0
                n.highestCheckpoint.removeAll()
                n.lastLocalHLC = 0
                n.pendingCaptures.removeAll()
            }
        case .powerLoss:
            for n in targets where n.machineUp { losePower(n) }
        case .clockJump:
            for n in targets { n.clockOffsetMs += f.offsetMs }
        case .clockDrift:
            for n in targets {
                n.clockOffsetMs = n.nowMs(simMs: nowMs) - nowMs - SimNode.epochMs
                n.driftSinceMs = nowMs
                n.driftPpm = f.driftPpm
            }
        case .duplicateID:
            for n in targets { n.impostorRunning = true }
        case .cleanup, .cleanupMigrate:
            for n in targets where n.machineUp { runCleanup(n, migrate: f.kind == .cleanupMigrate, until: nowMs + f.durationMs) }
        case .serverRestart:
            serverUp = false
        case .consumerLost:
            for n in targets {
                jetStream.unsubscribeAll(node: n.id)
                guard n.sidecarUp else { continue }  // its start makes them again
                for shard in 1...scenario.shards { push(.consumerGone(node: n.id, shard: shard, incarnation: n.incarnation), at: nowMs + consumerGoneNoticedMs()) }
            }
            return
        case .rollingAlter:
            for (i, n) in nodes.enumerated() { push(.alter(node: n.id), at: nowMs + Int64(i) * f.durationMs) }
            return
        case .lateJoin:
            for n in targets where !n.machineUp { bootMachine(n) }
            return
        }
        if f.durationMs > 0 { push(.faultEnd(index: index), at: nowMs + f.durationMs) }
    }

    func endFault(_ f: Fault) {
        let targets = f.node == 0 ? nodes : [nodes[f.node - 1]]
        trace("fault end \(f.kind.rawValue) node \(f.node)")
        switch f.kind {
        case .partition, .partitionToNATS, .partitionFromNATS:
            for n in targets {
                n.canSend = true
                n.canReceive = true
                if scenario.costs != nil {
                    // Live, the node's client gets its connection back at its next reconnect attempt. (A shortcut:
                    // what the node publishes between the heal and that attempt goes straight out.)
                    let back = nowMs + reconnectDelayMs()
                    flushReconnectBuffer(n, atMs: back)
                    resume(n, atMs: back)
                } else {
                    resume(n)
                }
            }
        case .crash:
            for n in targets where n.machineUp && !n.sidecarUp { startSidecar(n) }
        case .wipe, .powerLoss:
            for n in targets where !n.machineUp { bootMachine(n) }
        case .clockDrift:
            for n in targets {
                n.clockOffsetMs = n.nowMs(simMs: nowMs) - nowMs - SimNode.epochMs
                n.driftPpm = 0
            }
        case .duplicateID:
            for n in targets { n.impostorRunning = false }
        case .cleanup, .cleanupMigrate:
            for n in targets where n.machineUp && !n.sidecarUp { startSidecar(n) }
        case .serverRestart:
            serverUp = true
            for n in nodes { resume(n) }
        case .clockJump, .rollingAlter, .lateJoin, .consumerLost:
            break
        }
    }

    /// When the live fetch loop finds a lost consumer gone: its fetch in progress times out (250 ms), and the next
    /// one is refused at once.
    func consumerGoneNoticedMs() -> Int64 { netRandom.int(1...250) + networkDelay() }

    /// The live fetch loop, refused by the server for a consumer it no longer has, makes the consumer again from the
    /// node's checkpoint (`LiveNode.fetchLoop`); cut off from the server, it only sees fetches time out, and tries on.
    func consumerGone(_ n: SimNode, shard: Int, incarnation: Int) {
        guard n.incarnation == incarnation, n.sidecarUp, let core = n.core, core.isRunning else { return }
        guard serverUp, n.canSend, n.canReceive else {
            push(.consumerGone(node: n.id, shard: shard, incarnation: incarnation), at: nowMs + 500)
            return
        }
        trace("node \(n.id) finds its consumer of shard \(shard) gone")
        callCore(n) { $0.consumerLost(shard: shard) }
    }

    /// After connectivity returns: consumers pump again and pending changes get scanned.
    /// `atMs`: when the node's connection is back (now unless given).
    func resume(_ n: SimNode, atMs: Int64? = nil) {
        guard n.sidecarUp else { return }
        let back = atMs ?? nowMs
        for shard in 1...scenario.shards { push(.pump(node: n.id, shard: shard), at: back + networkDelay()) }
        push(.databaseChanged(node: n.id, incarnation: n.incarnation), at: back + 1)
    }

    /// The machine loses power: processes die without closing cleanly, and every file falls back to what
    /// its last fsync made durable. Writes that never reached the disk or the log are gone.
    func losePower(_ n: SimNode) {
        crashSidecar(n, reason: "power loss")
        n.lastLocalHLC = 0  // the clock row may fall back with the writes the power loss undoes
        awaitingPowerBack[n.id, default: []] += history.filter { $0.node == n.id }
        n.app = nil
        n.machineUp = false
        writeLock.applicationWaiting[n.id] = nil  // writes never committed
        do {
            try n.vfs.time.durability.losePower()
            try? FileManager.default.removeItem(atPath: n.databasePath + "-shm")  // shared memory does not survive
        } catch {
            violations.append("node \(n.id): \(error)")
        }
    }

    func alterTable(_ node: SimNode) {
        guard !node.hasExtraColumn, !node.migrationPending else { return }
        if let app = node.app, node.machineUp, !isCaptured(app) {
            node.migrationPending = true  // runs once a sidecar has captured the table (see bootMachine)
            return
        }
        node.hasExtraColumn = true
        guard node.machineUp, let app = node.app else { return }
        node.vfs.time.nowMs = node.nowMs(simMs: nowMs)
        if Self.hasExtraColumn(app) {
            trace("node \(node.id) already has kv.extra (replicated DDL): its migration has nothing to do")
            return
        }
        do {
            try app.execute("ALTER TABLE kv ADD COLUMN extra TEXT")
            trace("node \(node.id) ALTER TABLE kv ADD COLUMN extra")
        } catch {
            violations.append("node \(node.id): ALTER TABLE failed: \(error)")
        }
        // Writes through the old triggers before the sidecar re-installs: the publisher must read their rows
        // (new column included) at the new schema, never send them under the old one.
        for _ in 0..<scenario.writesRacingAlter { performWrite(node) }
        callCore(node) { try $0.databaseChanged() }
    }

    static func hasExtraColumn(_ app: Database) -> Bool {
        (try? app.scalar("SELECT count(*) FROM pragma_table_info('kv') WHERE name = 'extra'")?.int64) == 1
    }

    /// `harmonylite -cleanup` on a stopped node: every trigger and bookkeeping table goes, checkpoints included.
    /// Refused while local changes are unpublished (as the command line does): the operator starts the node
    /// again and retries half a second later, for as long as the fault lasts.
    func runCleanup(_ n: SimNode, migrate: Bool, until endMs: Int64) {
        crashSidecar(n, reason: "stopped for -cleanup")
        guard let app = n.app else { return }
        if let pending = try? ChangeCapture.unpublishedChanges(app), pending > 0 {
            trace("node \(n.id) -cleanup refused: \(pending) unpublished change(s)")
            startSidecar(n)
            if migrate {
                // The migration does not need -cleanup: ALTER TABLE goes through capture on the running node.
                alterTable(n)
            } else if nowMs + 500 < endMs {
                push(.cleanupRetry(node: n.id, migrate: migrate, untilMs: endMs), at: nowMs + 500)
            }
            return
        }
        do {
            try ChangeCapture.removeAll(app)
            trace("node \(n.id) -cleanup")
            if migrate && !n.hasExtraColumn && !Self.hasExtraColumn(app) {
                try app.execute("ALTER TABLE kv ADD COLUMN extra TEXT")
                trace("node \(n.id) ALTER TABLE kv ADD COLUMN extra (no sidecar)")
            }
            if migrate { n.hasExtraColumn = true }
        } catch {
            violations.append("node \(n.id): -cleanup failed: \(error)")
        }
        n.cleanedUpKeys = []
        n.highestCheckpoint.removeAll()  // the checkpoints went with the bookkeeping: replay starts over
    }

    /// A sidecar started on a cleaned database: its install captured the rows written meanwhile with versions below
    /// any real write. Those versions join the history now, so the oracle judges them like any write.
    func recordCleanedUpWrites(_ n: SimNode) {
        guard n.sidecarUp, let app = n.app, let keys = n.cleanedUpKeys else { return }
        n.cleanedUpKeys = nil
        for key in keys.sorted() {
            guard let v = try? versionOf(app, key: key), !v.deleted else { continue }
            // Captured with no write behind it, such a row must lose to every real write of its key.
            let earlier = history.filter { $0.table == "kv" && $0.key == key && !versionlessCaptures.contains($0.version) }
            if let newest = earlier.max(by: { $0.version < $1.version }), newest.version < v.version {
                violations.append("node \(n.id): key \(key), written while capture was absent, got version \(v.version), above the real write \(newest.version) by node \(newest.node): it overrides cluster state")
            }
            let row = try? app.query("SELECT * FROM kv WHERE k = ?", [.integer(key)]).first
            history.append(WriteRecord(node: n.id, key: key, version: v.version, row: row, atMs: nowMs))
            versionlessCaptures.insert(v.version)
        }
    }

    /// Whether a sidecar has recorded the table's schema in this database yet.
    func isCaptured(_ app: Database) -> Bool {
        let sql = "SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.schemaTable)) WHERE table_name = 'kv'"
        return ((try? app.scalar(sql)?.int64) ?? 0) > 0
    }

    func heal() {
        healed = true
        trace("heal")
        for n in nodes { n.sidecarVFS.faults?.enabled = false }
        serverUp = true
        for n in nodes {
            n.canSend = true
            n.canReceive = true
            if !n.machineUp { bootMachine(n) }
            if n.machineUp && !n.sidecarUp { startSidecar(n) }
            resume(n)
        }
        // A rolling ALTER that had not reached every node finishes at heal time.
        if faults.contains(where: { $0.kind == .rollingAlter }) {
            for n in nodes where !n.hasExtraColumn { alterTable(n) }
        }
        push(.quiesceCheck, at: nowMs + 100)
    }
}
