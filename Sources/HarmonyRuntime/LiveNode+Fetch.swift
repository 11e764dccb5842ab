import Dispatch
import Foundation
import HarmonyCore
import HarmonyNATS
import HarmonySQLite
import Logging
import Synchronization

/// One durable pull consumer and one fetch thread per shard; fetched batches go to the core on the queue.
extension LiveNode {
    func subscribe(shard: Int, fromSequence: UInt64) {
        // A resubscribe (after a restore) replaces the consumer: stop the old fetch thread and forget what it queueOnly.value.delivered.
        queueOnly.value.fetchStops.removeValue(forKey: shard)?.raise()
        queueOnly.value.subscriptions.removeValue(forKey: shard)?.close()
        queueOnly.value.delivered[shard] = nil
        let generation = queueOnly.value.subscribeGeneration[shard, default: 0] + 1
        queueOnly.value.subscribeGeneration[shard] = generation
        trySubscribe(shard: shard, fromSequence: fromSequence, generation: generation, delayMs: 250)
    }

    /// Creates the durable consumer and its fetch thread; on failure (a stream whose leader is being elected)
    /// tries again later with backoff, unless stopped or superseded by a newer request for the shard.
    func trySubscribe(shard: Int, fromSequence: UInt64, generation: Int, delayMs: Int) {
        guard !stopped.load(ordering: .relaxed), queueOnly.value.subscribeGeneration[shard] == generation, let js = jetStream else { return }
        do {
            let sub = try js.pullSubscribe(stream: router.streamName(shard: shard), subject: "\(Self.subjectPrefix).\(shard)",
                                           durable: "harmonylite-node-\(config.node.nodeID)-shard-\(shard)",
                                           startSequence: fromSequence, ackWaitMs: 30_000, maxAckPending: 4096)
            queueOnly.value.subscriptions[shard] = sub
            let stop = FetchStop()
            queueOnly.value.fetchStops[shard] = stop
            let thread = Thread { [weak self] in self?.fetchLoop(shard: shard, subscription: sub, stop: stop) }
            thread.name = "harmonylite-fetch-\(shard)"
            thread.start()  // a running Thread keeps itself; the stop flag ends it (none was ever read from a list)
        } catch {
            log.error("subscribing to shard \(shard) from \(fromSequence): \(error); retrying in \(delayMs) ms")
            queue.asyncAfter(deadline: .now() + .milliseconds(delayMs)) { [weak self] in
                self?.trySubscribe(shard: shard, fromSequence: fromSequence, generation: generation, delayMs: min(delayMs * 2, 5_000))
            }
        }
    }

