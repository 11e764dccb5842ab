import HarmonyCore
import HarmonyTOML

/// Everything `harmonylite -config config.toml` reads, with HarmonyLite's key names and units.
public struct RuntimeConfig: Sendable, Equatable {
    public var node: NodeConfig
    /// `seq_map_path`: accepted for compatibility; checkpoints live in the database (advanced with each apply).
    public var seqMapPath: String?
    /// `replication_log.max_entries`: messages kept per stream (0 = unlimited). Kept in the core's settings, which
    /// hold a node's backlog within half of it (`NodeConfig.logMaxMessages`).
    public var maxEntries: Int64 {
        get { node.logMaxMessages }
        set { node.logMaxMessages = newValue }
    }
    /// `replication_log.replicas`: JetStream replicas per stream.
    public var replicas = 1
    public var nats = NATSSettings()
    public var logging = LoggingSettings()
    public var prometheus = PrometheusSettings()
    public var snapshot = SnapshotSettings()
    public var health = HealthSettings()
    public var http = HTTPSettings()
    public var postgres = PostgresSettings()

    /// `[health]`: when `/health` turns 503.
    public struct HealthSettings: Sendable, Equatable {
        /// `stall_seconds`: how long a shard may stay paused or stalled, publishes keep failing, or a snapshot be
        /// waited for, before the node counts as unhealthy.
        public var stallSeconds: Int64 = 60
    }

    public struct NATSSettings: Sendable, Equatable {
        /// Empty: start and supervise an embedded `nats-server -js`.
        public var urls: [String] = []
        public var connectRetries = 5
        public var reconnectWaitSeconds = 2
        public var userName: String?
        public var userPassword: String?
        public var token: String?
        public var credsFile: String?
        public var seedFile: String?
        public var caFile: String?
        public var certFile: String?
        public var keyFile: String?
        /// Embedded server: client address (loopback by default).
        public var bindAddress = "127.0.0.1:4222"
        /// Embedded server: cluster listen address and routes, so several nodes form one NATS cluster.
        public var clusterAddress: String?
        public var clusterRoutes: [String] = []
        public var clusterName = "harmonylite"
        /// Embedded server: JetStream store directory (default: next to the database).
        public var storeDirectory: String?
    }

    public struct LoggingSettings: Sendable, Equatable {
        /// Debug records too (swift-log level `.debug` instead of `.info`).
        public var verbose = false
        /// "console" or "json".
        public var format = "console"

        public init(verbose: Bool = false, format: String = "console") {
            self.verbose = verbose
            self.format = format
        }
    }

    public struct PrometheusSettings: Sendable, Equatable {
        public var enable = false
        public var bind = "127.0.0.1:3010"
    }

    /// `[snapshot]`: where snapshots go, how often one is taken, how many are kept.
    public struct SnapshotSettings: Sendable, Equatable {
        public var enabled = false
        /// "nats" (JetStream object store, the default), "local", "s3", "webdav" or "sftp".
        public var store = "nats"
        /// Milliseconds between snapshots (0: only on demand and when a node needs one).
        public var intervalMs: Int64 = 0
        /// Snapshots kept in the store, newest first.
        public var keep = 3
        public var nats = NATSObjectStoreSettings()
        public var local = LocalStoreSettings()
        public var s3 = S3StoreSettings()
        public var webdav = WebDAVStoreSettings()
        public var sftp = SFTPStoreSettings()
    }

    /// `[snapshot.nats]`
    public struct NATSObjectStoreSettings: Sendable, Equatable {
        public var bucket = "harmonylite-snapshots"
        /// Nil: as many as `[replication_log] replicas`.
        public var replicas: Int?
    }

    /// `[snapshot.local]`: a directory (shared or not); default `<db dir>/snapshots`.
    public struct LocalStoreSettings: Sendable, Equatable {
        public var path: String?
    }

    /// `[snapshot.s3]`: HarmonyLite's keys.
    public struct S3StoreSettings: Sendable, Equatable {
        public var endpoint = "s3.amazonaws.com"
        public var bucket = ""
        public var path = ""
        public var useSSL = true
        public var accessKey: String?
        public var secret: String?
        public var sessionToken: String?
        public var region = "us-east-1"
    }

    /// `[snapshot.webdav]`: `url` as in HarmonyLite (`https://host/path?dir=/snapshots&login=user&secret=pass`).
    public struct WebDAVStoreSettings: Sendable, Equatable {
        public var url = ""
    }

    /// `[snapshot.sftp]`: `url` as in HarmonyLite (`sftp://user:password@host:port/path`), or key authentication.
    public struct SFTPStoreSettings: Sendable, Equatable {
        public var url = ""
        public var identityFile: String?
        public var knownHostsFile: String?
    }

