import ArgumentParser
import Dispatch
import Foundation
import HarmonyCore
import HarmonyHTTP
import HarmonyPostgres
import HarmonyRuntime
import HarmonySQLite
import Logging

/// The harmonylite command line. Flags use HarmonyLite's single-dash spelling (`-cleanup`, `-db`).
struct HarmonyLiteCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "harmonylite",
        abstract: "Leaderless replication of SQLite databases over NATS JetStream.",
        discussion: """
              -config FILE     run the sidecar (HarmonyLite's config.toml keys); with
                               no [nats] urls it supervises an embedded nats-server
              -install         install or refresh change capture on every table
                               with a primary key
              -status          captured tables, pending changes and checkpoints
              -cleanup         remove every harmonylite trigger and table
                               (user data untouched)
              -save-snapshot   with -config: catch up, save a snapshot, exit
                               (a running sidecar takes one on SIGUSR1)
              -schema-status   with -config: this node's table hashes and its
                               schema registry entry
              -schema-status-cluster
                               every node's registry entry; exit 1 if they differ
              -schema-forget NODE
                               forget a decommissioned node (refused if it runs)
              -parked          messages that could not be applied: id, stream,
                               sequence, table, key, reason
              -parked-retry [ID...]
                               apply them again (all, or those IDs); kept if
                               they still fail
              -parked-discard ID...
                               remove parked messages for good
            """)

    @Option(name: .customLong("config", withSingleDash: true), help: "config.toml to run the sidecar with.")
    var configPath: String?

    @Option(name: .customLong("db", withSingleDash: true), help: "Path to the SQLite database (db_path).")
    var databasePath: String?

    @Option(name: .customLong("node-id", withSingleDash: true), help: "This node's id (node_id); overrides the config file.")
    var nodeIDOverride: Int64?

    var nodeID: Int64 { nodeIDOverride ?? 1 }

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

    @Option(name: .customLong("schema-forget", withSingleDash: true),
            help: ArgumentHelp("Remove a decommissioned node's schema registry entry.", valueName: "node"))
    var schemaForget: Int64?

    @Flag(name: .customLong("parked", withSingleDash: true), help: "List messages that could not be applied.")
    var listParked = false

    @Flag(name: .customLong("parked-retry", withSingleDash: true), help: "Apply parked messages again (the IDs given, or all).")
    var retryParked = false

    @Option(name: .customLong("parked-discard", withSingleDash: true), parsing: .upToNextOption,
            help: ArgumentHelp("Remove these parked messages for good.", valueName: "id"))
    var discardParked: [Int64] = []

    @Argument(help: ArgumentHelp("Parked message IDs for -parked-retry.", valueName: "id"))
    var parkedIDs: [Int64] = []

    @Flag(name: .customLong("save-snapshot", withSingleDash: true), help: "Catch up, save a snapshot, exit.")
    var saveSnapshot = false

    @Flag(name: .customLong("schema-status", withSingleDash: true), help: "Print this node's schema and registry entry.")
    var schemaStatus = false

    @Flag(name: .customLong("schema-status-cluster", withSingleDash: true), help: "Print every node's schema registry entry.")
    var schemaStatusCluster = false

    func run() throws {
        if version {
            print("harmonylite \(harmonyliteVersion)")
            return
        }
        if let configPath {
            guard FileManager.default.fileExists(atPath: configPath) else {
                FileHandle.standardError.write(Data("harmonylite: config file \(configPath) does not exist\n".utf8))
                throw ExitCode(2)
            }
            var config: RuntimeConfig
            do {
                config = try RuntimeConfig.parse(try String(contentsOfFile: configPath, encoding: .utf8))
            } catch {
                FileHandle.standardError.write(Data("harmonylite: \(configPath): \(error)\n".utf8))
                throw ExitCode(2)
            }
            if let nodeIDOverride { config.node.nodeID = nodeIDOverride }
            if let databasePath { config.node.databasePath = databasePath }
            if listParked || retryParked || !discardParked.isEmpty {
                try parkedCommand(path: config.node.databasePath, nodeID: config.node.nodeID, filter: config.node.tables,
                                  shards: config.node.shards)
                return
            }
            if cleanup || install || status {
                // Work on the file and exit: these never start replication (nor touch NATS), even beside a live node.
                try localCommand(path: config.node.databasePath, nodeID: config.node.nodeID, filter: config.node.tables,
                                 publishes: config.node.publish)
                return
            }
            if schemaStatus {
                print(try SchemaStatus.local(config))
                return
            }
            if let schemaForget {
                do {
                    print(try SchemaStatus.forget(config, nodeID: schemaForget))
                } catch let refused as NodeIdentityError {
                    FileHandle.standardError.write(Data("harmonylite: \(refused)\n".utf8))
                    throw ExitCode(1)
                }
                return
            }
            if schemaStatusCluster {
                let (report, consistent) = try SchemaStatus.cluster(config)
                print(report)
                if !consistent { throw ExitCode(1) }
                return
            }
            if saveSnapshot && !config.snapshot.enabled {
                FileHandle.standardError.write(Data("harmonylite: -save-snapshot needs [snapshot] enabled = true in \(configPath)\n".utf8))
                throw ExitCode(2)
            }
            // A mistyped db_path must not become a new, empty node that then "replicates" nothing of the application's.
            try requireDatabaseFile(config.node.databasePath, advice: """
                (db_path in \(configPath)). Point db_path at the application's database; for a new node that should get \
                everything from a snapshot, create an empty one first: sqlite3 \(config.node.databasePath) 'PRAGMA user_version = 0;'
                """)
            try Sidecar.run(config, saveSnapshotAndExit: saveSnapshot)
        }
        guard let databasePath else {
            throw ValidationError("-db PATH or -config FILE is required")
        }
        if listParked || retryParked || !discardParked.isEmpty {
            try parkedCommand(path: databasePath, nodeID: nodeID, filter: TableFilter(include: include, exclude: exclude), shards: 1)
            return
        }
        try localCommand(path: databasePath, nodeID: nodeID, filter: TableFilter(include: include, exclude: exclude))
    }

    /// `-parked`, `-parked-retry [ID...]`, `-parked-discard ID...`: on the database file, beside a running node or not.
    func parkedCommand(path: String, nodeID: Int64, filter: TableFilter, shards: Int) throws {
        try requireDatabaseFile(path)
        let db = try SQLiteOpener().open(path: path)
        if !discardParked.isEmpty {
            let removed = try ReplicationNode.discardParked(db, ids: Set(discardParked))
            print("discarded \(removed) parked message(s)")
        }
        if retryParked {
            // A core that neither publishes nor consumes: it only applies, with last-writer-wins, what was parked.
            var config = NodeConfig(nodeID: nodeID, databasePath: path)
            config.publish = false
            config.replicate = false
            config.shards = shards
            config.tables = filter
            let core = ReplicationNode(config: config, environment: NodeEnvironment(clock: OfflineClock(), log: DetachedLog(), opener: SQLiteOpener()))
            try core.start()
            defer { core.stop() }
            for (id, outcome) in try core.retryParked(ids: parkedIDs.isEmpty ? nil : Set(parkedIDs)) {
                switch outcome {
                case .applied: print("parked message \(id): applied")
                case .stillFails(let reason): print("parked message \(id): still fails, kept: \(reason)")
                case .waitsForSchema(let table): print("parked message \(id): needs the schema of \(quoteIdentifier(table)) that the sender has; kept")
                case .requeued: print("parked message \(id): local change queued for publishing again (a running node refuses it again if it is still above its max_row_bytes)")
                }
            }
        }
        let parked = try ReplicationNode.parkedMessages(db)
        if parked.isEmpty { print("no parked messages") }
        for p in parked {
            print("\(p.id)  \(p.stream) seq \(p.sequence)  \(p.table.map(quoteIdentifier) ?? "(undecodable)")  \(p.key ?? "")  \(p.reason)")
        }
    }
}

