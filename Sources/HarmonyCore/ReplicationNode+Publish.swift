import HarmonyCodec
import HarmonySQLite

extension ReplicationNode {
    /// Reads pending change-log rows in id order and hands them to the log, up to the in-flight limit.
    /// A row is marked published only when the log acknowledges it (`publishAcknowledged`).
    ///
    /// A row enters `inFlight` only when its message is handed to the log, and the scan cursor moves past a page
    /// only once all of it was handed over: a throw halfway (a change log that cannot be read) leaves nothing
    /// counted as in flight that was never sent, and the next call reads the unsent rows again.
    public func publishPending() throws {
        guard isRunning, config.publish, !publishingHeldForRepair() else { return }
        // Twice at most: a schema change found while pages are read stops them (`readPendingPage`); its DDL, if
        // any, goes out first, and otherwise the rows go on at once.
        for _ in 0..<2 {
            if config.replicateDDL, try publishDefinitionsFirst() { return }
            try publishNewestFirst()
            let fifoMax = config.publishInFlightMax - priorityLaneMax
            var pages = 0
            while inFlight.count < fifoMax {
                if unappliedMessageAtRisk() {
                    try stampWhileBacklogWaits()
                    break
                }
                let limit = min(config.scanMaxChanges, fifoMax - inFlight.count)
                let page = try readPendingPage(limit: limit)
                if page.end == scanCursor { break }
                // A page with more behind it is a backlog receivers take in order; the last one may be hinted.
                try sendPage(page, hint: page.rowsRead < limit)
                scanCursor = page.end
                pages += 1
                if config.publishPagesPerCall > 0 && pages >= config.publishPagesPerCall {
                    // The next page in a call of its own, which begins with the lane as this loop goes on with it (none
                    // after a short page: it was the last, and a commit made since has a look of its own).
                    if page.rowsRead == limit {
                        env.clock.schedule(.publishContinue, afterMs: 0)
                    }
                    return
                }
                // A commit made while this window is read goes out within a page, not after the whole window.
                try publishNewestFirst()
            }
            guard config.replicateDDL && definitionsToPublish else { return }
        }
    }

    /// The scan's pages wait while sending them could push messages this node has yet to apply out of the stream
    /// (`unappliedMessageAtRisk`); the stamping they drove goes on here, a batch a call, at once again unless the
    /// applications get their pause (another node's message may be waiting for that stamp). The priority lane still
    /// sends small commits. The scan goes on once the node has applied more (`resumeScanIfNoLongerAtRisk`).
    func stampWhileBacklogWaits() throws {
        if !scanWaitsForUnapplied, let (shard, reach) = shardAtRisk() {
            env.events?.record(.sendingWaitsForApplying(shard: shard, checkpoint: checkpoint(shard), reach: reach,
                                                        maxEntries: config.logMaxMessages))
        }
        scanWaitsForUnapplied = true
        if try stampLocalChangesIfQueued(), !bookkeepingPaused, try stampBacklogIsLarge(requireDatabase()) {
            env.clock.schedule(.publishContinue, afterMs: 0)
        }
    }

    /// A message (or part) handed to the log and not answered yet: it will reach the stream, so it counts toward how
    /// far the stream reaches (`shardAtRisk`).
    func noteUnacked(token: Int64, shard: Int) {
        if unackedShards.updateValue(shard, forKey: token) == nil { unackedMessages[shard, default: 0] += 1 }
    }

    func forgetUnacked(token: Int64) {
        guard let shard = unackedShards.removeValue(forKey: token) else { return }
        unackedMessages[shard, default: 0] -= 1  // noted, so at least 1
    }

    /// After a delivery: the scan goes on at once if it waited and the node has now applied enough.
    func resumeScanIfNoLongerAtRisk() {
        guard scanWaitsForUnapplied, !unappliedMessageAtRisk() else { return }
        scanWaitsForUnapplied = false
        env.clock.schedule(.publishContinue, afterMs: 0)
    }

    /// In-flight room kept for `publishNewestFirst`: a quarter of the window, at most `priorityLaneMax`.
    var priorityLaneMax: Int {
        min(config.priorityLaneMax, config.publishInFlightMax / 4)
    }

    /// The priority lane: while a backlog lies beyond the next page of the scan (a bulk load), the newest pending
    /// changes go out ahead of it, so a small commit made meanwhile becomes visible elsewhere without waiting for
    /// the whole backlog. Order between different rows does not matter to last-writer-wins, and an older entry of
    /// the same row is found superseded when the scan reaches it.
    ///
    /// Each entry is considered by the lane once (`laneFloor`): later calls look only at commits made since, so the
    /// lane carries new small commits, not the backlog's tail page after page (the scan gets to that). The one
    /// exception is the last batch of a bulk import's stamping (`laneWalk`): the small writes the application made
    /// while the import was stamped a batch at a time are stamped there all at once, behind the import, more of them
    /// than the lane takes at a time; the lane walks down through that batch on later calls, newest first, or all but
    /// the newest few would wait for the scan to get through the whole import.
    ///
    /// Commits still waiting behind a large stamp backlog go too, ahead of their stamp (`sendAheadOfStamp`); they
    /// take no room in the window, which the backlog may fill.
    func publishNewestFirst() throws {
        try publishSmallCommits()
        // The newest stamped pages of a backlog wait with the scan (`unappliedMessageAtRisk`); small commits do not.
        if unappliedMessageAtRisk() {
            try sendAheadOfStamp(room: priorityLaneMax)
            return
        }
        let room = min(priorityLaneMax, config.publishInFlightMax - inFlight.count)
        guard room > 0 else {
            try sendAheadOfStamp(room: priorityLaneMax)
            return
        }
        let scanReach = scanCursor + Int64(config.scanMaxChanges)
        let page = try readPendingPage(limit: room, newestAfter: max(scanReach, laneFloor))
        laneFloor = max(laneFloor, page.newestRead ?? 0)
        try sendPage(page, hint: true)
        try sendAheadOfStamp(room: priorityLaneMax)
        if config.plantedBugs.contains(.laneMovesScanCursor), let newest = page.records.map(\.id).max() {
            scanCursor = max(scanCursor, newest)
        }
        // The walk leaves half of the lane free: with all of it taken, a commit made meanwhile would find no room (and
        // not even be stamped) until the log acknowledged some of the walk.
        let walkRoom = min(priorityLaneMax, config.publishInFlightMax - inFlight.count) - priorityLaneMax / 2
        guard walkRoom > 0, let walk = laneWalk else { return }
        let above = max(walk.above, scanReach)
        guard above + 1 < walk.below else {
            laneWalk = nil
            return
        }
        let rest = try readPendingPage(limit: walkRoom, newestAfter: above, below: walk.below)
        // A stamp during the read may have begun a newer walk; a read cut short for DDL to go first ends none.
        if let current = laneWalk, current == walk {
            if rest.rowsRead == walkRoom, let oldest = rest.oldestRead {
                laneWalk = (above: above, below: oldest)
            } else if rest.rowsRead > 0 || !(config.replicateDDL && definitionsToPublish) {
                laneWalk = nil
            }
        }
        try sendPage(rest, hint: false)
    }

