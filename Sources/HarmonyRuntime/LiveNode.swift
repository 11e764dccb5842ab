import Dispatch
import Foundation
import HarmonyCore
import HarmonyNATS
import HarmonySQLite
import Logging
import Synchronization

/// Runs the deterministic core live: every core call happens on one serial queue (the node's executor);
/// NATS callbacks and fetch threads hand their results to that queue. Nothing else touches the core.
public final class LiveNode: @unchecked Sendable {
    public let config: RuntimeConfig
    let router: ShardRouter
    let queue = DispatchQueue(label: "harmonylite.node")
    let log: Logger
    /// Everything only the node's queue may touch, checked on every access (`QueueBound`).
    struct QueueOnly {
        var core: ReplicationNode?
        var timers: [NodeTimer: DispatchSourceTimer] = [:]
        var changes: DatabaseChangeMonitor?
        var subscriptions: [Int: PullSubscription] = [:]
        /// Per shard: the running fetch thread's stop flag, raised when the core resubscribes (after a restore).
        var fetchStops: [Int: FetchStop] = [:]
        /// Bumped each time the core asks for a shard's subscription, so a pending retry of an older request gives up.
        var subscribeGeneration: [Int: Int] = [:]
        /// Messages fetched and handed to the core, awaiting its ack or nak.
        var delivered: [Int: [UInt64: FetchedMessage]] = [:]
        /// Publishes awaiting JetStream's answer: message id -> change-log token, and the shard whose stream it goes to.
        var inFlight: [String: (token: Int64, shard: Int)] = [:]
        var ackedTokens: [Int64] = []
        var flushScheduled = false
        /// The error contract: how long to wait before restarting a core that threw.
        var restartBackoff = CoreRestartBackoff()
        /// Why the core is down between a throw and its restart, for `/health`.
        var coreFailure: String?
        /// `-save-snapshot` waits here for the outcome of the snapshot it asked for.
        var snapshotWaiter: (@Sendable (ReplicationEvent) -> Void)?
        /// SIGUSR1 asked for the snapshot under way, so its outcome is worth an info line.
        var snapshotRequestedByOperator = false
        /// What JetStream said about the last publish that failed, for the (rate-limited) warning.
        var lastPublishError: String?
        /// When each kind of progress last happened, for `/health`.
        var progress = ProgressWatch()
    }
    let queueOnly: QueueBound<QueueOnly>
    var core: ReplicationNode? {
        _read { yield queueOnly.value.core }
        _modify { yield &queueOnly.value.core }
    }
    var jetStream: JetStream?
    var connection: NATSConnection?
    /// Other nodes' hints (see LiveNode+Hints), and those received but not yet handed to the core.
    var hintSubscription: CoreSubscription?
    let pendingHints = PendingHints()
    let hintOffers = HintOffers()
    var snapshots: SnapshotService?
    /// The core's snapshot port: `snapshots`, or one that answers every request with "disabled".
    var snapshotPort: (any SnapshotStorePort)?
    /// The core's settings: `config.node` with the `[snapshot]` policy filled in.
    let nodeConfig: NodeConfig
    /// The connected server's payload limit, told to every core (written before the first core is made).
    var serverMaxPayload: Int?
    var registry: SchemaRegistry?
    /// This process's claim on its node_id.
    var identity: NodeIdentityClaim?
    /// This process's hold on its database file (one sidecar per database).
    var databaseLock: SidecarLock?
    let metrics: NodeMetrics
    var metricsServer: MetricsServer?
    let stopped = Atomic<Bool>(false)
    /// When the core call running on the queue began (0: none runs), so `/health` can say how long one has taken.
    let coreCallStartedMs = Atomic<Int64>(0)
    /// The last readings `/health` got from the queue, answered from while the queue is busy.
    let lastHealthLook = Mutex<CoreLook?>(nil)
    /// What `/health` judges from (`coreLookOnQueue`).
    typealias CoreLook = (readings: NodeReadings, watch: ProgressWatch)
    /// A `/health` look waits on the queue: checkers polling a blocked queue do not pile more up behind it.
    let healthLookQueued = Atomic<Bool>(false)
    /// Set once a stream past this node's last shard appears while it runs (`streamBeyondLastShard`): `/health`
    /// says it until the node restarts with the cluster's shard count.
    let shardCountMismatch = Mutex<String?>(nil)
    /// Requests the core must not wait for (stream ranges) run here and answer on `queue`.
    let requests = DispatchQueue(label: "harmonylite.requests")

