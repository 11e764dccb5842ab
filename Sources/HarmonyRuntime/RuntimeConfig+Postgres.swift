import HarmonyTOML

extension RuntimeConfig {
    /// `[postgres]`: the PostgreSQL wire protocol. Off by default; when on, a password is required (no default)
    /// and SCRAM-SHA-256 is the default way to prove it.
    public struct PostgresSettings: Sendable, Equatable {
        public var enable = false
        public var bind = "127.0.0.1:5432"
        public var user = "harmonylite"
        public var password = ""
        /// "scram-sha-256", "md5", or "password" (cleartext; TLS connections only).
        public var auth = "scram-sha-256"
        public var certFile: String?
        public var keyFile: String?
        /// With a certificate: plain connections are refused.
        public var requireTLS = false
        public var maxConnections = 100
        /// How long a client may leave a message half sent before its session ends.
        public var messageTimeoutMs = 30_000
        /// How long a connection may take from its first byte to a finished login (PostgreSQL's authentication_timeout).
        public var authenticationTimeoutMs = 60_000
        /// How long a client may leave a transaction open and idle before it is rolled back (0: no limit).
        public var idleInTransactionTimeoutMs = 60_000
        public init() {}

        public var hostAndPort: (host: String, port: Int)? { RuntimeConfig.hostAndPort(bind) }
    }

    static func parsePostgres(_ root: TOMLReader, into c: inout RuntimeConfig) throws {
        guard let p = try root.table("postgres") else { return }
        try p.rejectUnknownKeys(allowed: ["enable", "bind", "user", "password", "auth", "cert_file", "key_file", "require_tls", "max_connections", "message_timeout_ms",
                                         "idle_in_transaction_timeout_ms", "authentication_timeout_ms"])
        var s = PostgresSettings()
        s.enable = try p.bool("enable") ?? false
        s.bind = try p.string("bind") ?? s.bind
        guard s.hostAndPort != nil else {
            throw p.error(at: "bind", "key 'postgres.bind' must be host:port with a port from 0 to 65535, got \"\(s.bind)\"")
        }
        s.user = try p.string("user") ?? s.user
        guard !s.user.isEmpty else { throw p.error(at: "user", "key 'postgres.user' must not be empty") }
        s.password = try p.string("password") ?? ""
        if s.enable && s.password.isEmpty {
            throw p.error(at: "enable", "key 'postgres.password' is required with [postgres] enable = true: there is no default password")
        }
        s.auth = try p.string("auth") ?? s.auth
        guard ["scram-sha-256", "md5", "password"].contains(s.auth) else {
            throw p.error(at: "auth", "key 'postgres.auth' must be \"scram-sha-256\", \"md5\" or \"password\", got \"\(s.auth)\"")
        }
        s.certFile = try p.string("cert_file")
        s.keyFile = try p.string("key_file")
        if (s.certFile == nil) != (s.keyFile == nil) {
            throw p.error(at: s.certFile == nil ? "key_file" : "cert_file", "keys 'postgres.cert_file' and 'postgres.key_file' go together")
        }
        s.requireTLS = try p.bool("require_tls") ?? false
        if s.requireTLS && s.certFile == nil {
            throw p.error(at: "require_tls", "key 'postgres.require_tls' needs 'postgres.cert_file' and 'postgres.key_file'")
        }
        if s.auth == "password" && s.certFile == nil {
            throw p.error(at: "auth", "auth = \"password\" sends the password in clear text and is allowed over TLS only: set 'postgres.cert_file' and 'postgres.key_file' (or use scram-sha-256)")
        }
        s.maxConnections = try positive(p, "max_connections", s.maxConnections)
        s.messageTimeoutMs = try positive(p, "message_timeout_ms", s.messageTimeoutMs)
        s.authenticationTimeoutMs = try positive(p, "authentication_timeout_ms", s.authenticationTimeoutMs)
        s.idleInTransactionTimeoutMs = try nonNegative(p, "idle_in_transaction_timeout_ms", s.idleInTransactionTimeoutMs)
        c.postgres = s
    }
}
