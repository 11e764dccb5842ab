import Foundation
import Synchronization
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

    /// A failed accept (no descriptor free for the connection, say) is passing: the server goes on answering.
    /// It used to return from its accept loop, and /metrics and /health were gone while the node ran.
    @Test func aFailedAcceptDoesNotEndTheServer() throws {
        let failuresLeft = Mutex(2)
        let server = try MetricsServer(bind: "127.0.0.1:0", acceptConnection: { fd in
            let fail = failuresLeft.withLock { left in
                defer { left = max(0, left - 1) }
                return left > 0
            }
            return fail ? (-1, EMFILE) : MetricsServer.systemAccept(fd)
        }) { _ in .init(status: 200, body: "up\n") }
        try server.start()
        defer { server.stop() }
        let client = BlockingHTTPClient(idleTimeoutSeconds: 5, transferTimeoutSeconds: 10)
        let reply = try client.send(URLRequest(url: URL(string: "http://127.0.0.1:\(server.port)/health")!), what: "GET /health")
        #expect(reply.status == 200 && reply.text == "up\n")
        #expect(failuresLeft.withLock { $0 } == 0)
    }

    @Test func badBindAddressesAreRefused() {
        #expect(throws: MetricsServerError.self) { try MetricsServer(bind: "3010") { _ in .init(status: 200, body: "") } }
        #expect(throws: MetricsServerError.self) { try MetricsServer(bind: "127.0.0.1:99999") { _ in .init(status: 200, body: "") } }
        #expect(throws: MetricsServerError.self) {
            try MetricsServer(bind: "not-an-ip:0") { _ in .init(status: 200, body: "") }.start()
        }
    }

    /// Events become counters (a node's own changes coming back count as echoes, not lost conflicts), gauges are
    /// set from readings, histograms observe, and every family has HELP and TYPE lines.
    @Test func eventsRenderAsPrometheusText() {
        let m = NodeMetrics(nodeID: 1, shards: [1, 2])
        m.record(.published(count: 3))
        m.record(.applied(shard: 1, sequence: 1, table: "t", version: RowVersion(hlc: 1 << 16, node: 2), won: true), nowMs: 1_001)
        m.record(.applied(shard: 1, sequence: 2, table: "t", version: RowVersion(hlc: 1 << 16, node: 2), won: false), nowMs: 2)
        m.record(.applied(shard: 1, sequence: 3, table: "t", version: RowVersion(hlc: 1 << 16, node: 1), won: false), nowMs: 2)
        m.record(.schemaPaused(shard: 2, sequence: 9, table: "t", remoteHash: "x"))
        m.record(.definitionDroppedValues(table: "t", columns: ["note"], rows: 5))
        let text = m.render(NodeReadings(running: true, checkpoints: [1: 7], pausedShards: [2], pendingChanges: 4))
        var values: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: " ")
            values[String(parts[0])] = Double(parts[1])
        }
        #expect(values["harmonylite_published_changes_total"] == 3)
        #expect(values["harmonylite_applied_changes_total{result=\"won\"}"] == 1)
        #expect(values["harmonylite_applied_changes_total{result=\"lost\"}"] == 1)
        #expect(values["harmonylite_applied_changes_total{result=\"echo\"}"] == 1)
        #expect(values["harmonylite_schema_pauses_total"] == 1)
        #expect(values["harmonylite_schema_paused{shard=\"2\"}"] == 1)
        #expect(values["harmonylite_schema_paused{shard=\"1\"}"] == 0)
        #expect(values["harmonylite_checkpoint{shard=\"1\"}"] == 7)
        #expect(values["harmonylite_pending_changes"] == 4)
        #expect(values["harmonylite_parked_messages_total"] == 0)
        #expect(values["harmonylite_dropped_column_values_total"] == 5)
        // Lag: 1 s for the first change (its timestamp is 1 ms), none recorded for the echo.
        #expect(values["harmonylite_replication_lag_seconds_count"] == 2)
        #expect(values["harmonylite_replication_lag_seconds_bucket{le=\"1.0\"}"] == 2)
        #expect(values["harmonylite_replication_lag_seconds_bucket{le=\"0.5\"}"] == 1)
        for name in NodeMetrics.familyNames { #expect(text.contains("# TYPE \(name) "), "no TYPE line for \(name)") }
    }

    /// A stuck node repeats the same warning every few seconds: it is written once a window, then with the count.
    @Test func repeatedLinesAreWrittenOncePerWindowWithACount() {
        var limiter = RepeatLimiter(windowMs: 60_000)
        #expect(limiter.admit("no snapshot restored", nowMs: 0) == "no snapshot restored")
        for t in stride(from: Int64(5_000), to: 60_000, by: 5_000) { #expect(limiter.admit("no snapshot restored", nowMs: t) == nil) }
        #expect(limiter.admit("another line", nowMs: 30_000) == "another line")
        #expect(limiter.admit("no snapshot restored", nowMs: 60_000) == "no snapshot restored (11 more time(s) since it was last logged)")
        #expect(limiter.admit("publishing change 7 failed", key: "publish", nowMs: 0) != nil)
        #expect(limiter.admit("publishing change 8 failed", key: "publish", nowMs: 1) == nil)
    }
}