    public static let subjectPrefix = "harmonylite.changes"

    /// `logger` gets the node id as `node` metadata if it does not carry it already.
    public init(config: RuntimeConfig, logger: Logger) {
        self.config = config
        var logger = logger
        if logger[metadataKey: "node"] == nil { logger[metadataKey: "node"] = .stringConvertible(config.node.nodeID) }
        self.log = logger
        self.queueOnly = QueueBound(QueueOnly(), queue: queue)
        self.router = ShardRouter(shardCount: config.node.shards, streamPrefix: config.node.streamPrefix)
        metrics = NodeMetrics(nodeID: config.node.nodeID, shards: Array(ShardRouter(shardCount: config.node.shards, streamPrefix: config.node.streamPrefix).shards))
        var nodeConfig = config.node
        nodeConfig.snapshotIntervalMs = config.snapshot.enabled ? config.snapshot.intervalMs : 0
        nodeConfig.snapshotKeep = config.snapshot.keep
        self.nodeConfig = nodeConfig
    }

    /// Connects, makes sure every shard's stream and the schema registry bucket exist, then starts the core.
    /// A JetStream cluster that is still forming (no meta leader, too few peers for the replicas asked) is
    /// waited for, retrying with backoff for at most `jetStreamWaitSeconds`.
    public func start(urls: [String], jetStreamWaitSeconds: Double = 60) throws {
        databaseLock = try SidecarLock(databasePath: config.node.databasePath)
        var options = Self.connectOptions(config, urls: urls)
        let log = self.log
        options.onRetry = { log.warning("\($0)") }
        let waitSeconds = config.nats.reconnectWaitSeconds
        options.onConnectionChange = { [weak self] change in
            switch change {
            case .disconnected(let url):
                // Closing it on a graceful stop is no loss worth a warning in every clean shutdown's log.
                guard self?.stopped.load(ordering: .relaxed) != true else { return }
                log.warning("lost the connection to NATS at \(url); reconnecting every \(waitSeconds) s (changes wait in the database)")
            case .reconnected(let url): log.info("reconnected to NATS at \(url)")
            }
        }
        let connection = try NATSConnection(options)
        self.connection = connection
        serverMaxPayload = connection.maxPayload
        let offers = hintOffers, origin = config.node.nodeID
        let js = try connection.jetStream(publishAsyncMaxPending: config.node.publishInFlightMax) { [weak self] result in
            LiveNode.sendHint(result, offers: offers, connection: connection, origin: origin)
            guard let node = self else { return }
            node.queue.async { node.publishResult(result) }
        }
        jetStream = js
        let deadline = Date().addingTimeInterval(jetStreamWaitSeconds)
        for shard in router.shards {
            _ = try retryWhileJetStreamForms("creating stream \(router.streamName(shard: shard))", until: deadline) {
                try makeStream(js, shard: shard)
            }
        }
        // Every node must use the same shard count. A stream past this node's last was made by a node with more
        // shards: rows hashed to it would never reach this node, and a node going back to fewer shards would leave
        // the rows on it unread by everyone (operator audit: 2 shards, then 1, and half the rows gone unnoticed).
        if let mismatch = streamBeyondLastShard(js) { throw ShardCountMismatch(description: mismatch) }
        let registryBucket = try retryWhileJetStreamForms("opening the schema registry bucket", until: deadline) {
            try js.keyValue(bucket: SchemaRegistryEntry.bucket, replicas: config.replicas)
        }
        registry = SchemaRegistry(bucket: registryBucket, nodeID: config.node.nodeID, log: log)
        // One live process per node_id, checked before this one touches the id's consumers.
        let nodesBucket = try retryWhileJetStreamForms("opening the node bucket", until: deadline) {
            try js.keyValue(bucket: NodeIdentityClaim.bucket, replicas: config.replicas)
        }
        let identity = NodeIdentityClaim(kv: nodesBucket, nodeID: config.node.nodeID, databasePath: config.node.databasePath, log: log)
        try retryWhileJetStreamForms("claiming node_id \(config.node.nodeID)", until: deadline) { try identity.claim() }
        identity.startRenewing()
        self.identity = identity
        if config.snapshot.enabled {
            let store = try retryWhileJetStreamForms("opening the snapshot store", until: deadline) {
                try SnapshotStores.make(config, jetStream: js)
            }
            let leaseBucket = try retryWhileJetStreamForms("opening the lease bucket", until: deadline) {
                try js.keyValue(bucket: "harmonylite-leases", replicas: config.replicas)
            }
            let directory = (config.node.databasePath as NSString).deletingLastPathComponent
            let service = SnapshotService(store: store,
                                          lease: SnapshotLease(bucket: leaseBucket, nodeID: config.node.nodeID, durationMs: nodeConfig.snapshotLeaseMs),
                                          workDirectory: directory.isEmpty ? "." : directory, log: log)
            service.node = self
            snapshots = service
            snapshotPort = service
            log.info("snapshots: \(store.location), keep \(config.snapshot.keep), interval \(config.snapshot.intervalMs) ms")
        } else {
            let disabled = DisabledSnapshotStore()
            disabled.node = self
            snapshotPort = disabled
        }
        try queue.sync {
            let core = makeCore()
            self.core = core
            // Watch first: a commit made while the core starts still moves data_version past what the monitor read.
            // Looks read the core's connection, so the core's own commits (a receiver's applies) wake nothing.
            let changes = DatabaseChangeMonitor(databasePath: config.node.databasePath, queue: queue, logger: log,
                                                sidecarCounters: { [weak self] in try self?.core?.connectionCounters() }) { [weak self] in
                self?.withCore("reading local changes") { try $0.databaseChanged() }
            }
            try changes.start()
            queueOnly.value.changes = changes
            try core.start()
            schemaChanged()
            let nowMs = WallClock.nowMs
            for shard in router.shards { queueOnly.value.progress.lastProgressMs[shard] = nowMs }
            // What /health answers from if its first look finds the queue busy.
            lastHealthLook.withLock { $0 = coreLookOnQueue() }
        }
        try subscribeToHints(connection)
        if config.prometheus.enable {
            let server = try MetricsServer(bind: config.prometheus.bind) { [weak self] path in
                self?.respond(path) ?? MetricsServer.Response(status: 503, body: "stopping\n")
            }
            try server.start()
            metricsServer = server
            log.info("metrics on http://\(server.host):\(server.port)/metrics, health on /health")
        }
        let mode = switch (nodeConfig.publish, nodeConfig.replicate) {
        case (true, true): "replicating both ways"
        case (true, false): "publishing its changes only (replicate = false)"
        case (false, true): "receiving only (publish = false)"
        case (false, false): "neither publishing nor receiving (publish = false, replicate = false)"
        }
        log.info("node \(config.node.nodeID) started on \(config.node.databasePath) over \(urls.joined(separator: ",")) with \(config.node.shards) shard(s), \(mode)")
    }

