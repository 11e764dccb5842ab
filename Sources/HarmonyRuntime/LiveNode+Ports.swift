import Dispatch
import Foundation
import HarmonyCore
import HarmonyNATS
import HarmonySQLite
import Logging
import Synchronization

/// The core's ports, live: timers on the queue, publishes through libnats, acks and naks of fetched messages,
/// stream ranges asked off the queue. Every method here runs on the node's queue (the core calls them).
extension LiveNode {
    func schedule(_ timer: NodeTimer, afterMs delayMs: Int64) {
        queueOnly.value.timers[timer]?.cancel()
        let t = DispatchSource.makeTimerSource(queue: queue)
        t.schedule(deadline: .now() + .milliseconds(Int(max(delayMs, 0))))
        t.setEventHandler { [weak self] in self?.withCore("handling timer \(timer)") { try $0.timerFired(timer) } }
        t.resume()
        queueOnly.value.timers[timer] = t
    }

    /// Hands a message to libnats. A refusal is answered later on the queue, never from inside the core's call.
    func publish(_ message: OutgoingMessage) {
        let token = message.token
        guard let js = jetStream else {
            enqueue("answering a publish") { $0.publishFailed(token: token) }
            return
        }
        queueOnly.value.inFlight[message.messageID] = (token, message.shard)
        if message.hint { hintOffers.offer(message.messageID, shard: message.shard, payload: message.payload) }
        do {
            try js.publishAsync(subject: "\(Self.subjectPrefix).\(message.shard)", payload: message.payload, messageID: message.messageID)
        } catch {
            queueOnly.value.inFlight[message.messageID] = nil
            _ = hintOffers.take(message.messageID)
            queueOnly.value.lastPublishError = "\(error)"
            enqueue("answering a publish") { $0.publishFailed(token: token) }
        }
    }

    func publishResult(_ result: PublishResult) {
        guard let (token, shard) = queueOnly.value.inFlight.removeValue(forKey: result.messageID), let core else { return }
        if let sequence = result.sequence { core.streamReached(shard: shard, sequence: sequence) }
        if result.sequence != nil || result.duplicate {
            queueOnly.value.ackedTokens.append(token)
            if !queueOnly.value.flushScheduled {
                queueOnly.value.flushScheduled = true
                queue.async { [weak self] in self?.flushAcks() }  // one transaction for every ack that arrived meanwhile
            }
        } else {
            queueOnly.value.lastPublishError = result.error ?? "unknown error"
            core.publishFailed(token: token)
        }
    }

    func flushAcks() {
        queueOnly.value.flushScheduled = false
        let tokens = queueOnly.value.ackedTokens
        queueOnly.value.ackedTokens.removeAll()
        guard !tokens.isEmpty else { return }
        withCore("marking changes published") { try $0.publishAcknowledged(tokens: tokens) }
    }

    func ack(shard: Int, sequence: UInt64) {
        guard let m = queueOnly.value.delivered[shard]?.removeValue(forKey: sequence) else { return }
        do { try m.ack() } catch { log.warning("ack shard \(shard) seq \(sequence): \(error)") }
    }

    func nak(shard: Int, sequence: UInt64, delayMs: Int64) {
        guard let m = queueOnly.value.delivered[shard]?.removeValue(forKey: sequence) else { return }
        do { try m.nak(delayMs: delayMs) } catch { log.warning("nak shard \(shard) seq \(sequence): \(error)") }
    }

    /// A synchronous JetStream request: never from the queue (the core gets ranges through `requestStreamState`).
    func streamState(shard: Int) -> HarmonyCore.StreamState? {
        dispatchPrecondition(condition: .notOnQueue(queue))
        guard let js = jetStream else { return nil }
        let name = router.streamName(shard: shard)
        do {
            let s = try js.streamState(name: name)
            return HarmonyCore.StreamState(firstSequence: s.firstSequence, lastSequence: s.lastSequence)
        } catch let error as NATSError where error.jetStreamCode == 10059 {
            // Gone while this node runs (`nats stream rm`, a server whose store was lost): made again as at start.
            // Publishes then go through again, and the core finds the stream started over (before its checkpoint)
            // and sends everything again. Before, every node said 503 until someone restarted one.
            guard let s = try? makeStream(js, shard: shard) else { return nil }
            log.warning("""
                stream \(name) no longer existed (deleted, or the NATS server lost its store): made it again; this node \
                will send its rows again once it sees the stream start over
                """)
            return HarmonyCore.StreamState(firstSequence: s.firstSequence, lastSequence: s.lastSequence, madeAgain: true)
        } catch {
            return nil
        }
    }