    /// Small commits found by the stamp (`smallCommitsPending`) go first, the newest if the lane has no room for all:
    /// a single-row commit made while a bulk writer's transactions were queued around it does not wait for them.
    /// Those within the scan's next page are left to it: they would not wait anyway, and taken apart from the page
    /// they would cost messages of their own (with many connections each writing a row, every write is a small
    /// commit).
    func publishSmallCommits() throws {
        let room = min(priorityLaneMax, config.publishInFlightMax - inFlight.count)
        guard room > 0, !smallCommitsPending.isEmpty else { return }
        let scanReach = scanCursor + Int64(config.scanMaxChanges)
        let taken = Array(smallCommitsPending.filter { $0 > scanReach && !isOutstanding($0) }.suffix(room))
        let gone = Set(taken)
        smallCommitsPending.removeAll { gone.contains($0) || $0 <= scanReach || isOutstanding($0) }
        guard !taken.isEmpty else { return }
        try sendPage(try readPendingPage(limit: taken.count, only: taken), hint: true)
    }

    /// Sends a page's changes in per-shard batches, marks its superseded entries published and parks oversized ones.
    /// `hint`: its small messages of user rows may be offered to receivers ahead of their turn (`OutgoingMessage.hint`);
    /// never for pages of a backlog, which receivers take in order anyway.
    func sendPage(_ page: PendingPage, hint: Bool) throws {
        let oversized = try inShardBatches(page.records, oversizedSent: config.plantedBugs.contains(.publishOversizedRows)) {
            try send($0, shard: $1, hint: hint)
        }
        // Entries with nothing to send: superseded by a later write (here or from another node), or whose
        // table is gone. The later write, if it is this node's, has an entry of its own.
        if !page.superseded.isEmpty { try markPublishedIfTheLockAllows(page.superseded) }
        if !oversized.isEmpty { try refuseOversized(oversized) }
    }

    /// Groups changes into per-shard batches, each closed at `publishBatchMax` changes or `batchBytesMax` bytes, and
    /// hands each to `close` as it fills, the rest in shard order (not dictionary order: the simulator must see the
    /// same publishes for the same seed). Returns the changes above `max_row_bytes`, left out (unless
    /// `oversizedSent`).
    func inShardBatches(_ changes: [(id: Int64, record: ChangeRecord)], oversizedSent: Bool = false,
                        _ close: (PendingBatch, Int) throws -> Void) throws -> [(id: Int64, record: ChangeRecord, bytes: Int)] {
        var oversized: [(id: Int64, record: ChangeRecord, bytes: Int)] = []
        var batches: [Int: PendingBatch] = [:]
        for (id, record) in changes {
            // DDL goes to one stream, so every node applies it in the order it was made (an index after its table).
            let shard = record.table == Bookkeeping.ddlTable ? router.shards.lowerBound
                : router.shard(table: record.table, primaryKey: record.primaryKey.map(\.value))
            let size = Self.approximateBytes(record)
            if size > sendableRowBytes && !oversizedSent {
                oversized.append((id, record, size))
                continue
            }
            if let open = batches[shard], open.ids.count >= config.publishBatchMax || open.bytes + size > batchBytesMax {
                try close(open, shard)
                batches[shard] = nil
            }
            batches[shard, default: PendingBatch()].add(record, id: id, bytes: size)
        }
        for shard in batches.keys.sorted() { try close(batches[shard]!, shard) }
        return oversized
    }

    /// A change's message id. A definition's also names its content: another node sends a state again under its
    /// author's version (`applyDefinition`), and what it holds there can differ from what the author sent (an index
    /// it moved onto a renamed table); with the author's id, JetStream would drop it as a duplicate of the first.
    static func messageID(of record: ChangeRecord) -> String {
        guard record.table == Bookkeeping.ddlTable else { return record.messageID }
        var h = StableHash()
        for column in record.row {
            h.combine(column.name)
            h.combine(column.value)
        }
        return "\(record.messageID)-\(h.hex)"
    }

    /// A message's bytes and id: a single change as it is, several as a batch the receiver applies atomically. Same
    /// content, same id, so a republished batch is deduplicated; any other grouping is a new message, which is
    /// harmless: applying a change twice changes nothing.
    func encodedMessage(_ records: [ChangeRecord]) throws -> (payload: [UInt8], messageID: String) {
        if records.count == 1 {
            let id = config.plantedBugs.contains(.resentDefinitionDeduplicated) ? records[0].messageID : Self.messageID(of: records[0])
            return (try EnvelopeCodec.encode(records[0], compress: config.compress), id)
        }
        var h = StableHash()
        for r in records { r.combineIdentity(into: &h) }
        return (try EnvelopeCodec.encodeBatch(records, compress: config.compress), "\(config.nodeID)-b\(records.count)-\(h.hex)")
    }

