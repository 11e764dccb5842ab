import HarmonyCodec
import HarmonySQLite

/// Local writes stamped in one go: queue ids `firstQueueID...lastQueueID`, in commit order, got versions of this node.
public struct StampedChanges: Sendable, Hashable {
    public var firstQueueID: Int64
    public var lastQueueID: Int64
    public var count: Int
    /// Each queue id's hybrid-logical time, when the caller asked for them (the simulator's oracle does).
    public var hlcs: [Int64: Int64]
    /// The global-log ids of the writes that look like small commits (`WriterStretches`), when asked for: the
    /// priority lane sends them before the rest.
    public var smallCommits: [Int64] = []
    /// Where the stretches stood at the last write stamped, for the next stamp to go on from.
    public var writerTail: WriterStretches.Tail?
    /// Writes left unreplicated, per table: their primary key held NULL (see `nullKeyFree`).
    public var nullKeyWrites: [String: NullKeyWrites] = [:]

    public init(firstQueueID: Int64, lastQueueID: Int64, count: Int, hlcs: [Int64: Int64]) {
        self.firstQueueID = firstQueueID
        self.lastQueueID = lastQueueID
        self.count = count
        self.hlcs = hlcs
    }
}

/// A table's writes that stayed on this node because their primary key held NULL.
public struct NullKeyWrites: Sendable, Hashable {
    /// The key's columns as the writes named them.
    public var key: [String]
    public var count = 0
}

