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
    private var core: ReplicationNode?
    private var jetStream: JetStream?
    private var connection: NATSConnection?
    private var timers: [NodeTimer: DispatchSourceTimer] = [:]
    private var changes: DatabaseChangeMonitor?
    private var subscriptions: [Int: PullSubscription] = [:]
    /// Per shard: the running fetch thread's stop flag, raised when the core resubscribes (after a restore). Queue only.
    private var fetchStops: [Int: FetchStop] = [:]
    private var snapshots: SnapshotService?
    /// The core's snapshot port: `snapshots`, or one that answers every request with "disabled".
    private var snapshotPort: (any SnapshotStorePort)?
    /// The core's settings: `config.node` with the `[snapshot]` policy filled in.
    let nodeConfig: NodeConfig
    /// `-save-snapshot` waits here for the outcome of the snapshot it asked for. Queue only.
    private var snapshotWaiter: (@Sendable (ReplicationEvent) -> Void)?
    /// SIGUSR1 asked for the snapshot under way, so its outcome is worth an info line. Queue only.
    private var snapshotRequestedByOperator = false
    private var registry: SchemaRegistry?
    let metrics: NodeMetrics
    private var metricsServer: MetricsServer?
    /// Bumped each time the core asks for a shard's subscription, so a pending retry of an older request gives up. Queue only.
    private var subscribeGeneration: [Int: Int] = [:]
    private var fetchThreads: [Thread] = []
    /// Messages fetched and handed to the core, awaiting its ack or nak. Queue only.
    private var delivered: [Int: [UInt64: FetchedMessage]] = [:]
    /// Publishes awaiting JetStream's answer: message id -> change-log token. Queue only.
    private var inFlight: [String: Int64] = [:]
    private var ackedTokens: [Int64] = []
    private var flushScheduled = false
    private let stopped = Atomic<Bool>(false)
    /// Requests the core must not wait for (stream ranges) run here and answer on `queue`.
    private let requests = DispatchQueue(label: "harmonylite.requests")
    /// The error contract: how long to wait before restarting a core that threw. Queue only.
    private var restartBackoff = CoreRestartBackoff()
    /// Why the core is down between a throw and its restart, for `/health`. Queue only.
    private var coreFailure: String?

    public static let subjectPrefix = "harmonylite.changes"

    /// `logger` gets the node id as `node` metadata if it does not carry it already.
    public init(config: RuntimeConfig, logger: Logger) {
        self.config = config
        var logger = logger
        if logger[metadataKey: "node"] == nil { logger[metadataKey: "node"] = .stringConvertible(config.node.nodeID) }
        self.log = logger
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
        let connection = try NATSConnection(Self.connectOptions(config, urls: urls))
        self.connection = connection
        let js = try connection.jetStream(publishAsyncMaxPending: config.node.publishInFlightMax) { [weak self] result in
            guard let node = self else { return }
            node.queue.async { node.publishResult(result) }
        }
        jetStream = js
        let deadline = Date().addingTimeInterval(jetStreamWaitSeconds)
        for shard in router.shards {
            let name = router.streamName(shard: shard)
            _ = try retryWhileJetStreamForms("creating stream \(name)", until: deadline) {
                try js.ensureStream(name: name, subjects: ["\(Self.subjectPrefix).\(shard)"],
                                    maxMessages: config.maxEntries, replicas: config.replicas, duplicateWindowMs: 120_000)
            }
        }
        let registryBucket = try retryWhileJetStreamForms("opening the schema registry bucket", until: deadline) {
            try js.keyValue(bucket: SchemaRegistryEntry.bucket, replicas: config.replicas)
        }
        registry = SchemaRegistry(bucket: registryBucket, nodeID: config.node.nodeID, log: log)
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
            let changes = DatabaseChangeMonitor(databasePath: config.node.databasePath, queue: queue, logger: log) { [weak self] in
                self?.withCore("reading local changes") { try $0.databaseChanged() }
            }
            try changes.start()
            self.changes = changes
            try core.start()
            schemaChanged()
        }
        if config.prometheus.enable {
            let server = try MetricsServer(bind: config.prometheus.bind) { [weak self] path in
                self?.respond(path) ?? MetricsServer.Response(status: 503, body: "stopping\n")
            }
            try server.start()
            metricsServer = server
            log.info("metrics on http://\(server.host):\(server.port)/metrics, health on /health")
        }
        log.info("node \(config.node.nodeID) replicating \(config.node.databasePath) over \(urls.joined(separator: ",")) with \(config.node.shards) shard(s)")
    }

    /// Queue only: a core wired to this node's ports; not started.
    private func makeCore() -> ReplicationNode {
        ReplicationNode(config: nodeConfig, environment: NodeEnvironment(
            clock: LiveClock(node: self), log: LiveLog(node: self), opener: SQLiteOpener(),
            events: LiveEvents(log: log, node: self), snapshots: snapshotPort))
    }

    /// Queue only: runs one core event handler. A throw follows the error contract (`NodeEnvironment`): this core
    /// stops and a new one starts on the same database after a backoff.
    func withCore(_ what: @autoclosure () -> String, _ body: (ReplicationNode) throws -> Void) {
        dispatchPrecondition(condition: .onQueue(queue))
        guard let core else { return }
        do { try body(core) } catch { coreFailed(error, while: what()) }
    }

    /// Queue only: stops the core that threw and schedules its replacement.
    private func coreFailed(_ error: any Error, while what: String) {
        guard let failed = core else { return }
        let delayMs = restartBackoff.failed(atMs: Int64(Date().timeIntervalSince1970 * 1000))
        coreFailure = "replication stopped while \(what): \(error)"
        log.error("replication stopped while \(what): \(error). Restarting it in \(delayMs) ms; nothing is lost, it resumes from its checkpoints.")
        metrics.add(.coreRestarts)
        failed.stop()
        core = nil
        for t in timers.values { t.cancel() }
        timers.removeAll()
        // Deliveries and publishes of the stopped core: the new one resubscribes from its checkpoints (which
        // replaces the consumers) and republishes what is pending under the same message ids.
        delivered.removeAll()
        inFlight.removeAll()
        ackedTokens.removeAll()
        queue.asyncAfter(deadline: .now() + .milliseconds(Int(delayMs))) { [weak self] in self?.restartCore() }
    }

    /// Queue only: the replacement core after a throw.
    private func restartCore() {
        guard !stopped.load(ordering: .relaxed), core == nil else { return }
        let core = makeCore()
        self.core = core
        do {
            try core.start()
            coreFailure = nil
            schemaChanged()
            log.info("replication restarted")
        } catch {
            coreFailed(error, while: "restarting")
        }
    }

    /// Runs `body` until it succeeds, retrying (with backoff, each retry logged) only errors a forming JetStream
    /// cluster gives, and only until `deadline`; other errors and the last one are thrown.
    private func retryWhileJetStreamForms<T>(_ what: String, until deadline: Date, _ body: () throws -> T) throws -> T {
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

    // MARK: Metrics and health

    /// `/metrics`: counters plus gauges read from the core on its queue; `/health`: 200 while the core runs and
    /// NATS is connected, 503 otherwise (with the reason).
    func respond(_ path: String) -> MetricsServer.Response {
        switch path {
        case "/metrics":
            let readings: NodeMetrics.Readings? = try? onQueue { core in
                NodeMetrics.Readings(checkpoints: Dictionary(uniqueKeysWithValues: router.shards.map { ($0, core.checkpoint($0)) }),
                                     pausedShards: Set(core.pausedShards.keys), waitingForSnapshot: core.restoreNeeded,
                                     pendingChanges: (try? core.pendingChangeCount()) ?? 0)
            }
            return MetricsServer.Response(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8",
                                          body: metrics.render(readings))
        case "/health":
            let (running, failure) = queue.sync { (core?.isRunning ?? false, coreFailure) }
            if !running { return MetricsServer.Response(status: 503, body: (failure ?? "replication core is not running") + "\n") }
            if connection?.isConnected != true { return MetricsServer.Response(status: 503, body: "not connected to NATS\n") }
            return MetricsServer.Response(status: 200, body: "ok\n")
        default:
            return MetricsServer.Response(status: 404, body: "try /metrics or /health\n")
        }
    }

    // MARK: Snapshots and the schema registry

    /// Runs `body` with the core on the node's queue and returns its result; nil once stopped.
    func onQueue<T>(_ body: (ReplicationNode) throws -> T) throws -> T? {
        try queue.sync { try core.map(body) }
    }

    /// Runs `body` with the core on the node's queue later; a throw follows the error contract.
    func enqueue(_ what: String, _ body: @escaping @Sendable (ReplicationNode) throws -> Void) {
        queue.async { [weak self] in self?.withCore(what, body) }
    }

    /// Queue only: capture was (re)installed, so the registry entry may be stale.
    func schemaChanged() {
        guard let core else { return }
        registry?.update(tables: core.captured.mapValues { $0.schema.hash })
    }

    /// `-save-snapshot`: once this node has applied what the streams held when it started (bounded by
    /// `timeoutSeconds`), asks its core for a snapshot (the core's policy: lease, consistent copy, upload, prune)
    /// and waits for the outcome. Returns its name, or nil when every try was skipped (the reasons are logged).
    public func saveSnapshot(timeoutSeconds: Double) throws -> String? {
        guard snapshots != nil else { throw SnapshotStoreError("[snapshot] enabled = false: there is no store to save to") }
        let targets = router.shards.map { shard in (shard, streamState(shard: shard)?.lastSequence ?? 0) }
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while true {
            let caughtUp = try onQueue { core in targets.allSatisfy { core.checkpoint($0.0) >= $0.1 } } ?? false
            if caughtUp { break }
            guard Date() < deadline else {
                throw SnapshotStoreError("not caught up with the streams after \(Int(timeoutSeconds)) s; no snapshot taken")
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        // Another node's lease or a moment of unacknowledged local writes makes the core skip: try a while longer.
        for _ in 0..<100 {
            switch waitForSnapshot(until: deadline) {
            case .snapshotTaken(let name)?: return name
            case .snapshotFailed(let reason)?: throw SnapshotStoreError(reason)
            default: break
            }
            guard Date() < deadline else { return nil }
            Thread.sleep(forTimeInterval: 0.1)
        }
        return nil
    }

    /// Asks the core for a snapshot now and waits (not on the queue) for its outcome event, or nil at `deadline`.
    private func waitForSnapshot(until deadline: Date) -> ReplicationEvent? {
        let done = DispatchSemaphore(value: 0)
        let outcome = Mutex<ReplicationEvent?>(nil)
        queue.sync {
            snapshotWaiter = { event in
                outcome.withLock { $0 = event }
                done.signal()
            }
            withCore("taking a snapshot") { $0.snapshotNow() }
        }
        let seconds = max(0, deadline.timeIntervalSinceNow)
        if done.wait(timeout: .now() + .milliseconds(Int(seconds * 1000))) == .timedOut {
            queue.sync { snapshotWaiter = nil }
        }
        return outcome.withLock { $0 }
    }

    /// Queue only: a snapshot attempt ended; hand the outcome to `-save-snapshot` if it waits for one.
    /// Returns whether an operator had asked for this snapshot (SIGUSR1 or `-save-snapshot`).
    @discardableResult
    func snapshotAttemptEnded(_ event: ReplicationEvent) -> Bool {
        let asked = snapshotRequestedByOperator || snapshotWaiter != nil
        snapshotRequestedByOperator = false
        if let waiter = snapshotWaiter {
            snapshotWaiter = nil
            waiter(event)
        }
        return asked
    }

    /// For logs: where snapshots go.
    var snapshotStoreLocation: String? { snapshots?.store.location }

    /// SIGUSR1: a snapshot now, for a running sidecar; the outcome is logged.
    public func requestSnapshotNow() {
        queue.async { [weak self] in
            guard let self else { return }
            self.snapshotRequestedByOperator = true
            self.withCore("taking a snapshot") { $0.snapshotNow() }
        }
    }

    // MARK: Called by the core (on the queue)

    func schedule(_ timer: NodeTimer, afterMs delayMs: Int64) {
        timers[timer]?.cancel()
        let t = DispatchSource.makeTimerSource(queue: queue)
        t.schedule(deadline: .now() + .milliseconds(Int(max(delayMs, 0))))
        t.setEventHandler { [weak self] in self?.withCore("handling timer \(timer)") { try $0.timerFired(timer) } }
        t.resume()
        timers[timer] = t
    }

    /// Hands a message to libnats. A refusal is answered later on the queue, never from inside the core's call.
    func publish(_ message: OutgoingMessage) {
        let token = message.token
        guard let js = jetStream else {
            enqueue("answering a publish") { $0.publishFailed(token: token) }
            return
        }
        inFlight[message.messageID] = token
        do {
            try js.publishAsync(subject: "\(Self.subjectPrefix).\(message.shard)", payload: message.payload, messageID: message.messageID)
        } catch {
            inFlight[message.messageID] = nil
            log.warning("publish \(message.messageID): \(error)")
            enqueue("answering a publish") { $0.publishFailed(token: token) }
        }
    }

    private func publishResult(_ result: PublishResult) {
        guard let token = inFlight.removeValue(forKey: result.messageID), let core else { return }
        if result.sequence != nil || result.duplicate {
            ackedTokens.append(token)
            if !flushScheduled {
                flushScheduled = true
                queue.async { [weak self] in self?.flushAcks() }  // one transaction for every ack that arrived meanwhile
            }
        } else {
            log.warning("publish \(result.messageID) failed: \(result.error ?? "unknown error")")
            core.publishFailed(token: token)
        }
    }

    private func flushAcks() {
        flushScheduled = false
        let tokens = ackedTokens
        ackedTokens.removeAll()
        guard !tokens.isEmpty else { return }
        withCore("marking changes published") { try $0.publishAcknowledged(tokens: tokens) }
    }

    func subscribe(shard: Int, fromSequence: UInt64) {
        // A resubscribe (after a restore) replaces the consumer: stop the old fetch thread and forget what it delivered.
        fetchStops.removeValue(forKey: shard)?.raise()
        subscriptions.removeValue(forKey: shard)?.close()
        delivered[shard] = nil
        let generation = subscribeGeneration[shard, default: 0] + 1
        subscribeGeneration[shard] = generation
        trySubscribe(shard: shard, fromSequence: fromSequence, generation: generation, delayMs: 250)
    }

    /// Creates the durable consumer and its fetch thread; on failure (a stream whose leader is being elected)
    /// tries again later with backoff, unless stopped or superseded by a newer request for the shard.
    private func trySubscribe(shard: Int, fromSequence: UInt64, generation: Int, delayMs: Int) {
        guard !stopped.load(ordering: .relaxed), subscribeGeneration[shard] == generation, let js = jetStream else { return }
        do {
            let sub = try js.pullSubscribe(stream: router.streamName(shard: shard), subject: "\(Self.subjectPrefix).\(shard)",
                                           durable: "harmonylite-node-\(config.node.nodeID)-shard-\(shard)",
                                           startSequence: fromSequence, ackWaitMs: 30_000, maxAckPending: 4096)
            subscriptions[shard] = sub
            let stop = FetchStop()
            fetchStops[shard] = stop
            let thread = Thread { [weak self] in self?.fetchLoop(shard: shard, subscription: sub, stop: stop) }
            thread.name = "harmonylite-fetch-\(shard)"
            fetchThreads.append(thread)
            thread.start()
        } catch {
            log.error("subscribing to shard \(shard) from \(fromSequence): \(error); retrying in \(delayMs) ms")
            queue.asyncAfter(deadline: .now() + .milliseconds(delayMs)) { [weak self] in
                self?.trySubscribe(shard: shard, fromSequence: fromSequence, generation: generation, delayMs: min(delayMs * 2, 5_000))
            }
        }
    }

    /// One thread per shard: fetch a batch, hand it to the queue, wait until the core has taken it.
    private func fetchLoop(shard: Int, subscription: PullSubscription, stop: FetchStop) {
        while !stopped.load(ordering: .relaxed) && !stop.raised {
            let batch: [FetchedMessage]
            do {
                batch = try subscription.fetch(batch: 256, timeoutMs: 250)
            } catch {
                if stopped.load(ordering: .relaxed) || stop.raised { return }
                log.warning("fetch shard \(shard): \(error)")
                Thread.sleep(forTimeInterval: 0.5)
                continue
            }
            guard !batch.isEmpty else { continue }
            let done = DispatchSemaphore(value: 0)
            queue.async { [weak self] in
                defer { done.signal() }
                guard let self, self.core != nil, !stop.raised else { return }  // a replaced consumer's batch
                for m in batch { self.delivered[shard, default: [:]][m.streamSequence] = m }
                let started = ContinuousClock.now
                self.withCore("applying shard \(shard)") {
                    try $0.messagesArrived(shard: shard, batch.map { IncomingMessage(sequence: $0.streamSequence, payload: $0.payload) })
                }
                self.metrics.applyBatchSeconds.record(ContinuousClock.now - started)
            }
            done.wait()
        }
    }

    func ack(shard: Int, sequence: UInt64) {
        guard let m = delivered[shard]?.removeValue(forKey: sequence) else { return }
        do { try m.ack() } catch { log.warning("ack shard \(shard) seq \(sequence): \(error)") }
    }

    func nak(shard: Int, sequence: UInt64, delayMs: Int64) {
        guard let m = delivered[shard]?.removeValue(forKey: sequence) else { return }
        do { try m.nak(delayMs: delayMs) } catch { log.warning("nak shard \(shard) seq \(sequence): \(error)") }
    }

    /// A synchronous JetStream request: never from the queue (the core gets ranges through `requestStreamState`).
    func streamState(shard: Int) -> HarmonyCore.StreamState? {
        dispatchPrecondition(condition: .notOnQueue(queue))
        guard let s = try? jetStream?.streamState(name: router.streamName(shard: shard)) else { return nil }
        return HarmonyCore.StreamState(firstSequence: s.firstSequence, lastSequence: s.lastSequence)
    }

    /// The core's request for a stream's range: asked off the queue (a JetStream request takes a round trip, up
    /// to its timeout), answered on the queue; nil when JetStream could not say.
    func requestStreamState(shard: Int) {
        requests.async { [weak self] in
            guard let self else { return }
            let state = self.streamState(shard: shard)
            self.queue.async { self.withCore("checking the range of shard \(shard)") { $0.streamStateArrived(shard: shard, state) } }
        }
    }

    /// Graceful stop: no new fetches, the in-flight batch finishes, publishes get their answers, state is saved.
    public func stop() {
        stopped.store(true, ordering: .relaxed)
        queue.sync {
            changes?.stop()
            changes = nil
            for t in timers.values { t.cancel() }
            timers.removeAll()
        }
        metricsServer?.stop()
        snapshots?.stop()
        registry?.flush()
        try? jetStream?.waitForPublishes(timeoutMs: 2_000)
        queue.sync {
            flushAcks()
            core?.stop()
            core = nil
            delivered.removeAll()
        }
        for s in subscriptions.values { s.close() }
        connection?.close()
        log.info("node \(config.node.nodeID) stopped")
    }
}

final class LiveClock: NodeClock {
    unowned let node: LiveNode
    init(node: LiveNode) { self.node = node }
    var nowMs: Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
    func schedule(_ timer: NodeTimer, afterMs delayMs: Int64) { node.schedule(timer, afterMs: delayMs) }
}

final class LiveLog: ReplicationLog {
    unowned let node: LiveNode
    init(node: LiveNode) { self.node = node }
    func publish(_ message: OutgoingMessage) { node.publish(message) }
    func subscribe(shard: Int, fromSequence: UInt64) { node.subscribe(shard: shard, fromSequence: fromSequence) }
    func ack(shard: Int, sequence: UInt64) { node.ack(shard: shard, sequence: sequence) }
    func nak(shard: Int, sequence: UInt64, delayMs: Int64) { node.nak(shard: shard, sequence: sequence, delayMs: delayMs) }
    func requestStreamState(shard: Int) { node.requestStreamState(shard: shard) }
}

final class LiveEvents: ReplicationEventSink {
    let log: Logger
    weak var node: LiveNode?
    init(log: Logger, node: LiveNode) {
        self.log = log
        self.node = node
    }
    func record(_ event: ReplicationEvent) {
        node?.metrics.record(event, nowMs: Int64(Date().timeIntervalSince1970 * 1000))
        switch event {
        case .parked, .applyBatchFailed, .behindLogStart, .tableSkipped, .restoreFailed, .streamStateUnknown, .markPublishedFailed:
            log.warning("\(event)")
        case .snapshotTaken(let name):
            log.info("snapshot \(name) saved to \(node?.snapshotStoreLocation ?? "the store")")
            node?.snapshotAttemptEnded(event)
        case .snapshotSkipped(let reason):
            // Periodic skips are routine (another node's turn, a recent snapshot): debug, unless an operator asked.
            if node?.snapshotAttemptEnded(event) == true { log.info("snapshot skipped: \(reason)") } else { log.debug("snapshot skipped: \(reason)") }
        case .snapshotFailed(let reason):
            log.warning("snapshot failed: \(reason)")
            node?.snapshotAttemptEnded(event)
        case .schemaPaused, .schemaResumed, .restoreRequested, .restored: log.info("\(event)")
        case .captureInstalled:
            log.info("\(event)")
            node?.schemaChanged()  // recorded on the node's queue, inside the core
        default: log.debug("\(event)")
        }
    }
}

/// Raised once to stop one fetch thread (its consumer was replaced); read from that thread.
final class FetchStop: Sendable {
    private let flag = Atomic<Bool>(false)
    var raised: Bool { flag.load(ordering: .relaxed) }
    func raise() { flag.store(true, ordering: .relaxed) }
}