/// Time for a core run from the command line: the wall clock, and no timers (the command returns at once).
final class OfflineClock: NodeClock {
    var nowMs: Int64 { WallClock.nowMs }
    func schedule(_ timer: NodeTimer, afterMs delayMs: Int64) {}
}

extension HarmonyLiteCommand {
    /// A mistyped path is an error that names it, never a new empty database.
    func requireDatabaseFile(_ path: String, advice: String = "(check db_path or -db); nothing was created") throws {
        guard FileManager.default.fileExists(atPath: path) else {
            FileHandle.standardError.write(Data("harmonylite: no database at \(path) \(advice)\n".utf8))
            throw ExitCode(2)
        }
    }

    /// `-install`, `-status` (the default) and `-cleanup` on one database file. The file must exist: a mistyped
    /// path is an error, never a new empty database. `-status` opens it read-only.
    func localCommand(path: String, nodeID: Int64, filter: TableFilter, publishes: Bool = true) throws {
        try requireDatabaseFile(path)
        if !cleanup && !install {
            try CaptureStatus.print(try Database.readOnly(path: path))
            return
        }
        if cleanup, let running = SidecarLock.holder(databasePath: path) {
            // Under a running sidecar, -cleanup would pull its bookkeeping away: its later writes would not be published.
            FileHandle.standardError.write(Data(("harmonylite: \(running); stop it first (systemctl stop harmonylite, or SIGTERM), "
                + "then run -cleanup again.\n").utf8))
            throw ExitCode(1)
        }
        let db = try SQLiteOpener().open(path: path)
        if cleanup && publishes, let pending = try ChangeCapture.unpublishedChanges(db), pending > 0 {
            // Their change log goes with the bookkeeping: the writes would come back only as versionless rows,
            // losing to every other write of their keys.
            FileHandle.standardError.write(Data(("harmonylite: \(path) has \(pending) local change(s) not yet published; -cleanup would "
                + "lose them. Start the node until -status shows 0 pending changes, then run -cleanup again.\n").utf8))
            throw ExitCode(1)
        }
        if cleanup {
            try ChangeCapture.removeAll(db)
            print("removed harmonylite triggers and tables from \(path) (the one-row \(Bookkeeping.clockTable) stays, so this node's versions keep increasing if it is installed again)")
            // What the seeds' "-cleanup, change things, restart" does not keep (operator audit): said where it is run.
            print("""
                note: the checkpoints went too, so at its next start the node reads every stream from its start (if a stream no longer \
                starts at its first message, it needs a snapshot: enable [snapshot] on a node that can take one). Rows inserted under \
                new keys before then reach every node; an UPDATE or DELETE of a row the cluster already has, made before the node \
                runs again, loses to that row's version and is undone. Make such changes once the node runs (schema changes need no \
                -cleanup).
                """)
            return
        }
        let captured = try ChangeCapture.install(db, nodeID: nodeID, filter: filter)
        for name in captured.keys.sorted() {
            let t = captured[name]!
            print("captured \(quoteIdentifier(name)) epoch \(t.epoch) schema \(t.schema.hash) key (\(t.schema.primaryKey.joined(separator: ", ")))")
        }
        if status { try CaptureStatus.print(db) }
    }
}

