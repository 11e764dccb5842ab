import Foundation
internal import CNats

/// Everything needed to reach a NATS server; a plain value so configuration code stays free of C.
public struct NATSConnectOptions: Sendable {
    /// Server URLs, e.g. `nats://127.0.0.1:4222`.
    public var urls: [String]
    /// Connection name shown by the server (monitoring, logs).
    public var name: String
    /// User/password authentication.
    public var user: String?
    public var password: String?
    /// Token authentication.
    public var token: String?
    /// A `.creds` file (JWT + seed, "chained" file).
    public var credentialsFile: String?
    /// NKey authentication: the seed file and the matching public key (libnats needs both).
    public var nkeySeedFile: String?
    public var nkeyPublicKey: String?
    /// TLS: trusted CA file, and client certificate + key (both or neither). Any of them turns TLS on.
    public var tlsCAFile: String?
    public var tlsCertFile: String?
    public var tlsKeyFile: String?
    /// Connection attempts at start before giving up (at least 1).
    public var connectRetries: Int
    /// Told about every failed connection attempt that will be retried, so the wait is never silent.
    public var onRetry: (@Sendable (String) -> Void)?
    /// Told when an established connection is lost and when it is back (on a libnats thread).
    public var onConnectionChange: (@Sendable (NATSConnectionChange) -> Void)?
    /// Wait between attempts, at start and on reconnect (milliseconds).
    public var reconnectWaitMs: Int64
    /// Reconnect attempts per server after a disconnect; -1 = forever.
    public var maxReconnects: Int
    /// Timeout of one connection attempt (milliseconds).
    public var connectTimeoutMs: Int64

    public init(urls: [String], name: String = "harmonylite") {
        self.urls = urls
        self.name = name
        self.connectRetries = 3
        self.reconnectWaitMs = 2_000
        self.maxReconnects = -1
        self.connectTimeoutMs = 2_000
    }
}

/// A connection that was lost or is back, with the server's URL.
public enum NATSConnectionChange: Sendable, Equatable {
    case disconnected(url: String)
    case reconnected(url: String)
}

/// Holds `onConnectionChange` for libnats's callbacks. Retained for the life of the process: libnats may still
/// run a queued callback after the connection is destroyed, and one small object per connection is cheap.
final class ConnectionChangeBox: Sendable {
    let deliver: @Sendable (NATSConnectionChange) -> Void
    /// The configured servers, for when libnats no longer has a connected URL to give (after a disconnect).
    let servers: String
    init(_ deliver: @escaping @Sendable (NATSConnectionChange) -> Void, servers: String) {
        self.deliver = deliver
        self.servers = servers
    }

    func url(_ nc: OpaquePointer?) -> String {
        var buffer = [CChar](repeating: 0, count: 512)
        guard let nc, natsConnection_GetConnectedUrl(nc, &buffer, buffer.count) == NATS_OK, buffer[0] != 0 else { return servers }
        return String(cString: buffer)
    }
}

private let disconnectedHandler: natsConnectionHandler = { nc, closure in
    guard let closure else { return }
    let box = Unmanaged<ConnectionChangeBox>.fromOpaque(closure).takeUnretainedValue()
    box.deliver(.disconnected(url: box.url(nc)))
}

private let reconnectedHandler: natsConnectionHandler = { nc, closure in
    guard let closure else { return }
    let box = Unmanaged<ConnectionChangeBox>.fromOpaque(closure).takeUnretainedValue()
    box.deliver(.reconnected(url: box.url(nc)))
}

/// Owns one `natsConnection`; the C connection is thread-safe, this class only guards its lifetime.
public final class NATSConnection: @unchecked Sendable {
    public let options: NATSConnectOptions
    private let guardian: HandleGuard<OpaquePointer>

    /// Connects, trying `connectRetries` times with `reconnectWaitMs` between attempts.
    public init(_ options: NATSConnectOptions) throws {
        self.options = options
        guard !options.urls.isEmpty else { throw NATSError.usage("connecting to NATS: no server URL given") }
        let target = options.urls.joined(separator: ",")

        var opts: OpaquePointer? = nil
        clearLastNATSError()
        try check(natsOptions_Create(&opts), "creating NATS options for \(target)")
        defer { natsOptions_Destroy(opts) }
        try NATSConnection.apply(options, to: opts, target: target)

        let attempts = max(1, options.connectRetries)
        var connection: OpaquePointer? = nil
        var lastError: NATSError? = nil
        for attempt in 1...attempts {
            clearLastNATSError()
            let s = natsConnection_Connect(&connection, opts)
            if s == NATS_OK, connection != nil {
                lastError = nil
                break
            }
            natsConnection_Destroy(connection)  // NULL-safe; Connect leaves it NULL on failure
            connection = nil
            lastError = NATSError.libnats(s, while: "connecting to \(target) as '\(options.name)' (attempt \(attempt) of \(attempts))")
            // Wrong credentials or arguments, or a TLS failure, will not change by waiting: fail at once.
            if Self.isPermanent(s) { break }
            if attempt < attempts {
                options.onRetry?("connecting to \(target) failed (attempt \(attempt) of \(attempts)): \(lastError!); retrying in \(options.reconnectWaitMs) ms")
                if options.reconnectWaitMs > 0 { Thread.sleep(forTimeInterval: Double(options.reconnectWaitMs) / 1000) }
            }
        }
        if let lastError { throw lastError }
        guardian = HandleGuard(connection!, what: "NATS connection to \(target)")
    }

