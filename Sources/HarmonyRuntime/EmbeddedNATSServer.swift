import Foundation
import HarmonyProcess
import Synchronization

public struct EmbeddedServerError: Error, CustomStringConvertible {
    public var description: String
}

/// The default transport when `[nats] urls` is empty: a supervised `nats-server -js` child with its store
/// in the data directory, bound to loopback unless configured otherwise, restarted if it dies.
public final class EmbeddedNATSServer: @unchecked Sendable {
    public let host: String
    public let port: Int
    public let storeDirectory: String
    public let serverName: String
    public let clusterAddress: String?
    public let clusterRoutes: [String]
    public let clusterName: String
    /// Restarts after an unexpected exit, at most this many times in a row.
    public let restartsMax: Int

    private let state = Mutex(State())
    private struct State {
        var process: ChildProcess?
        var stopping = false
        var restarts = 0
    }
    /// Called (from the supervising thread) when the server exits unexpectedly and when it was restarted.
    public var onEvent: (@Sendable (String) -> Void)?

    public init(bindAddress: String, storeDirectory: String, serverName: String, clusterAddress: String? = nil,
                clusterRoutes: [String] = [], clusterName: String = "harmonylite", restartsMax: Int = 10) throws {
        let parts = bindAddress.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let port = Int(parts[1]), (0...65535).contains(port) else {
            throw EmbeddedServerError(description: "nats.bind_address must be host:port, got \"\(bindAddress)\"")
        }
        self.host = parts[0].isEmpty ? "127.0.0.1" : String(parts[0])
        self.port = port
        self.storeDirectory = storeDirectory
        self.serverName = serverName
        self.clusterAddress = clusterAddress
        self.clusterRoutes = clusterRoutes
        self.clusterName = clusterName
        self.restartsMax = restartsMax
    }

    public var url: String { "nats://\(host):\(port)" }

    public static func findExecutable() throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        for dir in path.split(separator: ":") + ["/usr/sbin", "/usr/bin", "/usr/local/bin"] {
            let candidate = "\(dir)/nats-server"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw EmbeddedServerError(description: "nats-server not found on PATH (Debian: apt-get install nats-server), "
            + "or set [nats] urls to use an external NATS cluster")
    }

    /// Written by nats-server itself (`-P`), so a later supervisor can find a server this one left behind.
    public var pidFile: String { storeDirectory + "/nats-server.pid" }

    var arguments: [String] {
        var args = ["-js", "-a", host, "-p", String(port), "-sd", storeDirectory, "-n", serverName, "-P", pidFile]
        if let clusterAddress {
            args += ["--cluster", clusterAddress.contains("://") ? clusterAddress : "nats://\(clusterAddress)", "--cluster_name", clusterName]
            if !clusterRoutes.isEmpty { args += ["--routes", clusterRoutes.joined(separator: ",")] }
        }
        return args
    }

    /// Starts the server and waits (at most `readyTimeoutMs`) until it accepts connections.
    /// - throws: `EmbeddedServerError` at once when the client or cluster port is taken: a node must never join
    ///   whatever server already listens there (another cluster's) by mistake.
    public func start(readyTimeoutMs: Int = 10_000) throws {
        try FileManager.default.createDirectory(atPath: storeDirectory, withIntermediateDirectories: true)
        try stopOrphan()
        try Self.requireFree(host: host, port: port, what: "nats.bind_address")
        if let clusterAddress {
            let parts = clusterAddress.replacingOccurrences(of: "nats://", with: "").split(separator: ":")
            if parts.count == 2, let clusterPort = Int(parts[1]) {
                try Self.requireFree(host: parts[0].isEmpty ? "0.0.0.0" : String(parts[0]), port: clusterPort, what: "nats.cluster_address")
            }
        }
        try launch()
        try waitUntilReady(timeoutMs: readyTimeoutMs)
    }

    /// Starts the child (its output appended to the store's log) and a thread that waits for it to exit.
    private func launch() throws {
        let logPath = storeDirectory + "/nats-server.log"
        let child = try ChildProcess.spawn(try Self.findExecutable(), arguments, environment: ProcessInfo.processInfo.environment,
                                           stdin: nil, stdout: logPath, stderr: logPath, appendOutput: true)
        state.withLock { $0.process = child }
        let supervisor = Thread { [weak self] in
            let status = child.waitForExit()
            self?.exited(child, status: status)
        }
        supervisor.name = "harmonylite-nats-supervisor"
        supervisor.start()
    }

    private func exited(_ proc: ChildProcess, status: Int32) {
        let restart: Bool = state.withLock { s in
            guard !s.stopping, s.process === proc, s.restarts < restartsMax else { return false }
            s.restarts += 1
            return true
        }
        guard restart else { return }
        onEvent?("embedded nats-server exited with status \(status); restarting")
        Thread.sleep(forTimeInterval: 0.5)
        do {
            try launch()
            try waitUntilReady(timeoutMs: 10_000)
            state.withLock { $0.restarts = 0 }
            onEvent?("embedded nats-server restarted")
        } catch {
            onEvent?("embedded nats-server could not be restarted: \(error)")
        }
    }

