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

    /// A connection to `server`, the stream "pile" and a durable pull consumer on it.
    private func openPile(on server: NATSTestServer, durable: String) throws -> (NATSConnection, JetStream, PullSubscription) {
        let (connection, js) = try connect(server.url, name: durable)
        _ = try js.ensureStream(name: "pile", subjects: ["pile.>"], maxMessages: 0, replicas: 1, duplicateWindowMs: 0)
        let sub = try js.pullSubscribe(stream: "pile", subject: "pile.>", durable: durable, startSequence: 0,
                                       ackWaitMs: 30_000, maxAckPending: 10_000)
        return (connection, js, sub)
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
        let (connection, js, sub) = try openPile(on: server, durable: "pile")
        defer { sub.close(); js.close(); connection.close() }

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

    /// A node catching up on large messages must not hold a whole batch of them: with `maxBytes` each fetch holds at
    /// most that many bytes, in stream order, and a message larger than the limit still arrives (alone), never stuck.
    @Test("a fetch with maxBytes stays within it, and a message above it still arrives")
    func fetchesStayWithinMaxBytes() throws {
        let server = try NATSTestServer.start()
        defer { server.stop() }
        let (connection, js, sub) = try openPile(on: server, durable: "bytes")
        defer { sub.close(); js.close(); connection.close() }
        let sizes = [100_000, 100_000, 100_000, 100_000, 100_000, 450_000, 100_000, 100_000, 20_000, 20_000]
        for (i, size) in sizes.enumerated() {
            try js.publishAsync(subject: "pile.a", payload: Array(repeating: UInt8(i), count: size), messageID: "b\(i)")
        }
        try js.waitForPublishes(timeoutMs: 10_000)

        var fetched: [[Int]] = []
        var seen: [UInt64] = []
        let deadline = Date().addingTimeInterval(20)
        while seen.count < sizes.count && Date() < deadline {
            let got = try sub.fetch(batch: 256, timeoutMs: 500, maxBytes: 250_000)
            if got.isEmpty { continue }
            fetched.append(got.map(\.payload.count))
            for m in got {
                seen.append(m.streamSequence)
                try m.ack()
            }
        }
        #expect(seen == (1...UInt64(sizes.count)).map { $0 }, "\(seen)")
        #expect(fetched.allSatisfy { $0.count == 1 || $0.reduce(0, +) <= 250_000 }, "\(fetched)")
        #expect(fetched.contains([450_000]), "\(fetched)")
        #expect(fetched.count >= 5, "\(fetched)")  // 1,190,000 bytes, 250,000 a fetch at most
    }
}
