import HarmonyCore

/// A simulated JetStream server: one ordered stream per shard, a message-id duplicate window,
/// `max_entries` retention, and one pull consumer per (node, shard) with ack wait, nak delay and redelivery.
/// It keeps state only; the `Simulation` moves messages over the simulated network.
final class SimJetStream {
    struct Stored {
        var sequence: UInt64
        var messageID: String
        var payload: [UInt8]
    }

    struct Stream {
        var messages: [Stored] = []  // ascending sequences, oldest first
        var firstSequence: UInt64 = 1
        var lastSequence: UInt64 = 0
    }

    struct ConsumerKey: Hashable, Comparable {
        var node: Int
        var shard: Int
        static func < (a: ConsumerKey, b: ConsumerKey) -> Bool { (a.node, a.shard) < (b.node, b.shard) }
    }

    struct Consumer {
        var cursor: UInt64
        /// Delivered, not yet acked: sequence -> ack deadline.
        var pending: [UInt64: Int64] = [:]
        var pausedUntilMs: Int64 = 0
    }

    let duplicateWindowMs: Int64
    /// Oldest messages are dropped beyond this many per stream (0 = unlimited).
    let maxEntries: Int
    let ackWaitMs: Int64
    let deliverBatchMax: Int
    private(set) var streams: [Int: Stream] = [:]
    private var recentIDs: [String: Int64] = [:]
    private(set) var consumers: [ConsumerKey: Consumer] = [:]
    private(set) var duplicatesDropped = 0
    /// Every message ever stored, including those retention dropped: what the checkers count as landed.
    private(set) var archive: [Int: [Stored]] = [:]

    init(shards: Int, duplicateWindowMs: Int64, maxEntries: Int, ackWaitMs: Int64, deliverBatchMax: Int = 64) {
        self.duplicateWindowMs = duplicateWindowMs
        self.maxEntries = maxEntries
        self.ackWaitMs = ackWaitMs
        self.deliverBatchMax = deliverBatchMax
        for shard in 1...shards { streams[shard] = Stream() }
    }

    /// Stores a message unless its id was seen inside the duplicate window. Returns its sequence, or nil for a duplicate.
    func store(shard: Int, messageID: String, payload: [UInt8], nowMs: Int64) -> UInt64? {
        if let seen = recentIDs[messageID], nowMs - seen < duplicateWindowMs {
            duplicatesDropped += 1
            return nil
        }
        recentIDs[messageID] = nowMs
        var s = streams[shard]!
        s.lastSequence += 1
        s.messages.append(Stored(sequence: s.lastSequence, messageID: messageID, payload: payload))
        archive[shard, default: []].append(s.messages[s.messages.count - 1])
        if maxEntries > 0 && s.messages.count > maxEntries {
            s.messages.removeFirst(s.messages.count - maxEntries)
        }
        s.firstSequence = s.messages.first?.sequence ?? s.lastSequence + 1
        streams[shard] = s
        return s.lastSequence
    }

    /// Forgets ids older than the window, so memory stays bounded on long runs.
    func expireIDs(nowMs: Int64) {
        recentIDs = recentIDs.filter { nowMs - $0.value < duplicateWindowMs }
    }

    func state(shard: Int) -> StreamState {
        let s = streams[shard]!
        return StreamState(firstSequence: s.firstSequence, lastSequence: s.lastSequence)
    }

    func subscribe(node: Int, shard: Int, fromSequence: UInt64) {
        consumers[ConsumerKey(node: node, shard: shard)] = Consumer(cursor: max(fromSequence, 1))
    }

    func unsubscribeAll(node: Int) {
        for key in consumers.keys.sorted() where key.node == node { consumers[key] = nil }
    }

    /// The next batch for a consumer, marked pending until `nowMs + ackWaitMs`; empty when paused or caught up.
    func takeBatch(node: Int, shard: Int, nowMs: Int64) -> [IncomingMessage] {
        let key = ConsumerKey(node: node, shard: shard)
        guard var c = consumers[key], nowMs >= c.pausedUntilMs, let s = streams[shard] else { return [] }
        // Sequences are contiguous from firstSequence, so the cursor indexes the array directly.
        var out: [IncomingMessage] = []
        var index = Int(max(c.cursor, s.firstSequence) - s.firstSequence)
        while index < s.messages.count && out.count < deliverBatchMax {
            let m = s.messages[index]
            if c.pending[m.sequence] == nil { out.append(IncomingMessage(sequence: m.sequence, payload: m.payload)) }
            index += 1
        }
        for m in out { c.pending[m.sequence] = nowMs + ackWaitMs }
        if let last = out.last { c.cursor = last.sequence + 1 }
        consumers[key] = c
        return out
    }

    func hasWork(node: Int, shard: Int) -> Bool {
        guard let c = consumers[ConsumerKey(node: node, shard: shard)], let s = streams[shard] else { return false }
        return max(c.cursor, s.firstSequence) <= s.lastSequence
    }

    func pausedUntil(node: Int, shard: Int) -> Int64 {
        consumers[ConsumerKey(node: node, shard: shard)]?.pausedUntilMs ?? 0
    }

    func ack(node: Int, shard: Int, sequence: UInt64) {
        consumers[ConsumerKey(node: node, shard: shard)]?.pending[sequence] = nil
    }

    /// Redeliver this message (and what follows) after `delayMs`.
    func nak(node: Int, shard: Int, sequence: UInt64, delayMs: Int64, nowMs: Int64) {
        let key = ConsumerKey(node: node, shard: shard)
        guard var c = consumers[key] else { return }
        c.pending = c.pending.filter { $0.key < sequence }
        c.cursor = min(c.cursor, sequence)
        c.pausedUntilMs = max(c.pausedUntilMs, nowMs + delayMs)
        consumers[key] = c
    }

    /// Messages whose ack wait expired go back to the cursor. Returns whether anything expired.
    func expireAcks(node: Int, shard: Int, nowMs: Int64) -> Bool {
        let key = ConsumerKey(node: node, shard: shard)
        guard var c = consumers[key] else { return false }
        let expired = c.pending.filter { $0.value <= nowMs }.keys
        guard let lowest = expired.min() else { return false }
        c.pending = c.pending.filter { $0.key < lowest }
        c.cursor = min(c.cursor, lowest)
        consumers[key] = c
        return true
    }

    func nextAckDeadline(node: Int, shard: Int) -> Int64? {
        consumers[ConsumerKey(node: node, shard: shard)]?.pending.values.min()
    }

    /// What the stream still holds (after retention).
    func allMessages(shard: Int) -> [IncomingMessage] {
        (streams[shard]?.messages ?? []).map { IncomingMessage(sequence: $0.sequence, payload: $0.payload) }
    }
}
