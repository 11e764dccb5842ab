import Foundation
import HarmonyRuntime
import Testing

@Suite("Embedded nats-server", .serialized)
struct EmbeddedServerTests {
    func makeServer() throws -> (EmbeddedNATSServer, String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nats-\(UUID().uuidString)").path
        let server = try EmbeddedNATSServer(bindAddress: "127.0.0.1:\(EmbeddedNATSServer.freePort())", storeDirectory: dir, serverName: "test-\(UUID().uuidString.prefix(6))")
        return (server, dir)
    }

    @Test func startsOnLoopbackAndStops() throws {
        let (server, dir) = try makeServer()
        defer { server.stop(); try? FileManager.default.removeItem(atPath: dir) }
        try server.start()
        #expect(server.processIdentifier != nil)
        server.stop()
        #expect(server.processIdentifier == nil)
    }

    /// A killed server is restarted by the supervisor, on the same port and store.
    @Test func restartsAfterItDies() throws {
        let (server, dir) = try makeServer()
        defer { server.stop(); try? FileManager.default.removeItem(atPath: dir) }
        try server.start()
        let first = try #require(server.processIdentifier)
        kill(first, SIGKILL)
        let deadline = Date().addingTimeInterval(15)
        var restarted: Int32?
        while Date() < deadline {
            if let pid = server.processIdentifier, pid != first { restarted = pid; break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        #expect(restarted != nil)
        try server.waitUntilReady(timeoutMs: 10_000)
    }

    /// Tests and benchmarks give each server a port of its own from here: a port handed out twice would make two of
    /// them collide (the kernel, asked for a free port 1,000 times, offered 40 of them twice), and one in the
    /// ephemeral range can be taken by an outgoing connection first.
    @Test func freePortsAreNeverHandedOutTwiceNorFromTheEphemeralRange() {
        let ports = (0..<1_000).map { _ in EmbeddedNATSServer.freePort() }
        #expect(Set(ports).count == ports.count)
        #expect(ports.allSatisfy { (20000..<32768).contains($0) })
    }

    @Test func badBindAddressIsRefused() {
        #expect(throws: EmbeddedServerError.self) { try EmbeddedNATSServer(bindAddress: "nonsense", storeDirectory: "/tmp/x", serverName: "x") }
    }
}