    /// Queue only: a core wired to this node's ports; not started.
    func makeCore() -> ReplicationNode {
        var config = nodeConfig
        if let limit = serverMaxPayload { config.messageBytesMax = max(limit, 1024) }
        return ReplicationNode(config: config, environment: NodeEnvironment(
            clock: LiveClock(node: self), log: LiveLog(node: self), opener: SQLiteOpener(),
            events: LiveEvents(log: log, node: self), snapshots: snapshotPort))
    }

    /// Queue only: runs one core event handler. A throw follows the error contract (`NodeEnvironment`): this core
    /// stops and a new one starts on the same database after a backoff.
    func withCore(_ what: @autoclosure () -> String, _ body: (ReplicationNode) throws -> Void) {
        dispatchPrecondition(condition: .onQueue(queue))
        guard let core else { return }
        coreCallStartedMs.store(WallClock.nowMs, ordering: .relaxed)
        defer { coreCallStartedMs.store(0, ordering: .relaxed) }
        do { try body(core) } catch { coreFailed(error, while: what()) }
    }

    /// Queue only: stops the core that threw and schedules its replacement.
    func coreFailed(_ error: any Error, while what: String) {
        guard let failed = core else { return }
        let delayMs = queueOnly.value.restartBackoff.failed(atMs: WallClock.nowMs)
        queueOnly.value.coreFailure = "replication stopped while \(what): \(error)"
        log.error("replication stopped while \(what): \(error). Restarting it in \(delayMs) ms; nothing is lost, it resumes from its checkpoints.")
        metrics.add(.coreRestarts)
        failed.stop()
        core = nil
        for t in queueOnly.value.timers.values { t.cancel() }
        queueOnly.value.timers.removeAll()
        // Deliveries and publishes of the stopped core: the new one resubscribes from its checkpoints (which
        // replaces the consumers) and republishes what is pending under the same message ids.
        queueOnly.value.delivered.removeAll()
        queueOnly.value.inFlight.removeAll()
        queueOnly.value.ackedTokens.removeAll()
        hintOffers.removeAll()
        queue.asyncAfter(deadline: .now() + .milliseconds(Int(delayMs))) { [weak self] in self?.restartCore() }
    }