    /// DDL goes out before any data, each change its own message on the first stream, and data waits until the log
    /// has every DDL change. Rows are read at publish time under the newest definition: sent ahead of that
    /// definition's DDL, a row could stand in front of it on the first stream, where receivers would hold it (and
    /// everything behind it, the DDL included) forever. Returns whether data must wait.
    func publishDefinitionsFirst() throws -> Bool {
        guard definitionsToPublish else { return false }
        let db = requireDatabase()
        try refreshCaptureIfSchemaChanged()
        // Tables first: each entry sends its object's definition as it is now, so an index made before its table was
        // renamed (both unsent) already names the new table, whose own entry may come later in the log.
        let tablesFirst = config.plantedBugs.contains(.definitionsInLogOrder) ? "" : "CASE d.type WHEN 'table' THEN 0 ELSE 1 END, "
        let pending = try db.query("""
            SELECT g.id, g.change_table_id FROM \(quoteIdentifier(Bookkeeping.globalLog)) g
            LEFT JOIN \(SchemaObjects.table) d ON d.id = g.change_table_id
            WHERE g.state = 0 AND g.table_name = ? ORDER BY \(tablesFirst)g.id
            """, [.text(Bookkeeping.ddlTable)])
        guard !pending.isEmpty else {
            definitionsToPublish = false
            return false
        }
        // One at a time, in that order: a retried publish must never let a later DDL (an index) land before an
        // earlier one (the table it is on).
        for row in pending {
            guard let id = row[0].int64, let objectID = row[1].int64 else { continue }
            if isOutstanding(id) { return true }
            if let record = try definitionRecord(id: objectID) {
                var batch = PendingBatch()
                batch.add(record, id: id, bytes: Self.approximateBytes(record))
                try send(batch, shard: router.shards.lowerBound)
                return true
            }
            try markPublished([id])
        }
        return true
    }

    /// One page of the change log past the scan cursor, with each entry's row as it is now.
    struct PendingPage {
        var records: [(id: Int64, record: ChangeRecord)] = []
        var superseded: [Int64] = []
        /// The last change-log id read (the cursor once the page is handled).
        var end: Int64
        /// Entries the read returned, in flight ones included: fewer than asked means nothing pending lies beyond.
        var rowsRead = 0
        /// For the lane's newest-first reads: the first and last id read, in flight ones included.
        var newestRead: Int64?
        var oldestRead: Int64?
    }

    /// Reads a page inside one read transaction whose schema is the captured one, so every row image matches
    /// the schema hash it is sent with (an ALTER the sidecar has not seen yet is picked up first).
    /// `newestAfter`: the newest pending entries above that id (and below `below`), newest first, for the priority
    /// lane (the scan cursor does not move for them); nil: the oldest past the scan cursor.
    /// `only`: just these entries, those still pending (the lane's small commits).
    func readPendingPage(limit: Int, newestAfter: Int64? = nil, below: Int64 = .max, only ids: [Int64]? = nil) throws -> PendingPage {
        let db = requireDatabase()
        for _ in 0..<10 {
            try refreshCaptureIfSchemaChanged()
            try stampLocalChangesIfQueued()
            // DDL found just now goes out first (its rows, a renamed table's sent again, are already in the log).
            if config.replicateDDL && definitionsToPublish && !config.plantedBugs.contains(.rowsAheadOfNewDefinitions) {
                return PendingPage(end: scanCursor)
            }
            let page: PendingPage? = try db.transaction(.deferred) {
                guard try db.scalar("PRAGMA schema_version")?.int64 == schemaVersion else { return nil }
                var page = PendingPage(end: scanCursor)
                // Each entry not in flight: its change as it is now, or superseded.
                var prefetched: [String: [Int64: ChangeRecord??]] = [:]
                func take(_ id: Int64, _ changeID: Int64, _ table: String) throws {
                    let read: ChangeRecord? = switch prefetched[table]?[changeID] {
                    case .some(.some(let known)): known
                    default: try changeRecord(table: table, changeID: changeID)  // not read ahead, or not the usual case
                    }
                    if let record = read {
                        page.records.append((id, record))
                    } else {
                        page.superseded.append(id)
                    }
                }
                if let ids {
                    let entry = try db.cached("SELECT id, change_table_id, table_name FROM \(quoteIdentifier(Bookkeeping.globalLog)) WHERE id = ? AND state = 0")
                    for id in ids.prefix(limit) where !isOutstanding(id) {
                        guard let row = try entry.query([.integer(id)]).first, let changeID = row[1].int64, let table = row[2].string else { continue }
                        page.rowsRead += 1
                        try take(id, changeID, table)
                    }
                    return page
                }
                let scan = try db.cached("""
                    SELECT id, change_table_id, table_name FROM \(quoteIdentifier(Bookkeeping.globalLog))
                    WHERE state = 0 AND id > ? AND id < ? ORDER BY id \(newestAfter == nil ? "" : "DESC") LIMIT ?
                    """)
                let rows = try scan.query([.integer(newestAfter ?? scanCursor), .integer(newestAfter == nil ? .max : below),
                                           .integer(Int64(limit))])
                let entries = rows.compactMap { row -> (changeID: Int64, table: String)? in
                    guard let id = row[0].int64, !isOutstanding(id), let changeID = row[1].int64, let table = row[2].string else { return nil }
                    return (changeID, table)
                }
                prefetched = try joinedRecords(entries)
                for row in rows {
                    page.rowsRead += 1
                    guard let id = row[0].int64, let changeID = row[1].int64, let table = row[2].string else { continue }
                    if newestAfter == nil {
                        precondition(id > page.end, "change-log ids out of order: \(id) after \(page.end)")
                        page.end = id
                    } else {
                        page.newestRead = page.newestRead ?? id
                        page.oldestRead = id
                    }
                    if isOutstanding(id) { continue }
                    try take(id, changeID, table)
                }
                return page
            }
            if let page { return page }
        }
        throw CorruptBookkeeping(description: "the schema kept changing while pending changes were read (10 tries)")
    }

