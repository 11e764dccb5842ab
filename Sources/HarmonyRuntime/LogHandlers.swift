import Foundation
import HarmonyNATS
import Logging
import Synchronization

/// Where finished log lines go: stderr in production, an injected closure in tests.
public struct LogOutput: Sendable {
    /// Receives one complete line, trailing newline included; must be safe to call from any thread.
    public let write: @Sendable (String) -> Void

    public init(_ write: @escaping @Sendable (String) -> Void) { self.write = write }

    /// One `write(2)` loop per line under a process-wide lock, so lines from different threads never interleave.
    public static let standardError = LogOutput { line in
        standardErrorLock.withLock { _ in writeAll(STDERR_FILENO, line) }
    }
}

private let standardErrorLock = Mutex(())

private func writeAll(_ fd: Int32, _ text: String) {
    var text = text
    text.withUTF8 { bytes in
        var offset = 0
        while offset < bytes.count {
            let n = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }  // stderr closed: dropping a log line beats failing the node
            offset += n
        }
    }
}

/// Human-readable lines (`[logging] format = "console"`): `time LEVEL [node N] message key=value`.
public struct ConsoleLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let output: LogOutput

    public init(level: Logger.Level, output: LogOutput = .standardError, metadataProvider: Logger.MetadataProvider? = nil) {
        self.logLevel = level
        self.output = output
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = mergedMetadata(handler: metadata, provider: metadataProvider, event: event.metadata)
        var line = UTCTimestamp.iso8601Now()
        line += " "
        line += event.level.rawValue.uppercased()
        if let node = all.removeValue(forKey: "node") {
            line += " [node \(node)]"
        }
        line += " "
        appendConsoleEscaped(event.message.description, to: &line)
        for key in all.keys.sorted() {
            line += " "
            appendConsoleEscaped(key, to: &line)
            line += "="
            appendConsoleEscaped(all[key]!.description, to: &line)
        }
        if let error = event.error {
            line += " error="
            appendConsoleEscaped(String(describing: error), to: &line)
        }
        line += "\n"
        output.write(line)
    }

    /// Keeps one record on one line: control characters become visible escapes, everything else is kept as is.
    private func appendConsoleEscaped(_ text: String, to line: inout String) {
        guard text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            line += text
            return
        }
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\n": line += "\\n"
            case "\r": line += "\\r"
            case "\t": line += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    line += "\\x"
                    appendHex(scalar.value, digits: 2, to: &line)
                } else {
                    line.unicodeScalars.append(scalar)
                }
            }
        }
    }
}

/// One JSON object per line (`[logging] format = "json"`) for log shippers:
/// `{"time":…,"level":…,<metadata>…,"message":…}`; integer metadata such as `node` stays a number.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let output: LogOutput

    /// Field names the handler writes itself; metadata with these keys is written as `meta_<key>`.
    static let reservedKeys: Set<String> = ["time", "level", "message", "error"]

    public init(level: Logger.Level, output: LogOutput = .standardError, metadataProvider: Logger.MetadataProvider? = nil) {
        self.logLevel = level
        self.output = output
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let all = mergedMetadata(handler: metadata, provider: metadataProvider, event: event.metadata)
        var line = "{\"time\":\""
        line += UTCTimestamp.iso8601Now()
        line += "\",\"level\":\""
        line += event.level.rawValue
        line += "\""
        for key in all.keys.sorted() {
            line += ","
            Self.appendString(Self.reservedKeys.contains(key) ? "meta_" + key : key, to: &line)
            line += ":"
            Self.appendValue(all[key]!, to: &line)
        }
        line += ",\"message\":"
        Self.appendString(event.message.description, to: &line)
        if let error = event.error {
            line += ",\"error\":"
            Self.appendString(String(describing: error), to: &line)
        }
        line += "}\n"
        output.write(line)
    }

    static func appendValue(_ value: Logger.Metadata.Value, to line: inout String) {
        switch value {
        case .string(let s):
            appendString(s, to: &line)
        case .stringConvertible(let v):
            switch v {
            case let b as Bool: line += b ? "true" : "false"
            case let i as any BinaryInteger: line += i.description  // digits only: valid JSON as it stands
            default: appendString(v.description, to: &line)
            }
        case .array(let items):
            line += "["
            for (i, item) in items.enumerated() {
                if i > 0 { line += "," }
                appendValue(item, to: &line)
            }
            line += "]"
        case .dictionary(let d):
            line += "{"
            for (i, key) in d.keys.sorted().enumerated() {
                if i > 0 { line += "," }
                appendString(key, to: &line)
                line += ":"
                appendValue(d[key]!, to: &line)
            }
            line += "}"
        }
    }

    /// A JSON string literal (RFC 8259): quote, backslash and control characters escaped; other text kept as UTF-8.
    static func appendString(_ s: String, to line: inout String) {
        line += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": line += "\\\""
            case "\\": line += "\\\\"
            case "\n": line += "\\n"
            case "\r": line += "\\r"
            case "\t": line += "\\t"
            case "\u{08}": line += "\\b"
            case "\u{0C}": line += "\\f"
            default:
                if scalar.value < 0x20 {
                    line += "\\u"
                    appendHex(scalar.value, digits: 4, to: &line)
                } else {
                    line.unicodeScalars.append(scalar)
                }
            }
        }
        line += "\""
    }
}

/// Handler metadata, then the provider's, then the call's own: later ones win on a shared key.
private func mergedMetadata(handler: Logger.Metadata, provider: Logger.MetadataProvider?, event: Logger.Metadata?) -> Logger.Metadata {
    var all = handler
    if let provided = provider?.get(), !provided.isEmpty { all.merge(provided) { _, new in new } }
    if let event, !event.isEmpty { all.merge(event) { _, new in new } }
    return all
}

private func appendHex(_ value: UInt32, digits: Int, to line: inout String) {
    let hex: [Character] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "a", "b", "c", "d", "e", "f"]
    for shift in stride(from: (digits - 1) * 4, through: 0, by: -4) {
        line.append(hex[Int((value >> UInt32(shift)) & 0xF)])
    }
}

/// The `[logging]` section made into swift-log handlers; `harmonylite` bootstraps swift-log with it once.
public enum HarmonyLogging {
    /// `verbose = true` shows debug records; otherwise info and above.
    public static func level(for settings: RuntimeConfig.LoggingSettings) -> Logger.Level {
        settings.verbose ? .debug : .info
    }

    /// The handler `[logging] format` asks for, writing to `output` (stderr unless a test injects a sink).
    public static func handler(settings: RuntimeConfig.LoggingSettings, output: LogOutput = .standardError) -> any LogHandler {
        switch settings.format {
        case "json": return JSONLogHandler(level: level(for: settings), output: output)
        default: return ConsoleLogHandler(level: level(for: settings), output: output)
        }
    }

    /// Installs the handler process-wide; swift-log allows this once per process, so only the executable calls it.
    public static func bootstrap(_ settings: RuntimeConfig.LoggingSettings) {
        LoggingSystem.bootstrap { _ in handler(settings: settings) }
    }

    /// A logger whose every record carries the node id as `node` metadata.
    public static func nodeLogger(label: String = "harmonylite", nodeID: Int64, factory: (@Sendable (String) -> any LogHandler)? = nil) -> Logger {
        var logger = factory.map { Logger(label: label, factory: $0) } ?? Logger(label: label)
        logger[metadataKey: "node"] = .stringConvertible(nodeID)
        return logger
    }
}
