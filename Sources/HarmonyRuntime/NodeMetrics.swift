import Foundation
import HarmonyCore

/// What a running node counts, rendered in the Prometheus text format at `/metrics`. Counters come from the
/// core's events (recorded on the node's queue); gauges are read from the core when scraped.
final class NodeMetrics: @unchecked Sendable {
    private let lock = NSLock()
    /// Series (name with labels) -> value.
    private var counters: [String: Double] = [:]

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
        Family(name: "harmonylite_schema_paused", type: "gauge", help: "1 while the shard's stream is paused on a schema this node does not have yet."),
        Family(name: "harmonylite_waiting_for_snapshot", type: "gauge", help: "1 while the node is behind the log's start and waits for a snapshot."),
        Family(name: "harmonylite_checkpoint", type: "gauge", help: "Last stream sequence applied, per shard."),
        Family(name: "harmonylite_pending_changes", type: "gauge", help: "Local changes not yet acknowledged by the log."),
    ]

    func add(_ series: String, _ amount: Double = 1) {
        lock.lock()
        counters[series, default: 0] += amount
        lock.unlock()
    }

    func record(_ event: ReplicationEvent) {
        switch event {
        case .published(let count): add("harmonylite_published_changes_total", Double(count))
        case .publishFailed: add("harmonylite_publish_failures_total")
        case .applied(_, _, _, _, let won): add("harmonylite_applied_changes_total{result=\"\(won ? "won" : "lost")\"}")
        case .duplicate: add("harmonylite_duplicate_messages_total")
        case .parked: add("harmonylite_parked_messages_total")
        case .schemaPaused: add("harmonylite_schema_pauses_total")
        case .gap: add("harmonylite_gaps_total")
        case .applyBatchFailed: add("harmonylite_apply_batch_failures_total")
        case .restored: add("harmonylite_restores_total")
        case .restoreFailed: add("harmonylite_restore_failures_total")
        case .snapshotTaken: add("harmonylite_snapshots_taken_total")
        default: break
        }
    }

    /// The exposition text; `gauges` are series read from the core just now.
    func render(gauges: [String: Double]) -> String {
        lock.lock()
        let all = counters.merging(gauges) { a, _ in a }
        lock.unlock()
        var out = ""
        for f in Self.families {
            out += "# HELP \(f.name) \(f.help)\n# TYPE \(f.name) \(f.type)\n"
            let series = all.keys.filter { $0 == f.name || $0.hasPrefix(f.name + "{") }.sorted()
            if series.isEmpty && f.type == "counter" { out += "\(f.name) 0\n" }
            for s in series { out += "\(s) \(Self.format(all[s]!))\n" }
        }
        return out
    }

    static func format(_ v: Double) -> String {
        v == v.rounded() && abs(v) < 1e15 ? String(Int64(v)) : String(v)
    }
}
