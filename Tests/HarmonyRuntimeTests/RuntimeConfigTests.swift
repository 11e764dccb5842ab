import HarmonyCore
import HarmonyRuntime
import Testing

@Suite("config.toml")
struct RuntimeConfigTests {
    /// The production example from the HarmonyLite guide (seed 003) loads as written.
    @Test func productionGuideExampleLoads() throws {
        let c = try RuntimeConfig.parse("""
            db_path = "/var/lib/harmonylite/data.db"
            node_id = 1 # Unique per node
            seq_map_path = "/var/lib/harmonylite/seq-map.cbor"
            cleanup_interval = 30000 # 30 seconds

            [replication_log]
            shards = 4
            max_entries = 2048
            replicas = 3
            compress = true

            [snapshot]
            enabled = true
            store = "s3"
            interval = 3600000

            [snapshot.s3]
            endpoint = "s3.amazonaws.com"
            bucket = "your-backup-bucket"
            path = "harmonylite/snapshots"
            use_ssl = true
            access_key = "your-access-key"
            secret = "your-secret-key"

            [nats]
            urls = ["nats://nats-server-1:4222", "nats://nats-server-2:4222"]
            connect_retries = 10
            reconnect_wait_seconds = 5

            [prometheus]
            enable = true
            bind = "127.0.0.1:3010"

            [logging]
            verbose = false
            format = "json"
            """)
        #expect(c.node.databasePath == "/var/lib/harmonylite/data.db" && c.node.nodeID == 1)
        #expect(c.node.cleanupIntervalMs == 30_000 && c.node.shards == 4 && c.node.compress)
        #expect(c.maxEntries == 2048 && c.replicas == 3)
        #expect(c.node.logMaxMessages == 2048, "the core holds its backlog before it would push its next message out")
        #expect(c.nats.urls.count == 2 && c.nats.connectRetries == 10 && c.nats.reconnectWaitSeconds == 5)
        #expect(c.logging.format == "json" && c.prometheus.enable && c.snapshot.store == "s3" && c.snapshot.intervalMs == 3_600_000)
    }

    @Test func defaultsNeedOnlyTheDatabase() throws {
        let c = try RuntimeConfig.parse("db_path = \"app.db\"\n")
        #expect(c.node.nodeID == 1 && c.node.shards == 1 && c.node.publish && c.node.replicate)
        #expect(c.nats.urls.isEmpty)  // embedded nats-server
        #expect(c.node.holeRepairAfterMs == 600_000)
        #expect(c.maxEntries == 1024 && c.node.logMaxMessages == 1024)
        #expect(c.nats.bindAddress == "127.0.0.1:4222")
        #expect(c.node.hints)
    }

    /// A bulk import's bookkeeping batches: 5,000 rows and 20 ms by default; an import-heavy node can trade the
    /// applications' lock waits for a faster stamp.
    @Test func bulkImportBatchesCanBeTuned() throws {
        let defaults = try RuntimeConfig.parse("db_path = \"a.db\"\n")
        #expect(defaults.node.lockBatchRows == 5_000 && defaults.node.lockPauseMs == 20)
        let c = try RuntimeConfig.parse("db_path = \"a.db\"\nlock_batch_rows = 20000\nlock_pause_ms = 0\n")
        #expect(c.node.lockBatchRows == 20_000 && c.node.lockPauseMs == 0)
        #expect(throws: (any Error).self) { try RuntimeConfig.parse("db_path = \"a.db\"\nlock_batch_rows = 0\n") }
        #expect(throws: (any Error).self) { try RuntimeConfig.parse("db_path = \"a.db\"\nlock_pause_ms = -5\n") }
    }

    @Test func hintsCanBeSwitchedOff() throws {
        let c = try RuntimeConfig.parse("db_path = \"app.db\"\n[replication_log]\nhints = false\n")
        #expect(!c.node.hints)
        #expect(throws: (any Error).self) { try RuntimeConfig.parse("db_path = \"app.db\"\n[replication_log]\nhints = \"yes\"\n") }
    }

