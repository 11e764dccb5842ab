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

    /// Every shard's replication status; asks the server about each consumer, so call it off the node's queue.
    public func replications() -> [ReplicationStatus] {
        let nowMs = WallClock.nowMs
        let (readings, watch) = queue.sync { (readingsOnQueue(), queueOnly.value.progress) }
        let stallMs = config.health.stallSeconds * 1000
        return router.shards.map { shard in
            let stream = router.streamName(shard: shard)
            let checkpoint = readings.checkpoints[shard] ?? 0
            let last = (try? jetStream?.streamState(name: stream))?.lastSequence ?? readings.streamLasts[shard]
            let consumer = try? jetStream?.consumerInfo(stream: stream, durable: durableName(shard: shard))
            let sinceProgress = watch.lastProgressMs[shard].map { Double(nowMs - $0) / 1000 }
            var state = "replicating", detail: String? = nil
            if !readings.replicate {
                state = "disabled"
                detail = "replicate = false: this node does not apply other nodes' changes"
            } else if readings.restoreNeeded {
                state = "restore_needed"
                detail = "behind the stream's first message; waiting for a snapshot"
            } else if readings.pausedShards.contains(shard) {
                state = "paused"
                detail = "waiting for a table definition this node does not have yet"
            } else if let last, last <= checkpoint {
                state = "caught_up"
            } else if let since = watch.lastProgressMs[shard], nowMs - since >= stallMs {
                state = "stalled"
                detail = "no message applied for \(Int((nowMs - since) / 1000)) s while the stream has more"
            }
            if consumer == nil, readings.replicate {
                detail = (detail.map { $0 + "; " } ?? "") + "the server has no consumer \(durableName(shard: shard)); the node makes it again from its checkpoint"
            }
            return ReplicationStatus(name: durableName(shard: shard), shard: shard, stream: stream,
                                     subject: "\(Self.subjectPrefix).\(shard)", checkpoint: checkpoint, streamLastSequence: last,
                                     lagMessages: last.map { $0 > checkpoint ? $0 - checkpoint : 0 }, consumer: consumer ?? nil,
                                     state: state, detail: detail, secondsSinceProgress: sinceProgress)
        }
    }

    /// `DELETE /replications/{name}`: removes the server's consumer. The node then makes it again from its own
    /// checkpoint, so nothing is skipped or applied twice; the server-side state (redeliveries, ack floor) starts
    /// over. Returns false for a name that is not one of this node's consumers or does not exist.
    public func deleteReplication(name: String) throws -> Bool {
        guard let shard = router.shards.first(where: { durableName(shard: $0) == name }), let js = jetStream else { return false }
        let deleted = try js.deleteConsumer(stream: router.streamName(shard: shard), durable: name)
        log.info("consumer \(name) deleted by an API request; making it again from this node's checkpoint")
        queue.async { [weak self] in
            guard let self, let core = self.core, core.isRunning, self.nodeConfig.replicate else { return }
            self.subscribe(shard: shard, fromSequence: core.checkpoint(shard) + 1)
        }
        return deleted
    }
}
