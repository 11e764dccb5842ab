import Foundation
import HarmonyRuntime
import HarmonySQLite
import Testing

/// Finds the harmonylite binary built next to the test bundle.
func harmonyliteBinary() throws -> String {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent("harmonylite").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    let fallback = FileManager.default.currentDirectoryPath + "/.build/debug/harmonylite"
    guard FileManager.default.isExecutableFile(atPath: fallback) else { throw E2EError("harmonylite binary not found; run swift build first") }
    return fallback
}

struct E2EError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Runs the stock sqlite3 shell against a database, as an application would.
@discardableResult
func sqlite(_ path: String, _ sql: String) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/sqlite3")
    p.arguments = ["-batch", "-bail", "-cmd", ".timeout 5000", path]
    let input = Pipe(), output = Pipe(), errors = Pipe()
    p.standardInput = input; p.standardOutput = output; p.standardError = errors
    try p.run()
    input.fileHandleForWriting.write(Data(sql.utf8))
    try input.fileHandleForWriting.close()
    let out = output.fileHandleForReading.readDataToEndOfFile()
    let err = errors.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw E2EError("sqlite3 \(path): \(String(decoding: err, as: UTF8.self))") }
    return String(decoding: out, as: UTF8.self)
}

/// A nats-server and N harmonylite processes on temporary SQLite files, all on 127.0.0.1.
final class LiveCluster {
    let directory: String
    let natsPort: Int
    var nats: EmbeddedNATSServer
    var processes: [Int: Process] = [:]
    let nodeCount: Int
    let schema: String

    init(nodes: Int, schema: String, shards: Int = 2, configure: (Int) -> String = { _ in "" }) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("e2e-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        natsPort = EmbeddedNATSServer.freePort()
        nats = try EmbeddedNATSServer(bindAddress: "127.0.0.1:\(natsPort)", storeDirectory: directory + "/nats", serverName: "e2e")
        try nats.start()
        nodeCount = nodes
        self.schema = schema
        for i in 1...nodes {
            try sqlite(dbPath(i), schema)
            let config = """
                db_path = "\(dbPath(i))"
                node_id = \(i)
                cleanup_interval = 1000
                \(configure(i))
                [replication_log]
                shards = \(shards)
                max_entries = 0
                [nats]
                urls = ["nats://127.0.0.1:\(natsPort)"]
                connect_retries = 20
                reconnect_wait_seconds = 1
                """
            try config.write(toFile: configPath(i), atomically: true, encoding: .utf8)
            try start(i)
        }
    }

    deinit {
        for (_, p) in processes where p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
        nats.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    func dbPath(_ i: Int) -> String { "\(directory)/node\(i).db" }
    func configPath(_ i: Int) -> String { "\(directory)/node\(i).toml" }

    func start(_ i: Int) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try harmonyliteBinary())
        p.arguments = ["-config", configPath(i)]
        let log = FileHandle(forWritingAtPath: "\(directory)/node\(i).log") ?? {
            FileManager.default.createFile(atPath: "\(directory)/node\(i).log", contents: nil)
            return FileHandle(forWritingAtPath: "\(directory)/node\(i).log")!
        }()
        log.seekToEndOfFile()
        p.standardOutput = log
        p.standardError = log
        try p.run()
        processes[i] = p
        // Ready when its triggers exist (it installs capture before it subscribes).
        try waitUntil("node \(i) installed capture", timeoutSeconds: 20) {
            (try? sqlite(dbPath(i), "SELECT count(*) FROM sqlite_schema WHERE name = '__harmonylite___clock';"))?.hasPrefix("1") == true
        }
    }

    func kill9(_ i: Int) {
        guard let p = processes[i] else { return }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    func stop(_ i: Int) {
        guard let p = processes[i], p.isRunning else { return }
        p.terminate()
        p.waitUntilExit()
    }

    func log(_ i: Int) -> String { (try? String(contentsOfFile: "\(directory)/node\(i).log", encoding: .utf8)) ?? "" }

    func query(_ i: Int, _ sql: String) throws -> String { try sqlite(dbPath(i), sql) }

    /// Polls until every node returns the same non-empty answer as `expected` (when given), bounded in time.
    func waitForConvergence(_ sql: String, expected: String? = nil, timeoutSeconds: Double = 30) throws -> String {
        var last: [String] = []
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline {
            last = try (1...nodeCount).map { try query($0, sql) }
            if Set(last).count == 1, expected == nil || last[0] == expected { return last[0] }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw E2EError("no convergence within \(timeoutSeconds) s for \(sql):\n" + last.enumerated().map { "node \($0.offset + 1): \($0.element)" }.joined(separator: "\n")
                       + "\n--- logs ---\n" + (1...nodeCount).map { "node \($0): \(log($0).suffix(2000))" }.joined(separator: "\n"))
    }
}

func waitUntil(_ what: String, timeoutSeconds: Double, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeoutSeconds)
    while Date() < deadline {
        if try condition() { return }
        Thread.sleep(forTimeInterval: 0.05)
    }
    throw E2EError("timed out after \(timeoutSeconds) s waiting until \(what)")
}
