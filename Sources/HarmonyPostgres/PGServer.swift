import Dispatch
import HarmonyAPI
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// Settings of the PostgreSQL front end (`[postgres]`).
public struct PGServerSettings: Sendable {
    public var host: String
    public var port: Int
    public var maxConnections: Int
    /// Largest message a client may send; a longer length ends the session.
    public var maxMessageBytes: Int
    /// How long a message may stay half received before the session is ended.
    public var messageTimeoutMs: Int
    /// How long a session may sit idle with SQLite's transaction open (0: forever). The replicator cannot apply
    /// other nodes' changes while a client holds the write lock, so an abandoned transaction must not hold it.
    public var idleInTransactionTimeoutMs: Int
    /// How long a connection may take to log in. Connections that never finish would hold their place under
    /// max_connections for good, and a few hundred idle sockets would lock every client out.
    public var authenticationTimeoutMs: Int
    public var certFile: String?
    public var keyFile: String?
    public init(host: String, port: Int, maxConnections: Int = 100, maxMessageBytes: Int = 64 << 20, messageTimeoutMs: Int = 30_000,
                idleInTransactionTimeoutMs: Int = 60_000, authenticationTimeoutMs: Int = 60_000, certFile: String? = nil, keyFile: String? = nil) {
        self.idleInTransactionTimeoutMs = idleInTransactionTimeoutMs
        self.authenticationTimeoutMs = authenticationTimeoutMs
        self.host = host
        self.port = port
        self.maxConnections = maxConnections
        self.maxMessageBytes = maxMessageBytes
        self.messageTimeoutMs = messageTimeoutMs
        self.certFile = certFile
        self.keyFile = keyFile
    }
}

/// Keys of running sessions, for CancelRequest: a client cancels with the key its session was given.
final class CancelRegistry: Sendable {
    private let sessions = Mutex<[Int64: (secret: Int32, interrupt: @Sendable () -> Void)]>([:])
    private let nextID = Atomic<Int32>(1)

    func newKey() -> (Int32, Int32) { (nextID.add(1, ordering: .relaxed).newValue, Int32.random(in: 1...Int32.max)) }
    func register(_ pid: Int32, secret: Int32, interrupt: @escaping @Sendable () -> Void) {
        sessions.withLock { $0[Int64(pid)] = (secret, interrupt) }
    }
    func remove(_ pid: Int32) { _ = sessions.withLock { $0.removeValue(forKey: Int64(pid)) } }
    func cancel(_ pid: Int32, secret: Int32) {
        let target = sessions.withLock { $0[Int64(pid)] }
        if let target, target.secret == secret { target.interrupt() }
    }
}

/// The PostgreSQL wire protocol on one node: NIO reads and frames the bytes on one event loop; each session's
/// messages run in order on the session's own queue (SQLite calls block), and its replies are written back with
/// backpressure.
public final class PGServer: Sendable {
    let settings: PGServerSettings
    let session: PGSessionConfig
    let log: Logger
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let listener = Mutex<Channel?>(nil)
    let connections = Atomic<Int>(0)
    let cancels = CancelRegistry()

    public init(settings: PGServerSettings, session: PGSessionConfig, log: Logger) {
        self.settings = settings
        self.session = session
        self.log = log
    }

    @discardableResult
    public func start() throws -> Int {
        let tls = try settings.certFile.flatMap { cert in
            try settings.keyFile.map { try ServerTLS.context(certFile: cert, keyFile: $0, for: "PostgreSQL front end") }
        }
        let server = self
        let channel = try FrontEndListener.bind(group: group, host: settings.host, port: settings.port, for: "PostgreSQL front end") { child in
            child.eventLoop.makeCompletedFuture {
                try child.pipeline.syncOperations.addHandler(PGChannelHandler(server: server, tls: tls))
            }
        }
        listener.withLock { $0 = channel }
        return channel.localAddress?.port ?? settings.port
    }

    public func stop() {
        let channel = listener.withLock { c -> Channel? in defer { c = nil }; return c }
        try? channel?.close().wait()
        try? group.syncShutdownGracefully()
    }
}

