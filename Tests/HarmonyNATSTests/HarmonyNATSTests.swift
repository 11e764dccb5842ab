import Foundation
import HarmonyTestSupport
import Testing
import HarmonyNATS

/// Opens a connection + JetStream context to `server`, collecting publish results.
private func open(_ server: NATSTestServer, results: Collector<PublishResult>? = nil) throws -> (NATSConnection, JetStream) {
    var options = NATSConnectOptions(urls: [server.url], name: "harmony-nats-tests")
    options.connectRetries = 3
    options.reconnectWaitMs = 200
    let connection = try NATSConnection(options)
    let sink = results
    let js = try connection.jetStream { result in sink?.append(result) }
    return (connection, js)
}

/// Publishes `count` messages "<prefix>-1"... and waits (bounded) for all acks.
private func publish(_ js: JetStream, subject: String, count: Int, prefix: String) throws {
    for i in 1...count {
        try js.publishAsync(subject: subject, payload: Array("payload \(i)".utf8), messageID: "\(prefix)-\(i)")
    }
    try js.waitForPublishes(timeoutMs: 10_000)
}

@Suite("HarmonyNATS against a real nats-server")
struct HarmonyNATSTests {

    @Test("ensureStream is idempotent, updates limits, and reports first/last")
    func ensureStreamIdempotent() throws {
        let server = try NATSTestServer.start()
        defer { server.stop() }
        let (connection, js) = try open(server)
        defer { js.close(); connection.close() }
        #expect(connection.isConnected)

        let first = try js.ensureStream(name: "harmonylite-changes-1", subjects: ["harmonylite.change.1.>"],
                                        maxMessages: 0, replicas: 1, duplicateWindowMs: 120_000)
        #expect(first == StreamState(firstSequence: 0, lastSequence: 0, messages: 0))
        // Same config again: no error.
        _ = try js.ensureStream(name: "harmonylite-changes-1", subjects: ["harmonylite.change.1.>"],
                                maxMessages: 0, replicas: 1, duplicateWindowMs: 120_000)

        try publish(js, subject: "harmonylite.change.1.t", count: 5, prefix: "a")
        // Different maxMessages: the stream is updated in place and keeps its data.
        let updated = try js.ensureStream(name: "harmonylite-changes-1", subjects: ["harmonylite.change.1.>"],
                                          maxMessages: 3, replicas: 1, duplicateWindowMs: 120_000)
        #expect(updated.lastSequence == 5)
        let state = try js.streamState(name: "harmonylite-changes-1")
        #expect(state == StreamState(firstSequence: 3, lastSequence: 5, messages: 3))
    }

    /// Nodes started together (a compose file, a test cluster) create the same streams at the same moment. The
    /// server may check the second request's subjects against the first's stream before its name is taken and
    /// answer "subjects overlap with an existing stream": a benchmark's node died of that at start.
    @Test("ensureStream from several connections at once: every one succeeds")
    func ensureStreamConcurrently() throws {
        let failures = Collector<String>()
        // A fresh server each round: the streams are the first it makes, as when a cluster starts.
        for round in 0..<12 {
            let server = try NATSTestServer.start()
            defer { server.stop() }
            let clients = try (0..<3).map { _ in try open(server) }
            defer { for (connection, js) in clients { js.close(); connection.close() } }
            let start = DispatchSemaphore(value: 0)
            let group = DispatchGroup()
            for (_, js) in clients {
                DispatchQueue.global().async(group: group) {
                    start.wait()
                    for shard in 1...4 {
                        do {
                            _ = try js.ensureStream(name: "race-\(round)-\(shard)", subjects: ["race.\(round).\(shard)"],
                                                    maxMessages: 0, replicas: 1, duplicateWindowMs: 120_000)
                        } catch {
                            failures.append("round \(round) shard \(shard): \(error)")
                        }
                    }
                }
            }
            for _ in clients { start.signal() }
            #expect(group.wait(timeout: .now() + 30) == .success)
        }
        #expect(failures.all.isEmpty, "\(failures.all.prefix(3))")
    }