    /// `hole_repair_after_seconds = 0` keeps a node behind the log's start waiting for a snapshot for good.
    @Test func holeRepairCanBeTurnedOff() throws {
        let off = try RuntimeConfig.parse("db_path = \"a\"\n[replication_log]\nhole_repair_after_seconds = 0\n")
        #expect(off.node.holeRepairAfterMs == nil)
        let soon = try RuntimeConfig.parse("db_path = \"a\"\n[replication_log]\nhole_repair_after_seconds = 30\n")
        #expect(soon.node.holeRepairAfterMs == 30_000)
    }

    @Test func brokenConfigsNameTheKeyAndLine() {
        func message(_ text: String) -> String {
            do { _ = try RuntimeConfig.parse(text); return "parsed" } catch { return "\(error)" }
        }
        #expect(message("node_id = 1\n").contains("db_path"))
        #expect(message("db_path = \"a\"\nnode_id = 0\n").contains("line 2"))
        #expect(message("db_path = \"a\"\nnode_idd = 3\n").contains("unknown key 'node_idd'"))
        #expect(message("db_path = \"a\"\n[replication_log]\nshards = \"four\"\n").contains("replication_log.shards"))
        #expect(message("db_path = \"a\"\n[replication_log]\nshards = \"four\"\n").contains("line 3"))
        #expect(message("db_path = \"a\"\n[logging]\nformat = \"xml\"\n").contains("logging.format"))
        #expect(message("db_path = \"a\"\n[replication_log]\nhole_repair_after_seconds = -1\n").contains("replication_log.hole_repair_after_seconds"))
        #expect(message("db_path = \"a\"\n[nats]\ncert_file = \"c.pem\"\n").contains("key_file"))
        #expect(message("db_path = 3\n").contains("db_path"))
        #expect(message("db_path = \"a\"\npublish = \"yes\"\n").contains("publish"))
        #expect(message("db_path = \"a\"\n[snapshot]\nkeep = 0\n").contains("snapshot.keep"))
        #expect(message("db_path = \"a\"\n[snapshot]\nstore = \"ftp\"\n").contains("snapshot.store"))
        #expect(message("db_path = \"a\"\n[snapshot.nats]\nbuckett = \"x\"\n").contains("unknown key 'snapshot.nats.buckett'"))
        #expect(message("db_path = \"a\"\n[snapshot.local]\npath = 5\n").contains("snapshot.local.path"))
        // A typo in a URL is a config error at once, not a server that seems to be down for 45 s.
        for url in ["127.0.0.1:4222x", "nats://host", "nats://host:0", "http://host:4222", "nats://:4222"] {
            #expect(message("db_path = \"a\"\n[nats]\nurls = [\"\(url)\"]\n").contains("nats.urls"), "\(url)")
        }
        for url in ["nats://127.0.0.1:4222", "tls://user:pw@host.example:4443", "10.0.0.1:4222"] {
            #expect(message("db_path = \"a\"\n[nats]\nurls = [\"\(url)\"]\n") == "parsed", "\(url)")
        }
        #expect(message("db_path = \"a\"\n[health]\nstall_seconds = 0\n").contains("health.stall_seconds"))
    }

