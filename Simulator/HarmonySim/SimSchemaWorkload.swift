import Foundation
import HarmonyCore
import HarmonySQLite

/// The schema workload: an application (or an operator with the sqlite3 shell) running DDL of every kind on
/// random nodes while everything else goes on, plus writes to the tables that DDL creates. SQLite's own errors
/// (a column already there, a table already dropped) are what any client would see: traced, not violations.
extension Simulation {
    func performSchemaStep(_ node: SimNode) {
        guard let app = node.app else { return }
        node.vfs.time.nowMs = node.nowMs(simMs: nowMs)
        let tables = (try? app.query("SELECT name FROM sqlite_schema WHERE type = 'table' AND name GLOB 's[0-9]' ORDER BY name")
            .compactMap { $0[0].string }) ?? []
        func pick<T>(_ items: [T]) -> T? { items.isEmpty ? nil : items[Int(ddlRandom.below(UInt64(items.count)))] }
        func columns(_ table: String) -> [String] {
            (try? app.query("SELECT name FROM pragma_table_info(?) WHERE pk = 0 ORDER BY cid", [.text(table)]).compactMap { $0[0].string }) ?? []
        }
        func fresh(_ prefix: String) -> String { ddlCounter += 1; return "\(prefix)\(ddlCounter)" }
        let q = quoteIdentifier
        var statements: [String] = []
        var arguments: [[DatabaseValue]] = []
        let kind = ddlRandom.int(0...15)
        if kind <= 10, !scenario.ddlKinds.contains(Self.ddlKindNames[Int(kind)]) { return }
        switch kind {
        case 0, 1:
            let name = "s\(ddlRandom.int(1...6))"
            statements = ["CREATE TABLE IF NOT EXISTS \(name) (id INTEGER PRIMARY KEY, a TEXT, b INTEGER)"]
        case 2:
            guard let t = pick(tables) else { return }
            let column = fresh("c")
            statements = [ddlRandom.chance(permille: 500) ? "ALTER TABLE \(t) ADD COLUMN \(column) TEXT"
                          : "ALTER TABLE \(t) ADD COLUMN \(column) INTEGER NOT NULL DEFAULT 7"]
        case 3:
            guard let t = pick(tables), let c = pick(columns(t)) else { return }
            statements = ["ALTER TABLE \(t) DROP COLUMN \(q(c))"]
        case 4:
            guard let t = pick(tables), let c = pick(columns(t)) else { return }
            statements = ["ALTER TABLE \(t) RENAME COLUMN \(q(c)) TO \(fresh("r"))"]
        case 5:
            guard let t = pick(tables) else { return }
            let target = "s\(ddlRandom.int(1...6))"
            guard !tables.contains(target) else { return }
            statements = ["ALTER TABLE \(t) RENAME TO \(target)"]
        case 6:
            guard let t = pick(tables) else { return }
            statements = ["DROP TABLE \(t)"]
        case 7:
            guard let t = pick(tables), let c = pick(columns(t)) else { return }
            statements = ["CREATE INDEX \(fresh("ix")) ON \(t) (\(q(c)))"]
        case 8:
            let indexes = (try? app.query("SELECT name FROM sqlite_schema WHERE type = 'index' AND name GLOB 'ix*' ORDER BY name").compactMap { $0[0].string }) ?? []
            guard let i = pick(indexes) else { return }
            statements = ["DROP INDEX \(i)"]
        case 9:
            let views = (try? app.query("SELECT name FROM sqlite_schema WHERE type = 'view' ORDER BY name").compactMap { $0[0].string }) ?? []
            if let v = pick(views), ddlRandom.chance(permille: 500) {
                statements = ["DROP VIEW \(v)"]
            } else {
                guard let t = pick(tables) else { return }
                statements = ["CREATE VIEW \(fresh("v")) AS SELECT * FROM \(t)"]
            }
        case 10:
            statements = [ddlRandom.chance(permille: 500) ? "CREATE INDEX IF NOT EXISTS kv_v ON kv (v)" : "DROP INDEX IF EXISTS kv_v"]
        default:
            guard let t = pick(tables) else { return }
            let cols = columns(t)
            for _ in 0..<ddlRandom.int(1...3) {
                let id = DatabaseValue.integer(ddlRandom.int(1...20))
                if ddlRandom.chance(permille: 150) {
                    statements.append("DELETE FROM \(t) WHERE id = ?")
                    arguments.append([id])
                } else if let c = pick(cols) {
                    statements.append("INSERT INTO \(t) (id, \(q(c))) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET \(q(c)) = excluded.\(q(c))")
                    arguments.append([id, .integer(ddlRandom.int(1...1_000_000))])
                } else {
                    statements.append("INSERT OR IGNORE INTO \(t) (id) VALUES (?)")
                    arguments.append([id])
                }
            }
        }
        while arguments.count < statements.count { arguments.append([]) }
        for (sql, args) in zip(statements, arguments) {
            do {
                try app.execute(sql, args)
                trace("node \(node.id) schema workload: \(sql)" + (args.isEmpty ? "" : " with \(args.map { $0.int64.map(String.init) ?? "?" })"))
            } catch {
                trace("node \(node.id) schema workload refused by SQLite: \(sql)")
            }
        }
        if node.sidecarUp { push(.databaseChanged(node: node.id, incarnation: node.incarnation), at: nowMs + 1) }
    }

    /// The schema workload's statement kinds, by the number it draws (11 and up: writes to the side tables).
    public static let ddlKindNames = ["create-table", "create-table", "add-column", "drop-column", "rename-column", "rename-table",
                                      "drop-table", "create-index", "drop-index", "view", "kv-index"]

    /// Every user object as `sqlite_schema` has it, harmonylite's own left out.
    static func userSchema(_ db: Database) throws -> [[DatabaseValue]] {
        try db.query("""
            SELECT type, name, tbl_name, sql FROM sqlite_schema
            WHERE substr(name, 1, \(Bookkeeping.prefix.count)) <> '\(Bookkeeping.prefix)' AND name NOT LIKE 'sqlite_%' ORDER BY type, name
            """)
    }
}