    static func isPermanent(_ s: natsStatus) -> Bool {
        s == NATS_CONNECTION_AUTH_FAILED || s == NATS_NOT_PERMITTED || s == NATS_INVALID_ARG || s == NATS_SSL_ERROR
    }

    private static func apply(_ o: NATSConnectOptions, to opts: OpaquePointer?, target: String) throws {
        let urls = CStringArray(o.urls)
        try check(natsOptions_SetServers(opts, urls.pointers, Int32(urls.count)), "setting servers \(target)")
        try check(natsOptions_SetName(opts, o.name), "setting connection name \(o.name)")
        try check(natsOptions_SetMaxReconnect(opts, Int32(clamping: o.maxReconnects)), "setting max reconnects")
        try check(natsOptions_SetReconnectWait(opts, max(0, o.reconnectWaitMs)), "setting reconnect wait")
        if o.connectTimeoutMs > 0 {
            try check(natsOptions_SetTimeout(opts, o.connectTimeoutMs), "setting connect timeout")
        }
        if let onChange = o.onConnectionChange {
            let box = Unmanaged.passRetained(ConnectionChangeBox(onChange, servers: target)).toOpaque()
            try check(natsOptions_SetDisconnectedCB(opts, disconnectedHandler, box), "setting the disconnect callback")
            try check(natsOptions_SetReconnectedCB(opts, reconnectedHandler, box), "setting the reconnect callback")
        }
        if o.user != nil || o.password != nil {
            try withOptionalCString(o.user) { u in
                try withOptionalCString(o.password) { p in
                    try check(natsOptions_SetUserInfo(opts, u, p), "setting user/password")
                }
            }
        }
        if let token = o.token {
            try check(natsOptions_SetToken(opts, token), "setting token")
        }
        if let creds = o.credentialsFile {
            try check(natsOptions_SetUserCredentialsFromFiles(opts, creds, nil), "loading credentials file \(creds)")
        }
        if let seed = o.nkeySeedFile {
            guard let pub = o.nkeyPublicKey else {
                throw NATSError.usage("NKey seed file \(seed) given without nkeyPublicKey (libnats needs both)")
            }
            try check(natsOptions_SetNKeyFromSeed(opts, pub, seed), "loading NKey seed file \(seed)")
        }
        if o.tlsCAFile != nil || o.tlsCertFile != nil || o.tlsKeyFile != nil {
            try check(natsOptions_SetSecure(opts, true), "enabling TLS")
        }
        if let ca = o.tlsCAFile {
            try check(natsOptions_LoadCATrustedCertificates(opts, ca), "loading TLS CA file \(ca)")
        }
        if o.tlsCertFile != nil || o.tlsKeyFile != nil {
            guard let cert = o.tlsCertFile, let key = o.tlsKeyFile else {
                throw NATSError.usage("TLS client certificate and key must be given together (cert: \(o.tlsCertFile ?? "none"), key: \(o.tlsKeyFile ?? "none"))")
            }
            try check(natsOptions_LoadCertificatesChain(opts, cert, key), "loading TLS certificate \(cert) and key \(key)")
        }
    }

    deinit { close() }

    /// True while libnats reports the connection as connected (false while reconnecting or after close()).
    public var isConnected: Bool {
        (try? guardian.use { natsConnection_Status($0) == NATS_CONN_STATUS_CONNECTED }) ?? false
    }

    /// The server's `max_payload` (headers included): larger messages are refused, so the core splits them.
    public var maxPayload: Int? {
        guard let v = try? guardian.use({ natsConnection_GetMaxPayload($0) }), v > 0 else { return nil }
        return Int(v)
    }

    /// Closes and frees the connection. Idempotent. Objects made from it (JetStream, subscriptions,
    /// KV buckets) stay memory-safe but their calls then fail with "Connection Closed".
    public func close() {
        if let nc = guardian.take() {
            natsConnection_Destroy(nc)
        }
    }

    /// Runs `body` with the live C connection.
    func withHandle<R>(_ body: (OpaquePointer) throws -> R) throws -> R {
        try guardian.use(body)
    }

    /// What the sidecar waits for a publish's ack; the simulator's capacity profile copies it.
    public static let defaultPublishAckTimeoutMs: Int64 = 10_000

    /// Creates a JetStream context. `onPublishResult` receives the outcome of every `publishAsync`
    /// exactly once, on a libnats thread (or on the thread calling `JetStream.close()` for discarded ones).
    /// `publishAckTimeoutMs` bounds how long one publish waits for its ack before being reported as failed;
    /// `stallWaitMs` is how long `publishAsync` may block when `publishAsyncMaxPending` acks are outstanding.
    public func jetStream(publishAsyncMaxPending: Int = 1024,
                          publishAckTimeoutMs: Int64 = NATSConnection.defaultPublishAckTimeoutMs,
                          stallWaitMs: Int64 = 10_000,
                          requestTimeoutMs: Int64 = 5_000,
                          onPublishResult: @escaping @Sendable (PublishResult) -> Void) throws -> JetStream {
        try JetStream(connection: self,
                      maxPending: publishAsyncMaxPending,
                      ackTimeoutMs: publishAckTimeoutMs,
                      stallWaitMs: stallWaitMs,
                      requestTimeoutMs: requestTimeoutMs,
                      onPublishResult: onPublishResult)
    }
}
