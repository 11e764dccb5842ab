import Foundation
import Synchronization

/// Structured log lines, console or JSON (`[logging] format`); `verbose` adds debug lines.
public final class LogSink: Sendable {
    public enum Format: String, Sendable { case console, json }
    let format: Format
    let verbose: Bool
    let node: Int64
    private let lock = Mutex(())

    public init(format: Format, verbose: Bool, node: Int64) {
        self.format = format
        self.verbose = verbose
        self.node = node
    }

    public func debug(_ message: @autoclosure () -> String) { if verbose { write("debug", message()) } }
    public func info(_ message: String) { write("info", message) }
    public func warning(_ message: String) { write("warning", message) }
    public func error(_ message: String) { write("error", message) }

    private func write(_ level: String, _ message: String) {
        let time = ISO8601DateFormatter().string(from: Date())
        let line: String
        switch format {
        case .console: line = "\(time) \(level.uppercased()) [node \(node)] \(message)\n"
        case .json:
            let escaped = message.unicodeScalars.map { s -> String in
                switch s {
                case "\"": return "\\\""
                case "\\": return "\\\\"
                case "\n": return "\\n"
                default: return s.value < 0x20 ? String(format: "\\u%04x", s.value) : String(s)
                }
            }.joined()
            line = "{\"time\":\"\(time)\",\"level\":\"\(level)\",\"node\":\(node),\"message\":\"\(escaped)\"}\n"
        }
        lock.withLock { _ in FileHandle.standardError.write(Data(line.utf8)) }
    }
}
