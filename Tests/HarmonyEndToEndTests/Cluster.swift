import Foundation
import HarmonyProcess
import Synchronization
import HarmonyTestSupport
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

/// The sqlite3 shell as the application, waiting up to 5 s for a lock the sidecar holds.
@discardableResult
func sqlite(_ path: String, _ sql: String) throws -> String {
    try runSQLiteShell(path, sql, arguments: ["-cmd", ".timeout 5000"])
}

/// N harmonylite processes on temporary SQLite files, all on 127.0.0.1, over either one external nats-server
/// (the test supervises it) or a NATS cluster made of each node's own embedded nats-server.
final class LiveCluster {
    enum Transport {
        /// One nats-server started by the test; every node lists it in `[nats] urls`.
        case external
        /// No `urls`: each harmonylite runs its own nats-server, routed to the others' into one JetStream cluster.
        case embeddedCluster
    }

    let directory: String
    let transport: Transport
    /// The external server's client port (`.external` only).
    let natsPort: Int
    var nats: EmbeddedNATSServer?
    var processes: [Int: ChildProcess] = [:]
    /// How many times each node's log said it had started when it was last launched.
    var startsLogged: [Int: Int] = [:]
    var nodeCount: Int
    let schema: String
    /// Written into each config by `writeConfig`: a test may change it and write a node's config again.
    var shards: Int
    let maxEntries: Int
    let replicas: Int
    let configure: (Int) -> String
    /// Each node's `[nats]` section body.
    var natsSection: [Int: String] = [:]
    /// More `[replication_log]` keys for configs written from now on (`writeConfig`).
    var replicationLogExtra = ""
    /// Seconds a node may take from launch until its capture is installed (a forming JetStream cluster is slower).
    let readyTimeoutSeconds: Double

    /// `configure(i)` is placed before the first section, so it may set top-level keys and then open its own
    /// section (e.g. `[snapshot]`).
    init(nodes: Int, schema: String, shards: Int = 2, transport: Transport = .external, replicas: Int = 1,
         maxEntries: Int = 0, configure: @escaping (Int) -> String = { _ in "" }) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("e2e-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        self.transport = transport
        nodeCount = nodes
        self.schema = schema
        self.shards = shards
        self.maxEntries = maxEntries
        self.replicas = replicas
        self.configure = configure
        switch transport {
        case .external:
            natsPort = distinctFreePorts(1)[0]
            readyTimeoutSeconds = 20
            let server = try EmbeddedNATSServer(bindAddress: "127.0.0.1:\(natsPort)", storeDirectory: directory + "/nats", serverName: "e2e")
            try server.start()
            nats = server
            for i in 1...nodes { natsSection[i] = "urls = [\"nats://127.0.0.1:\(natsPort)\"]" }
        case .embeddedCluster:
            natsPort = 0
            readyTimeoutSeconds = 60
            let ports = distinctFreePorts(2 * nodes)
            let clientPorts = Array(ports[0..<nodes]), clusterPorts = Array(ports[nodes...])
            for i in 1...nodes {
                let routes = (1...nodes).filter { $0 != i }.map { "\"nats://127.0.0.1:\(clusterPorts[$0 - 1])\"" }
                natsSection[i] = """
                    bind_address = "127.0.0.1:\(clientPorts[i - 1])"
                    cluster_address = "127.0.0.1:\(clusterPorts[i - 1])"
                    cluster_routes = [\(routes.joined(separator: ", "))]
                    cluster_name = "e2e-\(URL(fileURLWithPath: directory).lastPathComponent)"
                    store_dir = "\(storeDirectory(i))"
                    """
            }
        }
        for i in 1...nodes {
            try sqlite(dbPath(i), schema)
            try writeConfig(i)
        }
        switch transport {
        case .external:
            for i in 1...nodes { try start(i) }
        case .embeddedCluster:
            // All at once: none can create its streams until enough of the others' servers have joined.
            for i in 1...nodes { try launch(i) }
            for i in 1...nodes { try waitUntilInstalled(i) }
        }
    }

    func writeConfig(_ i: Int) throws {
        let config = """
            db_path = "\(dbPath(i))"
            node_id = \(i)
            cleanup_interval = 1000
            \(configure(i))
            [replication_log]
            shards = \(shards)
            max_entries = \(maxEntries)
            replicas = \(replicas)
            \(replicationLogExtra)
            [nats]
            \(natsSection[i]!)
            connect_retries = 20
            reconnect_wait_seconds = 1
            """
        try config.write(toFile: configPath(i), atomically: true, encoding: .utf8)
    }

    /// A further node on the external server, started with `sql` as its database (empty: no tables at all).
    func addNode(sql: String = "") throws -> Int {
        precondition(transport == .external, "addNode needs the external server")
        nodeCount += 1
        let i = nodeCount
        natsSection[i] = "urls = [\"nats://127.0.0.1:\(natsPort)\"]"
        try sqlite(dbPath(i), sql.isEmpty ? "PRAGMA user_version = 0;" : sql)
        try writeConfig(i)
        try start(i)
        return i
    }