    /// Room a message leaves for the log's own header (the message id) under the server's payload limit.
    static let messageHeaderBytes = 1024
    /// The largest payload sent as one message; a larger one goes in parts.
    var partBytesMax: Int { config.messageBytesMax - Self.messageHeaderBytes }
    /// The largest change this node sends: `max_row_bytes`, and with `max_entries` set, what half that many messages
    /// hold. A row's parts must all be on the stream at once, and the scan's pacing (half of `max_entries` past the
    /// checkpoint) cannot hold a single change back: a row in more parts than that pushed its own first parts out of
    /// a short stream, and every node, the writer too, fell behind the stream's start for good (operator audit: eight
    /// 3 MiB rows with `max_entries = 20`).
    var sendableRowBytes: Int {
        guard config.logMaxMessages > 0, !config.plantedBugs.contains(.partsOutgrowTheStream) else { return config.rowBytesMax }
        return min(config.rowBytesMax, Int(max(1, config.logMaxMessages / 2)) * partBytesMax)
    }

    /// Batches close before they would need splitting.
    var batchBytesMax: Int { min(config.publishBatchBytesMax, partBytesMax) }

    /// Changes above `max_row_bytes` are never sent: each is parked locally (an operator can raise the limit and
    /// `-parked-retry` it) and its change-log row leaves the pending set, so it neither retries forever nor holds
    /// back a snapshot.
    func refuseOversized(_ changes: [(id: Int64, record: ChangeRecord, bytes: Int)]) throws {
        let db = requireDatabase()
        try db.transaction(.immediate) {
            for change in changes {
                try db.execute("UPDATE \(quoteIdentifier(Bookkeeping.globalLog)) SET state = 2 WHERE id = ?", [.integer(change.id)])
                // The parked copy names table and key only; the row's values stay in the change log until retried or discarded.
                let keyOnly = ChangeRecord(originNode: change.record.originNode, table: change.record.table, operation: change.record.operation,
                                           primaryKey: change.record.primaryKey, row: change.record.operation == .delete ? [] : change.record.primaryKey,
                                           version: change.record.version, schemaHash: change.record.schemaHash)
                let reason = sendableRowBytes < config.rowBytesMax
                    ? "the change is \(change.bytes) bytes, more than half of replication_log.max_entries (\(config.logMaxMessages)) messages hold (\(sendableRowBytes) bytes), so its parts could not all stay on the stream; raise max_entries (on every node) and run -parked-retry, or -parked-discard it"
                    : "the change is \(change.bytes) bytes, above max_row_bytes (\(config.rowBytesMax)); raise max_row_bytes and run -parked-retry, or -parked-discard it"
                try db.execute("INSERT INTO \(quoteIdentifier(Bookkeeping.parkedTable)) (stream, seq, payload, error) VALUES (?, ?, ?, ?)",
                               [.text(Bookkeeping.localParkedStream), .integer(change.id), .blob(try EnvelopeCodec.encode(keyOnly)), .text(reason)])
            }
        }
        for change in changes {
            env.events?.record(.changeRefused(table: change.record.table, key: change.record.keyDescription,
                                              bytes: change.bytes, limit: sendableRowBytes))
        }
    }

    struct PendingBatch {
        var records: [ChangeRecord] = []
        var ids: [Int64] = []
        var bytes = 0
        mutating func add(_ r: ChangeRecord, id: Int64, bytes b: Int) { records.append(r); ids.append(id); bytes += b }
    }

    /// Hands one message to the log: a single change as it is, several as a batch the receiver applies atomically.
    /// Its rows count as in flight from here until the log answers.
    func send(_ batch: PendingBatch, shard: Int, hint offered: Bool = false) throws {
        precondition(!batch.ids.isEmpty && batch.ids.count <= config.publishBatchMax, "batch of \(batch.ids.count) changes")
        precondition(batch.ids.count == 1 || batch.bytes <= batchBytesMax, "batch of \(batch.bytes) bytes")
        let token = batch.ids[0]
        let (payload, messageID) = try encodedMessage(batch.records)
        if batch.ids.count > 1 { batchMembers[token] = batch.ids }
        for id in batch.ids { precondition(inFlight.insert(id).inserted, "change \(id) sent twice while in flight") }
        precondition(inFlight.count <= config.publishInFlightMax, "\(inFlight.count) changes in flight, limit \(config.publishInFlightMax)")
        if config.plantedBugs.contains(.markPublishedBeforeAck) { try markPublished(batch.ids) }
        guard payload.count > partBytesMax else {
            // A small commit of user rows may skip ahead of a receiver's backlog; definitions and requests never do.
            let userRowsOnly = batch.records.allSatisfy { !$0.table.hasPrefix(Bookkeeping.prefix) }
            let hint = offered && config.hints && payload.count <= config.hintBytesMax && userRowsOnly
            let definition = !userRowsOnly && batch.records.allSatisfy { $0.table == Bookkeeping.ddlTable }
            if (userRowsOnly || definition) && config.replicate { ownEchoes.insert(payload, definition: definition) }
            noteUnacked(token: token, shard: shard)
            env.log.publish(OutgoingMessage(shard: shard, messageID: messageID, payload: payload, token: token, hint: hint))
            try crashPoint(.afterPublishHandoff)
            return
        }
        // Too large for one message: parts back to back on the same shard, acknowledged as one once all landed.
        // The group names the bytes too: a change sent again after an ALTER (same version, row read at the new
        // schema) is other bytes, and its parts must never be joined with the first attempt's.
        var content = StableHash()
        content.combine(bytes: payload)
        let groupID = "\(messageID)-\(content.hex)"
        let parts = EnvelopeCodec.split(payload, groupID: groupID, partBytes: partBytesMax)
        partsUnacked[token] = parts.count
        for (i, part) in parts.enumerated() {
            lastPartToken -= 1
            partOwners[lastPartToken] = token
            noteUnacked(token: lastPartToken, shard: shard)
            env.log.publish(OutgoingMessage(shard: shard, messageID: "\(groupID)-p\(i + 1)of\(parts.count)", payload: part, token: lastPartToken))
            // One crash point per message, as for a whole one; after the first part it leaves the rest unsent.
            if i == 0 { try crashPoint(.afterPublishHandoff) }
        }
    }

