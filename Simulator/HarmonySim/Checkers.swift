import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite

/// The properties every run must end with, checked after the cluster quiesced.
enum SimulationCheckers {
    static func run(_ sim: Simulation) -> (passed: [String], failed: [String]) {
        var passed: [String] = [], failed: [String] = []
        func check(_ name: String, _ problems: [String]) {
            if problems.isEmpty { passed.append(name) } else { failed += problems.prefix(5).map { "\(name): \($0)" } }
        }
        let tables = sim.nodes.map { node -> [[DatabaseValue]] in
            (try? node.app?.query("SELECT * FROM kv ORDER BY k")) ?? [[.text("unreadable")]]
        }
        check("convergence", convergence(tables))
        check("schema-convergence", schemaConvergence(sim))
        // The workload's other tables (`Scenario.tables`), judged the same way on node 1 (the others equal it).
        let others = sim.workloadTables.dropFirst().flatMap { name -> [String] in
            let rows = (try? sim.nodes[0].app?.query("SELECT * FROM \(name) ORDER BY k")) ?? [[.text("unreadable")]]
            return oracle(sim, table: rows, name: name).map { "\(name): \($0)" }
        }
        check("lww-oracle", oracle(sim, table: tables[0]) + others)
        check("causality", sim.violations.filter { $0.hasPrefix("causality") }.isEmpty ? [] : ["see violations"])
        check("idempotence", idempotence(sim, expected: tables[0]))
        return (passed, failed)
    }

    /// Every node's user table is identical, row by row in key order.
    static func convergence(_ tables: [[[DatabaseValue]]]) -> [String] {
        var problems: [String] = []
        for (i, t) in tables.enumerated().dropFirst() where t != tables[0] {
            let diff = zip(tables[0], t).first { $0 != $1 }
            problems.append("node \(i + 1) differs from node 1 (\(t.count) vs \(tables[0].count) rows; first difference \(diff.map { "\(brief($0.1)) vs \(brief($0.0))" } ?? "in length"))")
        }
        return problems
    }

    /// Every node ends with the identical user schema (`sqlite_schema` text included) and, in every user table other
    /// than `kv` (which the oracle judges), identical rows.
    static func schemaConvergence(_ sim: Simulation) -> [String] {
        var problems: [String] = []
        func contents(_ db: Database?) -> (schema: [[DatabaseValue]], rows: [String: [[DatabaseValue]]]) {
            guard let db, let schema = try? Simulation.userSchema(db) else { return ([[.text("unreadable")]], [:]) }
            var rows: [String: [[DatabaseValue]]] = [:]
            for entry in schema where entry[0].string == "table" {
                guard let name = entry[1].string, name != "kv" else { continue }
                rows[name] = (try? db.query("SELECT * FROM \(quoteIdentifier(name)) ORDER BY 1")) ?? [[.text("unreadable")]]
            }
            return (schema, rows)
        }
        let first = contents(sim.nodes[0].app)
        for node in sim.nodes.dropFirst() {
            let other = contents(node.app)
            func stateLine(_ name: String) -> String {
                "  replicated state of \(quoteIdentifier(name)): node 1 \(ddlState(sim.nodes[0].app, name)); node \(node.id) \(ddlState(node.app, name))"
            }
            if other.schema != first.schema {
                let diff = Set(other.schema.map { "\($0)" }).symmetricDifference(first.schema.map { "\($0)" }).sorted()
                problems.append("node \(node.id)'s schema differs from node 1's: \(diff.prefix(3).joined(separator: "; "))")
                let names = Set(Set(other.schema).symmetricDifference(first.schema).compactMap { $0.count > 1 ? $0[1].string : nil })
                for name in names.sorted().prefix(3) {
                    problems.append(stateLine(name))
                }
            } else {
                for name in first.rows.keys.sorted() where other.rows[name] != first.rows[name] {
                    let mine = other.rows[name] ?? [], theirs = first.rows[name] ?? []
                    let diff = Set(mine.map { brief($0) }).symmetricDifference(theirs.map { brief($0) }).sorted().prefix(2)
                    problems.append("node \(node.id)'s table \(name) differs from node 1's (\(mine.count) vs \(theirs.count) rows; e.g. \(diff.joined(separator: ", ")))")
                    problems.append(stateLine(name))
                }
            }
        }
        return problems
    }