    deinit {
        stopAll()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// SIGTERM every node (a clean stop also stops its embedded server), SIGKILL what lingers, then kill any
    /// nats-server still running on one of this cluster's stores, so no test leaves a process behind.
    func stopAll() {
        for (_, p) in processes where p.isRunning { kill(p.pid, SIGTERM) }
        let deadline = Date().addingTimeInterval(10)
        for (_, p) in processes where p.wait(timeoutSeconds: max(0, deadline.timeIntervalSinceNow)) == nil {
            kill(p.pid, SIGKILL)
            _ = p.wait(timeoutSeconds: 30)
        }
        nats?.stop()
        for pid in natsServerPIDs() { kill(pid, SIGKILL) }
    }

    func dbPath(_ i: Int) -> String { "\(directory)/node\(i).db" }
    func configPath(_ i: Int) -> String { "\(directory)/node\(i).toml" }
    func storeDirectory(_ i: Int) -> String { "\(directory)/nats\(i)" }

    /// Every live nats-server whose command line names a path under `under` (default: this cluster's directory).
    func natsServerPIDs(under: String? = nil) -> [Int32] {
        let prefix = under ?? directory
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !raw.isEmpty else { return false }
            let args = raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            return args.first?.hasSuffix("nats-server") == true && args.contains { $0.hasPrefix(prefix) }
        }
    }

    func start(_ i: Int) throws {
        try launch(i)
        try waitUntilInstalled(i)
    }

    func launch(_ i: Int) throws {
        startsLogged[i] = startLines(i)
        processes[i] = try ChildProcess.spawn(try harmonyliteBinary(), ["-config", configPath(i)], environment: ProcessInfo.processInfo.environment,
                                              stdin: nil, stdout: "\(directory)/node\(i).log", stderr: "\(directory)/node\(i).log", appendOutput: true)
    }

    func startLines(_ i: Int) -> Int { log(i).components(separatedBy: "node \(i) started on ").count - 1 }

    /// The log sentences node `i` writes once each front end its config enables listens: the front ends
    /// start after "started on", so a client that connects on that line alone can be refused.
    func frontEndLines(_ i: Int) -> [String] {
        guard let text = try? String(contentsOfFile: configPath(i), encoding: .utf8),
              let config = try? RuntimeConfig.parse(text) else { return [] }
        return (config.http.enable ? ["HTTP API on "] : []) + (config.postgres.enable ? ["PostgreSQL wire protocol on "] : [])
    }

    /// Ready when this launch logged that it replicates (after its streams exist and capture is installed),
    /// its triggers are there, and the front ends its config enables listen.
    func waitUntilInstalled(_ i: Int) throws {
        let frontEnds = frontEndLines(i)
        do {
            try waitUntil("node \(i) started replicating", timeoutSeconds: readyTimeoutSeconds) {
                if let p = processes[i], let status = p.wait(timeoutSeconds: 0) {
                    throw E2EError("node \(i) exited with status \(status); its log ends:\n\(log(i).suffix(1500))")
                }
                let started = "node \(i) started on "
                let launches = log(i).components(separatedBy: started)
                let sinceLaunch = launches.dropFirst(startsLogged[i, default: 0] + 1).joined(separator: started)
                return launches.count - 1 > startsLogged[i, default: 0]
                    && frontEnds.allSatisfy { sinceLaunch.contains($0) }
                    && (try? sqlite(dbPath(i), "SELECT count(*) FROM sqlite_schema WHERE name = '__harmonylite___clock';"))?.hasPrefix("1") == true
            }
        } catch {
            throw E2EError("\(error)\n--- node \(i) log ---\n\(log(i).suffix(3000))")
        }
    }

    func kill9(_ i: Int) {
        guard let p = processes[i] else { return }
        kill(p.pid, SIGKILL)
        _ = p.wait(timeoutSeconds: 30)
    }

    /// SIGTERM, as an operator stops a node; one that is still running 30 s later fails the test and is killed.
    func stop(_ i: Int) {
        guard let p = processes[i], p.isRunning else { return }
        kill(p.pid, SIGTERM)
        guard p.wait(timeoutSeconds: 30) == nil else { return }
        Issue.record("node \(i) was still running 30 s after SIGTERM; its log ends:\n\(log(i).suffix(1500))")
        kill9(i)
    }

    func log(_ i: Int) -> String { (try? String(contentsOfFile: "\(directory)/node\(i).log", encoding: .utf8)) ?? "" }

    func query(_ i: Int, _ sql: String) throws -> String { try sqlite(dbPath(i), sql) }