extension ChangeCapture {
    /// Gives every queued local write its version and moves it into its table's change log, the global log and the
    /// version table: what the triggers did row by row before, done here in a few set-wise statements.
    ///
    /// Must run inside a write transaction, before anything reads versions or the logs: then no application write can
    /// come between, the whole queue is taken, and a remote change is compared against every local write committed
    /// before it. Each write gets the version it would have got at its commit (see `hlcRuns`), so causality,
    /// a node's own order and last-writer-wins by write time hold as when the triggers stamped them.
    /// `collectVersions`: report each queue id's version (for an oracle). Returns nil when nothing was queued.
    ///
    /// `limit`: stamp only the oldest `limit` writes and leave the rest queued. Their versions are the same as in one
    /// stamp of the whole queue: each depends only on the clock and the writes before it, and the clock is left at
    /// the last one stamped. Only a transaction that reads no versions may stop short (publishing's own stamp);
    /// one that applies changes must take the whole queue.
    ///
    /// `findSmallCommits`: pick out the writes that look like small commits (`WriterStretches`), going on from
    /// `writerTail` (where the previous stamp's stretches stood).
    @discardableResult
    public static func stampCaptured(_ db: Database, collectVersions: Bool = false, limit: Int? = nil,
                                     findSmallCommits: Bool = false, writerTail: WriterStretches.Tail? = nil) throws -> StampedChanges? {
        precondition(db.isInTransaction, "versions are stamped inside the transaction that reads them")
        precondition(limit.map { $0 > 0 } ?? true, "a stamp limit of \(limit ?? 0) writes")
        let queue = q(Bookkeeping.captureQueue), clock = q(Bookkeeping.clockTable)
        guard try db.tableExists(Bookkeeping.captureQueue) else { return nil }
        guard let clockNow = try db.scalar("SELECT hlc FROM \(clock)")?.int64 else {
            throw CorruptBookkeeping(description: "the clock row of \(Bookkeeping.clockTable) is missing")
        }
        var stretches = findSmallCommits ? WriterStretches(after: writerTail) : nil
        let stamps = try hlcRuns(db, clock: clockNow, collectVersions: collectVersions, limit: limit, stretches: &stretches)
        var nullKeyWrites: [String: NullKeyWrites] = [:]
        // A stamp that stopped short may have cut a stretch: the next one decides it.
        let smallQueueIDs = stretches?.finish(countingOpen: limit.map { stamps.count < $0 } ?? true) ?? []
        guard let first = stamps.runs.first?.from, let last = stamps.runs.last?.to, let newest = stamps.newest else { return nil }
        // One run (a bulk load, or any stamp whose writes' milliseconds never overtook the clock) gives every write
        // `id + offset`, computed where the versions are copied; more runs set the queue's hlc a run at a time first.
        let oneRun = stamps.runs.count == 1
        let hlc = oneRun ? "(id + ?3)" : "hlc"
        if !oneRun {
            let setHLC = try db.cached("UPDATE \(queue) SET hlc = id + ? WHERE id BETWEEN ? AND ?")
            for run in stamps.runs { try setHLC.execute([.integer(run.offset), .integer(run.from), .integer(run.to)]) }
        }
        // Everything below reads only the writes stamped here (all of them when there is no limit).
        let taken = limit == nil ? "" : " AND id <= \(last)"
        var linked: [(table: String, firstNewID: Int64)] = []
        // The bookkeeping tables there are, from one read of the schema: asked table by table, a stamp read it twice
        // per table written (about 7 µs each with 20 tables captured).
        let bookkeeping = try bookkeepingTables(db)
        for (table, epoch, queued) in stamps.groups {
            // A table dropped (its change log forgotten) since the write: the row is gone, nothing to send.
            guard bookkeeping.contains(Array(Bookkeeping.changeLog(table).utf8)), bookkeeping.contains(Array(Bookkeeping.versionTable(table).utf8))
            else { continue }
            let history = try epochs(db, table: table)
            guard let written = history.first(where: { $0.epoch == epoch })?.primaryKey, let current = history.first?.primaryKey,
                  !written.isEmpty else { continue }
            let log = q(Bookkeeping.changeLog(table))
            if !linked.contains(where: { $0.table == table }) {
                linked.append((table, (try db.scalar("SELECT coalesce(max(id), 0) FROM \(log)")?.int64 ?? 0) + 1))
            }
            let keyColumns = (1...written.count).map { "k\($0)" }
            let keys = keyColumns.joined(separator: ", "), keyed = nullKeyFree(keyColumns)
            let match: [DatabaseValue] = [.text(table), .integer(epoch)] + (oneRun ? [.integer(stamps.runs[0].offset)] : [])
            try db.execute("""
                INSERT INTO \(log) (type, hlc, node, epoch, \(written.map { q(Bookkeeping.valueColumn($0)) }.joined(separator: ", ")))
                SELECT type, \(hlc), (SELECT node_id FROM \(clock)), epoch, \(keys) FROM \(queue)
                WHERE table_name = ?1 AND epoch = ?2\(taken) AND \(keyed) ORDER BY id
                """, match)
            if db.changes < queued { nullKeyWrites[table, default: NullKeyWrites(key: written)].count += queued - db.changes }
            // The version table is keyed by the current key columns (a renamed one renamed there too); a key of
            // another shape rebuilt it, and rows logged under the old one have no version to keep there.
            guard current.count == written.count else { continue }
            try db.execute("""
                INSERT INTO \(q(Bookkeeping.versionTable(table))) (\(current.map { q(Bookkeeping.keyColumn($0)) }.joined(separator: ", ")), hlc, node, deleted)
                SELECT \(keys), \(hlc), (SELECT node_id FROM \(clock)), type = 'delete' FROM \(queue)
                WHERE table_name = ?1 AND epoch = ?2\(taken) AND \(keyed) ORDER BY id
                ON CONFLICT DO UPDATE SET hlc = excluded.hlc, node = excluded.node, deleted = excluded.deleted
                """, match)
        }
        // One global order over every table, the commit order (the versions increase with it).
        var smallCommits: [Int64] = []
        if !linked.isEmpty {
            let globalBefore = smallQueueIDs.isEmpty ? 0 : try db.scalar("SELECT coalesce(max(id), 0) FROM \(q(Bookkeeping.globalLog))")?.int64 ?? 0
            let parts = linked.map { entry in
                "SELECT id, \(quoteLiteral(entry.table)) AS t, hlc FROM \(q(Bookkeeping.changeLog(entry.table))) WHERE id >= \(entry.firstNewID)"
            }
            // One table written under one epoch (a bulk load): its log ids were given in queue order, whose versions
            // increase with it, so id order is version order and SQLite needs no sort.
            let order = linked.count == 1 && stamps.groups.count == 1 ? "id" : "hlc"
            try db.execute("""
                INSERT INTO \(q(Bookkeeping.globalLog)) (change_table_id, table_name)
                SELECT id, t FROM (\(parts.joined(separator: " UNION ALL "))) ORDER BY \(order)
                """)
            if !smallQueueIDs.isEmpty {
                smallCommits = try globalIDs(db, versions: smallQueueIDs.compactMap { stamps.version(of: $0) }, tables: linked.map(\.table),
                                             after: globalBefore)
            }
        }
        try db.execute("UPDATE \(clock) SET hlc = max(hlc, ?)", [.integer(newest)])
        if limit.map({ stamps.count < $0 }) ?? true {
            // The whole queue was taken. No WHERE: SQLite empties the whole table at once, and inside this write
            // transaction nothing else was queued.
            try db.execute("DELETE FROM \(queue)")
        } else {
            try db.execute("DELETE FROM \(queue) WHERE id <= ?", [.integer(last)])
        }
        var stamped = StampedChanges(firstQueueID: first, lastQueueID: last, count: stamps.count, hlcs: stamps.hlcs)
        stamped.smallCommits = smallCommits
        stamped.writerTail = stretches?.tail
        stamped.nullKeyWrites = nullKeyWrites
        return stamped
    }

