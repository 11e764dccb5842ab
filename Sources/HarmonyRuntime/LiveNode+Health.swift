import Dispatch
import Foundation
import HarmonyCore
import HarmonyNATS
import HarmonySQLite
import Logging
import Synchronization

/// `/metrics` and `/health`, served from the node's own state.
extension LiveNode {
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
            let (running, failure) = queue.sync { (core?.isRunning ?? false, queueOnly.value.coreFailure) }
            if !running { return MetricsServer.Response(status: 503, body: (failure ?? "replication core is not running") + "\n") }
            if connection?.isConnected != true { return MetricsServer.Response(status: 503, body: "not connected to NATS\n") }
            return MetricsServer.Response(status: 200, body: "ok\n")
        default:
            return MetricsServer.Response(status: 404, body: "try /metrics or /health\n")
        }
    }
}