    /// A part's acknowledgement stands for its message once it is the last outstanding one; nil until then.
    func messageToken(acking token: Int64) -> Int64? {
        guard token < 0 else { return token }
        guard let owner = partOwners.removeValue(forKey: token), let left = partsUnacked[owner] else { return nil }
        if left > 1 { partsUnacked[owner] = left - 1; return nil }
        partsUnacked[owner] = nil
        return owner
    }

    /// A cheap size estimate for closing batches before they pass the server's payload limit.
    static func approximateBytes(_ r: ChangeRecord) -> Int {
        func size(_ v: DatabaseValue) -> Int {
            switch v {
            case .null: return 1
            case .integer, .real: return 9
            case .text(let s): return s.utf8.count + 5
            case .blob(let b): return b.count + 5
            }
        }
        return 64 + r.table.utf8.count + (r.row + r.primaryKey).reduce(0) { $0 + $1.name.utf8.count + 4 + size($1.value) }
    }

    /// The change one change-log entry stands for, as it is now: the row's current image and version under the
    /// captured schema (last-writer-wins needs only a row's latest state). Nil when there is nothing to send for
    /// it: a later write superseded it (a later entry of this node's, or another node's change applied here, which
    /// every node gets from the log anyway), its table is no longer captured, or its key is no longer the table's.
    func changeRecord(table: String, changeID: Int64) throws -> ChangeRecord? {
        if table == Bookkeeping.ddlTable { return try definitionRecord(id: changeID) }
        if let request = requestRecord(table, changeID: changeID) { return request }
        guard let captured = captured[table] else { return nil }
        if let record = try joinedChangeRecord(table: table, schema: captured.schema, changeID: changeID) { return record }
        return try changeRecordStepwise(table: table, captured: captured, changeID: changeID)
    }

    /// The usual case of `changeRecord` in one statement: the entry, its row's version and the row, joined on the
    /// key values the entry logged (`t.k IS e.val_k` compares as `t.k IS ?` with that value bound: the table's
    /// column is on the left, so its affinity and collation apply). `.none` when the entry is not the usual case
    /// (logged under a key with other column names, or every key value NULL); `.some(nil)` when there is
    /// nothing to send.
    func joinedChangeRecord(table: String, schema: TableSchema, changeID: Int64) throws -> ChangeRecord?? {
        let db = requireDatabase()
        let read: Statement
        do { read = try db.cached(capturedRowReadSQL(schema).joined) } catch { return .none }  // the stepwise read says why
        try read.bind([.integer(changeID)])
        defer { read.reset() }
        guard try read.step() else { return .some(nil) }
        return try joinedRecord(read, table: table, schema: schema)
    }

    /// The change of the joined read's current row (`joinedChangeRecord`'s columns, from the first).
    func joinedRecord(_ read: Statement, table: String, schema: TableSchema) throws -> ChangeRecord?? {
        // Columns: entry hlc, node, epoch; version hlc, node, deleted; the entry's key values; the row's columns.
        guard let hlc = read.column(0).int64, let node = read.column(1).int64, let epoch = read.column(2).int64,
              let entryKey = try primaryKey(table: table, epoch: epoch) else { return .some(nil) }
        guard entryKey == schema.primaryKey else { return .none }
        let keyCount = schema.primaryKey.count
        let key = schema.primaryKey.enumerated().map { ChangeRecord.Column($1, read.column(6 + $0)) }
        guard read.column(3).int64 == hlc, read.column(4).int64 == node else { return .some(nil) }
        let version = RowVersion(hlc: hlc, node: node)
        if read.column(5).int64 == 1 { return .some(localRecord(table: table, schema: schema, key: key, version: version, row: nil)) }
        // The row is there when a key column the entry gave a value for is not NULL in the join.
        guard let present = key.firstIndex(where: { $0.value != .null }) else { return .none }
        let rowStart = 6 + keyCount
        guard let keyPosition = schema.columns.firstIndex(of: schema.primaryKey[present]),
              read.column(rowStart + keyPosition) != .null else { return .some(nil) }
        return .some(localRecord(table: table, schema: schema, key: key, version: version, row: (read, rowStart)))
    }

