import Foundation
import HarmonyCodec
import HarmonyCore
import Prometheus

/// What a running node measures, served as Prometheus text at `/metrics` through swift-prometheus's registry
/// (swift-metrics' types). Counters come from the core's events (on the node's queue); gauges are set from the
/// core when scraped; histograms time each apply batch and the lag of every change applied from another node.
final class NodeMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    let nodeID: Int64

    enum Count: Int, CaseIterable {
        case published, publishFailures, appliedWon, appliedLost, appliedEcho, duplicates, parked, schemaPauses, gaps
        case refused, discarded, schemaChanges, schemaChangeFailures, applyBatchFailures, restores, restoreFailures, snapshotsTaken, snapshotFailures, coreRestarts
        case holeRepairs, repairRequests, hintsApplied, stampFailures, echoesConsumed, droppedColumnValues

        /// Name (after `harmonylite_`), label, help.
        var definition: (name: String, label: (String, String)?, help: String) {
            switch self {
            case .published: return ("published_changes_total", nil, "Local changes the log acknowledged.")
            case .publishFailures: return ("publish_failures_total", nil, "Publishes refused or timed out, and acknowledged changes not marked (all retried).")
            case .appliedWon, .appliedLost, .appliedEcho:
                let result = self == .appliedWon ? "won" : self == .appliedLost ? "lost" : "echo"
                return ("applied_changes_total", ("result", result),
                        "Changes received, by outcome: won or lost last-writer-wins against another node's write, or echo (this node's own change coming back).")
            case .duplicates: return ("duplicate_messages_total", nil, "Messages delivered again and skipped.")
            case .parked: return ("parked_messages_total", nil, "Messages that could not be applied, kept in __harmonylite___parked.")
            case .schemaPauses: return ("schema_pauses_total", nil, "Times a stream paused on a schema this node does not have yet.")
            case .gaps: return ("gaps_total", nil, "Deliveries that skipped ahead of the checkpoint (held back).")
            case .discarded: return ("discarded_changes_total", nil, "Changes to tables dropped on this node, discarded.")
            case .schemaChanges: return ("schema_changes_applied_total", nil, "Other nodes' DDL applied here.")
            case .schemaChangeFailures: return ("schema_change_failures_total", nil, "Other nodes' DDL SQLite refused here (the object now differs from the cluster's).")
            case .refused: return ("refused_changes_total", nil, "Local changes never published: above max_row_bytes (parked), or with NULL in their primary key.")
            case .applyBatchFailures: return ("apply_batch_failures_total", nil, "Apply transactions that failed (busy, disk full, I/O) and were retried.")
            case .restores: return ("restores_total", nil, "Snapshots restored.")
            case .restoreFailures: return ("restore_failures_total", nil, "Snapshot restores refused or unavailable (retried).")
            case .snapshotsTaken: return ("snapshots_taken_total", nil, "Snapshots this node took and stored.")
            case .snapshotFailures: return ("snapshot_failures_total", nil, "Snapshots taken but not stored, or a store that could not be asked.")
            case .coreRestarts: return ("core_restarts_total", nil, "Times the replication core threw and was restarted from its checkpoints.")
            case .holeRepairs: return ("hole_repairs_total", nil, "Times this node skipped a hole in the log no snapshot could fill, and sent all its rows again.")
            case .repairRequests: return ("repair_requests_total", nil, "Other nodes' hole repairs this node answered by sending all its rows again.")
            case .stampFailures: return ("stamp_failures_total", nil, "Stamps of queued local writes that failed (busy, disk full, I/O) and were retried after a pause.")
            case .echoesConsumed: return ("echo_messages_consumed_total", nil, "This node's own messages back from the log, consumed without applying them: the database already holds what they carry.")
            case .hintsApplied: return ("hints_applied_total", nil, "Small messages applied ahead of a backlog on their stream (their in-order copies then count as lost).")
            case .droppedColumnValues: return ("dropped_column_values_total", nil, "Rows whose values in a column went with it when another node's definition of the table won without that column.")
            }
        }
    }

    private let counters: [Prometheus.Counter]
    let applyBatchSeconds: DurationHistogram
    let replicationLagSeconds: ValueHistogram
    private let checkpoint: [Int: Gauge]
    private let schemaPaused: [Int: Gauge]
    private let waitingForSnapshot: Gauge
    private let pendingChanges: Gauge
    private let parkedMessages: Gauge
    private let divergedSchemaObjects: Gauge
    private let bulkImportQueued: Gauge

    static func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "harmonylite", metricName: name, unitName: "", helpText: help)
    }

    init(nodeID: Int64 = 0, shards: [Int] = [1]) {
        self.nodeID = nodeID
        let registry = self.registry
        counters = Count.allCases.map { c in
            let d = c.definition
            return registry.makeCounter(descriptor: Self.descriptor(d.name, d.help), labels: d.label.map { [$0] } ?? [])
        }
        applyBatchSeconds = registry.makeDurationHistogram(
            descriptor: Self.descriptor("apply_batch_seconds", "Time to apply one delivered batch in its transaction."),
            buckets: [1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000].map { Duration.milliseconds($0) })
        replicationLagSeconds = registry.makeValueHistogram(
            descriptor: Self.descriptor("replication_lag_seconds", "From a change's timestamp on its node to its apply here (clocks' skew included)."),
            buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300])
        checkpoint = Dictionary(uniqueKeysWithValues: shards.map { shard in
            (shard, registry.makeGauge(descriptor: Self.descriptor("checkpoint", "Last stream sequence applied, per shard."), labels: [("shard", "\(shard)")]))
        })
        schemaPaused = Dictionary(uniqueKeysWithValues: shards.map { shard in
            (shard, registry.makeGauge(descriptor: Self.descriptor("schema_paused", "1 while the shard's stream is paused on a schema this node does not have yet."),
                                       labels: [("shard", "\(shard)")]))
        })
        waitingForSnapshot = registry.makeGauge(descriptor: Self.descriptor("waiting_for_snapshot", "1 while the node is behind the log's start and waits for a snapshot."))
        pendingChanges = registry.makeGauge(descriptor: Self.descriptor("pending_changes", "Local changes not yet acknowledged by the log."))
        parkedMessages = registry.makeGauge(descriptor: Self.descriptor("parked_messages", "Messages waiting in __harmonylite___parked (harmonylite -parked lists them)."))
        divergedSchemaObjects = registry.makeGauge(descriptor: Self.descriptor("schema_objects_diverged", "Schema objects whose replicated DDL SQLite refused on this node."))
        bulkImportQueued = registry.makeGauge(descriptor: Self.descriptor(
            "bulk_import_queued", "Local writes of a bulk import still to be stamped while changes from other nodes wait for them (0: none wait)."))
    }

    func add(_ count: Count, _ amount: Int = 1) {
        counters[count.rawValue].increment(by: Int64(amount))
    }

    /// Counts one core event; `nowMs` (wall clock) measures the lag of changes applied from other nodes.
    func record(_ event: ReplicationEvent, nowMs: Int64 = 0) {
        switch event {
        case .published(let count): add(.published, count)
        case .publishFailed, .markPublishedFailed: add(.publishFailures)
        case .applied(_, _, _, let version, let won):
            if version.node == nodeID {
                add(.appliedEcho)  // our own change back from the stream: not a conflict
            } else {
                add(won ? .appliedWon : .appliedLost)
                if nowMs > 0 { replicationLagSeconds.record(Double(max(0, nowMs - version.physicalMs)) / 1000) }
            }
        case .duplicate: add(.duplicates)
        case .echoesConsumed(_, let messages): add(.echoesConsumed, messages)
        case .hintApplied(_, _, _, let won):
            add(.hintsApplied)
            for version in won where version.node != nodeID && nowMs > 0 {
                replicationLagSeconds.record(Double(max(0, nowMs - version.physicalMs)) / 1000)
            }
        case .parked: add(.parked)
        case .schemaPaused: add(.schemaPauses)
        case .gap: add(.gaps)
        case .changeRefused: add(.refused)
        case .nullKeyNotReplicated(_, _, let rows, _): add(.refused, rows)
        case .discarded: add(.discarded)
        case .schemaChangeApplied: add(.schemaChanges)
        case .schemaChangeFailed: add(.schemaChangeFailures)
        case .applyBatchFailed: add(.applyBatchFailures)
        case .stampFailed: add(.stampFailures)
        case .restored: add(.restores)
        case .holeRepaired, .streamStartedOver: add(.holeRepairs)
        case .repairRequested: add(.repairRequests)
        case .restoreFailed: add(.restoreFailures)
        case .snapshotTaken: add(.snapshotsTaken)
        case .snapshotFailed: add(.snapshotFailures)
        case .definitionDroppedValues(_, _, let rows): add(.droppedColumnValues, Int(rows))
        default: break
        }
    }

    /// The exposition text, with the gauges set from `r` (while the core is down, gauges keep their last values).
    func render(_ r: NodeReadings) -> String {
        if r.running {
            for (shard, gauge) in checkpoint { gauge.set(Double(r.checkpoints[shard] ?? 0)) }
            for (shard, gauge) in schemaPaused { gauge.set(r.pausedShards.contains(shard) ? 1.0 : 0.0) }
            waitingForSnapshot.set(r.restoreNeeded ? 1.0 : 0.0)
            pendingChanges.set(Double(r.pendingChanges))
            parkedMessages.set(Double(r.parkedMessages))
            divergedSchemaObjects.set(Double(r.divergedSchemaObjects.count))
            bulkImportQueued.set(Double(r.bulkImportQueued ?? 0))
        }
        return registry.emitToString()
    }

    /// Every family name this node serves, for docs and tests.
    static var familyNames: [String] {
        Set(Count.allCases.map { "harmonylite_" + $0.definition.name }).sorted()
            + ["harmonylite_apply_batch_seconds", "harmonylite_replication_lag_seconds", "harmonylite_checkpoint",
               "harmonylite_schema_paused", "harmonylite_waiting_for_snapshot", "harmonylite_pending_changes", "harmonylite_parked_messages",
               "harmonylite_schema_objects_diverged", "harmonylite_bulk_import_queued"]
    }
}
