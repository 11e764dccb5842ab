import Foundation
import Testing
@testable import HarmonyNATS

/// Log lines, object-store modification times and downloaded backups' file names carry these; readers parse them.
@Suite("UTC timestamps without Foundation's formatters")
struct UTCTimestampTests {
    @Test func aKnownInstantHasItsText() {
        #expect(UTCTimestamp.iso8601(seconds: 1_738_326_896, milliseconds: 789) == "2025-01-31T12:34:56.789Z")
        #expect(UTCTimestamp.iso8601(seconds: 1_738_326_896, milliseconds: 5) == "2025-01-31T12:34:56.005Z")
        #expect(UTCTimestamp.iso8601(seconds: 1_738_326_896, milliseconds: 42) == "2025-01-31T12:34:56.042Z")
        #expect(UTCTimestamp.iso8601(seconds: 0, milliseconds: 1000) == "1970-01-01T00:00:00.999Z")
    }

    @Test func nowReadsAsNowAndTheCompactFormFitsAFileName() throws {
        let iso = UTCTimestamp.iso8601Now()
        let compact = UTCTimestamp.compactNow()
        #expect(iso.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"#, options: .regularExpression) != nil, "\(iso)")
        #expect(compact.range(of: #"^\d{8}T\d{6}Z$"#, options: .regularExpression) != nil, "\(compact)")
        let c = Array(compact)
        let compactAsISO = String(c[0..<4]) + "-" + String(c[4..<6]) + "-" + String(c[6..<11]) + ":" + String(c[11..<13]) + ":" + String(c[13...])
        for text in [String(iso.prefix(19)) + "Z", compactAsISO] {
            let parsed = try #require(ISO8601DateFormatter().date(from: text), "\(text)")
            #expect(abs(parsed.timeIntervalSinceNow) < 60, "\(text) is not now")
        }
    }
}
