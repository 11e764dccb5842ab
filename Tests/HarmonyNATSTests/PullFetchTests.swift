import Foundation
import HarmonyTestSupport
import Testing
@testable import HarmonyNATS

/// A pull consumer after a reconnect: answers to requests made by earlier fetches arrive in a pile. libnats
/// 3.4.1's own fetch wrote past its message array then and corrupted the heap (nats.c #749); ours must keep
/// every fetch within its batch and lose nothing.
@Suite("Pull fetches with answers to earlier requests arriving")
struct PullFetchTests {
    private func connect(_ url: String, name: String) throws -> (NATSConnection, JetStream) {
        var options = NATSConnectOptions(urls: [url], name: name)
        options.connectRetries = 3
        options.reconnectWaitMs = 100
        let connection = try NATSConnection(options)
        return (connection, try connection.jetStream { _ in })
    }

    private func publish(_ js: JetStream, count: Int, from first: Int) throws {
        for i in first..<(first + count) {
            try js.publishAsync(subject: "pile.a", payload: Array("m\(i)".utf8), messageID: "m\(i)")
        }
        try js.waitForPublishes(timeoutMs: 10_000)
    }

    /// Fetches until `total` distinct sequences were seen (bounded); returns each fetch's size and what was seen.
    private func drain(_ sub: PullSubscription, batch: Int, total: Int, seconds: Double) throws -> (sizes: [Int], seen: Set<UInt64>) {
        var sizes: [Int] = []
        var seen = Set<UInt64>()
        let deadline = Date().addingTimeInterval(seconds)
        while seen.count < total && Date() < deadline {
            let got = try sub.fetch(batch: batch, timeoutMs: 200)
            sizes.append(got.count)
            for m in got {
                seen.insert(m.streamSequence)
                try m.ack()
            }
        }
        return (sizes, seen)
    }

    @Test("messages left on the inbox plus a pile still arriving: every fetch stays within its batch")
    func leftoversAndAPileStayWithinTheBatch() throws {
        let server = try NATSTestServer.start()
        defer { server.stop() }
        let (connection, js) = try connect(server.url, name: "pile")
        defer { js.close(); connection.close() }
        _ = try js.ensureStream(name: "pile", subjects: ["pile.>"], maxMessages: 0, replicas: 1, duplicateWindowMs: 0)
        let sub = try js.pullSubscribe(stream: "pile", subject: "pile.>", durable: "pile", startSequence: 0,
                                       ackWaitMs: 30_000, maxAckPending: 10_000)
        defer { sub.close() }

        for round in 0..<5 {
            let base = round * 215
            // A request nobody fetches for is answered with 15 messages: they wait on the inbox.
            try sub.sendPullRequest(batch: 15, expiresMs: 5_000, noWait: false)
            try publish(js, count: 15, from: base + 1)
            #expect(waitUntil(seconds: 5) { (try? js.consumerInfo(stream: "pile", durable: "pile"))?.deliveredStreamSequence == UInt64(base + 15) })
            // 200 more in the stream, and another earlier request whose answer is on its way as the fetch starts.
            try publish(js, count: 200, from: base + 16)
            try sub.sendPullRequest(batch: 100, expiresMs: 5_000, noWait: true)
            let (sizes, seen) = try drain(sub, batch: 20, total: 215, seconds: 20)
            #expect(sizes.allSatisfy { $0 <= 20 }, "fetch sizes \(sizes) in round \(round)")
            #expect(seen == Set((base + 1)...(base + 215)).reduce(into: Set<UInt64>()) { $0.insert(UInt64($1)) },
                    "round \(round): \(seen.count) of 215 messages")
        }
    }

    @Test("a consumer cut off from the server longer than its fetch timeout picks up everything after the heal")
    func fetchesAcrossACutLoseNothing() throws {
        let server = try NATSTestServer.start()
        defer { server.stop() }
        let relay = try TCPRelay(upstreamPort: server.port)
        defer { relay.stop() }
        let (writer, writerJS) = try connect(server.url, name: "writer")
        defer { writerJS.close(); writer.close() }
        _ = try writerJS.ensureStream(name: "pile", subjects: ["pile.>"], maxMessages: 0, replicas: 1, duplicateWindowMs: 0)
        let (reader, readerJS) = try connect("nats://127.0.0.1:\(relay.port)", name: "reader")
        defer { readerJS.close(); reader.close() }
        let sub = try readerJS.pullSubscribe(stream: "pile", subject: "pile.>", durable: "reader", startSequence: 0,
                                             ackWaitMs: 30_000, maxAckPending: 10_000)
        defer { sub.close() }

        try publish(writerJS, count: 100, from: 1)
        let before = try drain(sub, batch: 32, total: 100, seconds: 10)
        #expect(before.seen.count == 100)

        relay.setCut(true)
        #expect(waitUntil(seconds: 5) { !reader.isConnected })
        try publish(writerJS, count: 1_000, from: 101)
        // Fetches made while cut off come back empty, without an error.
        let cutStart = Date()
        var whileCut = 0
        while Date().timeIntervalSince(cutStart) < 1.5 {
            whileCut += try sub.fetch(batch: 32, timeoutMs: 100).count
        }
        #expect(whileCut == 0)
        relay.setCut(false)
        #expect(waitUntil(seconds: 10) { reader.isConnected })

        let after = try drain(sub, batch: 32, total: 1_000, seconds: 30)
        #expect(after.sizes.allSatisfy { $0 <= 32 }, "fetch sizes \(after.sizes)")
        #expect(after.seen == Set((101...1_100).map { UInt64($0) }), "\(after.seen.count) of 1000 after the heal")
    }
}
