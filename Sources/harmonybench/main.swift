import ArgumentParser
import Foundation
import HarmonyCore
import HarmonySQLite

/// Benchmarks whose figures go into issue notes and `reports/`. Ratios are measured against a baseline
/// in the same run, alternating rounds, because shared machines are noisy.
struct HarmonyBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "harmonybench",
        abstract: "harmonylite benchmarks.",
        subcommands: [TriggerCost.self, AddColumnCost.self, LiveBench.self, ImportBench.self, HTTPBench.self, KVWriteBench.self, Calibrate.self, HealBench.self, RateBench.self])
}

struct TriggerCost: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "triggers",
        abstract: "Cost of the capture triggers: INSERT time with triggers over INSERT time without.")

    /// Enough commits that both variants pass WAL checkpoints: with 500, triggers (two pages a commit) met one and the
    /// baseline none, which tripled the ratio.
    @Option(help: "Single-row autocommit INSERTs per round.") var autocommitRows = 3_000
    @Option(help: "INSERTs in the one-transaction case.") var batchRows = 10_000
    @Option(help: "Rounds; each alternates baseline and triggers, the median is reported.") var rounds = 5
    @Option(help: "PRAGMA synchronous for both runs (FULL is SQLite's default).") var synchronous = "FULL"
    @Option(help: "Directory for scratch databases.") var directory = NSTemporaryDirectory()
    @Option(help: "Write a Markdown and JSON report with this path prefix (e.g. reports/trigger-cost).") var report: String?

    func run() throws {
        var autoBase: [Double] = [], autoTrig: [Double] = [], batchBase: [Double] = [], batchTrig: [Double] = [], stamp: [Double] = []
        var batchFiring: [Double] = [], batchOneRow: [Double] = []
        // The same transaction with a statement that cannot fail part way (see `abortFree`).
        var freeBase: [Double] = [], freeFiring: [Double] = [], freeOneRow: [Double] = [], freeOneCall: [Double] = [], freeCapture: [Double] = []
        for round in 0..<rounds {
            // Alternate which variant goes first so drift in machine load hits both.
            let order = round % 2 == 0 ? [false, true] : [true, false]
            for triggers in order {
                let a = try measure(triggers: triggers, rows: autocommitRows, oneTransaction: false).insert / Double(autocommitRows)
                let b = try measure(triggers: triggers, rows: batchRows, oneTransaction: true)
                if triggers { autoTrig.append(a); batchTrig.append(b.insert); stamp.append(b.stamp / Double(batchRows)) } else { autoBase.append(a); batchBase.append(b.insert) }
            }
            batchFiring.append(try measure(floor: Self.firingOnly, rows: batchRows))
            batchOneRow.append(try measure(floor: Self.oneMinimalRow, rows: batchRows))
            freeBase.append(try measure(triggers: false, rows: batchRows, oneTransaction: true, abortFree: true).insert)
            freeFiring.append(try measure(floor: Self.firingOnly, rows: batchRows, abortFree: true))
            freeOneRow.append(try measure(floor: Self.oneMinimalRow, rows: batchRows, abortFree: true))
            freeOneCall.append(try measure(floor: Self.oneRowOneCall, rows: batchRows, abortFree: true))
            freeCapture.append(try measure(triggers: true, rows: batchRows, oneTransaction: true, abortFree: true).insert)
        }
        let autoRatio = median(autoTrig) / median(autoBase)
        let batchRatio = median(batchTrig) / median(batchBase)
        let firingRatio = median(batchFiring) / median(batchBase), oneRowRatio = median(batchOneRow) / median(batchBase)
        func free(_ xs: [Double]) -> String { "\(ms(median(xs))) ms | \(fmt(median(xs) / median(freeBase)))x" }
        let machine = machineDescription()
        let lines = [
            "# Trigger cost",
            "",
            "Command: `swift run -c release harmonybench triggers --synchronous \(synchronous)`",
            "Machine: \(machine)",
            "SQLite \(sqliteVersion()), WAL, synchronous=\(synchronous), \(rounds) alternating rounds, medians.",
            "",
            "| case | without triggers | with triggers | ratio | target |",
            "|---|---|---|---|---|",
            "| single-row autocommit INSERT | \(us(median(autoBase))) µs/row | \(us(median(autoTrig))) µs/row | \(fmt(autoRatio))x | ≤ 2.0x |",
            "| \(batchRows) INSERTs in one transaction | \(ms(median(batchBase))) ms | \(ms(median(batchTrig))) ms | \(fmt(batchRatio))x | ≤ 2.0x |",
            "",
            "The triggers queue each change; the sidecar stamps versions on the queue later, in its own transaction, off the",
            "application's commit path: \(us(median(stamp))) µs per row for the \(batchRows)-row batch (median).",
            "",
            "What any per-row trigger costs here, in the same rounds (\(batchRows) INSERTs in one transaction, no capture):",
            "",
            "| trigger | time | ratio |",
            "|---|---|---|",
            "| `SELECT 1` (firing a trigger, nothing else) | \(ms(median(batchFiring))) ms | \(fmt(firingRatio))x |",
            "| one row into a two-column table (`'b', NEW.id`) | \(ms(median(batchOneRow))) ms | \(fmt(oneRowRatio))x |",
            "",
            "Where that floor comes from: SQLite's statement journal. Inside a transaction, a statement that writes more",
            "than one row (any trigger makes it so) and could fail part way gets a savepoint of its own, and each page it",
            "changes is copied to the journal first, for every statement. An INSERT into a table with a primary key can",
            "always fail part way (a duplicate key), so every trigger on it pays. A statement that cannot (`INSERT OR",
            "REPLACE` into a table whose columns allow NULL) pays only if the trigger can: a NOT NULL column it fills, or",
            "any function call. Capture calls two (`julianday()` for the write's millisecond, `total_changes()` for the",
            "priority lane's small commits), so it pays there too. The same \(batchRows) rows, `INSERT OR REPLACE`, no NOT NULL column:",
            "",
            "| trigger | time | ratio |",
            "|---|---|---|",
            "| none | \(free(freeBase)) |",
            "| `SELECT 1` | \(free(freeFiring)) |",
            "| one row, `'b', NEW.id` | \(free(freeOneRow)) |",
            "| one row, `'b', NEW.id, julianday()` | \(free(freeOneCall)) |",
            "| capture's | \(free(freeCapture)) |",
        ]
        let text = lines.joined(separator: "\n") + "\n"
        print(text)
        if let report {
            try text.write(toFile: report + ".md", atomically: true, encoding: .utf8)
            let json = """
                {"synchronous": "\(synchronous)", "rounds": \(rounds), "autocommit_rows": \(autocommitRows), "batch_rows": \(batchRows),
                 "autocommit_us_per_row": {"baseline": \(us(median(autoBase))), "triggers": \(us(median(autoTrig))), "ratio": \(fmt(autoRatio))},
                 "batch_ms": {"baseline": \(ms(median(batchBase))), "triggers": \(ms(median(batchTrig))), "ratio": \(fmt(batchRatio))},
                 "sidecar_stamp_us_per_row": \(us(median(stamp))),
                 "batch_floor_ratio": {"firing_only": \(fmt(firingRatio)), "one_minimal_row": \(fmt(oneRowRatio))},
                 "abort_free_batch_ratio": {"firing_only": \(fmt(median(freeFiring) / median(freeBase))), "one_minimal_row": \(fmt(median(freeOneRow) / median(freeBase))),
                   "one_row_one_call": \(fmt(median(freeOneCall) / median(freeBase))), "capture": \(fmt(median(freeCapture) / median(freeBase)))},
                 "machine": "\(machine)"}
                """
            try json.write(toFile: report + ".json", atomically: true, encoding: .utf8)
        }
    }

    /// The floor under any capture trigger: firing one that does nothing, and one that adds the smallest row.
    static let firingOnly = "CREATE TRIGGER floor_trigger AFTER INSERT ON bench BEGIN SELECT 1; END"
    static let oneMinimalRow = """
        CREATE TABLE floor_queue (id INTEGER PRIMARY KEY, t TEXT, k);
        CREATE TRIGGER floor_trigger AFTER INSERT ON bench BEGIN INSERT INTO floor_queue (t, k) VALUES ('b', NEW.id); END
        """

    /// The smallest row, with one function call: enough for SQLite to keep a statement journal.
    static let oneRowOneCall = """
        CREATE TABLE floor_queue (id INTEGER PRIMARY KEY, t TEXT, k, ms);
        CREATE TRIGGER floor_trigger AFTER INSERT ON bench BEGIN INSERT INTO floor_queue (t, k, ms) VALUES ('b', NEW.id, julianday()); END
        """
    /// Seconds to insert `rows` rows in one transaction under a trigger that is not capture's (`floor`).
    func measure(floor: String, rows: Int, abortFree: Bool = false) throws -> Double {
        try measure(triggers: false, rows: rows, oneTransaction: true, setup: floor, abortFree: abortFree).insert
    }

    /// Seconds to insert `rows` rows into a fresh database, with or without capture installed, and then (with
    /// capture) seconds for the sidecar to stamp them. `setup` runs first (another trigger to compare with).
    /// `abortFree`: `INSERT OR REPLACE` into a table whose columns allow NULL, a statement that cannot fail part way,
    /// so SQLite needs no statement journal for it unless a trigger can fail.
    func measure(triggers: Bool, rows: Int, oneTransaction: Bool, setup: String? = nil, abortFree: Bool = false) throws -> (insert: Double, stamp: Double) {
        let path = (directory as NSString).appendingPathComponent("harmonybench-\(UUID().uuidString).db")
        defer { for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) } }
        let db = try SQLiteOpener().open(path: path)
        try db.execute("PRAGMA synchronous=\(synchronous)")
        try db.execute("CREATE TABLE bench (id INTEGER PRIMARY KEY, name TEXT\(abortFree ? "" : " NOT NULL"), value REAL, payload BLOB)")
        if let setup { try db.execute(setup) }
        if triggers { try ChangeCapture.install(db, nodeID: 1, filter: TableFilter()) }
        let insert = try db.prepare("INSERT\(abortFree ? " OR REPLACE" : "") INTO bench (id, name, value, payload) VALUES (?, ?, ?, ?)")
        let payload = DatabaseValue.blob(Array(repeating: 0xAB, count: 64))
        let start = DispatchTime.now().uptimeNanoseconds
        if oneTransaction { try db.execute("BEGIN") }
        for i in 0..<rows {
            try insert.execute([.integer(Int64(i)), .text("row-\(i)"), .real(Double(i) * 0.5), payload])
        }
        if oneTransaction { try db.execute("COMMIT") }
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        guard triggers else { return (elapsed, 0) }
        let queued = try ChangeCapture.unpublishedChanges(db) ?? 0
        precondition(queued == rows, "triggers captured \(queued) of \(rows) rows")
        let stampStart = DispatchTime.now().uptimeNanoseconds
        _ = try db.transaction(.immediate) { try ChangeCapture.stampCaptured(db) }
        let stamped = Double(DispatchTime.now().uptimeNanoseconds - stampStart) / 1e9
        let logged = try db.scalar("SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.globalLog))")?.int64 ?? 0
        precondition(logged == rows, "stamping logged \(logged) of \(rows) rows")
        return (elapsed, stamped)
    }
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.isEmpty ? .nan : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
}
func fmt(_ x: Double) -> String { String(format: "%.2f", x) }
func us(_ seconds: Double) -> String { String(format: "%.1f", seconds * 1e6) }
func ms(_ seconds: Double) -> String { String(format: "%.1f", seconds * 1e3) }

func sqliteVersion() -> String {
    (try? Database(path: ":memory:").scalar("SELECT sqlite_version()")?.string) ?? "?"
}

func machineDescription() -> String {
    let cpu = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
        .split(separator: "\n").first { $0.hasPrefix("model name") }?
        .split(separator: ":").last?.trimmingCharacters(in: .whitespaces) ?? "unknown CPU"
    return "\(ProcessInfo.processInfo.activeProcessorCount) cores, \(cpu)"
}

HarmonyBench.main()