    /// One thread per shard: fetch a batch, hand it to the queue, wait until the core has taken it.
    func fetchLoop(shard: Int, subscription: PullSubscription, stop: FetchStop) {
        var largestRecent = 0
        while !stopped.load(ordering: .relaxed) && !stop.raised {
            var batch: [FetchedMessage]
            do {
                batch = try subscription.fetch(batch: Self.fetchCount(largestRecent: largestRecent), timeoutMs: 250, maxBytes: Self.fetchBytesMax)
            } catch {
                if stopped.load(ordering: .relaxed) || stop.raised { return }
                if consumerIsGone(shard: shard) {
                    queue.async { [weak self] in
                        guard let self, !stop.raised else { return }  // `consumerLost` does nothing unless the core runs
                        self.withCore("making the consumer of shard \(shard) again") { $0.consumerLost(shard: shard) }
                    }
                    return
                }
                log.warning("fetch shard \(shard): \(error)")
                Thread.sleep(forTimeInterval: 0.5)
                continue
            }
            guard !batch.isEmpty else { continue }
            batch = ApplyChunks.applyOrder(batch.map(\.streamSequence)).map { batch[$0] }
            let sizes = batch.map(\.payload.count)
            largestRecent = max(largestRecent / 2, sizes.max() ?? 0)
            // In chunks, each its own transaction: hints (and the node's other work) wait for one chunk at most,
            // not for a whole batch of bulk messages. Chunks of the node's own messages only (a lookup each) go on in
            // the same turn: one turn per chunk, between an import's stamps and publishes, consumed about 250 of its
            // own messages a second while it sent 1,200, and it fell behind its stream's start (`max_entries` 1024).
            let chunks = ApplyChunks.ranges(sizes)
            let fetched = batch
            var index = 0
            while index < chunks.count {
                let first = index
                let done = DispatchSemaphore(value: 0)
                let reached = Mutex((next: first + 1, appliedAll: true))
                queue.async { [weak self] in
                    defer { done.signal() }
                    guard let self, self.core != nil, !stop.raised else { return }  // a replaced consumer's batch
                    self.applyPendingHints()
                    var current = first
                    while true {
                        let messages = Array(fetched[chunks[current]])
                        for m in messages { self.queueOnly.value.delivered[shard, default: [:]][m.streamSequence] = m }
                        self.queueOnly.value.progress.delivered(shard: shard, through: messages.last!.streamSequence, nowMs: WallClock.nowMs)
                        let echoesBefore = self.core?.echoesConsumedCount ?? 0
                        let started = ContinuousClock.now
                        self.withCore("applying shard \(shard)") {
                            try $0.messagesArrived(shard: shard, messages.map { IncomingMessage(sequence: $0.streamSequence, payload: $0.payload) })
                        }
                        self.metrics.applyBatchSeconds.record(ContinuousClock.now - started)
                        let applied = (self.core?.checkpoint(shard) ?? 0) >= messages.last!.streamSequence
                        let onlyEchoes = (self.core?.echoesConsumedCount ?? 0) - echoesBefore == messages.count
                        current += 1
                        reached.withLock { $0 = (current, applied) }
                        guard applied, onlyEchoes, current < chunks.count, !stop.raised else { break }
                    }
                }
                done.wait()
                let (next, appliedAll) = reached.withLock { $0 }
                if next < chunks.count, !appliedAll {
                    // Held back (a schema, a gap, a failed transaction): the core answered its chunk; the rest is
                    // asked for again after the same delay the core gives what it holds back.
                    for m in batch[chunks[next].lowerBound...] { try? m.nak(delayMs: nodeConfig.retryDelayMs) }
                    break
                }
                index = next
            }
        }
    }
}

extension LiveNode {
    /// At most this many bytes of messages per fetch: a node busy with its own bulk load held 256 of its echoed bulk
    /// messages per shard while it caught up, 15 MB at 4 shards (heaptrack, `harmonybench live --rows 1000000`), and
    /// went past the 64 MiB budget; 1 MiB is still about 80 bulk messages a fetch.
    public static let fetchBytesMax = 1 << 20

    /// How many messages to ask for: as many as fit `fetchBytesMax` at the largest size seen lately (halved each
    /// fetch), at most 256, so a request ends by its count rather than by running out of bytes. nats-server (2.9 and
    /// later) drops a redelivery it had taken for a request that ran out of bytes, and sends it again only after the
    /// ack wait: in an instrumented million-row import, node 1's message 51, sent back 14 times while it stamped, then
    /// stayed away 9.8 s, until its consumer was recreated.
    static func fetchCount(largestRecent: Int) -> Int {
        min(256, max(1, fetchBytesMax / (largestRecent + fetchOverheadBytes)))
    }

    /// What the server counts against `max_bytes` besides a payload: subject, ack reply subject, headers.
    static let fetchOverheadBytes = 256

    /// True only when the server answers that the shard's consumer does not exist (not when it cannot be asked).
    func consumerIsGone(shard: Int) -> Bool {
        do {
            return try jetStream?.consumerInfo(stream: router.streamName(shard: shard), durable: durableName(shard: shard)) == nil
        } catch {
            return false
        }
    }
}

/// Raised once to stop one fetch thread (its consumer was replaced); read from that thread.
final class FetchStop: Sendable {
    private let flag = Atomic<Bool>(false)
    var raised: Bool { flag.load(ordering: .relaxed) }
    func raise() { flag.store(true, ordering: .relaxed) }
}
