import Foundation
@testable import HarmonyRuntime
import HarmonyCore
import Logging
import Synchronization
import Testing

/// Collects the lines a handler writes, instead of stderr.
final class CapturedLines: Sendable {
    private let lines = Mutex<[String]>([])
    var output: LogOutput { LogOutput { line in self.lines.withLock { $0.append(line) } } }
    var all: [String] { lines.withLock { $0 } }
}

func makeLogger(format: String, verbose: Bool, nodeID: Int64 = 7) -> (Logger, CapturedLines) {
    let settings = RuntimeConfig.LoggingSettings(verbose: verbose, format: format)
    let captured = CapturedLines()
    let output = captured.output
    let logger = HarmonyLogging.nodeLogger(nodeID: nodeID) { _ in HarmonyLogging.handler(settings: settings, output: output) }
    return (logger, captured)
}

func parseJSONLine(_ line: String) throws -> [String: Any] {
    let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
    return try #require(object as? [String: Any], "not a JSON object: \(line)")
}

@Suite("Log handlers")
struct LoggingTests {
    static let hostile = "say \"hi\" \\ back\\slash\nsecond line\r\ttab \u{01}\u{1F}\u{7F} ü 🦊 \u{2028} {\"json\": true}"

    @Test func jsonLinesParseForHostileMessagesAndCarryMetadata() throws {
        var (logger, captured) = makeLogger(format: "json", verbose: false)
        logger[metadataKey: "table"] = .string("items \"quoted\"\n")
        logger.info("\(Self.hostile)")
        logger.warning("with call metadata", metadata: [
            "shard": .stringConvertible(3), "nested": .dictionary(["a\u{01}": .array([.string("x"), .stringConvertible(true)])]),
            "message": .string("a key the handler uses itself"),
        ])
        let lines = captured.all
        try #require(lines.count == 2)
        for line in lines {
            #expect(line.hasSuffix("}\n"))
            #expect(line.dropLast().contains("\n") == false, "one record, one line: \(line)")
        }
        let first = try parseJSONLine(lines[0])
        #expect(first["message"] as? String == Self.hostile)
        #expect(first["level"] as? String == "info")
        #expect((first["node"] as? NSNumber)?.intValue == 7)
        #expect(first["table"] as? String == "items \"quoted\"\n")
        let time = try #require(first["time"] as? String)
        #expect(time.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"#, options: .regularExpression) != nil, "\(time)")
        let parser = ISO8601DateFormatter()
        parser.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let when = try #require(parser.date(from: time))
        #expect(abs(when.timeIntervalSinceNow) < 60)
        // Non-ASCII stays UTF-8 on the wire, not \u escapes.
        #expect(lines[0].contains("ü 🦊"))

        let second = try parseJSONLine(lines[1])
        #expect(second["level"] as? String == "warning")
        #expect((second["shard"] as? NSNumber)?.intValue == 3)
        #expect(second["message"] as? String == "with call metadata")
        #expect(second["meta_message"] as? String == "a key the handler uses itself")
        let nested = try #require(second["nested"] as? [String: Any])
        let inner = try #require(nested["a\u{01}"] as? [Any])
        #expect(inner.first as? String == "x" && (inner.last as? NSNumber)?.boolValue == true)
    }

    @Test(arguments: ["json", "console"])
    func debugLinesOnlyWhenVerbose(format: String) throws {
        let (quiet, quietLines) = makeLogger(format: format, verbose: false)
        quiet.debug("a debug line")
        quiet.info("an info line")
        #expect(quietLines.all.count == 1)
        #expect(quietLines.all.first?.contains("an info line") == true)

        let (verbose, verboseLines) = makeLogger(format: format, verbose: true)
        verbose.debug("a debug line")
        verbose.info("an info line")
        #expect(verboseLines.all.count == 2)
        #expect(verboseLines.all.first?.contains("a debug line") == true)
        if format == "json" {
            #expect(try parseJSONLine(verboseLines.all[0])["level"] as? String == "debug")
        } else {
            #expect(verboseLines.all[0].contains(" DEBUG [node 7] a debug line"))
        }
    }

    @Test func consoleLineHasTimeLevelNodeAndStaysOnOneLine() throws {
        var (logger, captured) = makeLogger(format: "console", verbose: false, nodeID: 12)
        logger[metadataKey: "shard"] = .stringConvertible(2)
        logger.error("first\nsecond \u{01}")
        let line = try #require(captured.all.first)
        #expect(line.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ERROR \[node 12\] first\\nsecond \\x01 shard=2\n$"#,
                           options: .regularExpression) != nil, "\(line)")
    }

    /// An event logged in JSON carries its facts as fields (numbers stay numbers) beside the sentence.
    @Test func eventsLogTheirFactsAsJSONFields() throws {
        let (logger, captured) = makeLogger(format: "json", verbose: false)
        let event = ReplicationEvent.schemaPaused(shard: 2, sequence: 41, table: "items", remoteHash: "ab12")
        logger.info("\(event)", metadata: event.logMetadata)
        let line = try parseJSONLine(try #require(captured.all.first))
        #expect(line["event"] as? String == "schema_paused")
        #expect(line["shard"] as? Int == 2 && line["sequence"] as? Int == 41)
        #expect(line["table"] as? String == "items" && line["schema"] as? String == "ab12")
        #expect((line["message"] as? String)?.hasPrefix("shard 2 paused at message 41") == true)
    }
}
