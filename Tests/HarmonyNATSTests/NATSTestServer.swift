import Foundation
import HarmonyProcess
import HarmonyTestSupport
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import HarmonyNATS

/// A throwaway `nats-server -js` bound to 127.0.0.1 on a free port, with its own store directory.
/// Stop it with `stop()` (idempotent; also done in deinit).
final class NATSTestServer: @unchecked Sendable {
    let port: Int
    let storeDir: URL
    let process: ChildProcess
    private let lock = NSLock()
    private var stopped = false

    var url: String { "nats://127.0.0.1:\(port)" }

    struct StartError: Error, CustomStringConvertible { let description: String }

    static func executable() throws -> URL {
        let fm = FileManager.default
        var candidates = (ProcessInfo.processInfo.environment["PATH"] ?? "")
            .split(separator: ":").map { String($0) + "/nats-server" }
        candidates.append("/usr/sbin/nats-server")
        candidates.append("/usr/bin/nats-server")
        for c in candidates where fm.isExecutableFile(atPath: c) {
            return URL(fileURLWithPath: c)
        }
        throw StartError(description: "nats-server not found on PATH or in /usr/sbin")
    }

    init(port: Int, storeDir: URL, process: ChildProcess) {
        self.port = port
        self.storeDir = storeDir
        self.process = process
    }

    /// Starts a server and waits (at most 10 s) until it accepts connections.
    static func start() throws -> NATSTestServer {
        let exe = try executable()
        let fm = FileManager.default
        let dir = fm.temporaryDirectory.appendingPathComponent("harmony-nats-\(UUID().uuidString)")
        try fm.createDirectory(at: dir, withIntermediateDirectories: true)
        let logURL = dir.appendingPathComponent("server.log")
        _ = fm.createFile(atPath: logURL.path, contents: nil)

        var lastError: Error = StartError(description: "nats-server did not start")
        // A freshly freed port can be grabbed by someone else before the server binds it: retry a few times.
        for _ in 0..<3 {
            let port = try Loopback.freePort()
            let process = try ChildProcess.spawn(exe.path, ["-js", "-a", "127.0.0.1", "-p", String(port),
                                                            "-sd", dir.appendingPathComponent("store-\(port)").path],
                                                 environment: ProcessInfo.processInfo.environment,
                                                 stdin: nil, stdout: logURL.path, stderr: logURL.path, appendOutput: true)
            startWatchdog(serverPID: process.pid, storeDir: dir)
            let server = NATSTestServer(port: port, storeDir: dir, process: process)

            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline && process.isRunning {
                if Loopback.accepts(port: port) { return server }
                Thread.sleep(forTimeInterval: 0.05)
            }
            let output = (try? String(contentsOf: logURL, encoding: .utf8)) ?? ""
            lastError = StartError(description: "nats-server on 127.0.0.1:\(port) not ready within 10 s; log:\n\(output)")
            server.stop(removeStore: false)
        }
        try? fm.removeItem(at: dir)
        throw lastError
    }

    /// If the test process crashes (no defer runs), kill the server anyway: a tiny shell loop polls both
    /// pids every 0.5 s and exits on its own once either is gone.
    private static func startWatchdog(serverPID: Int32, storeDir: URL) {
        let me = ProcessInfo.processInfo.processIdentifier
        // $0 = store directory (removed too when the test process died).
        _ = try? ChildProcess.spawn("/bin/sh", ["-c",
                                                "while kill -0 \(me) 2>/dev/null && kill -0 \(serverPID) 2>/dev/null; do sleep 0.5; done; "
                                                + "if ! kill -0 \(me) 2>/dev/null; then kill -KILL \(serverPID) 2>/dev/null; sleep 0.3; rm -rf \"$0\"; fi; exit 0",
                                                storeDir.path],
                                    environment: ProcessInfo.processInfo.environment, stdin: nil, stdout: nil, stderr: nil)
    }

    /// Pauses (SIGSTOP) or resumes (SIGCONT) the server, to hold acks back.
    func pause() {
        kill(process.pid, SIGSTOP)
        // SIGSTOP lands when the server's threads next enter the kernel; until /proc says 'T' it may still answer.
        let deadline = Date().addingTimeInterval(2)
        while Date() < deadline {
            let stat = (try? String(contentsOfFile: "/proc/\(process.pid)/stat", encoding: .utf8)) ?? ""
            if let close = stat.lastIndex(of: ")"), stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).hasPrefix("T") { return }
            Thread.sleep(forTimeInterval: 0.005)
        }
    }
    func resume() { kill(process.pid, SIGCONT) }

    /// Terminates the server (SIGTERM, then SIGKILL after 5 s) and removes its store. Idempotent.
    func stop(removeStore: Bool = true) {
        lock.lock()
        let already = stopped
        stopped = true
        lock.unlock()
        if !already && process.isRunning {
            resume()
            process.terminate(graceSeconds: 5)
        }
        if removeStore { try? FileManager.default.removeItem(at: storeDir) }
    }

    deinit { stop() }
}

/// Collects values from libnats threads.
final class Collector<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [T] = []
    func append(_ item: T) { lock.lock(); items.append(item); lock.unlock() }
    var all: [T] { lock.lock(); defer { lock.unlock() }; return items }
    var count: Int { lock.lock(); defer { lock.unlock() }; return items.count }
}

/// Polls `condition` every 20 ms for at most `seconds`; returns whether it became true.
func waitUntil(seconds: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        Thread.sleep(forTimeInterval: 0.02)
    }
    return condition()
}