    /// A supervisor killed with SIGKILL cannot stop its child: that nats-server lives on, holding our ports and
    /// writing our store. Before starting, stop the one the pid file names, if it is still a nats-server on this store;
    /// if another running harmonylite still supervises it, the store is in use and starting is refused.
    func stopOrphan(graceMs: Int = 5_000) throws {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
              let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1,
              Self.isNATSServer(pid: pid, storeDirectory: storeDirectory) else { return }
        if let parent = Self.parentPID(of: pid), parent != getpid(),
           Self.commandLine(of: parent).first.map({ URL(fileURLWithPath: $0).lastPathComponent == "harmonylite" }) == true {
            throw EmbeddedServerError(description: "\(storeDirectory) is in use by nats-server pid \(pid), supervised by harmonylite pid \(parent)")
        }
        onEvent?("stopping nats-server pid \(pid) left running on \(storeDirectory) by an earlier harmonylite")
        kill(pid, SIGTERM)
        let deadline = Date().addingTimeInterval(Double(graceMs) / 1000)
        while Self.isNATSServer(pid: pid, storeDirectory: storeDirectory) && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        if Self.isNATSServer(pid: pid, storeDirectory: storeDirectory) {
            kill(pid, SIGKILL)
            let killDeadline = Date().addingTimeInterval(2)
            while Self.isNATSServer(pid: pid, storeDirectory: storeDirectory) && Date() < killDeadline { Thread.sleep(forTimeInterval: 0.02) }
        }
    }

    /// True while `pid` is a live nats-server whose arguments name `storeDirectory` (a recycled pid is left alone;
    /// a zombie has an empty command line, so it does not count).
    static func isNATSServer(pid: Int32, storeDirectory: String) -> Bool {
        let args = commandLine(of: pid)
        return args.first?.hasSuffix("nats-server") == true && args.contains(storeDirectory)
    }

    static func commandLine(of pid: Int32) -> [String] {
        guard let raw = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return [] }
        return raw.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
    }

    /// From `/proc/<pid>/stat`: the field after the state, which follows the parenthesised command name.
    static func parentPID(of pid: Int32) -> Int32? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.range(of: ")", options: .backwards) else { return nil }
        let fields = stat[close.upperBound...].split(separator: " ")
        return fields.count > 1 ? Int32(fields[1]) : nil
    }

    /// Polls the client port; bounded by `timeoutMs`.
    public func waitUntilReady(timeoutMs: Int) throws {
        let deadline = Date().addingTimeInterval(Double(timeoutMs) / 1000)
        while Date() < deadline {
            if Self.canConnect(host: host, port: port) { return }
            if let p = state.withLock({ $0.process }), let status = p.wait(timeoutSeconds: 0) {
                throw EmbeddedServerError(description: "nats-server exited with status \(status) at start; see \(storeDirectory)/nats-server.log")
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        throw EmbeddedServerError(description: "nats-server did not accept connections on \(host):\(port) within \(timeoutMs) ms; see \(storeDirectory)/nats-server.log")
    }

    /// Binds the address the way nats-server will (SO_REUSEADDR) and lets go; a failure is the server's own reason.
    static func requireFree(host: String, port: Int, what: String) throws {
        guard port != 0 else { return }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host, &addr.sin_addr) == 1 else { return }  // a name: let the server say
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard !bound else { return }
        let reason = String(cString: strerror(errno))
        throw EmbeddedServerError(description: "cannot start the embedded nats-server: \(host):\(port) (\(what)): \(reason.lowercased()). "
            + "Another program (perhaps another harmonylite's server) listens there; choose a free port for \(what), "
            + "or list that server in [nats] urls if this node should use it")
    }

    public static func canConnect(host: String, port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else { return false }
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    /// Stops the server (SIGTERM, then SIGKILL after `graceMs`) and does not restart it.
    public func stop(graceMs: Int = 5_000) {
        guard let p = state.withLock({ s -> ChildProcess? in s.stopping = true; return s.process }) else { return }
        p.terminate(graceSeconds: Double(graceMs) / 1000)
    }

    /// For tests and operators: the running child's pid.
    public var processIdentifier: Int32? { state.withLock { $0.process?.isRunning == true ? $0.process?.pid : nil } }

    /// A free TCP port on 127.0.0.1 for a server that a test or a benchmark starts: free when handed out, never the
    /// same one twice in a process, and from below the kernel's ephemeral range (32768 up on Linux). A port the kernel
    /// picks (bind to port 0) can be offered again (a benchmark once gave nats-server and a node's metrics the same
    /// port, and the node could not start), or taken by an outgoing connection before the server binds it (the
    /// end-to-end tests once lost a PostgreSQL listener's port that way). The ports start where the process id puts them in
    /// 20000..<30000, so processes running at once rarely try the same ones.
    public static func freePort() -> Int {
        for _ in 0..<(32768 - 20000) {
            let port = nextPort.withLock { next -> Int in
                let port = next
                next = next + 1 < 32768 ? next + 1 : 20000
                return port
            }
            if handedOut.withLock({ $0.insert(port).inserted }), canBindLoopback(port) { return port }
        }
        preconditionFailure("no free port on 127.0.0.1 in 20000..<32768")
    }

    private static let nextPort = Mutex<Int>(20000 + Int(getpid() % 500) * 20)
    private static let handedOut = Mutex<Set<Int>>([])

    private static func canBindLoopback(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }
}