    /// The names of the main schema's tables that belong to the bookkeeping (change logs, version tables ...), as
    /// bytes: SQLite tells names apart byte by byte, where Swift's strings would merge canonically equal ones.
    static func bookkeepingTables(_ db: Database) throws -> Set<[UInt8]> {
        Set(try db.query("SELECT name FROM main.sqlite_schema WHERE type = 'table' AND substr(name, 1, ?) = ?",
                         [.integer(Int64(Bookkeeping.prefix.utf8.count)), .text(Bookkeeping.prefix)]).compactMap { $0[0].string.map { Array($0.utf8) } })
    }

    /// SQL true when none of `columns` is NULL. SQLite lets a rowid table's primary key hold NULL (and several rows
    /// the same NULL key), but no other node could find such a row by its key, and a version table's key is NOT
    /// NULL: such writes stay on this node, reported, instead of failing every stamp after them.
    static func nullKeyFree(_ columns: [String]) -> String {
        columns.map { "\($0) IS NOT NULL" }.joined(separator: " AND ")
    }

    /// The global-log ids, past `after`, of this node's changes with these versions (a stamp's own entries).
    static func globalIDs(_ db: Database, versions: [Int64], tables: [String], after: Int64) throws -> [Int64] {
        guard !versions.isEmpty else { return [] }
        let list = versions.map(String.init).joined(separator: ", ")
        var ids: [Int64] = []
        for table in tables {
            ids += try db.query("""
                SELECT g.id FROM \(q(Bookkeeping.globalLog)) g JOIN \(q(Bookkeeping.changeLog(table))) c ON c.id = g.change_table_id
                WHERE g.id > ? AND g.table_name = ? AND c.hlc IN (\(list))
                """, [.integer(after), .text(table)]).compactMap { $0[0].int64 }
        }
        return ids.sorted()
    }

