import Dispatch
import Foundation
import HarmonyCore
import HarmonyNATS
import HarmonySQLite
import Logging
import Synchronization

/// `/metrics` and `/health`, served from the node's own state.
extension LiveNode {
    /// `/metrics`: counters plus gauges read from the core on its queue; `/health`: 200 while the node makes
    /// progress, 503 with the reasons (JSON, shard by shard) once it cannot (`HealthReport`).
    public func respond(_ path: String) -> MetricsServer.Response {
        switch path {
        case "/metrics":
            return MetricsServer.Response(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8",
                                          body: metrics.render(queue.sync { readingsOnQueue() }))
        case "/health":
            // The core's state and the progress watch in one look, so an event between two reads cannot mix them.
            let (readings, watch) = queue.sync { (readingsOnQueue(), queueOnly.value.progress) }
            let report = HealthReport.evaluate(readings, watch: watch, nowMs: WallClock.nowMs, stallMs: config.health.stallSeconds * 1000)
            return MetricsServer.Response(status: report.healthy ? 200 : 503, contentType: "application/json", body: report.json)
        default:
            return MetricsServer.Response(status: 404, body: "try /metrics or /health\n")
        }
    }

    /// Queue only: the core's state now.
    func readingsOnQueue() -> NodeReadings {
        let core = self.core
        return NodeReadings(
            running: core?.isRunning ?? false, coreFailure: queueOnly.value.coreFailure,
            natsConnected: connection?.isConnected == true, replicate: nodeConfig.replicate,
            snapshotsEnabled: config.snapshot.enabled, holeRepairAfterMs: nodeConfig.holeRepairAfterMs,
            checkpoints: Dictionary(uniqueKeysWithValues: router.shards.map { ($0, core?.checkpoint($0) ?? 0) }),
            streamLasts: core?.streamStates.mapValues(\.lastSequence) ?? [:],
            pausedShards: Set(core?.pausedShards.keys.map { $0 } ?? []), restoreNeeded: core?.restoreNeeded ?? false,
            pendingChanges: (try? core?.pendingChangeCount()) ?? 0, parkedMessages: (try? core?.parkedCount()) ?? 0,
            divergedSchemaObjects: (try? core?.divergedSchemaObjects()) ?? [],
            schemaObjectsWaitingForTheirTable: (try? core?.schemaObjectsWaitingForTheirTable()) ?? [],
            bulkImportQueued: (try? core?.bulkImportHoldingDeliveries()) ?? nil)
    }
}