    /// `[http]`: off and on loopback by default; mistakes name the key.
    @Test func httpSettings() throws {
        let defaults = try RuntimeConfig.parse("db_path = \"a.db\"\n")
        #expect(!defaults.http.enable && defaults.http.bind == "127.0.0.1:8080" && defaults.http.token == nil)
        #expect(defaults.http.maxBodyBytes == 16 << 20 && defaults.http.concurrentQueries == 50)
        let c = try RuntimeConfig.parse("""
            db_path = "a.db"
            [http]
            enable = true
            bind = "0.0.0.0:9090"
            token = "0123456789abcdef-secret"
            cert_file = "c.pem"
            key_file = "k.pem"
            max_body_bytes = 1024
            concurrent_queries = 8
            statement_timeout_ms = 250
            max_result_bytes = 4096
            """)
        #expect(c.http.enable && c.http.hostAndPort! == ("0.0.0.0", 9090) && c.http.token == "0123456789abcdef-secret")
        #expect(c.http.certFile == "c.pem" && c.http.keyFile == "k.pem" && c.http.maxBodyBytes == 1024)
        #expect(c.http.concurrentQueries == 8 && c.http.statementTimeoutMs == 250 && c.http.maxResultBytes == 4096)
        func message(_ body: String) -> String {
            do { _ = try RuntimeConfig.parse("db_path = \"a\"\n[http]\n" + body + "\n"); return "parsed" } catch { return "\(error)" }
        }
        #expect(message("bind = \"localhost\"").contains("http.bind"))
        #expect(message("bind = \"127.0.0.1:70000\"").contains("http.bind"))
        #expect(message("token = \"short\"").contains("http.token"))
        #expect(message("cert_file = \"c.pem\"").contains("key_file"))
        #expect(message("concurrent_queries = 0").contains("http.concurrent_queries"))
        #expect(message("statement_timeout_ms = -1").contains("http.statement_timeout_ms"))
        #expect(message("enabled = true").contains("unknown key 'http.enabled'"))
    }

    /// `[postgres]`: off by default; no default password; cleartext only with TLS.
    @Test func postgresSettings() throws {
        let defaults = try RuntimeConfig.parse("db_path = \"a.db\"\n")
        #expect(!defaults.postgres.enable && defaults.postgres.bind == "127.0.0.1:5432" && defaults.postgres.auth == "scram-sha-256")
        let c = try RuntimeConfig.parse("db_path = \"a\"\n[postgres]\nenable = true\nuser = \"app\"\npassword = \"pw\"\nauth = \"md5\"\nmax_connections = 5\n")
        #expect(c.postgres.enable && c.postgres.user == "app" && c.postgres.password == "pw" && c.postgres.auth == "md5" && c.postgres.maxConnections == 5)
        func message(_ body: String) -> String {
            do { _ = try RuntimeConfig.parse("db_path = \"a\"\n[postgres]\n" + body + "\n"); return "parsed" } catch { return "\(error)" }
        }
        #expect(message("enable = true").contains("postgres.password"))
        #expect(message("enable = true\npassword = \"pw\"\nauth = \"password\"").contains("TLS"))
        #expect(message("enable = true\npassword = \"pw\"\nauth = \"trust\"").contains("postgres.auth"))
        #expect(message("require_tls = true").contains("cert_file"))
        #expect(message("cert_file = \"c.pem\"").contains("key_file"))
        #expect(message("bind = \"5432\"").contains("postgres.bind"))
        #expect(message("enable = true\npassword = \"pw\"\nauth = \"password\"\ncert_file = \"c\"\nkey_file = \"k\"") == "parsed")
    }

    /// Snapshot settings: defaults, history, the object store's replicas following the streams', a local path.
    @Test func snapshotSettings() throws {
        let defaults = try RuntimeConfig.parse("db_path = \"a.db\"\n[replication_log]\nreplicas = 3\n[snapshot]\nenabled = true\n")
        #expect(defaults.snapshot.store == "nats" && defaults.snapshot.keep == 3 && defaults.snapshot.intervalMs == 0)
        #expect(defaults.snapshot.nats.bucket == "harmonylite-snapshots" && defaults.snapshot.nats.replicas == nil)
        let c = try RuntimeConfig.parse("""
            db_path = "a.db"
            [snapshot]
            enabled = true
            store = "local"
            interval = 60000
            keep = 5
            [snapshot.nats]
            bucket = "snaps"
            replicas = 1
            [snapshot.local]
            path = "/srv/snapshots"
            """)
        #expect(c.snapshot.enabled && c.snapshot.store == "local" && c.snapshot.intervalMs == 60_000 && c.snapshot.keep == 5)
        #expect(c.snapshot.nats.bucket == "snaps" && c.snapshot.nats.replicas == 1 && c.snapshot.local.path == "/srv/snapshots")
    }
}