    /// The core's request for a stream's range: asked off the queue (a JetStream request takes a round trip, up
    /// to its timeout), answered on the queue; nil when JetStream could not say.
    func requestStreamState(shard: Int) {
        requests.async { [weak self] in
            guard let self else { return }
            let state = self.streamState(shard: shard)
            self.queue.async { self.withCore("checking the range of shard \(shard)") { $0.streamStateArrived(shard: shard, state) } }
            // The cleanup timer asks every shard's range: with the last one, look for a stream past it, made by a node
            // started since with more shards (checked at start too, but this node may run for months).
            if shard == self.router.shards.upperBound, self.shardCountMismatch.withLock({ $0 == nil }), let js = self.jetStream,
               let mismatch = self.streamBeyondLastShard(js) {
                self.shardCountMismatch.withLock { $0 = mismatch }
                self.log.error("\(mismatch); restart this node with the cluster's shard count")
            }
        }
    }

    /// Graceful stop: no new fetches, the in-flight batch finishes, publishes get their answers, state is saved.
}

final class LiveClock: NodeClock {
    unowned let node: LiveNode
    init(node: LiveNode) { self.node = node }
    var nowMs: Int64 { WallClock.nowMs }
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
    /// A node stuck on something repeats the same warning every few seconds: once a minute is enough.
    private var repeats = RepeatLimiter()
    init(log: Logger, node: LiveNode) {
        self.log = log
        self.node = node
    }
    func record(_ event: ReplicationEvent) {
        let nowMs = WallClock.nowMs
        node?.metrics.record(event, nowMs: nowMs)
        node?.queueOnly.value.progress.record(event, nowMs: nowMs)
        switch event {
        case .parked, .tableSkipped, .changeRefused, .deliveryStalled, .schemaChangeFailed, .definitionDroppedValues:
            log.warning("\(event)", metadata: event.logMetadata)
        case .publishFailed:
            let reason = node?.queueOnly.value.lastPublishError ?? "no reason given"
            if let line = repeats.admit("\(event) (\(reason))", key: "publish failed", nowMs: nowMs) { log.warning("\(line)", metadata: event.logMetadata) }
        case .discarded(_, _, let table):
            if let line = repeats.admit("\(event)", key: "discarded \(table)", nowMs: nowMs) { log.warning("\(line)", metadata: event.logMetadata) }
        case .nullKeyNotReplicated(let table, _, _, _):
            if let line = repeats.admit("\(event)", key: "null key \(table)", nowMs: nowMs) { log.warning("\(line)", metadata: event.logMetadata) }
        case .applyBatchFailed, .behindLogStart, .restoreFailed, .streamStateUnknown, .markPublishedFailed, .stampFailed, .cleanupFailed:
            if let line = repeats.admit("\(event)", nowMs: nowMs) { log.warning("\(line)", metadata: event.logMetadata) }
        case .ownWritesResumed:
            // Once per failure episode; a disk that fails on and off would say it every try, so repeats are held back.
            if let line = repeats.admit("\(event)", key: "own writes resumed", nowMs: nowMs) { log.info("\(line)", metadata: event.logMetadata) }
        case .snapshotTaken(let name):
            log.info("snapshot \(name) saved to \(node?.snapshotStoreLocation ?? "the store")", metadata: event.logMetadata)
            node?.snapshotAttemptEnded(event)
        case .snapshotSkipped(let reason):
            // Periodic skips are routine (another node's turn, a recent snapshot): debug, unless an operator asked.
            if node?.snapshotAttemptEnded(event) == true { log.info("snapshot skipped: \(reason)", metadata: event.logMetadata) } else { log.debug("snapshot skipped: \(reason)", metadata: event.logMetadata) }
        case .snapshotFailed(let reason):
            log.warning("snapshot failed: \(reason)", metadata: event.logMetadata)
            node?.snapshotAttemptEnded(event)
        case .schemaPaused, .schemaResumed, .restoreRequested, .restored, .gap, .repairRequested, .preExistingDefinitionsAsked, .preExistingDefinitionsSent,
             .schemaChangeWaiting, .stampingBulkImport: log.info("\(event)", metadata: event.logMetadata)
        case .sendingWaitsForApplying(let shard, _, _, _):
            if let line = repeats.admit("\(event)", key: "sending waits \(shard)", nowMs: nowMs) { log.info("\(line)", metadata: event.logMetadata) }
        case .sentBackAskedAgain(let shard, _, _):
            if let line = repeats.admit("\(event)", key: "asked again \(shard)", nowMs: nowMs) { log.info("\(line)", metadata: event.logMetadata) }
        case .holeRepaired, .consumerLost, .streamStartedOver: log.warning("\(event)", metadata: event.logMetadata)
        case .captureInstalled:
            log.info("\(event)", metadata: event.logMetadata)
            node?.schemaChanged()  // recorded on the node's queue, inside the core
        default: log.debug("\(event)", metadata: event.logMetadata)
        }
    }
}
