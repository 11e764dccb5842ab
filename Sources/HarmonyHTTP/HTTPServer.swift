import Foundation
import HarmonyAPI
import HarmonyRuntime
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import Synchronization

/// The HTTP front end of one node: NIO's HTTP/1.1 codec (keep-alive, pipelining, chunked bodies) on one event
/// loop, and every request's work (SQL, backups, JetStream calls) on a pool of `concurrent_queries` threads, so
/// nothing blocks the loop or the replication queue.
public final class HTTPAPIServer: Sendable {
    let settings: RuntimeConfig.HTTPSettings
    let routes: APIRoutes
    let log: Logger
    let group: MultiThreadedEventLoopGroup
    let workers: NIOThreadPool
    let listener = Mutex<Channel?>(nil)

    public init(settings: RuntimeConfig.HTTPSettings, routes: APIRoutes, log: Logger) {
        self.settings = settings
        self.routes = routes
        self.log = log
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        workers = NIOThreadPool(numberOfThreads: settings.concurrentQueries)
    }

    /// Binds and starts serving; returns the address actually bound (port 0 picks a free one).
    @discardableResult
    public func start() throws -> (host: String, port: Int) {
        guard let (host, port) = settings.hostAndPort else { throw FrontEndError("http bind address \"\(settings.bind)\" is not host:port") }
        let tls = try makeTLSContext()
        workers.start()
        let routes = self.routes, maxBody = settings.maxBodyBytes, workers = self.workers, log = self.log
        let channel = try FrontEndListener.bind(group: group, host: host, port: port, for: "HTTP API") { child in
            child.eventLoop.makeCompletedFuture {
                if let tls { try child.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls)) }
                try child.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                try child.pipeline.syncOperations.addHandler(
                    APIChannelHandler(routes: routes, maxBodyBytes: maxBody, workers: workers, log: log))
            }
        }
        listener.withLock { $0 = channel }
        return (host, channel.localAddress?.port ?? port)
    }

    private func makeTLSContext() throws -> NIOSSLContext? {
        guard let cert = settings.certFile, let key = settings.keyFile else { return nil }
        return try ServerTLS.context(certFile: cert, keyFile: key, for: "HTTP API")
    }

    /// Stops accepting, closes open connections, and waits for running requests to end.
    public func stop() {
        let channel = listener.withLock { c -> Channel? in defer { c = nil }; return c }
        try? channel?.close().wait()
        try? group.syncShutdownGracefully()
        try? workers.syncShutdownGracefully()
    }
}

/// One request as the routes see it: everything read, nothing NIO-specific but the channel to answer on.
public struct APIRequest: Sendable {
    public var method: HTTPMethod
    public var path: String
    public var headers: HTTPHeaders
    public var body: [UInt8]
    public var keepAlive: Bool
    public var version: HTTPVersion
}

