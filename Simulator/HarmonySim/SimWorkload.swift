import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite

/// One application write as drawn, before it commits (with a lock model it may wait for the lock first).
struct DrawnWrite {
    /// 0 insert, 1 update, 2 delete, 3 key change, one per statement of the transaction.
    var ops: [Int]
    var keys: [Int64]
    /// The key a key change moves its row to (0 for the other operations).
    var newKeys: [Int64]
    /// A value above max_row_bytes, which the application corrects a little later.
    var oversized: Bool
    var table: String
    /// The moment the application wanted the lock (µs).
    var drawnUs: Double
}

/// The application on every node: plain SQL writes through its own connection, each committed write recorded
/// with the version it got (the history the checkers judge against).
extension Simulation {
    /// The tables the workload writes: `kv`, then `kv2` ... (`Scenario.tables`).
    var workloadTables: [String] { ["kv"] + (1..<max(1, scenario.tables)).map { "kv\($0 + 1)" } }

    /// `slot` of `slots`: its place among the writes the node makes this millisecond (for the lock model's timeline).
    func performWrite(_ node: SimNode, slot: Int = 0, of slots: Int = 1) {
        guard node.app != nil else { return }
        let opWeights = scenario.insertWeight + scenario.updateWeight + scenario.deleteWeight + scenario.keyChangeWeight
        let total = opWeights + scenario.transactionWeight
        var pick = Int(workRandom.below(UInt64(max(total, 1))))
        var ops: [Int] = []
        // 0 insert, 1 update, 2 delete, 3 key change. With no key changes this draws exactly as before.
        func draw() -> Int {
            var p = Int(workRandom.below(UInt64(max(opWeights, 1))))
            if p < scenario.insertWeight { return 0 }
            p -= scenario.insertWeight
            if p < scenario.updateWeight { return 1 }
            p -= scenario.updateWeight
            return p < scenario.deleteWeight ? 2 : 3
        }
        if pick < total - scenario.transactionWeight {
            ops = [draw()]
        } else {
            pick = Int(workRandom.int(2...Int64(max(2, scenario.transactionOpsMax))))
            ops = (0..<pick).map { _ in draw() }
        }
        // With no capture (after -cleanup) a delete leaves no tombstone to replicate: the application of the
        // seeds' procedure only inserts and updates meanwhile.
        if node.cleanedUpKeys != nil { ops = ops.map { $0 >= 2 ? 1 : $0 } }
        let keys = ops.map { _ in workRandom.int(1...Int64(scenario.keys)) }
        let newKeys = ops.map { $0 == 3 ? workRandom.int(1...Int64(scenario.keys)) : 0 }
        let oversized = ops == [0] && scenario.oversizedValuePermille > 0 && workRandom.chance(permille: scenario.oversizedValuePermille)
        // Drawn only with several tables, so single-table scenarios replay as before.
        let table = oversized ? "kv" : scenario.tables > 1 ? workloadTables[Int(workRandom.below(UInt64(scenario.tables)))] : "kv"
        var write = DrawnWrite(ops: ops, keys: keys, newKeys: newKeys, oversized: oversized, table: table, drawnUs: nowUs)
        guard let commitUs = scenario.costs?.appCommitUs, commitUs > 0 else {
            commitDrawnWrite(node, write)
            return
        }
        write.drawnUs = writeLock.drawnMomentUs(atMs: nowMs, slot: slot, of: slots)
        if writeLock.applicationWaiting[node.id] != nil {
            writeLock.applicationWaiting[node.id]!.writes.append(write)  // behind the ones its connection still owes
        } else if let startUs = writeLock.applicationMayCommit(node: node.id, atUs: write.drawnUs) {
            commitDrawnWrite(node, write, lockFromUs: startUs)
        } else {
            // The sidecar holds the lock: the application sleeps in its busy handler and tries again then.
            applicationSleeps(node.id, ([write], 0, writeLock.applicationTurnUs(node: node.id, atUs: write.drawnUs)))
        }
    }