    /// Queue only: the replacement core after a throw.
    func restartCore() {
        guard !stopped.load(ordering: .relaxed), core == nil else { return }
        let core = makeCore()
        self.core = core
        do {
            try core.start()
            queueOnly.value.coreFailure = nil
            schemaChanged()
            log.info("replication restarted")
        } catch {
            coreFailed(error, while: "restarting")
        }
    }

    /// Runs `body` until it succeeds, retrying (with backoff, each retry logged) only errors a forming JetStream
    /// cluster gives, and only until `deadline`; other errors and the last one are thrown.
    func retryWhileJetStreamForms<T>(_ what: String, until deadline: Date, _ body: () throws -> T) throws -> T {
        var delayMs = 250
        var attempt = 1
        while true {
            do {
                return try body()
            } catch where Self.isTransientJetStreamError(error) && Date().addingTimeInterval(Double(delayMs) / 1000) < deadline {
                log.warning("\(what) (attempt \(attempt)): \(error); JetStream may still be forming, retrying in \(delayMs) ms")
                Thread.sleep(forTimeInterval: Double(delayMs) / 1000)
                delayMs = min(delayMs * 2, 2_000)
                attempt += 1
            } catch let error as NATSError where [10039, 10076].contains(error.jetStreamCode) || error.message.lowercased().contains("not enabled") {
                // Still not enabled when the wait is over: not a cluster forming, a server started without it.
                throw JetStreamNotEnabled(description: "\(what): \(error). JetStream is not enabled on this NATS server (or for this "
                    + "account): start nats-server with -js (or `jetstream {}` in its config), or enable JetStream for the account")
            }
        }
    }