    /// The retry for a concurrent creation must not hide a real overlap: another stream holding the subjects.
    @Test("ensureStream over another stream's subjects fails, naming the overlap")
    func ensureStreamOverAnotherStreamsSubjectsFails() throws {
        let server = try NATSTestServer.start()
        defer { server.stop() }
        let (connection, js) = try open(server)
        defer { js.close(); connection.close() }
        _ = try js.ensureStream(name: "theirs", subjects: ["shared.>"], maxMessages: 0, replicas: 1, duplicateWindowMs: 120_000)
        #expect { _ = try js.ensureStream(name: "mine", subjects: ["shared.1"], maxMessages: 0, replicas: 1, duplicateWindowMs: 120_000) }
            throws: { "\($0)".contains("subjects overlap") && "\($0)".contains("adding stream mine") }
    }

    @Test("1000 async publishes get sequences 1...1000; a repeated id is a duplicate")
    func publishAsyncAndDedup() throws {
        let server = try NATSTestServer.start()
        defer { server.stop() }
        let results = Collector<PublishResult>()
        let (connection, js) = try open(server, results: results)
        defer { js.close(); connection.close() }

        _ = try js.ensureStream(name: "pub", subjects: ["pub.>"], maxMessages: 0, replicas: 1, duplicateWindowMs: 60_000)
        try publish(js, subject: "pub.x", count: 1000, prefix: "m")

        let all = results.all
        #expect(all.count == 1000)
        #expect(all.allSatisfy { $0.error == nil && !$0.duplicate })
        #expect(all.compactMap(\.sequence).sorted() == Array(1...1000))
        // One connection keeps publish order: message m-i is sequence i.
        #expect(all.allSatisfy { $0.messageID == "m-\($0.sequence ?? 0)" })

        try js.publishAsync(subject: "pub.x", payload: [1, 2, 3], messageID: "m-7")
        try js.waitForPublishes(timeoutMs: 10_000)
        #expect(results.count == 1001)
        let dup = results.all.last
        #expect(dup?.messageID == "m-7")
        #expect(dup?.duplicate == true)
        #expect(dup?.sequence == 7)
        #expect(try js.streamState(name: "pub") == StreamState(firstSequence: 1, lastSequence: 1000, messages: 1000))
    }

    @Test("pull consumer starts at the checkpoint, redelivers a nak after its delay, restarts elsewhere")
    func pullConsumer() throws {
        let server = try NATSTestServer.start()
        defer { server.stop() }
        let (connection, js) = try open(server)
        defer { js.close(); connection.close() }
        _ = try js.ensureStream(name: "pull", subjects: ["pull.>"], maxMessages: 0, replicas: 1, duplicateWindowMs: 0)
        let publishedFrom = Int64(Date().timeIntervalSince1970 * 1e9)
        try publish(js, subject: "pull.a", count: 1000, prefix: "p")
        let publishedBy = Int64(Date().timeIntervalSince1970 * 1e9)

        let sub = try js.pullSubscribe(stream: "pull", subject: "pull.>", durable: "applier-1",
                                       startSequence: 500, ackWaitMs: 30_000, maxAckPending: 1000)
        let batch = try sub.fetch(batch: 10, timeoutMs: 5_000)
        try #require(batch.count == 10)
        #expect(batch.map(\.streamSequence) == Array(500...509))
        #expect(batch.allSatisfy { $0.deliveries == 1 })
        // The server's clock, on this machine: when each message was stored, in order.
        #expect(batch.allSatisfy { (publishedFrom - 1_000_000...publishedBy + 1_000_000).contains($0.storedAtNs) }, "\(batch.map(\.storedAtNs))")
        #expect(batch.map(\.storedAtNs) == batch.map(\.storedAtNs).sorted())
        #expect(batch[0].payload == Array("payload 500".utf8))
        for m in batch.dropLast() { try m.ack() }
        try batch[0].ack()  // acking twice is harmless
        let nakked = batch[9]
        let nakTime = Date()
        try nakked.nak(delayMs: 200)

        var redelivered: FetchedMessage? = nil
        var redeliveredAfter = 0.0
        var seen: [UInt64] = []
        let deadline = Date().addingTimeInterval(5)
        while redelivered == nil && Date() < deadline {
            for m in try sub.fetch(batch: 50, timeoutMs: 250) {
                if m.streamSequence == 509 {
                    redelivered = m
                    redeliveredAfter = Date().timeIntervalSince(nakTime)
                } else {
                    seen.append(m.streamSequence)
                }
                try m.ack()
            }
        }
        let again = try #require(redelivered, "sequence 509 was not redelivered within 5 s")
        #expect(again.deliveries == 2)
        #expect(again.payload == nakked.payload)
        #expect(redeliveredAfter >= 0.15, "redelivered after \(redeliveredAfter) s, before the 200 ms delay")
        #expect(seen.allSatisfy { $0 >= 510 })

        // Restart the same durable at a new checkpoint.
        sub.close()
        #expect(throws: NATSError.self) { try sub.fetch(batch: 1, timeoutMs: 100) }
        let sub2 = try js.pullSubscribe(stream: "pull", subject: "pull.>", durable: "applier-1",
                                        startSequence: 900, ackWaitMs: 30_000, maxAckPending: 1000)
        defer { sub2.close() }
        let restarted = try sub2.fetch(batch: 5, timeoutMs: 5_000)
        #expect(restarted.first?.streamSequence == 900)
        #expect(restarted.first?.deliveries == 1)
        try restarted.first?.ack(waitForServer: true)

        // Fetching past the end times out into an empty batch.
        let sub3 = try js.pullSubscribe(stream: "pull", subject: "pull.>", durable: "tail",
                                        startSequence: 1001, ackWaitMs: 30_000, maxAckPending: 10)
        defer { sub3.close() }
        let started = Date()
        #expect(try sub3.fetch(batch: 10, timeoutMs: 300).isEmpty)
        #expect(Date().timeIntervalSince(started) < 5)
    }