    /// Node `id`'s application failed a try for the lock at `waiting.nextTryUs`: it sleeps the busy handler's next
    /// interval, and tries again then.
    func applicationSleeps(_ id: Int, _ waiting: (writes: [DrawnWrite], tries: Int, nextTryUs: Double)) {
        var waiting = waiting
        waiting.nextTryUs += Double(SimWriteLock.busyHandlerSleepMs(afterTries: waiting.tries)) * 1_000
        waiting.tries += 1
        writeLock.applicationWaiting[id] = waiting
        push(.applicationRetry(node: id), at: Self.floorMs(waiting.nextTryUs))
    }

    /// With a lock model, node `node`'s application tries again for the lock its waiting writes need: still held by
    /// the sidecar, it sleeps the busy handler's next interval; free, it commits them all back to back.
    func retryApplicationWrites(_ node: SimNode) {
        guard let waiting = writeLock.applicationWaiting[node.id], let commitUs = scenario.costs?.appCommitUs else { return }
        guard node.machineUp, node.app != nil else {
            writeLock.applicationWaiting[node.id] = nil
            return
        }
        guard let startUs = writeLock.applicationMayCommit(node: node.id, atUs: waiting.nextTryUs) else {
            return applicationSleeps(node.id, waiting)
        }
        writeLock.applicationWaiting[node.id] = nil
        var fromUs = startUs
        for write in waiting.writes {
            fromUs = commitDrawnWrite(node, write, lockFromUs: max(fromUs, write.drawnUs)) ?? fromUs + commitUs
        }
    }

    /// Commits a write drawn earlier; with a lock model it holds the lock from `lockFromUs`. Returns when it is done
    /// (µs; nil without a lock model).
    @discardableResult
    func commitDrawnWrite(_ node: SimNode, _ write: DrawnWrite, lockFromUs: Double? = nil) -> Double? {
        let capturesBefore = node.pendingCaptures.count
        if write.oversized {
            // A value above max_row_bytes, committed on its own so the sidecar reads it when it publishes: refused and
            // parked. The application corrects it a little later, so the cluster still converges.
            runWrite(node, ops: write.ops, keys: write.keys, newKeys: write.newKeys, valueBytes: scenario.maxRowBytes + 1)
            push(.correctOversized(node: node.id, key: write.keys[0]), at: nowMs + 200)
        } else {
            runWrite(node, ops: write.ops, keys: write.keys, newKeys: write.newKeys, table: write.table)
        }
        var doneUs: Double?
        if let commitUs = scenario.costs?.appCommitUs, commitUs > 0, let lockFromUs {
            doneUs = writeLock.applicationCommitted(node: node.id, startUs: lockFromUs, commitUs: commitUs)
            applicationLockWaitUs += max(0, lockFromUs - write.drawnUs)
            // A write's lag counts from its commit, as the live benchmark's does from when its INSERT returned: the
            // time it waited for the write lock (a stamp holding it) is the application's, reported apart live.
            for i in capturesBefore..<node.pendingCaptures.count { node.pendingCaptures[i].atMs = Self.ms(doneUs!) }
        }
        if node.sidecarUp {
            push(.databaseChanged(node: node.id, incarnation: node.incarnation), at: nowMs + workRandom.int(0...scenario.detectDelayMsMax))
        }
        return doneUs
    }

    /// Overwrites `key` if its value is above max_row_bytes (the application correcting a value its sidecar refused);
    /// while the machine is down, again once it is back.
    func correctOversized(_ node: SimNode, key: Int64) {
        guard node.machineUp, let app = node.app else {
            push(.correctOversized(node: node.id, key: key), at: nowMs + 500)
            return
        }
        guard let length = try? app.scalar("SELECT length(v) FROM kv WHERE k = ?", [.integer(key)])?.int64,
              length > Int64(scenario.maxRowBytes) else { return }
        runWrite(node, ops: [1], keys: [key], newKeys: [0])
        if node.sidecarUp { push(.databaseChanged(node: node.id, incarnation: node.incarnation), at: nowMs + 1) }
    }