enum CaptureStatus {
    static func print(_ db: Database) throws {
        let hasClock = try db.scalar("SELECT count(*) FROM sqlite_schema WHERE name = ?", [.text(Bookkeeping.clockTable)])?.int64 == 1
        guard hasClock else {
            Swift.print("no harmonylite capture installed")
            return
        }
        let pending = try ChangeCapture.unpublishedChanges(db) ?? 0
        let published = try db.scalar("SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.globalLog)) WHERE state = 1")?.int64 ?? 0
        let parked = try db.scalar("SELECT count(*) FROM \(quoteIdentifier(Bookkeeping.parkedTable))")?.int64 ?? 0
        Swift.print("changes pending: \(pending), published awaiting cleanup: \(published), parked messages: \(parked)")
        for row in try db.query("SELECT stream, seq FROM \(quoteIdentifier(Bookkeeping.checkpointTable)) ORDER BY stream") {
            Swift.print("checkpoint \(row[0].string ?? "?") = \(row[1])")
        }
    }
}

/// The running sidecar: embedded or external NATS, the live node, and a clean stop on SIGINT/SIGTERM.
enum Sidecar {
    static func run(_ config: RuntimeConfig, saveSnapshotAndExit: Bool = false) throws -> Never {
        HarmonyLogging.bootstrap(config.logging)
        let log = HarmonyLogging.nodeLogger(nodeID: config.node.nodeID)
        var server: EmbeddedNATSServer?
        var urls = config.nats.urls
        if urls.isEmpty {
            let dbDirectory = (config.node.databasePath as NSString).deletingLastPathComponent
            let store = config.nats.storeDirectory ?? ((dbDirectory.isEmpty ? "." : dbDirectory) as NSString)
                .appendingPathComponent("harmonylite-nats-\(config.node.nodeID)")
            let s = try EmbeddedNATSServer(bindAddress: config.nats.bindAddress, storeDirectory: store,
                                           serverName: "harmonylite-\(config.node.nodeID)", clusterAddress: config.nats.clusterAddress,
                                           clusterRoutes: config.nats.clusterRoutes, clusterName: config.nats.clusterName)
            s.onEvent = { log.warning("\($0)") }
            try s.start()
            log.info("embedded nats-server on \(s.url), store \(store)")
            server = s
            urls = [s.url]
        }
        let node = LiveNode(config: config, logger: log)
        do {
            try node.start(urls: urls)
        } catch {
            log.error("cannot start: \(error)")
            server?.stop()
            exit(1)
        }
        var api: HTTPAPIServer?
        if config.http.enable && !saveSnapshotAndExit {
            let http = HTTPAPIServer(settings: config.http, routes: APIRoutes(node: node, settings: config.http, log: log), log: log)
            do {
                let (host, port) = try http.start()
                let scheme = config.http.certFile == nil ? "http" : "https"
                log.info("HTTP API on \(scheme)://\(host):\(port)/ (\(config.http.token == nil ? "no token" : "bearer token required"))")
                if config.http.token == nil && !["127.0.0.1", "localhost", "::1"].contains(host) {
                    log.warning("the HTTP API listens on \(host) without a token: anyone who reaches port \(port) can read and write the database; set http.token")
                }
                api = http
            } catch {
                log.error("cannot start the HTTP API: \(error)")
                node.stop()
                server?.stop()
                exit(1)
            }
        }
        var postgres: PGServer?
        if config.postgres.enable && !saveSnapshotAndExit {
            let p = config.postgres
            let (host, port) = p.hostAndPort!
            let pg = PGServer(settings: PGServerSettings(host: host, port: port, maxConnections: p.maxConnections,
                                                         messageTimeoutMs: p.messageTimeoutMs, idleInTransactionTimeoutMs: p.idleInTransactionTimeoutMs,
                                                         authenticationTimeoutMs: p.authenticationTimeoutMs,
                                                         certFile: p.certFile, keyFile: p.keyFile),
                              session: PGSessionConfig(databasePath: config.node.databasePath, user: p.user, password: p.password,
                                                       auth: PGAuthMethod(rawValue: p.auth) ?? .scramSHA256, requireTLS: p.requireTLS,
                                                       nodeID: config.node.nodeID),
                              log: log)
            do {
                let bound = try pg.start()
                log.info("PostgreSQL wire protocol on \(host):\(bound) (user \(p.user), \(p.auth)\(p.certFile == nil ? "" : p.requireTLS ? ", TLS required" : ", TLS offered"))")
                postgres = pg
            } catch {
                log.error("cannot start the PostgreSQL front end: \(error)")
                api?.stop()
                node.stop()
                server?.stop()
                exit(1)
            }
        }
        if saveSnapshotAndExit {
            var code: Int32 = 0
            do {
                if let name = try node.saveSnapshot(timeoutSeconds: 300) {
                    print(name)
                } else {
                    log.error("no snapshot saved (see the reason above)")
                    code = 1
                }
            } catch {
                log.error("saving a snapshot: \(error)")
                code = 1
            }
            node.stop()
            server?.stop()
            exit(code)
        }
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        signal(SIGUSR1, SIG_IGN)
        let stopQueue = DispatchQueue(label: "harmonylite.signals")
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            let source = DispatchSource.makeSignalSource(signal: sig, queue: stopQueue)
            source.setEventHandler {
                log.info("signal \(sig): stopping")
                api?.stop()
                postgres?.stop()
                node.stop()
                server?.stop()
                exit(0)
            }
            source.resume()
            sources.append(source)
        }
        // SIGUSR1: take a snapshot now (on demand), without stopping.
        let usr1 = DispatchSource.makeSignalSource(signal: SIGUSR1, queue: DispatchQueue(label: "harmonylite.snapshot-signal"))
        usr1.setEventHandler {
            log.info("signal SIGUSR1: taking a snapshot")
            node.requestSnapshotNow()  // the outcome is logged: saved, skipped (why) or failed (why)
        }
        usr1.resume()
        sources.append(usr1)
        withExtendedLifetime(sources) { dispatchMain() }
    }
}

HarmonyLiteCommand.main()
