import Foundation
import HarmonyCore
import HarmonyNATS

/// One shard's replication as `GET /replications` shows it: the node's checkpoint against the stream and the
/// durable consumer the server keeps for it.
public struct ReplicationStatus: Sendable {
    /// The durable consumer's name, which `/replications/{name}` takes.
    public var name: String
    public var shard: Int
    public var stream: String
    public var subject: String
    /// The last stream sequence applied here (stored in the database with the rows it applied).
    public var checkpoint: UInt64
    public var streamLastSequence: UInt64?
    /// Messages in the stream after the checkpoint.
    public var lagMessages: UInt64?
    /// nil when the server has no such consumer (deleted; the node makes it again from its checkpoint).
    public var consumer: ConsumerState?
    /// replicating, caught_up, paused (waiting for a schema), stalled, restore_needed or disabled.
    public var state: String
    public var detail: String?
    public var secondsSinceProgress: Double?
}

extension LiveNode {
    /// The durable consumer name of a shard.
    func durableName(shard: Int) -> String { "harmonylite-node-\(config.node.nodeID)-shard-\(shard)" }

    /// Each shard's replication status (only the one whose consumer is `name`, when given). Its state is the
    /// one `/health` gives the shard, judged with the stream's last sequence asked of the server just now; the
    /// server is also asked about each consumer, so call this off the node's queue. The node's side is the look
    /// `/health` takes (the last one, while the core is busy for long).
    public func replications(named name: String? = nil) -> [ReplicationStatus] {
        let shards = router.shards.filter { name == nil || durableName(shard: $0) == name }
        let stallMs = config.health.stallSeconds * 1000
        let (look, busyMs) = recentCoreLook(waitMs: Self.healthWaitMs)
        var (readings, watch) = look
        for shard in shards {
            if let live = try? jetStream?.streamState(name: router.streamName(shard: shard)) { readings.streamLasts[shard] = live.lastSequence }
        }
        let nowMs = WallClock.nowMs
        let health = HealthReport.evaluate(readings, watch: watch, nowMs: nowMs, stallMs: config.health.stallSeconds * 1000)
        return shards.map { shard in
            let stream = router.streamName(shard: shard)
            let checkpoint = readings.checkpoints[shard] ?? 0
            let last = readings.streamLasts[shard]
            let consumer = try? jetStream?.consumerInfo(stream: stream, durable: durableName(shard: shard))
            var (state, detail) = health.shards.first { $0.shard == shard }.map { Self.replicationState($0) } ?? ("replicating", nil)
            func add(_ sentence: String) { detail = (detail.map { $0 + "; " } ?? "") + sentence }
            if consumer == nil, readings.replicate {
                add("the server has no consumer \(durableName(shard: shard)); the node makes it again from its checkpoint")
            }
            if let busy = Self.busySentence(busyMs: busyMs, stallMs: stallMs) {
                state = "stalled"
                add(busy + "; the checkpoint is from before it")
            }
            return ReplicationStatus(name: durableName(shard: shard), shard: shard, stream: stream,
                                     subject: "\(Self.subjectPrefix).\(shard)", checkpoint: checkpoint, streamLastSequence: last,
                                     lagMessages: last.map { $0 > checkpoint ? $0 - checkpoint : 0 }, consumer: consumer ?? nil,
                                     state: state, detail: detail,
                                     secondsSinceProgress: watch.lastProgressMs[shard].map { Double(nowMs - $0) / 1000 })
        }
    }

    /// `/health`'s word for a shard in the API's vocabulary, with a sentence where there is more to say.
    static func replicationState(_ s: HealthReport.ShardState) -> (String, String?) {
        switch s.state {
        case "not replicating": return ("disabled", "replicate = false: this node does not apply other nodes' changes")
        case "waiting for a snapshot": return ("restore_needed", "behind the stream's first message; waiting for a snapshot")
        case "paused on schema": return ("paused", "waiting for a table definition this node does not have yet")
        case "stalled": return ("stalled", "no message applied for \(s.seconds) s while the stream has more")
        case "ok" where s.streamLast.map { $0 <= s.checkpoint } == true: return ("caught_up", nil)
        default: return ("replicating", nil)
        }
    }

    /// `DELETE /replications/{name}`: removes the server's consumer. The node then makes it again from its own
    /// checkpoint, so nothing is skipped or applied twice; the server-side state (redeliveries, ack floor) starts
    /// over. Nil for a name that is not one of this node's consumers; otherwise whether the server had it, and the
    /// stream sequence the new consumer starts at.
    public func deleteReplication(name: String) throws -> (existed: Bool, from: UInt64)? {
        guard let shard = router.shards.first(where: { durableName(shard: $0) == name }), let js = jetStream else { return nil }
        let existed = try js.deleteConsumer(stream: router.streamName(shard: shard), durable: name)
        log.info("consumer \(name) deleted by an API request")  // the core says that it makes it again, and from where
        let from = queue.sync { () -> UInt64 in
            let checkpoint = core?.checkpoint(shard) ?? 0
            withCore("making consumer \(name) again") { $0.consumerLost(shard: shard) }
            return checkpoint + 1
        }
        return (existed, from)
    }
}
