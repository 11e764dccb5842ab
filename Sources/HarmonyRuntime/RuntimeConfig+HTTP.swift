import HarmonyTOML

extension RuntimeConfig {
    /// `[http]`: the SQL API and operations endpoints (seed 004's interface). Off unless enabled, loopback by
    /// default, and with a token every request must carry when one is set.
    public struct HTTPSettings: Sendable, Equatable {
        public var enable = false
        public var bind = "127.0.0.1:8080"
        /// Requests must send `Authorization: Bearer <token>` when set.
        public var token: String?
        /// TLS when both are set (PEM files).
        public var certFile: String?
        public var keyFile: String?
        /// Largest request body; larger ones are answered 413 without being read.
        public var maxBodyBytes = 16 << 20
        /// SQL requests running at once (litesql/ha's --concurrent-queries); more wait their turn.
        public var concurrentQueries = 50
        /// Longest a request's statements may run, and how long a write waits for SQLite's write lock.
        public var statementTimeoutMs = 5_000
        /// Largest JSON answer a query may build.
        public var maxResultBytes = 64 << 20
        public init() {}

        /// The host and port of `bind`.
        public var hostAndPort: (host: String, port: Int)? { RuntimeConfig.hostAndPort(bind) }
    }

    /// "host:port" with a port from 0 to 65535 (0: any free one); an empty host means every interface.
    public static func hostAndPort(_ bind: String) -> (host: String, port: Int)? {
        guard let colon = bind.lastIndex(of: ":"), let port = Int(bind[bind.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        let host = String(bind[..<colon])
        return (host.isEmpty ? "0.0.0.0" : host, port)
    }

    static func parseHTTP(_ root: TOMLReader, into c: inout RuntimeConfig) throws {
        guard let h = try root.table("http") else { return }
        try h.rejectUnknownKeys(allowed: [
            "enable", "bind", "token", "cert_file", "key_file", "max_body_bytes", "concurrent_queries", "statement_timeout_ms",
            "max_result_bytes",
        ])
        c.http.enable = try h.bool("enable") ?? false
        c.http.bind = try h.string("bind") ?? c.http.bind
        guard c.http.hostAndPort != nil else {
            throw h.error(at: "bind", "key 'http.bind' must be host:port with a port from 0 to 65535, got \"\(c.http.bind)\"")
        }
        c.http.token = try h.string("token")
        if let token = c.http.token, token.count < 16 {
            throw h.error(at: "token", "key 'http.token' must be at least 16 characters (it guards SQL access to the database)")
        }
        c.http.certFile = try h.string("cert_file")
        c.http.keyFile = try h.string("key_file")
        if (c.http.certFile == nil) != (c.http.keyFile == nil) {
            throw h.error(at: c.http.certFile == nil ? "key_file" : "cert_file", "keys 'http.cert_file' and 'http.key_file' go together")
        }
        c.http.maxBodyBytes = try positive(h, "max_body_bytes", c.http.maxBodyBytes)
        c.http.concurrentQueries = try positive(h, "concurrent_queries", c.http.concurrentQueries)
        if c.http.concurrentQueries > 1024 {
            throw h.error(at: "concurrent_queries", "key 'http.concurrent_queries' must be at most 1024, got \(c.http.concurrentQueries)")
        }
        c.http.statementTimeoutMs = try positive(h, "statement_timeout_ms", c.http.statementTimeoutMs)
        c.http.maxResultBytes = try positive(h, "max_result_bytes", c.http.maxResultBytes)
    }
}