    @Test("retention: maxMessages 10 keeps the last 10 of 25")
    func retention() throws {
        let server = try NATSTestServer.start()
        defer { server.stop() }
        let results = Collector<PublishResult>()
        let (connection, js) = try open(server, results: results)
        defer { js.close(); connection.close() }
        _ = try js.ensureStream(name: "ret", subjects: ["ret.>"], maxMessages: 10, replicas: 1, duplicateWindowMs: 0)
        try publish(js, subject: "ret.x", count: 25, prefix: "r")
        #expect(results.all.allSatisfy { $0.error == nil })
        #expect(try js.streamState(name: "ret") == StreamState(firstSequence: 16, lastSequence: 25, messages: 10))
    }

    @Test("key-value: put, get, keys, missing key")
    func keyValue() throws {
        let server = try NATSTestServer.start()
        defer { server.stop() }
        let (connection, js) = try open(server)
        defer { js.close(); connection.close() }

        #expect(throws: NATSError.self) { try js.keyValue(bucket: "absent", create: false) }
        let kv = try js.keyValue(bucket: "harmony-state", history: 1)
        defer { kv.close() }
        #expect(try kv.keys().isEmpty)
        #expect(try kv.get("nope") == nil)

        let r1 = try kv.put("node-1", Array("checkpoint 42".utf8))
        let r2 = try kv.put("node-2", [0, 1, 2, 255])
        let r3 = try kv.put("node-1", Array("checkpoint 43".utf8))
        #expect(r1 == 1 && r2 == 2 && r3 == 3)
        #expect(try kv.get("node-1") == Array("checkpoint 43".utf8))
        #expect(try kv.get("node-2") == [0, 1, 2, 255])
        #expect(try kv.get("node-3") == nil)
        #expect(try kv.keys().sorted() == ["node-1", "node-2"])

        try kv.delete("node-2")
        #expect(try kv.get("node-2") == nil)
        #expect(try kv.keys() == ["node-1"])

        // Opening the existing bucket again binds to it.
        let again = try js.keyValue(bucket: "harmony-state", create: false)
        #expect(try again.get("node-1") == Array("checkpoint 43".utf8))
    }