    /// One application transaction of `ops` (0 insert, 1 update, 2 delete, 3 key change) on `keys`, recorded in the
    /// history with the versions it got. `valueBytes`: the written values' length, instead of the usual short tag.
    /// `table`: `kv` or another of the workload's tables (which never gain the ALTER scenarios' extra column).
    func runWrite(_ node: SimNode, ops: [Int], keys: [Int64], newKeys: [Int64], valueBytes: Int? = nil, table: String = "kv") {
        guard let app = node.app else { return }
        node.vfs.time.nowMs = node.nowMs(simMs: nowMs)
        let touched = Set(keys + newKeys.filter { $0 > 0 }).sorted()
        node.cleanedUpKeys?.formUnion(touched)
        // A single write may come from the application's second connection; everything is read through the first.
        let writer = ops.count == 1 ? node.smallWriter ?? app : app
        do {
            let queuedBefore = try lastQueueID(app)
            try writer.transaction(.immediate) {
                for (i, (op, key)) in zip(ops, keys).enumerated() {
                    node.writeCounter += 1
                    let tag = "n\(node.id)w\(node.writeCounter)"
                    // Draws only when switched on, so scenarios without large values replay as before.
                    let large = valueBytes == nil && scenario.largeValuePermille > 0 && workRandom.chance(permille: scenario.largeValuePermille)
                    let length = valueBytes ?? (large ? scenario.largeValueBytes : 0)
                    let value = DatabaseValue.text(tag + String(repeating: "L", count: length))
                    let extra = node.hasExtraColumn && table == "kv"
                    switch op {
                    case 0:
                        if extra {
                            try writer.execute("INSERT INTO kv (k, v, n, extra) VALUES (?, ?, 1, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = n + 1, extra = excluded.extra",
                                            [.integer(key), value, value])
                        } else {
                            try writer.execute("INSERT INTO \(table) (k, v, n) VALUES (?, ?, 1) ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = n + 1",
                                            [.integer(key), value])
                        }
                    case 1:
                        if extra {
                            try writer.execute("UPDATE kv SET v = ?, n = n + 1, extra = ? WHERE k = ?", [value, value, .integer(key)])
                        } else {
                            try writer.execute("UPDATE \(table) SET v = ?, n = n + 1 WHERE k = ?", [value, .integer(key)])
                        }
                    case 2:
                        try writer.execute("DELETE FROM \(table) WHERE k = ?", [.integer(key)])
                    default:
                        // Move the row to a free key, as an application renumbering or merging records would.
                        try writer.execute("UPDATE \(table) SET k = ?1, v = ?2, n = n + 1 WHERE k = ?3 AND NOT EXISTS (SELECT 1 FROM \(table) WHERE k = ?1)",
                                        [.integer(newKeys[i]), value, .integer(key)])
                    }
                }
            }
            // Per key, the transaction's last queued change: earlier ones of the same key are superseded, never sent.
            if let queuedBefore {
                var last: [String: (id: Int64, table: String, key: Int64, deleted: Bool)] = [:]
                for change in try queuedChanges(app, after: queuedBefore) { last["\(change.table) \(change.key)"] = (change.id, change.table, change.key, change.deleted) }
                for change in last.values.sorted(by: { $0.id < $1.id }) {
                    // Queue ids start again only once the queue is empty: a write still pending under this id was
                    // stamped by a transaction that never reported it (its version unknown to the oracle, and to the
                    // priority lane's bookkeeping). Pending ids increase until that happens, so only an id not above
                    // the newest pending one is looked for (a bulk load queues thousands in one transaction).
                    if change.id <= node.pendingCaptures.last?.queueID ?? 0,
                       let earlier = node.pendingCaptures.first(where: { $0.queueID == change.id }) {
                        violations.append("node \(node.id) queued a write under id \(change.id) at \(nowMs) ms while its write of key \(earlier.key) at \(earlier.atMs) ms under that id was never reported stamped")
                    }
                    let row = change.deleted ? nil : try app.query("SELECT * FROM \(change.table) WHERE k = ?", [.integer(change.key)]).first
                    node.pendingCaptures.append(PendingCapture(queueID: change.id, table: change.table, key: change.key, deleted: change.deleted, row: row, atMs: nowMs))
                }
            }
            trace("node \(node.id) write ops \(ops) keys \(keys)\(newKeys.contains { $0 > 0 } ? " to \(newKeys)" : "")\(valueBytes.map { " of \($0) bytes" } ?? "")\(table == "kv" ? "" : " in \(table)")")
        } catch {
            violations.append("node \(node.id): application write failed: \(error)")
        }
    }

