import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
@testable import HarmonyRuntime
import HarmonyCore
import HarmonyCodec
import Testing

@Suite("Metrics endpoint")
struct MetricsServerTests {
    /// A real HTTP client against the server: paths reach the handler, status and body come back, other
    /// methods are refused, and a stopped server no longer answers.
    @Test func servesHandlerResponsesOverHTTP() throws {
        let server = try MetricsServer(bind: "127.0.0.1:0") { path in
            path == "/metrics" ? .init(status: 200, body: "harmonylite_up 1\n") : .init(status: 404, body: "no \(path)\n")
        }
        try server.start()
        #expect(server.port > 0)
        let client = BlockingHTTPClient(idleTimeoutSeconds: 5, transferTimeoutSeconds: 10)
        func get(_ path: String, method: String = "GET") throws -> (Int, String) {
            var request = URLRequest(url: URL(string: "http://127.0.0.1:\(server.port)\(path)")!)
            request.httpMethod = method
            let reply = try client.send(request, what: "GET \(path)")
            return (reply.status, String(decoding: reply.body, as: UTF8.self))
        }
        #expect(try get("/metrics") == (200, "harmonylite_up 1\n"))
        #expect(try get("/metrics?x=1") == (200, "harmonylite_up 1\n"))
        #expect(try get("/elsewhere") == (404, "no /elsewhere\n"))
        #expect(try get("/metrics", method: "DELETE").0 == 405)
        server.stop()
        #expect(throws: (any Error).self) { try get("/metrics") }
    }

    @Test func badBindAddressesAreRefused() {
        #expect(throws: MetricsServerError.self) { try MetricsServer(bind: "3010") { _ in .init(status: 200, body: "") } }
        #expect(throws: MetricsServerError.self) { try MetricsServer(bind: "127.0.0.1:99999") { _ in .init(status: 200, body: "") } }
        #expect(throws: MetricsServerError.self) {
            try MetricsServer(bind: "not-an-ip:0") { _ in .init(status: 200, body: "") }.start()
        }
    }

    /// Events become counters, gauges are merged in, every family has HELP and TYPE lines.
    @Test func eventsRenderAsPrometheusText() {
        let m = NodeMetrics()
        m.record(.published(count: 3))
        m.record(.applied(shard: 1, sequence: 1, table: "t", version: RowVersion(hlc: 1, node: 1), won: true))
        m.record(.applied(shard: 1, sequence: 2, table: "t", version: RowVersion(hlc: 1, node: 1), won: false))
        m.record(.schemaPaused(shard: 2, sequence: 9, table: "t", remoteHash: "x"))
        let text = m.render(gauges: ["harmonylite_schema_paused{shard=\"2\"}": 1, "harmonylite_pending_changes": 4])
        let lines = Set(text.split(separator: "\n").map(String.init))
        #expect(lines.contains("harmonylite_published_changes_total 3"))
        #expect(lines.contains("harmonylite_applied_changes_total{result=\"won\"} 1"))
        #expect(lines.contains("harmonylite_applied_changes_total{result=\"lost\"} 1"))
        #expect(lines.contains("harmonylite_schema_pauses_total 1"))
        #expect(lines.contains("harmonylite_schema_paused{shard=\"2\"} 1"))
        #expect(lines.contains("harmonylite_pending_changes 4"))
        #expect(lines.contains("harmonylite_parked_messages_total 0"))
        #expect(NodeMetrics.families.allSatisfy { lines.contains("# TYPE \($0.name) \($0.type)") })
    }
}