    @Test("connection errors name the URL; bad stream names name the stream")
    func errors() throws {
        let port = try Loopback.freePort()
        var options = NATSConnectOptions(urls: ["nats://127.0.0.1:\(port)"])
        options.connectRetries = 2
        options.reconnectWaitMs = 100
        let started = Date()
        do {
            _ = try NATSConnection(options)
            Issue.record("connecting to a closed port succeeded")
        } catch let error as NATSError {
            #expect(error.description.contains("nats://127.0.0.1:\(port)"))
            #expect(error.description.contains("attempt 2 of 2"))
            #expect(error.status != 0)
        }
        #expect(Date().timeIntervalSince(started) < 10)

        let server = try NATSTestServer.start()
        defer { server.stop() }
        let (connection, js) = try open(server)
        defer { js.close(); connection.close() }
        for bad in ["bad.name", "bad name", "bad>", ""] {
            let before = Date()
            do {
                _ = try js.ensureStream(name: bad, subjects: ["bad.>"], maxMessages: 0, replicas: 1, duplicateWindowMs: 0)
                Issue.record("stream name '\(bad)' was accepted")
            } catch let error as NATSError {
                #expect(error.description.contains("stream name '\(bad)'"), "\(error)")
            }
            // Caught locally: a space would otherwise make the server drop the request (5 s timeout).
            #expect(Date().timeIntervalSince(before) < 1)
        }
        do {
            _ = try js.pullSubscribe(stream: "s", subject: "x.>", durable: "bad durable", startSequence: 1,
                                     ackWaitMs: 1000, maxAckPending: 1)
            Issue.record("durable name with a space was accepted")
        } catch let error as NATSError {
            #expect(error.description.contains("durable name 'bad durable'"), "\(error)")
        }
        do {
            _ = try js.ensureStream(name: "overlap-a", subjects: ["o.>"], maxMessages: 0, replicas: 1, duplicateWindowMs: 0)
            _ = try js.ensureStream(name: "overlap-b", subjects: ["o.x"], maxMessages: 0, replicas: 1, duplicateWindowMs: 0)
            Issue.record("overlapping subjects were accepted")
        } catch let error as NATSError {
            #expect(error.description.contains("overlap-b"), "\(error)")
            #expect(error.jetStreamCode == 10065, "\(error)")  // JSStreamSubjectOverlapErr
        }
        do {
            _ = try js.streamState(name: "missing")
            Issue.record("state of a missing stream succeeded")
        } catch let error as NATSError {
            #expect(error.description.contains("missing"))
            #expect(error.isNotFound, "\(error)")
        }
        do {
            _ = try js.pullSubscribe(stream: "missing", subject: "x.>", durable: "d", startSequence: 1,
                                     ackWaitMs: 1000, maxAckPending: 1)
            Issue.record("subscribing to a missing stream succeeded")
        } catch let error as NATSError {
            #expect(error.description.contains("missing"), "\(error)")
        }
    }

    @Test("plain publish and subscribe: a wildcard subscriber gets subject and bytes; none after close; JetStream's stored messages pass by too")
    func corePublishSubscribe() throws {
        let server = try NATSTestServer.start()
        defer { server.stop() }
        let (connection, js) = try open(server)
        defer { js.close(); connection.close() }
        let got = Collector<CoreMessage>()
        let sub = try connection.subscribe(subject: "hints.*") { got.append($0) }
        let big = [UInt8](repeating: 7, count: 100_000)
        try connection.publish(subject: "hints.1", payload: [1, 2, 3])
        try connection.publish(subject: "hints.22", payload: big)
        try connection.publish(subject: "hints.1.deeper", payload: [9])  // not matched by "*"
        try connection.publish(subject: "hints.3", payload: [])
        #expect(waitUntil(seconds: 5) { got.count == 3 })
        #expect(got.all.map(\.subject) == ["hints.1", "hints.22", "hints.3"])
        #expect(got.all.map(\.payload) == [[1, 2, 3], big, []])
        // A stream's subject is a plain subject too: a core subscriber sees what JetStream stores.
        _ = try js.ensureStream(name: "core", subjects: ["hints.9"], maxMessages: 0, replicas: 1, duplicateWindowMs: 0)
        try publish(js, subject: "hints.9", count: 2, prefix: "c")
        #expect(waitUntil(seconds: 5) { got.count == 5 })
        sub.close()
        sub.close()
        try connection.publish(subject: "hints.1", payload: [4])
        Thread.sleep(forTimeInterval: 0.2)
        #expect(got.count == 5)
        connection.close()
        #expect(throws: NATSError.self) { try connection.publish(subject: "hints.1", payload: [5]) }
        #expect(throws: NATSError.self) { try connection.subscribe(subject: "hints.*") { _ in } }
    }