    /// The joined reads of a page's entries, a table at a time: one statement over each table's range of change-log
    /// ids (a bulk load's page is one table's consecutive ids) instead of one per entry. Keyed by table, then change
    /// id; an id in range with no change-log row maps to nothing to send, as its own read would. Tables whose ids
    /// lie far apart (more than 4 ids in the range per entry), and bookkeeping kinds, are left to `changeRecord`.
    func joinedRecords(_ entries: [(changeID: Int64, table: String)]) throws -> [String: [Int64: ChangeRecord??]] {
        var ranges: [String: (low: Int64, high: Int64, count: Int)] = [:]
        for entry in entries where !entry.table.hasPrefix(Bookkeeping.prefix) && captured[entry.table] != nil {
            let known = ranges[entry.table]
            ranges[entry.table] = (min(known?.low ?? .max, entry.changeID), max(known?.high ?? .min, entry.changeID), (known?.count ?? 0) + 1)
        }
        var found: [String: [Int64: ChangeRecord??]] = [:]
        let db = requireDatabase()
        for (table, range) in ranges.sorted(by: { $0.key < $1.key })
        where range.count > 1 && range.high - range.low < Int64(range.count) * 4 {
            guard let schema = captured[table]?.schema else { continue }
            let read: Statement
            do { read = try db.cached(capturedRowReadSQL(schema).joinedRange) } catch { continue }  // each entry alone says why
            try read.bind([.integer(range.low), .integer(range.high)])
            defer { read.reset() }
            var records: [Int64: ChangeRecord??] = [:]
            for id in range.low...range.high { records[id] = .some(nil) }
            let idColumn = 6 + schema.primaryKey.count + schema.columns.count
            while try read.step() {
                guard let id = read.column(idColumn).int64 else { continue }
                records[id] = try joinedRecord(read, table: table, schema: schema)
            }
            found[table] = records
        }
        return found
    }

    /// `changeRecord` a statement at a time, for any entry: its key found by its epoch's column names (a renamed
    /// key column is still the key).
    func changeRecordStepwise(table: String, captured: CapturedTable, changeID: Int64) throws -> ChangeRecord? {
        let schema = captured.schema
        let db = requireDatabase()
        // One lookup per change for what is known about the table's change log (built on first use, and again
        // whenever the log's columns change).
        var known = changeLogLayouts[table]
        let readSQL: String
        if let known {
            readSQL = known.readSQL
        } else {
            let logTable = Bookkeeping.changeLog(table)
            guard try db.tableExists(logTable) else { return nil }
            readSQL = "SELECT * FROM \(quoteIdentifier(logTable)) WHERE id = ?"
        }
        let read = try db.cached(readSQL)
        try read.bind([.integer(changeID)])
        defer { read.reset() }  // holds no read lock once done
        guard try read.step() else { return nil }
        if known?.columnCount != read.columnCount {
            var index: [String: Int] = [:]
            for i in 0..<read.columnCount { index[read.columnName(i)] = i }
            known = ChangeLogLayout(columnCount: read.columnCount, index: index, readSQL: readSQL,
                                    hlc: index["hlc"], node: index["node"], epoch: index["epoch"])
            changeLogLayouts[table] = known
        }
        guard let layout = known else { return nil }
        func at(_ position: Int?) -> DatabaseValue { position.map { read.column($0) } ?? .null }
        guard let hlc = at(layout.hlc).int64, let node = at(layout.node).int64, let epoch = at(layout.epoch).int64,
              let entryKey = try primaryKey(table: table, epoch: epoch),
              entryKey.map({ captured.currentNameOf[$0] ?? $0 }) == schema.primaryKey  // a renamed key column is still the key
        else { return nil }
        let positions: [Int?]
        if let known = layout.keyPositions[epoch] {
            positions = known
        } else {
            positions = entryKey.map { layout.index[Bookkeeping.valueColumn($0)] }
            changeLogLayouts[table]!.keyPositions[epoch] = positions
        }
        let key = zip(schema.primaryKey, positions).map { ChangeRecord.Column($0, $1.map { read.column($0) } ?? .null) }
        let keyValues = key.map(\.value)
        let sql = capturedRowReadSQL(schema)
        let versionRead = try db.cached(sql.version)
        try versionRead.bind(keyValues)
        defer { versionRead.reset() }
        guard try versionRead.step(), versionRead.column(0).int64 == hlc, versionRead.column(1).int64 == node else { return nil }
        return try currentChange(table: table, schema: schema, key: key, keyValues: keyValues, version: RowVersion(hlc: hlc, node: node),
                                 deleted: versionRead.column(2).int64 == 1, rowSQL: sql.row)
    }

    /// The change a row's latest write stands for, under `version`: a delete, or the row as it is now in the captured
    /// schema's columns (`rowSQL`, from `rowReadSQL`). Nil when the row is gone.
    func currentChange(table: String, schema: TableSchema, key: [ChangeRecord.Column], keyValues: [DatabaseValue],
                       version: RowVersion, deleted: Bool, rowSQL: String) throws -> ChangeRecord? {
        if deleted { return localRecord(table: table, schema: schema, key: key, version: version, row: nil) }
        let rowRead = try requireDatabase().cached(rowSQL)
        try rowRead.bind(keyValues)
        defer { rowRead.reset() }
        guard try rowRead.step() else { return nil }
        return localRecord(table: table, schema: schema, key: key, version: version, row: (rowRead, 0))
    }

    /// This node's change as it is sent: a delete (`row` nil), or an upsert of the row in the captured schema's
    /// columns, read from the statement's current row from column `from` on.
    func localRecord(table: String, schema: TableSchema, key: [ChangeRecord.Column], version: RowVersion,
                     row source: (statement: Statement, from: Int)?) -> ChangeRecord {
        var row: [ChangeRecord.Column] = []
        if let source {
            row.reserveCapacity(schema.columns.count)
            for (i, name) in schema.columns.enumerated() { row.append(ChangeRecord.Column(name, source.statement.column(source.from + i))) }
        }
        var record = ChangeRecord(originNode: config.nodeID, table: table, operation: source == nil ? .delete : .upsert, primaryKey: key,
                                  row: row, version: version, schemaHash: schema.hash)
        record.definition = tableStates[table].map(\.definition)
        return record
    }

