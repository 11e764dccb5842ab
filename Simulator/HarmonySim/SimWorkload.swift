import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite

/// The application on every node: plain SQL writes through its own connection, each committed write recorded
/// with the version it got (the history the checkers judge against).
extension Simulation {
    func performWrite(_ node: SimNode) {
        guard let app = node.app else { return }
        node.vfs.time.nowMs = node.nowMs(simMs: nowMs)
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
        let keys = ops.map { _ in workRandom.int(1...Int64(scenario.keys)) }
        let newKeys = ops.map { $0 == 3 ? workRandom.int(1...Int64(scenario.keys)) : 0 }
        let touched = Set(keys + newKeys.filter { $0 > 0 }).sorted()
        do {
            let before = try Dictionary(touched.map { ($0, try versionOf(app, key: $0)) }, uniquingKeysWith: { a, _ in a })
            try app.transaction(.immediate) {
                for (i, (op, key)) in zip(ops, keys).enumerated() {
                    node.writeCounter += 1
                    let tag = "n\(node.id)w\(node.writeCounter)"
                    // Draws only when switched on, so scenarios without large values replay as before.
                    let large = scenario.largeValuePermille > 0 && workRandom.chance(permille: scenario.largeValuePermille)
                    let value = DatabaseValue.text(large ? tag + String(repeating: "L", count: scenario.largeValueBytes) : tag)
                    if op == 0 && scenario.oversizedValuePermille > 0 && workRandom.chance(permille: scenario.oversizedValuePermille) {
                        // Refused by the sidecar (above max_row_bytes), then overwritten at once: only the second travels.
                        try app.execute("INSERT INTO kv (k, v, n) VALUES (?, ?, 1) ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = n + 1",
                                        [.integer(key), .text(tag + String(repeating: "O", count: scenario.maxRowBytes + 1))])
                    }
                    switch op {
                    case 0:
                        if node.hasExtraColumn {
                            try app.execute("INSERT INTO kv (k, v, n, extra) VALUES (?, ?, 1, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = n + 1, extra = excluded.extra",
                                            [.integer(key), value, value])
                        } else {
                            try app.execute("INSERT INTO kv (k, v, n) VALUES (?, ?, 1) ON CONFLICT (k) DO UPDATE SET v = excluded.v, n = n + 1",
                                            [.integer(key), value])
                        }
                    case 1:
                        if node.hasExtraColumn {
                            try app.execute("UPDATE kv SET v = ?, n = n + 1, extra = ? WHERE k = ?", [value, value, .integer(key)])
                        } else {
                            try app.execute("UPDATE kv SET v = ?, n = n + 1 WHERE k = ?", [value, .integer(key)])
                        }
                    case 2:
                        try app.execute("DELETE FROM kv WHERE k = ?", [.integer(key)])
                    default:
                        // Move the row to a free key, as an application renumbering or merging records would.
                        try app.execute("UPDATE kv SET k = ?1, v = ?2, n = n + 1 WHERE k = ?3 AND NOT EXISTS (SELECT 1 FROM kv WHERE k = ?1)",
                                        [.integer(newKeys[i]), value, .integer(key)])
                    }
                }
            }
            let previousLocalHLC = node.lastLocalHLC
            for key in touched {
                guard let after = try versionOf(app, key: key), after != before[key] ?? nil else { continue }
                let row = try app.query("SELECT * FROM kv WHERE k = ?", [.integer(key)]).first
                history.append(WriteRecord(node: node.id, key: key, version: after.version, row: after.deleted ? nil : row, atMs: nowMs))
                if after.version.hlc <= node.maxAppliedHLC {
                    violations.append("causality: node \(node.id) wrote key \(key) at \(nowMs) ms with version \(after.version), not above \(RowVersion(hlc: node.maxAppliedHLC, node: 0).description) it had applied")
                }
                // A node's own versions strictly increase (two writes with one version would share a message id).
                if after.version.hlc <= previousLocalHLC {
                    violations.append("node \(node.id) wrote key \(key) at \(nowMs) ms with version \(after.version), not above its own earlier write's \(RowVersion(hlc: previousLocalHLC, node: Int64(node.id)))")
                }
                node.lastLocalHLC = max(node.lastLocalHLC, after.version.hlc)
            }
            trace("node \(node.id) write ops \(ops) keys \(keys)\(newKeys.contains { $0 > 0 } ? " to \(newKeys)" : "")")
        } catch {
            violations.append("node \(node.id): application write failed: \(error)")
        }
        if node.sidecarUp {
            push(.databaseChanged(node: node.id, incarnation: node.incarnation), at: nowMs + workRandom.int(0...scenario.detectDelayMsMax))
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
