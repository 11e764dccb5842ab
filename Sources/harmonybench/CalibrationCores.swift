import Foundation
import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite

/// Cores on real SQLite files, as the calibration measures them: `node1.db` ... in `directory`, each holding
/// `schema`, with one shard, started, and told that the stream begins empty. They publish into `logs` and keep
/// time by `clocks` (the measurement advances them when it needs the core's timers).
struct CalibrationCores {
    let nodes: [ReplicationNode]
    let logs: [CollectingLog]
    let clocks: [ManualClock]

    /// `configure` adjusts each node's settings before it starts.
    init(_ count: Int, in directory: String, schema: String, configure: (inout NodeConfig) -> Void = { _ in }) throws {
        logs = (1...count).map { _ in CollectingLog() }
        clocks = (1...count).map { _ in ManualClock() }
        var nodes: [ReplicationNode] = []
        for i in 1...count {
            let path = "\(directory)/node\(i).db"
            try SQLiteOpener().open(path: path).execute(schema)
            var config = NodeConfig(nodeID: Int64(i), databasePath: path)
            config.shards = 1
            configure(&config)
            let node = ReplicationNode(config: config, environment: NodeEnvironment(clock: clocks[i - 1], log: logs[i - 1], opener: SQLiteOpener()))
            try node.start()
            node.streamStateArrived(shard: 1, StreamState(firstSequence: 0, lastSequence: 0))
            nodes.append(node)
        }
        self.nodes = nodes
    }

    func stop() { for n in nodes { n.stop() } }
}