    /// The capture queue's newest id (0 when empty); nil while capture was never installed (or after a -cleanup).
    func lastQueueID(_ db: Database) throws -> Int64? {
        guard try db.tableExists(Bookkeeping.captureQueue) else { return nil }
        return try db.scalar("SELECT coalesce(max(id), 0) FROM \(quoteIdentifier(Bookkeeping.captureQueue))")?.int64 ?? 0
    }

    /// The changes to the workload's tables the triggers queued after `id`, in commit order.
    func queuedChanges(_ db: Database, after id: Int64) throws -> [(id: Int64, table: String, key: Int64, deleted: Bool)] {
        let tables = workloadTables.map(quoteLiteral).joined(separator: ", ")
        return try db.query("SELECT id, table_name, k1, type FROM \(quoteIdentifier(Bookkeeping.captureQueue)) WHERE id > ? AND table_name IN (\(tables)) ORDER BY id",
                            [.integer(id)]).map { ($0[0].int64 ?? 0, $0[1].string ?? "kv", $0[2].int64 ?? 0, $0[3].string == "delete") }
    }

    /// The core sent queued writes ahead of their stamp: they join the history now, under the versions sent (the
    /// stamp must give the same ones, `writesStamped`).
    func writesSentAhead(_ node: SimNode, _ versions: [Int64: Int64]) {
        defer { node.sentAheadRows.removeAll() }
        for i in node.pendingCaptures.indices {
            let capture = node.pendingCaptures[i]
            guard let hlc = versions[capture.queueID] else { continue }
            if let earlier = capture.aheadHLC {
                if earlier != hlc {
                    violations.append("node \(node.id) sent its write of key \(capture.key) ahead of its stamp twice, as \(earlier) and \(hlc)")
                }
                continue
            }
            node.pendingCaptures[i].aheadHLC = hlc
            // The row sent must be the one this write left: a later write's row under this version would be a state
            // of the row that never had this version anywhere.
            if let sent = node.sentAheadRows[hlc], sent.table == capture.table {
                let sentRow = sent.operation == .delete ? nil : sent.row.map(\.value)
                let same = switch (sentRow, capture.row) {
                case (nil, nil): true
                case (let have?, let want?): SimulationCheckers.matches(have, want) || SimulationCheckers.matches(want, have)
                default: false
                }
                if !same || capture.deleted != (sent.operation == .delete) {
                    violations.append("node \(node.id) sent key \(capture.key) ahead of its stamp as version \(RowVersion(hlc: hlc, node: Int64(node.id))) with \(sentRow.map { SimulationCheckers.brief($0) } ?? "a delete"), but that write left \(capture.row.map { SimulationCheckers.brief($0) } ?? "a delete")")
                }
            }
            history.append(WriteRecord(node: node.id, key: capture.key, version: RowVersion(hlc: hlc, node: Int64(node.id)),
                                       row: capture.row, atMs: capture.atMs, table: capture.table))
        }
    }