/// One client connection: frames messages, answers SSLRequest and CancelRequest itself, and hands everything
/// else to its session on the session's queue.
final class PGChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let server: PGServer
    let tls: NIOSSLContext?
    var decoder: FrontendDecoder
    var buffered: ByteBuffer?
    var isTLS = false
    var counted = false
    var session: PGSession?
    var sessionQueue: DispatchQueue?
    var writer: SessionWriter?
    var stallTimer: Scheduled<Void>?
    var idleTimer: Scheduled<Void>?
    var authenticationTimer: Scheduled<Void>?
    /// Set by the session (on its queue) once the client has logged in.
    let loggedIn = LoggedIn()
    var closed = false
    var key: (Int32, Int32) = (0, 0)

    init(server: PGServer, tls: NIOSSLContext?) {
        self.server = server
        self.tls = tls
        decoder = FrontendDecoder(maxMessageBytes: server.settings.maxMessageBytes)
    }

    func channelActive(context: ChannelHandlerContext) {
        counted = true
        _ = server.connections.add(1, ordering: .relaxed)
        let timeout = server.settings.authenticationTimeoutMs
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        authenticationTimer = context.eventLoop.scheduleTask(in: .milliseconds(Int64(timeout))) {
            let (handler, context) = bound.value
            guard !handler.loggedIn.value.load(ordering: .acquiring) else { return }
            handler.refuse(context, PGError("08P01", "the connection did not log in within \(timeout) ms (authentication_timeout_ms)", severity: "FATAL"))
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if counted { _ = server.connections.subtract(1, ordering: .relaxed) }
        counted = false
        closed = true
        stallTimer?.cancel()
        idleTimer?.cancel()
        authenticationTimer?.cancel()
        // A client gone mid-statement: stop the statement so its session can close and let go of its locks.
        server.cancels.cancel(key.0, secret: key.1)
        server.cancels.remove(key.0)
        if let queue = sessionQueue, let session {
            let box = SessionBox(session)
            queue.async { box.session.close() }
        }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        idleTimer?.cancel()
        idleTimer = nil
        if buffered == nil { buffered = incoming } else { buffered!.writeBuffer(&incoming) }
        do {
            while !closed, var buffer = buffered, let message = try decoder.next(&buffer) {
                buffered = buffer
                dispatch(message, context: context)
            }
        } catch {
            refuse(context, PGError("08P01", "protocol violation: \(error)", severity: "FATAL"))
            return
        }
        if let b = buffered, b.readableBytes == 0 { buffered = nil }
        // A message left half received: the client gets `messageTimeoutMs` to finish it.
        stallTimer?.cancel()
        stallTimer = nil
        if buffered != nil, !closed {
            let timeout = server.settings.messageTimeoutMs
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            stallTimer = context.eventLoop.scheduleTask(in: .milliseconds(Int64(timeout))) {
                let (handler, context) = bound.value
                handler.refuse(context, PGError("08P01", "a message stayed incomplete for \(timeout) ms", severity: "FATAL"))
            }
        }
    }

    /// An error the client can read, then the connection closes.
    func refuse(_ context: ChannelHandlerContext, _ error: PGError) {
        guard !closed else { return }
        closed = true
        var out = context.channel.allocator.buffer(capacity: 128)
        BackendMessage.error(error).write(into: &out)
        context.writeAndFlush(wrapOutboundOut(out)).whenComplete { [channel = context.channel] _ in channel.close(promise: nil) }
        server.log.debug("PostgreSQL session closed: \(error.message)")
    }

    private func dispatch(_ message: FrontendMessage, context: ChannelHandlerContext) {
        switch message {
        case .sslRequest, .gssEncryptionRequest:
            guard session == nil else { return refuse(context, PGError("08P01", "SSLRequest after startup", severity: "FATAL")) }
            var answer = context.channel.allocator.buffer(capacity: 1)
            if case .sslRequest = message, let tls, !isTLS {
                answer.writeInteger(UInt8(ascii: "S"))
                context.writeAndFlush(wrapOutboundOut(answer), promise: nil)
                do {
                    try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls), position: .first)
                    isTLS = true
                    decoder.startupDone = false
                } catch {
                    refuse(context, PGError("08P01", "cannot start TLS: \(error)", severity: "FATAL"))
                }
            } else {
                answer.writeInteger(UInt8(ascii: "N"))
                context.writeAndFlush(wrapOutboundOut(answer), promise: nil)
                decoder.startupDone = false
            }
        case .cancel(let pid, let secret):
            server.cancels.cancel(pid, secret: secret)
            closed = true
            context.close(promise: nil)
        case .startup:
            guard server.connections.load(ordering: .relaxed) <= server.settings.maxConnections else {
                return refuse(context, PGError("53300", "sorry, too many clients already (max_connections = \(server.settings.maxConnections))", severity: "FATAL"))
            }
            key = server.cancels.newKey()
            let channel = context.channel
            let writer = SessionWriter(channel: channel)
            self.writer = writer
            let session = PGSession(config: server.session, isTLS: isTLS, processID: key.0, secret: key.1) { writer.emit($0) }
            let (pid, secret) = key
            let cancels = server.cancels
            let loggedIn = self.loggedIn
            session.onReady = { interrupter in
                loggedIn.value.store(true, ordering: .releasing)
                cancels.register(pid, secret: secret) { interrupter.interrupt() }
            }
            self.session = session
            let queue = DispatchQueue(label: "harmonylite.pg.\(pid)")
            sessionQueue = queue
            run(message, context: context)
        default:
            guard session != nil else { return refuse(context, PGError("08P01", "a message before the startup message", severity: "FATAL")) }
            run(message, context: context)
        }
    }

    private func run(_ message: FrontendMessage, context: ChannelHandlerContext) {
        guard let session, let queue = sessionQueue, let writer else { return }
        let channel = context.channel
        let box = SessionBox(session)
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let idleLimit = server.settings.idleInTransactionTimeoutMs
        queue.async {
            let session = box.session
            session.handle(message)
            writer.flush()
            if session.closing { channel.close(promise: nil); return }
            guard idleLimit > 0, session.holdsTransaction else { return }
            channel.eventLoop.execute {
                let (handler, context) = bound.value
                handler.armIdleTimer(context, milliseconds: idleLimit)
            }
        }
    }

    /// The session left SQLite's transaction open: unless the client sends something within `milliseconds`, the
    /// transaction is rolled back and the session ends (FATAL 25P03), freeing the write lock for the replicator.
    private func armIdleTimer(_ context: ChannelHandlerContext, milliseconds: Int) {
        guard !closed, buffered == nil else { return }
        idleTimer?.cancel()
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        idleTimer = context.eventLoop.scheduleTask(in: .milliseconds(Int64(milliseconds))) {
            let (handler, context) = bound.value
            handler.server.log.warning("a PostgreSQL client left its transaction idle for \(milliseconds) ms; rolling it back and closing its session (postgres.idle_in_transaction_timeout_ms)")
            handler.refuse(context, PGError("25P03", "terminating connection due to idle-in-transaction timeout (\(milliseconds) ms); the transaction was rolled back", severity: "FATAL"))
        }
    }
}

/// Moves the session to its queue (it is only ever used there).
struct SessionBox: @unchecked Sendable {
    let session: PGSession
    init(_ session: PGSession) { self.session = session }
}

/// Writes a session's replies from its queue: encoded into a buffer, written when it passes 64 KiB (waiting for
/// the client, so a large result never outruns it) and at the end of each message. Used on that queue only.
final class SessionWriter: @unchecked Sendable {
    let channel: Channel
    private var pending: ByteBuffer?

    init(channel: Channel) { self.channel = channel }

    func emit(_ message: BackendMessage) {
        var buffer = pending ?? channel.allocator.buffer(capacity: 256)
        pending = nil
        message.write(into: &buffer)
        if buffer.readableBytes >= 64 << 10 {
            _ = try? channel.writeAndFlush(buffer).wait()
        } else {
            pending = buffer
        }
    }

    func flush() {
        guard let buffer = pending else { return }
        pending = nil
        channel.writeAndFlush(buffer, promise: nil)
    }
}

/// Whether a connection's client has logged in, set on its session's queue and read on the event loop.
final class LoggedIn: Sendable {
    let value = Atomic<Bool>(false)
}
