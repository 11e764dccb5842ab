import Dispatch
import Foundation
import HarmonyCore
import HarmonyNATS
import Synchronization

/// Hints: once JetStream stores a small message of this node's, it is also published on plain NATS, so a node
/// that is behind on that stream applies it at once (`ReplicationNode.hintArrived`) instead of after the backlog.
/// Best effort both ways: a hint lost, late or refused changes nothing, its in-order copy still arrives.
extension LiveNode {
    public static let hintSubjectPrefix = "harmonylite.hints"

    /// A hint on the wire: stream sequence and origin node (8 bytes each, big-endian), then the message as stored.
    struct Hint: Equatable, Sendable {
        var shard: Int
        var sequence: UInt64
        var origin: Int64
        var payload: [UInt8]

        func encoded() -> [UInt8] {
            var bytes: [UInt8] = []
            bytes.reserveCapacity(16 + payload.count)
            for v in [sequence, UInt64(bitPattern: origin)] { for i in (0..<8).reversed() { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
            return bytes + payload
        }

        /// Nil for anything that is not a well-formed hint of one of `shards` (a stray or hostile publish).
        static func decode(subject: String, _ bytes: [UInt8], shards: ClosedRange<Int>) -> Hint? {
            guard subject.hasPrefix(LiveNode.hintSubjectPrefix + "."), let shard = Int(subject.dropFirst(LiveNode.hintSubjectPrefix.count + 1)),
                  shards.contains(shard), bytes.count > 16 else { return nil }
            func word(_ at: Int) -> UInt64 { bytes[at..<at + 8].reduce(0) { $0 << 8 | UInt64($1) } }
            let sequence = word(0)
            guard sequence > 0 else { return nil }
            return Hint(shard: shard, sequence: sequence, origin: Int64(bitPattern: word(8)), payload: Array(bytes[16...]))
        }
    }

    /// At start, when hints are on and this node applies others' changes.
    func subscribeToHints(_ connection: NATSConnection) throws {
        guard nodeConfig.hints, nodeConfig.replicate else { return }
        let shards = router.shards
        let own = nodeConfig.nodeID
        hintSubscription = try connection.subscribe(subject: Self.hintSubjectPrefix + ".*") { [weak self] message in
            guard let self, let hint = Hint.decode(subject: message.subject, message.payload, shards: shards), hint.origin != own else { return }
            let first = self.pendingHints.withLock { pending -> Bool in
                guard pending.count < Self.pendingHintsMax else { return false }  // far behind anyway: the backlog decides
                pending.append(hint)
                return pending.count == 1
            }
            if first { self.queue.async { self.applyPendingHints() } }
        }
    }

    /// Hints queued at most; more are dropped (their in-order copies still come).
    static let pendingHintsMax = 1_024

    /// Queue only: hands every hint received so far to the core. Also run before each fetched chunk, so a hint
    /// waits for at most the one chunk being applied, not for every shard's queued batch.
    func applyPendingHints() {
        let hints = pendingHints.withLock { pending -> [Hint] in
            defer { pending.removeAll() }
            return pending
        }
        for hint in hints {
            withCore("applying a hint of shard \(hint.shard)") { try $0.hintArrived(shard: hint.shard, sequence: hint.sequence, payload: hint.payload) }
        }
    }

    /// On libnats's ack thread, before the answer queues behind the node's other work: the log stored one of this
    /// node's messages offered as a hint, so it goes to the other nodes now. Not sent is not lost: it is in the log.
    static func sendHint(_ result: PublishResult, offers: HintOffers, connection: NATSConnection, origin: Int64) {
        guard let (shard, payload) = offers.take(result.messageID) else { return }
        guard let sequence = result.sequence, !result.duplicate else { return }  // not stored, or stored (and offered) before
        let hint = Hint(shard: shard, sequence: sequence, origin: origin, payload: payload)
        try? connection.publish(subject: "\(hintSubjectPrefix).\(shard)", payload: hint.encoded())
    }
}

/// Payloads of this node's publishes offered as hints, until JetStream answers (offered on the node's queue,
/// taken on libnats's ack thread).
final class HintOffers: Sendable {
    private let offers = Mutex<[String: (shard: Int, payload: [UInt8])]>([:])
    func offer(_ messageID: String, shard: Int, payload: [UInt8]) { offers.withLock { $0[messageID] = (shard, payload) } }
    func take(_ messageID: String) -> (shard: Int, payload: [UInt8])? { offers.withLock { $0.removeValue(forKey: messageID) } }
    func removeAll() { offers.withLock { $0.removeAll() } }
}

/// Hints received and not yet handed to the core (written on a libnats thread, read on the node's queue).
final class PendingHints: Sendable {
    private let hints = Mutex<[LiveNode.Hint]>([])
    func withLock<R>(_ body: (inout [LiveNode.Hint]) -> R) -> R { hints.withLock { body(&$0) } }
}
