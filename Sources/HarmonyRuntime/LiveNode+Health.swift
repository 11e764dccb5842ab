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
                                          body: metrics.render(recentCoreLook(waitMs: Self.healthWaitMs).look.readings))
        case "/health":
            let report = healthReport(waitMs: Self.healthWaitMs)
            return MetricsServer.Response(status: report.healthy ? 200 : 503, contentType: "application/json", body: report.json)
        default:
            return MetricsServer.Response(status: 404, body: "try /metrics or /health\n")
        }
    }

    /// How long `/health` waits for the node's queue: a checker (a load balancer, a watchdog) should get its answer
    /// in well under a second, also while the core spends seconds in one call (SQLite's busy handler waiting for an
    /// application's long transaction, up to the busy timeout).
    static let healthWaitMs = 500

    /// The core's state and the progress watch, read in one look on the queue (so an event between two reads cannot
    /// mix them). If the queue does not get to it within `waitMs`, the last look stands in, and the call that holds
    /// the queue is said to be a stall once it has run `stall_seconds`.
    func healthReport(waitMs: Int) -> HealthReport {
        let stallMs = config.health.stallSeconds * 1000
        let (look, busyMs) = recentCoreLook(waitMs: waitMs)
        var report = HealthReport.evaluate(look.readings, watch: look.watch, nowMs: WallClock.nowMs, stallMs: stallMs)
        if let busy = Self.busySentence(busyMs: busyMs, stallMs: stallMs) {
            report.healthy = false
            report.reasons.append(busy + "; this report is from before it")
        }
        if let mismatch = shardCountMismatch.withLock({ $0 }) {
            report.healthy = false
            report.reasons.append(mismatch)
        }
        return report
    }

    /// A look at the core for `/health`, `/metrics` and `GET /replications`: taken on the queue if it gets to it
    /// within `waitMs`, else the last one taken (at start at the latest), with how long the call holding the queue
    /// has run (0 for a fresh look). A checker or a scraper gets its answer in well under a second, also while the
    /// core waits seconds for SQLite's write lock.
    func recentCoreLook(waitMs: Int) -> (look: CoreLook, busyMs: Int64) {
        let look = HealthLook()
        let queued = healthLookQueued.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged
        if queued {
            queue.async { [self] in
                let fresh = coreLookOnQueue()
                look.result.withLock { $0 = fresh }
                // Also when the asker stopped waiting: the next one answers from this look, not from one taken before
                // (a look that came late used to be dropped, so a node held by an application's lock answered from
                // its start for as long as the lock was held).
                lastHealthLook.withLock { $0 = fresh }
                healthLookQueued.store(false, ordering: .relaxed)
                look.done.signal()
            }
        }
        if queued, look.done.wait(timeout: .now() + .milliseconds(waitMs)) == .success, let fresh = look.result.withLock({ $0 }) {
            return (fresh, 0)
        }
        let startedMs = coreCallStartedMs.load(ordering: .relaxed)
        let busyMs = startedMs > 0 ? WallClock.nowMs - startedMs : 0
        // Filled before the servers that ask start (`start`); the queue is the only other source.
        return (lastHealthLook.withLock { $0 } ?? queue.sync { coreLookOnQueue() }, busyMs)
    }

    /// Said once the call holding the core has run `stall_seconds`.
    static func busySentence(busyMs: Int64, stallMs: Int64) -> String? {
        guard busyMs >= stallMs else { return nil }
        return "the replication core has been busy with one task for \(busyMs / 1000) s (waiting for SQLite's write lock, "
            + "held by another connection's long transaction, or applying a large batch)"
    }

    /// Queue only: the core's state and the progress watch, in one look so that an event between two reads cannot
    /// mix them.
    func coreLookOnQueue() -> CoreLook { (readingsOnQueue(), queueOnly.value.progress) }

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

/// One `/health` look at the queue, which may answer after the checker stopped waiting.
final class HealthLook: Sendable {
    let result = Mutex<LiveNode.CoreLook?>(nil)
    let done = DispatchSemaphore(value: 0)
}
