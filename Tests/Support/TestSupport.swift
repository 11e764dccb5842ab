import Foundation
import HarmonyProcess
#if canImport(Glibc)
import Glibc
#endif

/// splitmix64: a tiny seeded generator, so fuzz runs are reproducible from their seed.
public struct SplitMix64: RandomNumberGenerator {
    public var state: UInt64
    public init(state: UInt64) { self.state = state }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    public mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    public mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}

/// The sqlite3 shell exited non-zero; carries what it wrote to stderr.
public struct SQLiteShellError: Error, CustomStringConvertible {
    public var path: String
    public var message: String
    public var description: String { "sqlite3 \(path): \(message)" }
}

/// Runs the stock `sqlite3` shell as an application would: a separate process with default settings,
/// `sql` on its stdin, `-batch -bail` plus `arguments`. Returns what it printed.
@discardableResult
public func runSQLiteShell(_ path: String, _ sql: String, arguments: [String] = []) throws -> String {
    let run = try runToEnd("/usr/bin/env", ["sqlite3", "-batch", "-bail"] + arguments + [path], input: sql)
    guard run.status == 0 else { throw SQLiteShellError(path: path, message: run.errors) }
    return run.output
}

/// How a program run by `runToEnd` ended and what it printed.
public struct ProgramRun: Sendable {
    public var status: Int32
    public var output: String
    public var errors: String
}

/// A program `runToEnd` had to kill: it was still running at its deadline.
public struct ProgramTimedOut: Error, CustomStringConvertible {
    public var description: String
}

/// Runs a program to its end: `input` on its stdin, its stdout and stderr (one stream with `mergeErrors`) captured
/// in files, killed after `timeoutSeconds` with an error saying so. Files and `ChildProcess` rather than pipes and
/// Foundation's `Process`: tests run in parallel, and a child started by another thread at the wrong moment could
/// inherit a pipe's write end and keep its reader from ever seeing the end, or hold up `Process`'s one reaping thread.
public func runToEnd(_ executable: String, _ arguments: [String], input: String = "", mergeErrors: Bool = false,
                     environment: [String: String] = ProcessInfo.processInfo.environment,
                     timeoutSeconds: Double = 120) throws -> ProgramRun {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("run-\(UUID().uuidString.prefix(12))").path
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let inputPath = directory + "/stdin", outputPath = directory + "/stdout"
    let errorsPath = mergeErrors ? outputPath : directory + "/stderr"
    try Data(input.utf8).write(to: URL(fileURLWithPath: inputPath))
    let child = try ChildProcess.spawn(executable, arguments, environment: environment,
                                       stdin: inputPath, stdout: outputPath, stderr: errorsPath)
    let status = child.wait(timeoutSeconds: timeoutSeconds)
    if status == nil { child.terminate(graceSeconds: 2) }
    let output = fileText(outputPath)
    guard let status else {
        throw ProgramTimedOut(description: "\(executable) \(arguments.joined(separator: " ")) was still running after \(timeoutSeconds) s; it printed: \(output.suffix(1000))")
    }
    let errors = mergeErrors ? "" : fileText(errorsPath)
    return ProgramRun(status: status, output: output, errors: errors)
}

/// What a program wrote to the file at `path` so far, whatever its bytes ("" when there is no file yet).
public func fileText(_ path: String) -> String {
    String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: path))) ?? Data(), as: UTF8.self)
}

/// Ports on 127.0.0.1 for servers the tests start.
public enum Loopback {
    static func address(port: Int) -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return addr
    }

    /// Asks the kernel for a free port (bind to port 0, read it back, close).
    public static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw LoopbackError(description: "socket() failed: errno \(errno)") }
        defer { close(fd) }
        var addr = address(port: 0)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw LoopbackError(description: "bind(127.0.0.1:0) failed: errno \(errno)") }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let got = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard got == 0 else { throw LoopbackError(description: "getsockname failed: errno \(errno)") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// True if something accepts TCP connections on 127.0.0.1:port.
    public static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = address(port: port)
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }
}

public struct LoopbackError: Error, CustomStringConvertible {
    public var description: String
}