/// Collects each request (refusing bodies over the limit before reading them) and hands it to the worker pool.
final class APIChannelHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let routes: APIRoutes
    let maxBodyBytes: Int
    let workers: NIOThreadPool
    let log: Logger
    private var head: HTTPRequestHead?
    private var body: ByteBuffer?
    private var refused = false

    init(routes: APIRoutes, maxBodyBytes: Int, workers: NIOThreadPool, log: Logger) {
        self.routes = routes
        self.maxBodyBytes = maxBodyBytes
        self.workers = workers
        self.log = log
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = nil
            refused = false
            if let length = h.headers.first(name: "content-length").flatMap(Int.init), length > maxBodyBytes {
                refuseTooLarge(context, h)
                return
            }
            if h.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }) {
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: .continue))), promise: nil)
            }
        case .body(var chunk):
            guard !refused, let h = head else { return }
            if (body?.readableBytes ?? 0) + chunk.readableBytes > maxBodyBytes {
                refuseTooLarge(context, h)
                return
            }
            if body == nil { body = chunk } else { body!.writeBuffer(&chunk) }
        case .end:
            guard !refused, let h = head else { return }
            head = nil
            let bytes = body.map { Array($0.readableBytesView) } ?? []
            body = nil
            let request = APIRequest(method: h.method, path: h.uri, headers: h.headers, body: bytes,
                                     keepAlive: h.isKeepAlive, version: h.version)
            let channel = context.channel, routes = self.routes
            if h.method == .GET || h.method == .HEAD, ["/health", "/metrics"].contains(h.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? "") {
                // A load balancer's or a scraper's check answers within the node's own bound (half a second), not
                // after the SQL requests queued for the workers: with every worker waiting for a client's write
                // lock, /health took 4.5 s and a balancer would take the node out (audit).
                DispatchQueue.global(qos: .userInitiated).async { routes.answer(request, ResponseWriter(channel: channel, request: request)) }
                return
            }
            workers.submit { state in
                guard case .active = state else {
                    ResponseWriter(channel: channel, request: request).send(status: 503, json: APIError(status: 503, "the server is stopping").body)
                    return
                }
                routes.answer(request, ResponseWriter(channel: channel, request: request))
            }
        }
    }

    /// 413 at once, then the connection closes: the rest of the body is never read or kept.
    private func refuseTooLarge(_ context: ChannelHandlerContext, _ h: HTTPRequestHead) {
        refused = true
        let error = APIError(status: 413, "the request body is larger than max_body_bytes (\(maxBodyBytes) bytes)")
        let headers = HTTPHeaders([("Content-Type", "application/json"), ("Content-Length", String(error.body.count)), ("Connection", "close")])
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: h.version, status: .payloadTooLarge, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: error.body)))), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        log.debug("HTTP connection closed after an error: \(error)")
        context.close(promise: nil)
    }
}

/// Writes one response on a channel from a worker thread, waiting for each write so a large download never
/// runs ahead of the client (a slow reader slows the copy instead of filling memory).
public struct ResponseWriter: Sendable {
    let channel: Channel
    let request: APIRequest

    func makeHead(status: Int, headers extra: [(String, String)]) -> HTTPServerResponsePart {
        var headers = HTTPHeaders(extra)
        if !request.keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
        return .head(HTTPResponseHead(version: request.version, status: HTTPResponseStatus(statusCode: status), headers: headers))
    }

    func end() {
        let done = channel.writeAndFlush(HTTPServerResponsePart.end(nil))
        if !request.keepAlive { done.whenComplete { [channel] _ in channel.close(promise: nil) } }
    }

    /// A whole response from memory.
    /// The answer to a HEAD request is the headers (Content-Length included) without the body, whatever its status.
    func send(status: Int, contentType: String = "application/json", json body: [UInt8], headers: [(String, String)] = []) {
        // Already in memory: queued in one go, flushed once; the worker does not wait for the client.
        channel.write(makeHead(status: status, headers: [("Content-Type", contentType), ("Content-Length", String(body.count))] + headers), promise: nil)
        if !body.isEmpty, request.method != .HEAD { channel.write(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil) }
        end()
    }

    /// Streams an open file in 256 KiB chunks, then closes it; the path is already unlinked by the caller or not.
    func sendFile(_ handle: FileHandle, size: UInt64, filename: String) {
        defer { try? handle.close() }
        do {
            try channel.writeAndFlush(makeHead(status: 200, headers: [
                ("Content-Type", "application/vnd.sqlite3"), ("Content-Length", String(size)),
                ("Content-Disposition", "attachment; filename=\"\(filename)\""),
            ])).wait()
            var sent: UInt64 = 0
            while sent < size {
                guard let chunk = try handle.read(upToCount: 256 << 10), !chunk.isEmpty else { break }
                try channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(ByteBuffer(bytes: chunk)))).wait()
                sent += UInt64(chunk.count)
            }
            guard sent == size else { channel.close(promise: nil); return }
            end()
        } catch {
            channel.close(promise: nil)
        }
    }
}
