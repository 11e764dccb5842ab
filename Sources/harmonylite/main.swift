import ArgumentParser
import HarmonyCore
import HarmonySQLite

/// The harmonylite command line. Flags use HarmonyLite's single-dash spelling (`-cleanup`, `-db`).
struct HarmonyLiteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "harmonylite",
        abstract: "Leaderless replication of SQLite databases over NATS JetStream.",
        discussion: """
            This build carries the replication core and change capture. Available actions:
              -install   install or refresh change-capture triggers on every table with a primary key
              -status    show captured tables, pending changes and checkpoints
              -cleanup   remove every harmonylite trigger and __harmonylite__ table (user data untouched)
            """)

    @Option(name: .customLong("db", withSingleDash: true), help: "Path to the SQLite database (db_path).")
    var databasePath: String?

    @Option(name: .customLong("node-id", withSingleDash: true), help: "This node's id (node_id).")
    var nodeID: Int64 = 1

    @Option(name: .customLong("exclude", withSingleDash: true), parsing: .upToNextOption, help: "Tables not to capture.")
    var exclude: [String] = []

    @Option(name: .customLong("include", withSingleDash: true), parsing: .upToNextOption, help: "Only capture these tables.")
    var include: [String] = []

    @Flag(name: .customLong("install", withSingleDash: true), help: "Install or refresh change capture.")
    var install = false

    @Flag(name: .customLong("status", withSingleDash: true), help: "Print capture status.")
    var status = false

    @Flag(name: .customLong("cleanup", withSingleDash: true), help: "Remove all triggers and bookkeeping tables.")
    var cleanup = false

    @Flag(name: .customLong("version", withSingleDash: true), help: "Print the version.")
    var version = false

    func run() throws {
        if version {
            print("harmonylite \(harmonyliteVersion)")
            return
        }
        guard let databasePath else {
            throw ValidationError("-db PATH is required")
        }
        let db = try SQLiteOpener().open(path: databasePath)
        if cleanup {
            try ChangeCapture.removeAll(db)
            print("removed harmonylite triggers and tables from \(databasePath)")
            return
        }
        if install {
            let captured = try ChangeCapture.install(db, nodeID: nodeID, filter: TableFilter(include: include, exclude: exclude))
            for name in captured.keys.sorted() {
                let t = captured[name]!
                print("captured \(quoteIdentifier(name)) epoch \(t.epoch) schema \(t.schema.hash) key (\(t.schema.primaryKey.joined(separator: ", ")))")
            }
        }
        if status || !install {
            try CaptureStatus.print(db)
        }
    }
}

enum CaptureStatus {
    static func print(_ db: Database) throws {
        let hasClock = try db.scalar("SELECT count(*) FROM sqlite_schema WHERE name = ?", [.text(Bookkeeping.clockTable)])?.int64 == 1
        guard hasClock else {
            Swift.print("no harmonylite capture installed")
            return
        }
        let pending = try db.scalar("SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.globalLog)) WHERE state = 0")?.int64 ?? 0
        let published = try db.scalar("SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.globalLog)) WHERE state = 1")?.int64 ?? 0
        let parked = try db.scalar("SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.parkedTable))")?.int64 ?? 0
        Swift.print("changes pending: \(pending), published awaiting cleanup: \(published), parked messages: \(parked)")
        for row in try db.query("SELECT stream, seq FROM \(quoteIdentifier(Bookkeeping.checkpointTable)) ORDER BY stream") {
            Swift.print("checkpoint \(row[0].string ?? "?") = \(row[1])")
        }
    }
}

HarmonyLiteCommand.main()
