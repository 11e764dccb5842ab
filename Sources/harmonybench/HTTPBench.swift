import ArgumentParser
import Foundation
import HarmonyAPI
import HarmonyRuntime
import HarmonySQLite
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The HTTP API's cost: single-statement INSERT requests from keep-alive clients against a live node, next to
/// the same statements through the SQL gateway in-process and through plain SQLite, alternating in one run.
struct HTTPBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "http",
        abstract: "HTTP API requests/s and latency with keep-alive clients, against the same INSERTs without HTTP.")

    @Option(help: "Concurrent clients (keep-alive connections, or threads for the in-process runs).") var clients = 8
    @Option(help: "Seconds per phase.") var seconds = 5.0
    @Option(help: "Rounds; each runs every variant once, in rotating order; medians are reported.") var rounds = 3
    @Option(help: "Path to the harmonylite binary.") var binary = ".build/release/harmonylite"
    @Option(help: "Report path prefix (Markdown and JSON).") var report: String?

    struct Phase {
        var requests: Int
        var seconds: Double
        var latencies: [Double]
        var rate: Double { Double(requests) / seconds }
    }

    func run() throws {
        let httpPort = EmbeddedNATSServer.freePort()
        let cluster = try BenchCluster(nodes: 1, shards: 1, schema: "CREATE TABLE bench (id INTEGER PRIMARY KEY, v TEXT)", binary: binary) { _ in
            """
            [http]
            enable = true
            bind = "127.0.0.1:\(httpPort)"
            concurrent_queries = \(clients)
            """
        }
        defer { cluster.stop() }
        let path = cluster.dbPath(1)
        let probe = try Database.readOnly(path: path)

        let ids = IDCounter()
        let gateway = SQLGateway(config: SQLGatewayConfig(databasePath: path))
        var results: [String: [Phase]] = [:]
        let variants = ["http", "gateway", "sqlite"]
        for round in 0..<rounds {
            for k in 0..<variants.count {
                let variant = variants[(round + k) % variants.count]
                let phase: Phase
                switch variant {
                case "http": phase = try overHTTP(port: httpPort, ids: ids)
                case "gateway": phase = inProcess(ids: ids) { _, body in
                    let request = try SQLRequest.decode(body)
                    let (status, reply) = gateway.execute(request)
                    guard status == 200 else { throw ValidationError(String(decoding: reply, as: UTF8.self)) }
                }
                default: phase = try plainSQLite(path: path, ids: ids)
                }
                print(String(format: "round %d %@: %.0f requests/s, p50 %.2f ms, p99 %.2f ms", round + 1, variant, phase.rate,
                             percentile(phase.latencies, 50), percentile(phase.latencies, 99)))
                results[variant, default: []].append(phase)
            }
        }
        let rows = try probe.scalar("SELECT count(*) FROM bench")?.int64 ?? 0
        precondition(rows == ids.last, "the table holds \(rows) rows for \(ids.last) inserts")
        func med(_ v: String, _ f: (Phase) -> Double) -> Double { median(results[v]!.map(f)) }
        let httpRate = med("http", \.rate), gatewayRate = med("gateway", \.rate), sqliteRate = med("sqlite", \.rate)
        let row = { (name: String, v: String) in
            "| \(name) | \(String(format: "%.0f", med(v, \.rate))) | \(String(format: "%.2f", med(v) { percentile($0.latencies, 50) })) | \(String(format: "%.2f", med(v) { percentile($0.latencies, 99) })) |"
        }
        let text = """
            # HTTP API overhead

            Command: `swift build -c release && .build/release/harmonybench http --clients \(clients) --seconds \(seconds) --rounds \(rounds)`
            Machine: \(machineDescription()); SQLite \(sqliteVersion()), WAL, synchronous=FULL (SQLite's default).
            One harmonylite node (capture triggers installed, publishing to a local nats-server) serving `[http]` with
            `concurrent_queries = \(clients)`. Each request is `{"sql": "INSERT INTO bench(id, v) VALUES (?, ?)", "params": [id, "..."]}`,
            one row in autocommit. \(clients) clients run for \(seconds) s per phase; the three variants rotate order in each of
            \(rounds) rounds; medians over rounds. All variants write the same table of the same database while the node runs.
            - http: \(clients) keep-alive connections (SwiftNIO client) to the node's API.
            - gateway: the same JSON bodies through `SQLRequest.decode` and `SQLGateway.execute` in this process, \(clients) threads.
            - sqlite: the same INSERT through a prepared statement on one connection per thread (HarmonySQLite), \(clients) threads.

            | variant | requests/s | p50 ms | p99 ms |
            |---|---|---|---|
            \(row("HTTP API", "http"))
            \(row("gateway, no HTTP", "gateway"))
            \(row("plain SQLite", "sqlite"))

            HTTP over plain SQLite: \(String(format: "%.2f", sqliteRate / httpRate))x the time per request; HTTP over the gateway:
            \(String(format: "%.2f", gatewayRate / httpRate))x. The table held \(rows) rows at the end, one per request.

            """
        print(text)
        if let report {
            try text.write(toFile: report + ".md", atomically: true, encoding: .utf8)
            try """
                {"clients": \(clients), "seconds": \(seconds), "rounds": \(rounds),
                 "requests_per_s": {"http": \(Int(httpRate)), "gateway": \(Int(gatewayRate)), "sqlite": \(Int(sqliteRate))},
                 "overhead_vs_sqlite": \(String(format: "%.2f", sqliteRate / httpRate)), "overhead_vs_gateway": \(String(format: "%.2f", gatewayRate / httpRate))}
                """.write(toFile: report + ".json", atomically: true, encoding: .utf8)
        }
    }

    static func body(_ id: Int64) -> [UInt8] {
        Array(#"{"sql": "INSERT INTO bench(id, v) VALUES (?, ?)", "params": [\#(id), "value of row \#(id)"]}"#.utf8)
    }

    /// `clients` threads calling `send` with a fresh body each until the phase ends.
    func inProcess(ids: IDCounter, _ send: @escaping @Sendable (Int64, [UInt8]) throws -> Void) -> Phase {
        let collected = Mutex<(count: Int, latencies: [Double])>((0, []))
        let start = DispatchTime.now().uptimeNanoseconds
        let end = start + UInt64(seconds * 1e9)
        let group = DispatchGroup()
        for _ in 0..<clients {
            group.enter()
            Thread {
                defer { group.leave() }
                var mine: [Double] = []
                while DispatchTime.now().uptimeNanoseconds < end {
                    let id = ids.next()
                    let t0 = DispatchTime.now().uptimeNanoseconds
                    do { try send(id, Self.body(id)) } catch { print("request failed: \(error)"); return }
                    mine.append(Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6)
                }
                collected.withLock { $0.count += mine.count; $0.latencies += mine }
            }.start()
        }
        group.wait()
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        return collected.withLock { Phase(requests: $0.count, seconds: elapsed, latencies: $0.latencies) }
    }

    func plainSQLite(path: String, ids: IDCounter) throws -> Phase {
        inProcess(ids: ids) { id, _ in
            // The JSON is built (as the other variants do) but the row goes straight in: what SQLite alone costs.
            let db = try ThreadConnection.current(path)
            try db.execute("INSERT INTO bench(id, v) VALUES (?, ?)", [.integer(id), .text("value of row \(id)")])
        }
    }

    func overHTTP(port: Int, ids: IDCounter) throws -> Phase {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let end = DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9)
        let start = DispatchTime.now().uptimeNanoseconds
        var finished: [EventLoopFuture<[Double]>] = []
        for _ in 0..<clients {
            let promise = group.next().makePromise(of: [Double].self)
            _ = try ClientBootstrap(group: group)
                .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(BenchClient(port: port, ids: ids, endNs: end, done: promise))
                    }
                }
                .connect(host: "127.0.0.1", port: port).wait()
            finished.append(promise.futureResult)
        }
        var latencies: [Double] = []
        for f in finished { latencies += try f.wait() }
        return Phase(requests: latencies.count, seconds: Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9, latencies: latencies)
    }
}