    /// `rowReadSQL` of a captured table's schema, built once per table (until capture is refreshed).
    func capturedRowReadSQL(_ schema: TableSchema) -> (version: String, row: String, joined: String, joinedRange: String) {
        if let known = rowReadSQLCache[schema.name] { return known }
        let (version, row) = rowReadSQL(schema)
        let e = "e", v = "v", t = "t"
        func on(_ left: String, _ column: (String) -> String) -> String {
            schema.primaryKey.map { "\(left).\(quoteIdentifier(column($0))) IS \(e).\(quoteIdentifier(Bookkeeping.valueColumn($0)))" }
                .joined(separator: " AND ")
        }
        let selected = ["\(e).hlc", "\(e).node", "\(e).epoch", "\(v).hlc", "\(v).node", "\(v).deleted"]
            + schema.primaryKey.map { "\(e).\(quoteIdentifier(Bookkeeping.valueColumn($0)))" }
            + schema.columns.map { "\(t).\(quoteIdentifier($0))" }
        let from = """
            FROM \(quoteIdentifier(Bookkeeping.changeLog(schema.name))) AS \(e)
            LEFT JOIN \(quoteIdentifier(Bookkeeping.versionTable(schema.name))) AS \(v) ON \(on(v, Bookkeeping.keyColumn))
            LEFT JOIN \(quoteIdentifier(schema.name)) AS \(t) ON \(on(t, { $0 }))
            """
        let joined = "SELECT \(selected.joined(separator: ", ")) \(from) WHERE \(e).id = ?"
        // The same for a range of entries, each row followed by its entry's id.
        let joinedRange = "SELECT \(selected.joined(separator: ", ")), \(e).id \(from) WHERE \(e).id BETWEEN ? AND ?"
        let sql = (version, row, joined, joinedRange)
        rowReadSQLCache[schema.name] = sql
        return sql
    }

    /// The two reads behind `changeRecord`: a key's current version, and its row in the captured schema's columns.
    func rowReadSQL(_ schema: TableSchema) -> (version: String, row: String) {
        ("SELECT hlc, node, deleted FROM \(quoteIdentifier(Bookkeeping.versionTable(schema.name))) WHERE \(schema.versionKeyMatch)",
         "SELECT \(schema.columns.map(quoteIdentifier).joined(separator: ", ")) FROM \(quoteIdentifier(schema.name)) WHERE \(schema.rowKeyMatch)")
    }

    /// The log stored these messages: mark their change-log rows published, then keep publishing.
    public func publishAcknowledged(tokens: [Int64]) throws {
        guard isRunning else { return }
        for token in tokens { forgetUnacked(token: token) }
        let acked = tokens.compactMap(messageToken(acking:)).flatMap { batchMembers.removeValue(forKey: $0) ?? [$0] }
            .filter { inFlight.remove($0) != nil }
        guard !acked.isEmpty else { return }
        let marked = try markPublishedIfTheLockAllows(acked)
        guard marked != .failed else { return }
        if marked == .marked { try crashPoint(.afterMarkPublished) }
        retryDelayMs = config.publishRetryDelayMsMin
        env.events?.record(.published(count: acked.count))
        try publishPending()
        // The last acknowledgement may be the moment a waiting snapshot can be taken.
        if inFlight.isEmpty && publishedUnmarked.isEmpty { try retrySnapshotIfWaiting() }
    }

    /// True when a change-log id is sent and not yet acknowledged, or acknowledged and not yet marked published:
    /// no read sends it (again).
    func isOutstanding(_ id: Int64) -> Bool { inFlight.contains(id) || publishedUnmarked.contains(id) }

    enum MarkOutcome { case marked, deferred, failed }

    /// Marks `ids` published, with those a missed lock left unmarked before, waiting for the write lock only
    /// `lock_pause_ms`. Missed (`deferred`), they wait in `publishedUnmarked` and the bookkeeping pauses
    /// (`bookkeepingResume` tries again). A storage failure (`failed`) sends them again after a backoff (the message
    /// ids make the log drop the copies) rather than restart the core over a full disk.
    @discardableResult
    func markPublishedIfTheLockAllows(_ ids: [Int64]) throws -> MarkOutcome {
        let marking = publishedUnmarked.sorted() + ids
        guard !marking.isEmpty else { return .marked }
        let db = requireDatabase()
        do {
            try waitingBrieflyForTheLock(db, if: true) { try markPublished(marking) }
        } catch let error as SQLiteError where error.isBusy && briefWaitsOnBusy && !config.plantedBugs.contains(.dropChangesWhenMarkFails) {
            publishedUnmarked.formUnion(ids)
            lockMissed(error) { .markPublishedFailed(count: marking.count, error: $0, sentAgain: false) }
            return .deferred
        } catch let error as SQLiteError where error.isTransientStorageFailure {
            ownWriteFailed(.markPublishedFailed(count: marking.count, error: "\(error.storageFailureSummary): \(error.description)", sentAgain: true))
            publishedUnmarked.removeAll()
            if !config.plantedBugs.contains(.dropChangesWhenMarkFails) { schedulePublishRetry(from: marking.min()!) }
            return .failed
        }
        publishedUnmarked.removeAll()
        return .marked
    }

    func markPublished(_ ids: [Int64]) throws {
        precondition(!ids.isEmpty && ids.allSatisfy { $0 > 0 }, "marking change-log ids \(ids.prefix(3))...")
        precondition(ids.allSatisfy { !inFlight.contains($0) } || config.plantedBugs.contains(.markPublishedBeforeAck),
                     "a change is marked published while still in flight")
        let db = requireDatabase()
        // Writes queued meanwhile are stamped in the same transaction (one batch of them at most, none while the
        // lock is left to the applications): the next page finds them without a write transaction of its own.
        try writeTransaction(db, stamp: !bookkeepingPaused, stampLimit: config.lockBatchRows) {
            // The acks of a flush cover whole pages, whose ids run on without gaps once sorted (each message holds
            // one shard's share of a page): one statement per run, not one per change.
            let mark = try db.cached("UPDATE \(quoteIdentifier(Bookkeeping.globalLog)) SET state = 1 WHERE id BETWEEN ? AND ?")
            for run in Self.contiguousRuns(ids) { try mark.execute([.integer(run.lowerBound), .integer(run.upperBound)]) }
        }
    }

