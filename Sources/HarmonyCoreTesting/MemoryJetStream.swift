import Foundation
import HarmonyCore

/// An in-memory JetStream server for the core's tests and for harmonysim: one ordered stream per shard, a
/// message-id duplicate window, `max_entries` retention (or truncation by hand), and one pull consumer per
/// (node, shard) with ack wait, nak delay and redelivery. It keeps state only: the caller moves messages, so
/// time passes only when the caller says (`nowMs` arguments), as in swift-nio's `EmbeddedEventLoop`.
///
/// Not thread-safe, and checked: every call must come from the thread that created it.
public final class MemoryJetStream {
    public struct Stored: Sendable, Hashable {
        public var sequence: UInt64
        public var messageID: String
        public var payload: [UInt8]
    }

    struct Stream {
        var messages: [Stored] = []  // ascending, contiguous sequences, oldest first
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
        /// With `scatterRedeliveries`: nak'd messages -> when each is due again.
        var redeliver: [UInt64: Int64] = [:]
    }

    public let duplicateWindowMs: Int64
    /// Oldest messages are dropped beyond this many per stream (0 = unlimited).
    public let maxEntries: Int
    public let ackWaitMs: Int64
    public let deliverBatchMax: Int
    /// Payload bytes per batch at most (always at least one message), as a fetch with `max_bytes` returns.
    public let deliverBytesMax: Int
    /// How a nak'd message comes again. nil: the consumer rewinds to it after the delay, and every later one comes
    /// again behind it, in order. Set: nats-server's way, each nak'd message again on its own once due, while new
    /// ones keep coming; this orders those due at once (a seeded shuffle: the server's order is no promise).
    public var scatterRedeliveries: ((inout [UInt64]) -> Void)?
    /// With `scatterRedeliveries`: whether a redelivery is dropped, to come again only after the ack wait
    /// (nats-server drops one that finds no fetch waiting for it).
    public var dropRedelivery: (() -> Bool)?
    private var streams: [Int: Stream] = [:]
    private var recentIDs: [String: Int64] = [:]
    private var consumers: [ConsumerKey: Consumer] = [:]
    public private(set) var duplicatesDropped = 0
    /// Every message ever stored, including those retention dropped: what the checkers count as landed.
    public private(set) var archive: [Int: [Stored]] = [:]
    private let owner = pthread_self()

    /// Streams are created on first use, so `shards` only has to cover what callers name.
    public init(duplicateWindowMs: Int64 = 120_000, maxEntries: Int = 0, ackWaitMs: Int64 = 30_000, deliverBatchMax: Int = 64, deliverBytesMax: Int = .max) {
        precondition(duplicateWindowMs >= 0 && maxEntries >= 0 && ackWaitMs > 0 && deliverBatchMax > 0 && deliverBytesMax > 0, "invalid MemoryJetStream limits")
        self.duplicateWindowMs = duplicateWindowMs
        self.maxEntries = maxEntries
        self.ackWaitMs = ackWaitMs
        self.deliverBatchMax = deliverBatchMax
        self.deliverBytesMax = deliverBytesMax
    }

    @inline(__always) private func checkThread() {
        precondition(pthread_equal(owner, pthread_self()) != 0, "MemoryJetStream is not thread-safe: used from a second thread")
    }

    /// Stores a message unless its id was seen inside the duplicate window. Returns its sequence, or nil for a duplicate.
    @discardableResult
    public func store(shard: Int, messageID: String, payload: [UInt8], nowMs: Int64) -> UInt64? {
        checkThread()
        if let seen = recentIDs[messageID], nowMs - seen < duplicateWindowMs {
            duplicatesDropped += 1
            return nil
        }
        recentIDs[messageID] = nowMs
        return append(shard: shard, messageID: messageID, payload: payload)
    }

    /// Stores bytes as they are, without the duplicate check: what a hostile or buggy publisher can do.
    @discardableResult
    public func storeRaw(shard: Int, payload: [UInt8]) -> UInt64 {
        checkThread()
        return append(shard: shard, messageID: "raw-\(state(shard: shard).lastSequence + 1)", payload: payload)
    }

    private func append(shard: Int, messageID: String, payload: [UInt8]) -> UInt64 {
        var s = streams[shard, default: Stream()]
        s.lastSequence += 1
        s.messages.append(Stored(sequence: s.lastSequence, messageID: messageID, payload: payload))
        archive[shard, default: []].append(s.messages[s.messages.count - 1])
        if maxEntries > 0 && s.messages.count > maxEntries {
            s.messages.removeFirst(s.messages.count - maxEntries)
        }
        s.firstSequence = s.messages.first?.sequence ?? s.lastSequence + 1
        precondition(s.messages.isEmpty || s.messages.last!.sequence - s.messages.first!.sequence + 1 == UInt64(s.messages.count),
                     "stream \(shard) lost its contiguity")
        streams[shard] = s
        return s.lastSequence
    }

    /// The stream deleted and made again (a wiped NATS store): empty, its sequences starting over, no ids remembered.
    public func deleteStream(shard: Int) {
        checkThread()
        streams[shard] = Stream()
        recentIDs.removeAll()
    }

    /// Retention by hand: the stream forgets every message before `first` (JetStream's `max_msgs` or a purge).
    public func truncate(shard: Int, before first: UInt64) {
        checkThread()
        var s = streams[shard, default: Stream()]
        s.messages.removeAll { $0.sequence < first }
        s.firstSequence = max(s.firstSequence, min(first, s.lastSequence + 1))
        streams[shard] = s
    }

