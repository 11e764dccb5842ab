import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
@testable import HarmonySim
import Testing

/// The capacity report's chart: well-formed SVG that any browser shows, a line per figure, a dot per shard count.
@Suite("harmonysim capacity chart")
struct CapacityChartTests {
    /// Counts elements by name while checking the document parses.
    final class Counter: NSObject, XMLParserDelegate {
        var counts: [String: Int] = [:]
        var polylinePoints: [Int] = []
        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String] = [:]) {
            counts[name, default: 0] += 1
            if name == "polyline" { polylinePoints.append(attributes["points"]?.split(separator: " ").count ?? 0) }
        }
    }

    @Test func aChartHasALinePerFigureAndADotPerShardCount() throws {
        let chart = CapacityChart(title: "bulk-load <predicted> & measured", shardCounts: [1, 2, 4, 8],
                                  left: .init(label: "bulk rows/s", values: [14_293, 14_083, 13_271, 11_732]),
                                  right: .init(label: "lag p50 (ms)", values: [100, 110, .nan, 132]))
        let counter = Counter()
        let parser = XMLParser(data: Data(chart.svg.utf8))
        parser.delegate = counter
        #expect(parser.parse(), "the SVG does not parse: \(parser.parserError.map { "\($0)" } ?? "")")
        #expect(counter.counts["svg"] == 1)
        // A missing figure (NaN) leaves a gap in its line, not a point at zero.
        #expect(counter.polylinePoints == [4, 3])
        #expect(counter.counts["circle"] == 7)
        #expect(chart.svg.contains("&lt;predicted&gt; &amp; measured"))
        // Axes start at zero and end at a round number above the largest value.
        #expect(CapacityChart.niceTop(14_293) == 20_000 && CapacityChart.niceTop(132) == 200 && CapacityChart.niceTop(0) == 1)
        #expect(CapacityChart.tick(12_000) == "12,000" && CapacityChart.tick(400) == "400" && CapacityChart.tick(0.4) == "0.4")
    }
}