    @Test("closing in any order stays safe; calls after close fail cleanly")
    func lifecycle() throws {
        let server = try NATSTestServer.start()
        defer { server.stop() }
        let results = Collector<PublishResult>()
        let (connection, js) = try open(server, results: results)
        _ = try js.ensureStream(name: "life", subjects: ["life.>"], maxMessages: 0, replicas: 1, duplicateWindowMs: 0)
        try publish(js, subject: "life.x", count: 3, prefix: "l")
        let sub = try js.pullSubscribe(stream: "life", subject: "life.>", durable: "d", startSequence: 1,
                                       ackWaitMs: 30_000, maxAckPending: 10)
        let msgs = try sub.fetch(batch: 3, timeoutMs: 5_000)
        #expect(msgs.count == 3)
        sub.close()
        try msgs[0].ack()  // the message keeps its subscription alive

        connection.close()
        connection.close()
        #expect(!connection.isConnected)
        #expect(throws: NATSError.self) { try js.publishAsync(subject: "life.x", payload: [1], messageID: "late") }
        #expect(throws: NATSError.self) { try msgs[1].ack() }
        js.close()
        js.close()
        #expect(throws: NATSError.self) { try js.streamState(name: "life") }
        #expect(results.count == 3)
    }

    @Test("the server going away mid-flight reports pending publishes, no hang")
    func serverGoesAway() throws {
        let server = try NATSTestServer.start()
        defer { server.stop() }
        let results = Collector<PublishResult>()
        var options = NATSConnectOptions(urls: [server.url], name: "harmony-nats-tests")
        options.reconnectWaitMs = 100
        options.maxReconnects = 1
        let connection = try NATSConnection(options)
        defer { connection.close() }
        let js = try connection.jetStream(publishAckTimeoutMs: 1_000) { results.append($0) }
        _ = try js.ensureStream(name: "gone", subjects: ["gone.>"], maxMessages: 0, replicas: 1, duplicateWindowMs: 0)
        server.stop()
        #expect(waitUntil(seconds: 5) { !connection.isConnected })
        // Publishing into a dead connection either fails now or reports an error later; never hangs.
        var thrown = 0
        for i in 1...5 {
            do { try js.publishAsync(subject: "gone.x", payload: [1], messageID: "g-\(i)") } catch { thrown += 1 }
        }
        try? js.waitForPublishes(timeoutMs: 3_000)
        js.close()
        let reported = results.all
        #expect(thrown + reported.count == 5, "thrown \(thrown), reported \(reported)")
        #expect(reported.allSatisfy { $0.error != nil })
    }

    @Test("close() reports publishes still waiting for an ack as discarded")
    func closeDiscardsPending() throws {
        let server = try NATSTestServer.start()
        defer { server.stop() }
        let results = Collector<PublishResult>()
        let (connection, js) = try open(server, results: results)
        defer { connection.close() }
        _ = try js.ensureStream(name: "held", subjects: ["held.>"], maxMessages: 0, replicas: 1, duplicateWindowMs: 0)
        server.pause()
        for i in 1...3 {
            try js.publishAsync(subject: "held.x", payload: [UInt8(i)], messageID: "h-\(i)")
        }
        let started = Date()
        #expect(throws: NATSError.self) { try js.waitForPublishes(timeoutMs: 300) }
        #expect(Date().timeIntervalSince(started) < 5)
        js.close()
        server.resume()
        let all = results.all
        #expect(all.map(\.messageID).sorted() == ["h-1", "h-2", "h-3"])
        #expect(all.allSatisfy { $0.sequence == nil && ($0.error ?? "").contains("discarded") })
    }
}