    /// How this node connects: `config`'s retries, credentials and TLS, to `urls`.
    public static func connectOptions(_ config: RuntimeConfig, urls: [String]) -> NATSConnectOptions {
        var options = NATSConnectOptions(urls: urls, name: "harmonylite-node-\(config.node.nodeID)")
        options.connectRetries = max(1, config.nats.connectRetries)
        options.reconnectWaitMs = Int64(config.nats.reconnectWaitSeconds) * 1000
        options.maxReconnects = -1
        options.user = config.nats.userName
        options.password = config.nats.userPassword
        options.token = config.nats.token
        options.credentialsFile = config.nats.credsFile
        options.nkeySeedFile = config.nats.seedFile
        options.tlsCAFile = config.nats.caFile
        options.tlsCertFile = config.nats.certFile
        options.tlsKeyFile = config.nats.keyFile
        return options
    }

    /// Errors JetStream answers while its cluster has no meta leader yet or too few peers for the replicas asked.
    static func isTransientJetStreamError(_ error: any Error) -> Bool {
        guard let e = error as? NATSError else { return false }
        if e.isTimeout { return true }
        // 10008 temporarily unavailable, 10023 insufficient resources, 10039/10076 not enabled, 10047 insufficient storage
        if [10008, 10023, 10039, 10047, 10076].contains(e.jetStreamCode) { return true }
        let text = e.message.lowercased()
        return ["no responders", "not enabled", "temporarily unavailable", "insufficient resources", "no suitable peers",
                "timeout", "timed out"].contains { text.contains($0) }
    }

    public func stop() {
        stopped.store(true, ordering: .relaxed)
        queue.sync {
            queueOnly.value.changes?.stop()
            queueOnly.value.changes = nil
            for t in queueOnly.value.timers.values { t.cancel() }
            queueOnly.value.timers.removeAll()
        }
        metricsServer?.stop()
        snapshots?.stop()
        registry?.flush()
        identity?.release()
        try? jetStream?.waitForPublishes(timeoutMs: 2_000)
        queue.sync {
            flushAcks()
            core?.stop()
            core = nil
            queueOnly.value.delivered.removeAll()
        }
        let subscriptions = queue.sync { Array(queueOnly.value.subscriptions.values) }
        for s in subscriptions { s.close() }
        hintSubscription?.close()
        connection?.close()
        databaseLock?.release()
        log.info("node \(config.node.nodeID) stopped")
    }
}

extension LiveNode {
    /// Creates a shard's stream, or brings an existing one in line with this configuration.
    @discardableResult
    func makeStream(_ js: JetStream, shard: Int) throws -> HarmonyNATS.StreamState {
        try js.ensureStream(name: router.streamName(shard: shard), subjects: ["\(Self.subjectPrefix).\(shard)"],
                            maxMessages: config.maxEntries, replicas: config.replicas, duplicateWindowMs: 120_000)
    }

    /// Why this node's shard count is below another node's, when the stream after its last one exists: rows
    /// hashed to that stream never reach this node. Nil when it does not exist (or JetStream could not say).
    func streamBeyondLastShard(_ js: JetStream) -> String? {
        let beyond = router.streamName(shard: router.shards.upperBound + 1)
        guard let state = try? js.streamState(name: beyond) else { return nil }
        return """
            stream \(beyond) exists (\(state.messages) message(s)), made by a node with more than \(router.shards.upperBound) \
            shard(s): rows hashed to it would never reach this node. Set [replication_log] shards to the same value on \
            every node (at least \(router.shards.upperBound + 1)); lowering it is not supported while that stream holds messages \
            (to start over with fewer: stop every node, delete the streams, and seed every node from one snapshot)
            """
    }
}

/// This node's shard count is below another node's (`LiveNode.start`).
struct ShardCountMismatch: Error, CustomStringConvertible {
    let description: String
}

/// JetStream stayed disabled for the whole start-up wait (`LiveNode.retryWhileJetStreamForms`).
struct JetStreamNotEnabled: Error, CustomStringConvertible {
    let description: String
}