    public init(node: NodeConfig) { self.node = node }

    /// `scheme://[user:pass@]host:port` or `host:port`, with a numeric port; a typo such as `:4222x` is caught here
    /// instead of looking like a server that is down.
    static func isNATSURL(_ url: String) -> Bool {
        var rest = Substring(url)
        if let scheme = rest.range(of: "://") {
            guard ["nats", "tls", "ws", "wss"].contains(rest[..<scheme.lowerBound].lowercased()) else { return false }
            rest = rest[scheme.upperBound...]
        }
        if let at = rest.lastIndex(of: "@") { rest = rest[rest.index(after: at)...] }
        guard let colon = rest.lastIndex(of: ":"), colon != rest.startIndex else { return false }
        let port = rest[rest.index(after: colon)...]
        return !port.isEmpty && port.allSatisfy(\.isASCII) && port.allSatisfy(\.isNumber) && (1...65535).contains(Int(port) ?? 0)
    }

    /// Parses config.toml text; every error names the key and line.
    public static func parse(_ text: String) throws -> RuntimeConfig {
        let root = try TOMLReader(parsing: text)
        try root.rejectUnknownKeys(allowed: [
            "db_path", "node_id", "seq_map_path", "cleanup_interval", "scan_max_changes", "lock_batch_rows", "lock_pause_ms", "max_row_bytes", "publish", "replicate", "replicate_ddl",
            "include_tables", "exclude_tables", "replication_log", "nats", "logging", "prometheus", "snapshot", "health", "http", "postgres",
        ])
        let dbPath = try root.required("db_path", root.string)
        let nodeID = try root.int("node_id") ?? 1
        guard nodeID > 0 else { throw root.error(at: "node_id", "key 'node_id' must be a positive integer, got \(nodeID)") }
        var c = RuntimeConfig(node: NodeConfig(nodeID: Int64(nodeID), databasePath: dbPath))
        c.maxEntries = 1024  // HarmonyLite's default
        c.seqMapPath = try root.string("seq_map_path")
        c.node.cleanupIntervalMs = Int64(try positive(root, "cleanup_interval", Int(c.node.cleanupIntervalMs)))
        c.node.scanMaxChanges = try positive(root, "scan_max_changes", c.node.scanMaxChanges)
        // A bulk import's bookkeeping: rows per transaction, and the pause left to the applications between them.
        c.node.lockBatchRows = try positive(root, "lock_batch_rows", c.node.lockBatchRows)
        c.node.lockPauseMs = Int64(try nonNegative(root, "lock_pause_ms", Int(c.node.lockPauseMs)))
        c.node.rowBytesMax = try positive(root, "max_row_bytes", c.node.rowBytesMax)
        if c.node.rowBytesMax < 1024 { throw root.error(at: "max_row_bytes", "key 'max_row_bytes' must be at least 1024 bytes, got \(c.node.rowBytesMax)") }
        c.node.publish = try root.bool("publish") ?? true
        c.node.replicate = try root.bool("replicate") ?? true
        c.node.replicateDDL = try root.bool("replicate_ddl") ?? true
        c.node.tables = TableFilter(include: try root.stringArray("include_tables") ?? [], exclude: try root.stringArray("exclude_tables") ?? [])

        if let r = try root.table("replication_log") {
            try r.rejectUnknownKeys(allowed: ["shards", "max_entries", "replicas", "compress", "hole_repair_after_seconds", "hints"])
            // 0: a node behind the log's start waits for a snapshot for good.
            let repairAfter = try nonNegative(r, "hole_repair_after_seconds", 600)
            c.node.holeRepairAfterMs = repairAfter == 0 ? nil : Int64(repairAfter) * 1000
            c.node.shards = try positive(r, "shards", c.node.shards)
            if c.node.shards > 1024 { throw r.error(at: "shards", "key 'replication_log.shards' must be at most 1024") }
            let maxEntries = try r.int("max_entries") ?? Int(c.maxEntries)
            guard maxEntries >= 0 else { throw r.error(at: "max_entries", "key 'replication_log.max_entries' must not be negative") }
            c.maxEntries = Int64(maxEntries)
            c.replicas = try positive(r, "replicas", c.replicas)
            c.node.compress = try r.bool("compress") ?? false
            c.node.hints = try r.bool("hints") ?? c.node.hints
        }
        if let n = try root.table("nats") {
            try n.rejectUnknownKeys(allowed: [
                "urls", "connect_retries", "reconnect_wait_seconds", "user_name", "user_password", "token", "creds_file",
                "seed_file", "ca_file", "cert_file", "key_file", "bind_address", "cluster_address", "cluster_routes",
                "cluster_name", "store_dir",
            ])
            c.nats.urls = try n.stringArray("urls") ?? []
            c.nats.connectRetries = try nonNegative(n, "connect_retries", c.nats.connectRetries)
            c.nats.reconnectWaitSeconds = try nonNegative(n, "reconnect_wait_seconds", c.nats.reconnectWaitSeconds)
            c.nats.userName = try n.string("user_name")
            c.nats.userPassword = try n.string("user_password")
            c.nats.token = try n.string("token")
            c.nats.credsFile = try n.string("creds_file")
            c.nats.seedFile = try n.string("seed_file")
            c.nats.caFile = try n.string("ca_file")
            c.nats.certFile = try n.string("cert_file")
            c.nats.keyFile = try n.string("key_file")
            c.nats.bindAddress = try n.string("bind_address") ?? c.nats.bindAddress
            c.nats.clusterAddress = try n.string("cluster_address")
            c.nats.clusterRoutes = try n.stringArray("cluster_routes") ?? []
            c.nats.clusterName = try n.string("cluster_name") ?? c.nats.clusterName
            c.nats.storeDirectory = try n.string("store_dir")
            if (c.nats.certFile == nil) != (c.nats.keyFile == nil) {
                throw n.error(at: c.nats.certFile == nil ? "key_file" : "cert_file", "keys 'nats.cert_file' and 'nats.key_file' go together")
            }
            if let url = c.nats.urls.first(where: { !Self.isNATSURL($0) }) {
                throw n.error(at: "urls", "key 'nats.urls' has '\(url)', expected nats://host:port (or tls://, ws://, wss://) with a port from 1 to 65535")
            }
        }
        if let l = try root.table("logging") {
            try l.rejectUnknownKeys(allowed: ["verbose", "format"])
            c.logging.verbose = try l.bool("verbose") ?? false
            c.logging.format = try l.string("format") ?? "console"
            guard ["console", "json"].contains(c.logging.format) else {
                throw l.error(at: "format", "key 'logging.format' must be \"console\" or \"json\", got \"\(c.logging.format)\"")
            }
        }
        if let h = try root.table("health") {
            try h.rejectUnknownKeys(allowed: ["stall_seconds"])
            if let seconds = try h.int("stall_seconds") {
                guard (1...86_400).contains(seconds) else {
                    throw h.error(at: "stall_seconds", "key 'health.stall_seconds' must be between 1 and 86400, got \(seconds)")
                }
                c.health.stallSeconds = Int64(seconds)
            }
        }
        if let p = try root.table("prometheus") {
            try p.rejectUnknownKeys(allowed: ["enable", "bind"])
            c.prometheus.enable = try p.bool("enable") ?? false
            c.prometheus.bind = try p.string("bind") ?? c.prometheus.bind
        }
        if let s = try root.table("snapshot") {
            try s.rejectUnknownKeys(allowed: ["enabled", "store", "interval", "keep", "s3", "webdav", "sftp", "nats", "local"])
            c.snapshot.enabled = try s.bool("enabled") ?? false
            c.snapshot.store = try s.string("store") ?? "nats"
            guard ["nats", "s3", "webdav", "sftp", "local"].contains(c.snapshot.store) else {
                throw s.error(at: "store", "key 'snapshot.store' must be one of nats, s3, webdav, sftp, local; got \"\(c.snapshot.store)\"")
            }
            c.snapshot.intervalMs = Int64(try nonNegative(s, "interval", 0))
            c.snapshot.keep = try positive(s, "keep", c.snapshot.keep)
            if let n = try s.table("nats") {
                try n.rejectUnknownKeys(allowed: ["bucket", "replicas"])
                c.snapshot.nats.bucket = try n.string("bucket") ?? c.snapshot.nats.bucket
                if try n.int("replicas") != nil { c.snapshot.nats.replicas = try positive(n, "replicas", 1) }
            }
            if let l = try s.table("local") {
                try l.rejectUnknownKeys(allowed: ["path"])
                c.snapshot.local.path = try l.string("path")
            }
            try parseSnapshotStoreTables(s, into: &c.snapshot)
        }
        try parseHTTP(root, into: &c)
        try parsePostgres(root, into: &c)
        return c
    }

    static func positive(_ t: TOMLReader, _ key: String, _ defaultValue: Int) throws -> Int {
        guard let v = try t.int(key) else { return defaultValue }
        guard v > 0 else { throw t.error(at: key, "key '\(t.fullKey(key))' must be positive, got \(v)") }
        return v
    }

    static func nonNegative(_ t: TOMLReader, _ key: String, _ defaultValue: Int) throws -> Int {
        guard let v = try t.int(key) else { return defaultValue }
        guard v >= 0 else { throw t.error(at: key, "key '\(t.fullKey(key))' must not be negative, got \(v)") }
        return v
    }
}