    /// A node's replicated schema state of one object (what it last took as the cluster's definition), for a
    /// schema-convergence failure: which text, generation and version each node holds shows where the paths parted.
    static func ddlState(_ db: Database?, _ name: String) -> String {
        let rows = (try? db?.query("""
            SELECT type, tbl_name, sql, local_sql, generation, hlc, node, renamed, table_generation
            FROM \(quoteIdentifier(Bookkeeping.ddlTable)) WHERE name = ? ORDER BY type
            """, [.text(name)])) ?? nil
        guard let rows, !rows.isEmpty else { return "none" }
        func text(_ v: DatabaseValue) -> String { v.string.map { "'\($0)'" } ?? "NULL" }
        return rows.map { r in
            let version = RowVersion(hlc: r[5].int64 ?? 0, node: r[6].int64 ?? 0)
            let tableGeneration = r[8].int64.map(String.init) ?? "-"
            return "\(r[0].string ?? "?") on \(r[1].string ?? "?") gen \(r[4].int64 ?? 0) table gen \(tableGeneration) version \(version)"
                + " sql \(text(r[2])) local \(text(r[3]))\(r[7].string.map { " renamed \($0)" } ?? "")"
        }.joined(separator: " | ")
    }

    /// A row for a failure line: long values (the large-rows scenario writes 6 KB ones) cut to their start and length.
    static func brief(_ row: [DatabaseValue]) -> String {
        "[" + row.map { v -> String in
            guard let s = v.string, s.count > 40 else { return "\(v)" }
            return "'\(s.prefix(24))…' (\(s.utf8.count) bytes)"
        }.joined(separator: ", ") + "]"
    }

    /// Each row equals the write with the greatest version among all committed writes to its key;
    /// a key whose greatest write is a delete is absent (no lost write, no resurrection).
    static func oracle(_ sim: Simulation, table: [[DatabaseValue]], name: String = "kv") -> [String] {
        var winners: [Int64: WriteRecord] = [:]
        for w in sim.history where w.table == name && !sim.lostWrites.contains(w.version) {
            if let cur = winners[w.key], cur.version >= w.version { continue }
            winners[w.key] = w
        }
        var actual: [Int64: [DatabaseValue]] = [:]
        for row in table { if let k = row.first?.int64 { actual[k] = row } }
        var problems: [String] = []
        for key in Set(winners.keys).union(actual.keys).sorted() {
            let expected = winners[key]
            let got = actual[key]
            switch (expected?.row, got) {
            case (nil, nil): continue
            case (let want?, let have?) where matches(have, want): continue
            default:
                let what = expected.map { "write \($0.version) by node \($0.node) at \($0.atMs) ms: \($0.row.map { "\($0)" } ?? "delete")" } ?? "no write"
                // Which write left the row found, and whether the oracle counted it lost: the first clue to a wrong winner.
                let source = got.flatMap { have in sim.history.last { $0.table == name && $0.key == key && $0.row.map { matches(have, $0) } == true } }
                let from = source.map { " (written as \($0.version) by node \($0.node) at \($0.atMs) ms\(sim.lostWrites.contains($0.version) ? ", counted lost" : ""))" } ?? ""
                problems.append("key \(key) is \(got.map { "\($0)" } ?? "absent")\(from) but the LWW winner is \(what)")
            }
        }
        return problems
    }

    /// A row written before `ALTER TABLE ADD COLUMN` has fewer values; the added column must be NULL.
    static func matches(_ have: [DatabaseValue], _ want: [DatabaseValue]) -> Bool {
        guard have.count >= want.count else { return false }
        return Array(have.prefix(want.count)) == want && have.dropFirst(want.count).allSatisfy(\.isNull)
    }

