import Foundation
import HarmonyCore

/// What a running node counts, rendered in the Prometheus text format at `/metrics`. Counters come from the
/// core's events (recorded on the node's queue); gauges are read from the core when scraped.
final class NodeMetrics: @unchecked Sendable {
    private let lock = NSLock()
    /// One slot per counter series: `record` runs for every applied change, so no strings or hashing there.
    private var counts = [Double](repeating: 0, count: Counter.allCases.count)

    enum Counter: Int, CaseIterable {
        case published, publishFailures, appliedWon, appliedLost, duplicates, parked, schemaPauses, gaps
        case applyBatchFailures, restores, restoreFailures, snapshotsTaken, snapshotFailures, coreRestarts

        var series: String {
            switch self {
            case .published: return "harmonylite_published_changes_total"
            case .publishFailures: return "harmonylite_publish_failures_total"
            case .appliedWon: return "harmonylite_applied_changes_total{result=\"won\"}"
            case .appliedLost: return "harmonylite_applied_changes_total{result=\"lost\"}"
            case .duplicates: return "harmonylite_duplicate_messages_total"
            case .parked: return "harmonylite_parked_messages_total"
            case .schemaPauses: return "harmonylite_schema_pauses_total"
            case .gaps: return "harmonylite_gaps_total"
            case .applyBatchFailures: return "harmonylite_apply_batch_failures_total"
            case .restores: return "harmonylite_restores_total"
            case .restoreFailures: return "harmonylite_restore_failures_total"
            case .snapshotsTaken: return "harmonylite_snapshots_taken_total"
            case .snapshotFailures: return "harmonylite_snapshot_failures_total"
            case .coreRestarts: return "harmonylite_core_restarts_total"
            }
        }
    }

    struct Family {
        var name: String
        var type: String
        var help: String
    }

    static let families: [Family] = [
        Family(name: "harmonylite_published_changes_total", type: "counter", help: "Local changes the log acknowledged."),
        Family(name: "harmonylite_publish_failures_total", type: "counter", help: "Publishes refused or timed out (retried)."),
        Family(name: "harmonylite_applied_changes_total", type: "counter", help: "Changes received and resolved by last-writer-wins (result: won or lost)."),
        Family(name: "harmonylite_duplicate_messages_total", type: "counter", help: "Messages delivered again and skipped."),
        Family(name: "harmonylite_parked_messages_total", type: "counter", help: "Messages that could not be applied, kept in __harmonylite___parked."),
        Family(name: "harmonylite_schema_pauses_total", type: "counter", help: "Times a stream paused on a schema this node does not have yet."),
        Family(name: "harmonylite_gaps_total", type: "counter", help: "Deliveries that skipped ahead of the checkpoint (held back)."),
        Family(name: "harmonylite_apply_batch_failures_total", type: "counter", help: "Apply transactions that failed (busy, disk full) and were retried."),
        Family(name: "harmonylite_restores_total", type: "counter", help: "Snapshots restored."),
        Family(name: "harmonylite_restore_failures_total", type: "counter", help: "Snapshot restores refused or unavailable (retried)."),
        Family(name: "harmonylite_snapshots_taken_total", type: "counter", help: "Snapshots this node took."),
        Family(name: "harmonylite_snapshot_failures_total", type: "counter", help: "Snapshots taken but not stored, or a store that could not be asked."),
        Family(name: "harmonylite_core_restarts_total", type: "counter", help: "Times the replication core threw and was restarted from its checkpoints."),
        Family(name: "harmonylite_schema_paused", type: "gauge", help: "1 while the shard's stream is paused on a schema this node does not have yet."),
        Family(name: "harmonylite_waiting_for_snapshot", type: "gauge", help: "1 while the node is behind the log's start and waits for a snapshot."),
        Family(name: "harmonylite_checkpoint", type: "gauge", help: "Last stream sequence applied, per shard."),
        Family(name: "harmonylite_pending_changes", type: "gauge", help: "Local changes not yet acknowledged by the log."),
    ]

    func add(_ counter: Counter, _ amount: Double = 1) {
        lock.lock()
        counts[counter.rawValue] += amount
        lock.unlock()
    }

    func record(_ event: ReplicationEvent) {
        switch event {
        case .published(let count): add(.published, Double(count))
        case .publishFailed, .markPublishedFailed: add(.publishFailures)
        case .applied(_, _, _, _, let won): add(won ? .appliedWon : .appliedLost)
        case .duplicate: add(.duplicates)
        case .parked: add(.parked)
        case .schemaPaused: add(.schemaPauses)
        case .gap: add(.gaps)
        case .applyBatchFailed: add(.applyBatchFailures)
        case .restored: add(.restores)
        case .restoreFailed: add(.restoreFailures)
        case .snapshotTaken: add(.snapshotsTaken)
        case .snapshotFailed: add(.snapshotFailures)
        default: break
        }
    }

    /// The exposition text; `gauges` are series read from the core just now.
    func render(gauges: [String: Double]) -> String {
        lock.lock()
        var all = gauges
        for c in Counter.allCases { all[c.series] = counts[c.rawValue] }
        lock.unlock()
        var out = ""
        for f in Self.families {
            out += "# HELP \(f.name) \(f.help)\n# TYPE \(f.name) \(f.type)\n"
            let series = all.keys.filter { $0 == f.name || $0.hasPrefix(f.name + "{") }.sorted()
            for s in series { out += "\(s) \(Self.format(all[s]!))\n" }
        }
        return out
    }

    static func format(_ v: Double) -> String {
        v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : String(v)
    }
}