    /// `ids` sorted and cut where they skip a number: [7, 3, 4, 5, 9] gives 3...5, 7...7, 9...9.
    static func contiguousRuns(_ ids: [Int64]) -> [ClosedRange<Int64>] {
        var runs: [ClosedRange<Int64>] = []
        for id in ids.sorted() {
            if let last = runs.last, id <= last.upperBound + 1 {
                runs[runs.count - 1] = last.lowerBound...max(last.upperBound, id)
            } else {
                runs.append(id...id)
            }
        }
        return runs
    }

    /// The log refused or timed out: the row stays pending and is sent again after a backoff.
    /// (If the publish did land, the message id makes the log drop the second copy.)
    public func publishFailed(token partOrMessage: Int64) {
        var token = partOrMessage
        forgetUnacked(token: partOrMessage)
        if partOrMessage < 0 {
            // One lost part fails its whole message; acks of its other parts, arriving later, are ignored.
            guard let owner = partOwners[partOrMessage], partsUnacked.removeValue(forKey: owner) != nil else { return }
            for (part, of) in partOwners where of == owner { forgetUnacked(token: part) }
            partOwners = partOwners.filter { $0.value != owner }
            token = owner
        }
        let ids = batchMembers.removeValue(forKey: token) ?? [token]
        guard isRunning, !ids.filter({ inFlight.remove($0) != nil }).isEmpty else { return }
        // (With the planted bug they are already marked published, so the scan will never send them again.)
        precondition(ids.allSatisfy { !inFlight.contains($0) }, "a failed publish left its changes in flight")
        env.events?.record(.publishFailed(token: token))
        schedulePublishRetry(from: min(token, ids.min()!))
    }

    /// Rows from `id` on are sent again when the retry timer fires; the delay doubles up to its limit.
    func schedulePublishRetry(from id: Int64) {
        if retryFrom == nil {
            env.clock.schedule(.publishRetry, afterMs: retryDelayMs)
            retryDelayMs = min(retryDelayMs * 2, config.publishRetryDelayMsMax)
        }
        retryFrom = min(retryFrom ?? id, id)
        precondition(retryDelayMs <= config.publishRetryDelayMsMax, "publish retry delay \(retryDelayMs) ms above its limit")
    }

    /// Deletes published change-log rows. The newest global row is always kept so row ids are never
    /// reused (SQLite reuses max(rowid)+1), which would otherwise let a new change hide behind the scan cursor.
    /// With `publish = false` nothing will ever be sent, so pending rows go too.
    ///
    /// At most `lockBatchRows` entries per transaction, the oldest first; the rest go after a pause that leaves the
    /// write lock to the applications (deleting everything published in 5 s at once held it for about half a second).
    public func cleanupPublished() throws {
        guard !bookkeepingPaused else {
            cleanupUnfinished = true
            return
        }
        let db = requireDatabase()
        let global = quoteIdentifier(Bookkeeping.globalLog)
        let condition = config.publish ? "state = 1" : "1"
        let cleaned: (removed: Int, more: Bool)
        // A brief wait for the lock, as a stamp's: cleaning can wait for an application's bulk load, the node's queue
        // should not (a plain wait sleeps in SQLite's busy handler up to the busy timeout).
        let brief = queueRecordsWriters
        do { cleaned = try waitingBrieflyForTheLock(db, if: brief) { try db.transaction(.immediate) {
            let maxID = try newestChangeLogID(db)
            guard maxID > 0 else { return (0, false) }  // ids start at 1: an empty log
            // The newest entry always stays: its id is where the next one continues.
            let batchEnd = try db.scalar("SELECT id FROM \(global) WHERE \(condition) AND id < ? ORDER BY id LIMIT 1 OFFSET ?",
                                         [.integer(maxID), .integer(Int64(config.lockBatchRows - 1))])?.int64
            let below = batchEnd.map { $0 + 1 } ?? maxID
            let tables = try db.query("SELECT DISTINCT table_name FROM \(global) WHERE \(condition) AND id < ? ORDER BY table_name",
                                      [.integer(below)]).compactMap { $0[0].string }
            for table in tables {
                let log = Bookkeeping.changeLog(table)
                guard try db.tableExists(log) else { continue }
                try db.execute("""
                    DELETE FROM \(quoteIdentifier(log)) WHERE id IN (
                        SELECT change_table_id FROM \(global) WHERE \(condition) AND table_name = ? AND id < ?)
                    """, [.text(table), .integer(below)])
            }
            try db.execute("DELETE FROM \(global) WHERE \(condition) AND id < ?", [.integer(below)])
            return (db.changes, batchEnd != nil && batchEnd! + 1 < maxID)
        } } } catch let error as SQLiteError where error.isBusy && brief && briefWaitsOnBusy && !config.plantedBugs.contains(.stampFailureRestartsCore) {
            cleanupUnfinished = true
            lockMissed(error) { .cleanupFailed(error: $0, retryInMs: config.lockPauseMs) }
            return
        } catch let error as SQLiteError where error.isTransientStorageFailure && !config.plantedBugs.contains(.stampFailureRestartsCore) {
            // As for a stamp: an application's long transaction or a full disk. The published rows stay until the
            // next cleanup; pause rather than restart the core, which would meet the same lock.
            let delayMs = error.isBusy ? config.retryDelayMs : config.storageRetryDelayMs
            env.events?.record(.cleanupFailed(error: "\(error.storageFailureSummary): \(error.description)", retryInMs: delayMs))
            cleanupUnfinished = true
            pauseBookkeeping(forMs: delayMs)
            return
        }
        if cleaned.removed > 0 { env.events?.record(.cleanedUp(rows: cleaned.removed)) }
        if cleaned.more {
            cleanupUnfinished = true
            pauseBookkeeping()
        }
    }
}