    /// Re-applying every message the log holds to a copy of node 1 (checkpoints reset) changes nothing.
    static func idempotence(_ sim: Simulation, expected: [[DatabaseValue]]) -> [String] {
        let node = sim.nodes[0]
        guard let app = node.app else { return ["node 1 has no database"] }
        let copy = node.databasePath + ".replay"
        do {
            try app.execute("VACUUM INTO \(quoteLiteral(copy))")
            defer { for s in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: copy + s) } }
            let db = try SimOpener(vfs: node.vfs).open(path: copy)
            // From the oldest message the log still holds (everything, unless retention dropped some).
            try db.execute("DELETE FROM \(quoteIdentifier(Bookkeeping.checkpointTable))")
            let router = ShardRouter(shardCount: sim.scenario.shards, streamPrefix: NodeConfig(nodeID: 1, databasePath: copy).streamPrefix)
            for shard in 1...sim.scenario.shards {
                try db.execute("INSERT INTO \(quoteIdentifier(Bookkeeping.checkpointTable)) (stream, seq) VALUES (?, ?)",
                               [.text(router.streamName(shard: shard)), .integer(Int64(sim.jetStream.state(shard: shard).firstSequence) - 1)])
            }
            var config = NodeConfig(nodeID: 1, databasePath: copy)
            config.shards = sim.scenario.shards
            let replay = ReplicationNode(config: config, environment: NodeEnvironment(clock: ManualClock(nowMs: 0), log: DetachedLog(), opener: SimOpener(vfs: node.vfs)))
            try replay.start()
            for shard in 1...sim.scenario.shards {
                let all = sim.jetStream.messages(shard: shard)
                for chunk in stride(from: 0, to: all.count, by: 256) {
                    try replay.messagesArrived(shard: shard, Array(all[chunk..<min(chunk + 256, all.count)]))
                }
            }
            replay.stop()
            let after = try db.query("SELECT * FROM kv ORDER BY k")
            return after == expected ? [] : ["re-applying the log changed node 1's table (\(after.count) rows vs \(expected.count))"]
        } catch {
            return ["replay failed: \(error)"]
        }
    }
}

/// Swarm mode: a random fault mix per seed, where each kind may also be switched off entirely.
enum SwarmMix {
    static func draw(scenario: Scenario, random: SimRandom) -> [Fault] {
        var r = random
        var faults: [Fault] = []
        let horizon = faultHorizonMs(scenario)
        func node() -> Int { Int(r.int(1...Int64(scenario.nodes))) }
        let kinds: [Fault.Kind] = [.partition, .partitionToNATS, .partitionFromNATS, .crash, .powerLoss, .clockJump, .clockDrift, .serverRestart, .duplicateID, .cleanup]
        for kind in kinds where r.chance(permille: 500) {
            for _ in 0..<r.int(1...3) {
                var f = Fault(kind: kind, node: node(), atMs: r.int(0...horizon), durationMs: r.int(200...10_000))
                if kind == .clockJump { f.offsetMs = r.int(-30_000...30_000); f.durationMs = 0 }
                if kind == .clockDrift { f.driftPpm = r.int(-200_000...200_000) }
                if kind == .serverRestart { f.node = 0; f.durationMs = r.int(200...5_000) }
                faults.append(f)
            }
        }
        if r.chance(permille: 300) {
            faults.append(Fault(kind: .rollingAlter, node: 0, atMs: r.int(0...horizon), durationMs: r.int(500...5_000)))
        }
        if scenario.nodes > 2 && r.chance(permille: 250) {
            faults.append(Fault(kind: .lateJoin, node: scenario.nodes, atMs: r.int(0...horizon)))
        }
        return inScheduleOrder(faults)
    }

    /// Drawn faults start in the first four fifths of the run, so each has time to end and be healed.
    static func faultHorizonMs(_ scenario: Scenario) -> Int64 { max(scenario.durationMs * 4 / 5, 1) }

    /// Faults by start time (node and kind breaking ties), the order a schedule is kept in.
    static func inScheduleOrder(_ faults: [Fault]) -> [Fault] {
        faults.sorted { ($0.atMs, $0.node, $0.kind.rawValue) < ($1.atMs, $1.node, $1.kind.rawValue) }
    }