    /// Polls until every node returns the same non-empty answer as `expected` (when given), bounded in time.
    func waitForConvergence(_ sql: String, expected: String? = nil, timeoutSeconds: Double = 30) throws -> String {
        var last: [String] = []
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline {
            // A node that lacks the table yet answers with an error: not converged yet, not a failure.
            last = (1...nodeCount).map { (try? query($0, sql)) ?? "(error)" }
            if Set(last).count == 1, expected == nil || last[0] == expected { return last[0] }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw E2EError("no convergence within \(timeoutSeconds) s for \(sql):\n" + last.enumerated().map { "node \($0.offset + 1): \($0.element)" }.joined(separator: "\n")
                       + "\n--- logs ---\n" + (1...nodeCount).map { "node \($0): \(log($0).suffix(2000))" }.joined(separator: "\n"))
    }
}

/// Ports for the servers one test starts (`EmbeddedNATSServer.freePort`: each free when handed out, never twice in
/// this process, from below the kernel's ephemeral range, where an outgoing connection of another test running
/// alongside could take it before our server binds it, which is how a node's PostgreSQL listener once lost its port in CI).
func distinctFreePorts(_ count: Int) -> [Int] {
    (0..<count).map { _ in EmbeddedNATSServer.freePort() }
}

func waitUntil(_ what: String, timeoutSeconds: Double, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeoutSeconds)
    while Date() < deadline {
        if try condition() { return }
        Thread.sleep(forTimeInterval: 0.05)
    }
    throw E2EError("timed out after \(timeoutSeconds) s waiting until \(what)")
}

/// A raw TCP connection to 127.0.0.1, for sending what no driver would.
final class RawSocket {
    let fd: Int32
    init(port: Int, timeoutSeconds: Int = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { close(fd); throw E2EError("cannot connect to 127.0.0.1:\(port)") }
    }
    deinit { close(fd) }
    func send(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
    /// Everything the server sends until it closes the connection (or the timeout passes).
    func readToEnd() -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return out }
            out += buffer[0..<n]
        }
    }
}

/// The `sqlite3` shell as an application with a long transaction: it takes `path`'s write lock (BEGIN IMMEDIATE),
/// runs `sql` in it, holds it for `seconds` and commits. Returns the running shell.
func holdWriteLock(_ path: String, seconds: Int, writing sql: String) throws -> ChildProcess {
    let script = FileManager.default.temporaryDirectory.appendingPathComponent("hold-\(UUID().uuidString.prefix(8)).sql").path
    try ".timeout 5000\nBEGIN IMMEDIATE;\n\(sql)\n.shell sleep \(seconds)\nCOMMIT;\n".write(toFile: script, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(atPath: script) }  // the shell opened it as its stdin when it started
    return try ChildProcess.spawn("/usr/bin/sqlite3", [path], environment: ProcessInfo.processInfo.environment,
                                  stdin: script, stdout: nil, stderr: nil)
}

/// Returns once another connection (a `holdWriteLock` holder) has SQLite's write lock on `path`.
func waitUntilTheWriteLockIsHeld(_ path: String) throws {
    let probe = try Database(path: path)  // no busy timeout: a held lock fails at once
    try waitUntil("the application holds the write lock of \(path)", timeoutSeconds: 10) {
        guard (try? probe.execute("BEGIN IMMEDIATE")) != nil else { return true }
        try probe.execute("ROLLBACK")
        return false
    }
}

/// A plain HTTP GET to 127.0.0.1 (status and body), enough for a node's /metrics and /health.
func httpGet(port: Int, path: String) throws -> (status: Int, body: String) {
    let connection = try RawSocket(port: port, timeoutSeconds: 5)
    connection.send(Array("GET \(path) HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".utf8))
    let text = String(decoding: connection.readToEnd(), as: UTF8.self)
    guard let end = text.range(of: "\r\n\r\n"), let status = Int(text[..<end.lowerBound].split(separator: " ").dropFirst().first ?? "") else {
        throw E2EError("not an HTTP response from 127.0.0.1:\(port)\(path): \(text.prefix(200))")
    }
    return (status, String(text[end.upperBound...]))
}

/// A self-signed certificate for 127.0.0.1 made with openssl, removed with this object.
final class TestCertificate {
    let directory: String
    var certFile: String { directory + "/cert.pem" }
    var keyFile: String { directory + "/key.pem" }

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("e2e-cert-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let openssl = try runToEnd("/usr/bin/openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                                                        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", directory + "/key.pem", "-out", directory + "/cert.pem"])
        guard openssl.status == 0 else { throw E2EError("openssl could not make a certificate: \(openssl.errors)") }
    }

    deinit { try? FileManager.default.removeItem(atPath: directory) }
}

/// Runs a Python program (written to `directory`) with `python`; its output, or an error carrying it.
func runPython(_ script: String, _ arguments: [String], in directory: String, python: String = "/usr/bin/python3") throws -> String {
    let path = directory + "/client-\(UUID().uuidString.prefix(6)).py"
    try script.write(toFile: path, atomically: true, encoding: .utf8)
    let (status, text) = try runProgram(python, [path] + arguments)
    guard status == 0 else { throw E2EError("python client \(arguments.first ?? "") failed:\n\(text)") }
    return text
}

/// Runs a program to its end: exit status and everything it wrote (stdout and stderr together).
func runProgram(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
    let run = try runToEnd(executable, arguments, mergeErrors: true, environment: environment ?? ProcessInfo.processInfo.environment)
    return (run.status, run.output)
}

/// The values of every series in a Prometheus text body whose line starts with `prefix`.
func metricValues(_ body: String, _ prefix: String) -> [Double] {
    body.split(separator: "\n").filter { $0.hasPrefix(prefix) }.compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }
}