/// One keep-alive connection sending INSERT requests back to back until the phase ends.
final class BenchClient: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart
    let port: Int
    let ids: IDCounter
    let endNs: UInt64
    let done: EventLoopPromise<[Double]>
    var latencies: [Double] = []
    var sentAt: UInt64 = 0
    var status: HTTPResponseStatus = .ok

    init(port: Int, ids: IDCounter, endNs: UInt64, done: EventLoopPromise<[Double]>) {
        self.port = port
        self.ids = ids
        self.endNs = endNs
        self.done = done
    }

    func channelActive(context: ChannelHandlerContext) { send(context) }

    func send(_ context: ChannelHandlerContext) {
        let body = HTTPBench.body(ids.next())
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: "/")
        head.headers.add(name: "Host", value: "127.0.0.1:\(port)")
        head.headers.add(name: "Content-Type", value: "application/json")
        head.headers.add(name: "Content-Length", value: String(body.count))
        sentAt = DispatchTime.now().uptimeNanoseconds
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): status = h.status
        case .body: break
        case .end:
            let now = DispatchTime.now().uptimeNanoseconds
            guard status == .ok else {
                done.fail(ValidationError("the API answered \(status)"))
                context.close(promise: nil)
                return
            }
            latencies.append(Double(now - sentAt) / 1e6)
            if now < endNs { send(context) } else {
                done.succeed(latencies)
                context.close(promise: nil)
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        done.fail(error)
        context.close(promise: nil)
    }
}

/// Row ids handed out across threads and connections, so every request inserts a new row.
final class IDCounter: Sendable {
    private let value = Atomic<Int64>(0)
    func next() -> Int64 { value.add(1, ordering: .relaxed).newValue }
    var last: Int64 { value.load(ordering: .relaxed) }
}

/// One SQLite connection per benchmark thread, kept for the thread's life.
enum ThreadConnection {
    static func current(_ path: String) throws -> Database {
        let key = "harmonybench.connection." + path
        if let db = Thread.current.threadDictionary[key] as? Database { return db }
        let db = try SQLiteOpener().open(path: path)
        Thread.current.threadDictionary[key] = db
        return db
    }
}