    /// The queued changes' versions: the hybrid-logical clock run over the queue in commit order, from the clock as it
    /// is now, `hlc = max(previous + 1, ms << 16)`. Every core transaction that moves the clock (an apply, a hint, a
    /// restore, DDL) stamps the queue first, so the clock here is the one each write saw when it committed, and the
    /// versions are those the triggers would have given at write time.
    ///
    /// With queue ids for the count (gaps only add to the logical part) that is `hlc = id + offset`, the offset
    /// growing only where a write's millisecond overtakes the clock: one run of ids per such step (one for a bulk
    /// load), each set with a single UPDATE.
    /// `stretches`, when given, is fed every write (`WriterStretches`).
    static func hlcRuns(_ db: Database, clock: Int64, collectVersions: Bool, limit: Int? = nil, stretches: inout WriterStretches?)
        throws -> HLCRuns {
        var runs: [(from: Int64, to: Int64, offset: Int64)] = []
        var offset = Int64.min, count = 0
        var hlcs: [Int64: Int64] = [:]
        var groups: [(table: String, epoch: Int64, count: Int)] = []
        var latest: Int?  // index in groups of the last write's table and epoch
        // Row by row, not collected: a queue can hold a whole bulk load.
        let read = try db.cached("""
            SELECT id, ms, table_name, epoch\(stretches == nil ? "" : ", writer_changes") FROM \(q(Bookkeeping.captureQueue)) ORDER BY id LIMIT ?
            """)
        try read.bind([.integer(Int64(limit ?? -1))])
        defer { read.reset() }
        while try read.step() {
            guard let id = read.column(0).int64 else { continue }
            // A millisecond outside 1970...~4200 (written by hand, not by a trigger) stands for no time at all.
            let ms = read.column(1).int64.flatMap { (0..<(Int64(1) << 46)).contains($0) ? $0 : nil } ?? 0
            if runs.isEmpty { offset = clock - id + 1 }
            let candidate = (ms << RowVersion.logicalBits) - id
            if runs.isEmpty || candidate > offset {
                offset = max(offset, candidate)
                runs.append((id, id, offset))
            } else {
                runs[runs.count - 1].to = id
            }
            count += 1
            if collectVersions { hlcs[id] = id + offset }
            stretches?.add(queueID: id, writerChanges: read.column(4).int64)
            // The tables and epochs written, as SELECT DISTINCT would find them (text compared byte for byte), in
            // the same pass: a bulk load's writes are one run of the same pair, checked in place.
            let epoch = read.column(3).int64
            if let latest, epoch == groups[latest].epoch, read.columnTextEquals(2, groups[latest].table) {
                groups[latest].count += 1
                continue
            }
            guard let table = read.column(2).string, let epoch else { continue }
            if let known = groups.firstIndex(where: { $0.epoch == epoch && $0.table.utf8.elementsEqual(table.utf8) }) {
                latest = known
            } else {
                groups.append((table, epoch, 0))
                latest = groups.count - 1
            }
            groups[latest!].count += 1
        }
        // In SQLite's order (BINARY: bytes), as `ORDER BY table_name, epoch` gave them.
        groups.sort { a, b in
            a.table.utf8.elementsEqual(b.table.utf8) ? a.epoch < b.epoch : a.table.utf8.lexicographicallyPrecedes(b.table.utf8)
        }
        return HLCRuns(runs: runs, newest: runs.last.map { $0.to + $0.offset }, count: count, hlcs: hlcs, groups: groups)
    }

    /// The versions a stamp gives: `id + offset` over each run of queue ids.
    struct HLCRuns {
        var runs: [(from: Int64, to: Int64, offset: Int64)]
        var newest: Int64?
        var count: Int
        var hlcs: [Int64: Int64]
        /// Each table and epoch the stamped writes name, once, with how many writes name it.
        var groups: [(table: String, epoch: Int64, count: Int)]

        func version(of queueID: Int64) -> Int64? {
            // The last run starting at or before the id (runs are in id order and cover the ids stamped).
            var low = 0, high = runs.count
            while low < high {
                let mid = (low + high) / 2
                if runs[mid].from <= queueID { low = mid + 1 } else { high = mid }
            }
            guard low > 0, queueID <= runs[low - 1].to else { return nil }
            return queueID + runs[low - 1].offset
        }
    }

    /// The queue holds one `kN` column per key column of the widest key captured; columns are only ever added.
    static func ensureQueueKeys(_ db: Database, count: Int) throws {
        let existing = Set(try db.query("SELECT name FROM pragma_table_info(?, 'main')", [.text(Bookkeeping.captureQueue)]).compactMap { $0[0].string })
        for n in 1...max(count, 1) where !existing.contains("k\(n)") {
            try db.execute("ALTER TABLE \(q(Bookkeeping.captureQueue)) ADD COLUMN k\(n)")
        }
    }
}