    /// On three seeds in ten, one to four `consumer-lost` faults (one node's, or every node's) added to `faults`: a
    /// consumer is legal to lose at any moment, and the node makes it again from its checkpoint wherever it was.
    /// Drawn from their own stream, so the rest of each seed's mix stays as it was.
    static func withConsumerLosses(_ faults: [Fault], scenario: Scenario, random: SimRandom) -> [Fault] {
        var r = random
        guard r.chance(permille: 300) else { return faults }
        let horizon = faultHorizonMs(scenario)
        var all = faults
        for _ in 0..<r.int(1...4) {
            all.append(Fault(kind: .consumerLost, node: Int(r.int(0...Int64(scenario.nodes))), atMs: r.int(0...horizon)))
        }
        return inScheduleOrder(all)
    }

    /// Sometimes a short retention (so partitioned, crashed or late nodes fall behind the log's start) with
    /// snapshots to come back from; otherwise the scenario's own settings.
    static func drawRetention(_ scenario: inout Scenario, random: SimRandom) {
        var r = random
        guard r.chance(permille: 300) else { return }
        scenario.maxEntries = Int(r.int(200...500))
        scenario.snapshotIntervalMs = r.int(1_000...5_000)
    }

    /// Sometimes nats-server's way with nak'd messages: each comes again on its own, in no particular order, and now
    /// and then one is dropped until the ack wait.
    static func drawRedelivery(_ scenario: inout Scenario, random: SimRandom) {
        var r = random
        guard r.chance(permille: 300) else { return }
        scenario.scatteredRedelivery = true
        scenario.droppedRedeliveryPermille = Int(r.int(0...30))
    }

    /// Sometimes a small server payload limit with large values (sent in parts) and values above max_row_bytes
    /// (refused and parked).
    static func drawLargeRows(_ scenario: inout Scenario, random: SimRandom) {
        var r = random
        guard r.chance(permille: 250) else { return }
        scenario.maxPayloadBytes = Int(r.int(2_048...8_192))
        scenario.maxRowBytes = Int(r.int(16_384...32_768))
        scenario.largeValuePermille = Int(r.int(20...200))
        // A row may carry the value twice (`v` and, after a rolling ALTER, `extra`): it must stay under the limit.
        scenario.largeValueBytes = Int(r.int(Int64(scenario.maxPayloadBytes)...Int64(scenario.maxRowBytes / 2 - 512)))
        scenario.oversizedValuePermille = Int(r.int(0...30))
    }

    /// Sometimes the schema workload: DDL from random nodes every few hundred ms, of a random subset of the kinds.
    /// RENAME TO is drawn from a stream of its own (`renames`), so every other seed's mix stays as it was before it
    /// joined.
    static func drawSchemaWorkload(_ scenario: inout Scenario, random: SimRandom, renames: SimRandom) {
        var r = random, renameDraw = renames
        guard scenario.ddlIntervalMs == 0, scenario.replicateDDL, r.chance(permille: 400) else { return }
        scenario.ddlIntervalMs = r.int(150...600)
        let optional = ["add-column", "drop-column", "rename-column", "drop-table", "create-index", "drop-index", "view", "kv-index"]
        scenario.ddlKinds = ["create-table"] + optional.filter { _ in r.chance(permille: 600) }
        if renameDraw.chance(permille: 600) { scenario.ddlKinds.append("rename-table") }
    }

    /// Sometimes a faulty disk under the sidecars (busy locks, I/O errors, disk full, torn writes, failed fsyncs).
    static func drawStorage(_ scenario: inout Scenario, random: SimRandom) {
        var r = random
        guard r.chance(permille: 300) else { return }
        scenario.storageFaults.busyPermille = Int(r.int(0...6))
        scenario.storageFaults.readErrorPermille = Int(r.int(0...2))
        scenario.storageFaults.writeErrorPermille = Int(r.int(0...4))
        scenario.storageFaults.fsyncErrorPermille = Int(r.int(0...4))
    }
}