    /// The core stamped versions on queued writes: they join the history now, and must be above every version the
    /// node had applied (causality) and above its own earlier writes. Returns how many tables the stamped writes name.
    @discardableResult
    func writesStamped(_ node: SimNode, _ stamped: StampedChanges) -> Int {
        let previousLocalHLC = node.lastLocalHLC
        var unstamped = 0
        var stillQueued: [PendingCapture] = []
        var tables: Set<String> = []
        for capture in node.pendingCaptures {
            // A stamp takes the oldest writes, up to a batch's end (publishing's own stamp may stop short).
            if capture.queueID > stamped.lastQueueID {
                stillQueued.append(capture)
                continue
            }
            tables.insert(capture.table)
            guard let hlc = stamped.hlcs[capture.queueID] else {
                unstamped += 1
                continue
            }
            let version = RowVersion(hlc: hlc, node: Int64(node.id))
            if let ahead = capture.aheadHLC {
                // Other nodes may already hold it under the version it was sent with.
                if ahead != hlc {
                    violations.append("node \(node.id) sent its write of key \(capture.key) (queue id \(capture.queueID)) ahead of its stamp as version \(RowVersion(hlc: ahead, node: Int64(node.id))), then stamped it \(version)")
                }
            } else {
                history.append(WriteRecord(node: node.id, key: capture.key, version: version, row: capture.row, atMs: capture.atMs, table: capture.table))
            }
            if scenario.costs != nil, scenario.bulkRows > 0, capture.table == "kv", capture.key > Int64(scenario.keys) { bulkVersions.insert(version) }
            if version.hlc <= node.maxAppliedHLC {
                violations.append("causality: node \(node.id) wrote key \(capture.key) at \(capture.atMs) ms and stamped it at \(nowMs) ms with version \(version), not above \(RowVersion(hlc: node.maxAppliedHLC, node: 0).description) it had applied")
            }
            // A node's own versions strictly increase (two writes with one version would share a message id).
            if version.hlc <= previousLocalHLC {
                violations.append("node \(node.id) stamped key \(capture.key) at \(nowMs) ms with version \(version), not above its own earlier write's \(RowVersion(hlc: previousLocalHLC, node: Int64(node.id)))")
            }
            node.lastLocalHLC = max(node.lastLocalHLC, version.hlc)
        }
        // The stamp takes the queue from its oldest write on, without holes: a write left out would never get a
        // version, nor be sent.
        if unstamped > 0 {
            violations.append("node \(node.id) stamped queue ids \(stamped.firstQueueID)...\(stamped.lastQueueID) at \(nowMs) ms but left \(unstamped) captured write(s) among them unstamped")
        }
        node.pendingCaptures = stillQueued
        return tables.count
    }

    /// After a power loss, the queue holds what reached the disk: writes that vanished are gone, and writes whose
    /// stamp vanished are queued again (their first versions are loss candidates, `awaitingPowerBack`).
    func reloadPendingCaptures(_ node: SimNode, _ app: Database) throws {
        guard try app.tableExists(Bookkeeping.captureQueue) else {
            node.pendingCaptures.removeAll()
            return
        }
        let known = Dictionary(node.pendingCaptures.map { ($0.queueID, $0) }, uniquingKeysWith: { a, _ in a })
        node.pendingCaptures = try queuedChanges(app, after: 0).map { change in
            if let capture = known[change.id], capture.table == change.table, capture.key == change.key, capture.deleted == change.deleted { return capture }
            let row = change.deleted ? nil : try app.query("SELECT * FROM \(change.table) WHERE k = ?", [.integer(change.key)]).first
            return PendingCapture(queueID: change.id, table: change.table, key: change.key, deleted: change.deleted, row: row, atMs: nowMs)
        }
    }

    struct KeyVersion: Equatable {
        var version: RowVersion
        var deleted: Bool
    }

    func versionOf(_ db: Database, key: Int64) throws -> KeyVersion? {
        guard try db.scalar("SELECT count(*) FROM sqlite_schema WHERE name = ?", [.text(Bookkeeping.versionTable("kv"))])?.int64 == 1,
              let row = try db.query("SELECT hlc, node, deleted FROM \(quoteIdentifier(Bookkeeping.versionTable("kv"))) WHERE pk_k = ?", [.integer(key)]).first
        else { return nil }
        return KeyVersion(version: RowVersion(hlc: row[0].int64 ?? 0, node: row[1].int64 ?? 0), deleted: row[2].int64 == 1)
    }
}