    /// Forgets ids older than the window, so memory stays bounded on long runs.
    public func expireIDs(nowMs: Int64) {
        checkThread()
        recentIDs = recentIDs.filter { nowMs - $0.value < duplicateWindowMs }
    }

    public func state(shard: Int) -> StreamState {
        let s = streams[shard] ?? Stream()
        return StreamState(firstSequence: s.firstSequence, lastSequence: s.lastSequence)
    }

    /// What the stream still holds from `sequence` on.
    public func messages(shard: Int, from sequence: UInt64 = 1) -> [IncomingMessage] {
        (streams[shard]?.messages ?? []).filter { $0.sequence >= sequence }.map { IncomingMessage(sequence: $0.sequence, payload: $0.payload) }
    }

    public func subscribe(node: Int, shard: Int, fromSequence: UInt64) {
        checkThread()
        consumers[ConsumerKey(node: node, shard: shard)] = Consumer(cursor: max(fromSequence, 1))
    }

    public func unsubscribeAll(node: Int) {
        checkThread()
        for key in consumers.keys.sorted() where key.node == node { consumers[key] = nil }
    }

    /// The next batch for a consumer, marked pending until `nowMs + ackWaitMs`; empty when paused or caught up.
    public func takeBatch(node: Int, shard: Int, nowMs: Int64) -> [IncomingMessage] {
        let key = ConsumerKey(node: node, shard: shard)
        checkThread()
        guard var c = consumers[key], nowMs >= c.pausedUntilMs, let s = streams[shard] else { return [] }
        var out: [IncomingMessage] = []
        var bytes = 0
        // Redeliveries due go first, in the server's order; one the stream no longer holds is gone for good.
        if let scatter = scatterRedeliveries {
            var due = c.redeliver.filter { $0.value <= nowMs }.map(\.key).sorted()
            scatter(&due)
            for sequence in due where out.count < deliverBatchMax {
                guard sequence >= s.firstSequence else { c.redeliver[sequence] = nil; continue }
                let m = s.messages[Int(sequence - s.firstSequence)]
                if !out.isEmpty && bytes + m.payload.count > deliverBytesMax { break }
                c.redeliver[sequence] = nil
                out.append(IncomingMessage(sequence: m.sequence, payload: m.payload))
                bytes += m.payload.count
            }
        }
        // Sequences are contiguous from firstSequence, so the cursor indexes the array directly.
        var index = Int(max(c.cursor, s.firstSequence) - s.firstSequence)
        var lastFromCursor: UInt64?
        while index < s.messages.count && out.count < deliverBatchMax {
            let m = s.messages[index]
            if c.pending[m.sequence] == nil && c.redeliver[m.sequence] == nil {
                if !out.isEmpty && bytes + m.payload.count > deliverBytesMax { break }
                out.append(IncomingMessage(sequence: m.sequence, payload: m.payload))
                bytes += m.payload.count
                lastFromCursor = m.sequence
            }
            index += 1
        }
        for m in out { c.pending[m.sequence] = nowMs + ackWaitMs }
        if let lastFromCursor { c.cursor = lastFromCursor + 1 }
        consumers[key] = c
        return out
    }

    public func hasWork(node: Int, shard: Int) -> Bool {
        guard let c = consumers[ConsumerKey(node: node, shard: shard)], let s = streams[shard] else { return false }
        return max(c.cursor, s.firstSequence) <= s.lastSequence || !c.redeliver.isEmpty
    }

    public func pausedUntil(node: Int, shard: Int) -> Int64 {
        consumers[ConsumerKey(node: node, shard: shard)]?.pausedUntilMs ?? 0
    }

    public func ack(node: Int, shard: Int, sequence: UInt64) {
        checkThread()
        consumers[ConsumerKey(node: node, shard: shard)]?.pending[sequence] = nil
    }

    /// Redeliver this message (and what follows) after `delayMs`.
    public func nak(node: Int, shard: Int, sequence: UInt64, delayMs: Int64, nowMs: Int64) {
        checkThread()
        let key = ConsumerKey(node: node, shard: shard)
        guard var c = consumers[key] else { return }
        if scatterRedeliveries != nil {
            guard c.pending.removeValue(forKey: sequence) != nil else { return }  // not out (acked, or already back)
            if dropRedelivery?() == true {
                c.pending[sequence] = nowMs + ackWaitMs
            } else {
                c.redeliver[sequence] = nowMs + delayMs
            }
            consumers[key] = c
            return
        }
        c.pending = c.pending.filter { $0.key < sequence }
        c.cursor = min(c.cursor, sequence)
        c.pausedUntilMs = max(c.pausedUntilMs, nowMs + delayMs)
        consumers[key] = c
    }

    /// Messages whose ack wait expired go back to the cursor. Returns whether anything expired.
    public func expireAcks(node: Int, shard: Int, nowMs: Int64) -> Bool {
        checkThread()
        let key = ConsumerKey(node: node, shard: shard)
        guard var c = consumers[key] else { return false }
        let expired = c.pending.filter { $0.value <= nowMs }.keys
        guard let lowest = expired.min() else { return false }
        c.pending = c.pending.filter { $0.key < lowest }
        c.redeliver = c.redeliver.filter { $0.key < lowest }  // the cursor brings them again
        c.cursor = min(c.cursor, lowest)
        consumers[key] = c
        return true
    }

    public func nextAckDeadline(node: Int, shard: Int) -> Int64? {
        consumers[ConsumerKey(node: node, shard: shard)]?.pending.values.min()
    }


}
