import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite

/// What the core reports (for the trace and the causality tracking), and when the cluster counts as settled.
extension Simulation {
    // MARK: Core events

    func coreEvent(node: Int, _ event: ReplicationEvent) {
        trace("node \(node) \(event)")
        switch event {
        case .applied(_, _, _, let version, let won):
            recordApplied(node: node, version)
            if won {
                let n = nodes[node - 1]
                n.maxAppliedHLC = max(n.maxAppliedHLC, version.hlc)
            } else {
                conflictsResolved += 1
            }
        case .localChangesStamped(let stamped):
            let tables = writesStamped(nodes[node - 1], stamped)
            chargeStamp(node: node, changes: stamped.count, tables: tables)
        case .sentAheadOfStamp(let versions):
            writesSentAhead(nodes[node - 1], versions)
        case .hintApplied(_, _, _, let won):
            hintsAppliedOn[node, default: 0] += 1
            let n = nodes[node - 1]
            for version in won {
                recordApplied(node: node, version)
                n.maxAppliedHLC = max(n.maxAppliedHLC, version.hlc)
            }
        case .restored(let sequences, _, _):
            // A restore applies every version the snapshot holds: later local writes must be newer (causality).
            let n = nodes[node - 1]
            // It is also the one step that may move a checkpoint back (to the snapshot's sequences).
            for (i, seq) in sequences.enumerated() { n.highestCheckpoint[i + 1] = seq }
            if let app = n.app, let restoredMax = try? app.scalar("SELECT max(hlc) FROM \(quoteIdentifier(Bookkeeping.versionTable("kv")))")?.int64 {
                n.maxAppliedHLC = max(n.maxAppliedHLC, restoredMax)
            }
        case .schemaChangeFailed(let shard, let sequence, let object, let error)
            where ["database or disk is full", "disk I/O error", "database is locked"].contains(where: error.contains):
            // A disk that failed is not SQLite refusing the DDL: the apply is retried, and operators are never told to
            // fix by hand an object that only met a bad disk (even if a later schema change happens to mend it).
            violations.append("node \(node) reported another node's DDL for \(object) (shard \(shard) seq \(sequence)) as refused by SQLite, but the disk failed: \(error)")
        case .parked(let shard, let sequence, let reason):
            violations.append("node \(node) parked shard \(shard) seq \(sequence): \(reason)")
        default:
            break
        }
    }

    // MARK: Quiescence and checks

    func checkQuiescence() {
        if isQuiescent() {
            quiescedAtMs = nowMs
            trace("quiescent")
            return
        }
        if nowMs - scenario.healMs > scenario.quiesceWithinMs {
            livenessFailure = "cluster did not quiesce within \(scenario.quiesceWithinMs) ms after healing at \(scenario.healMs) ms: \(quiescenceBlockers().joined(separator: "; "))"
            return
        }
        push(.quiesceCheck, at: nowMs + 100)
    }

    func isQuiescent() -> Bool { quiescenceBlockers().isEmpty }

    func quiescenceBlockers() -> [String] {
        var blockers: [String] = []
        guard nowMs >= scenario.durationMs else { return ["workload still running"] }
        for n in nodes {
            guard n.machineUp, n.sidecarUp, let core = n.core, let app = n.app else {
                blockers.append("node \(n.id) down")
                continue
            }
            let pending = (try? ChangeCapture.unpublishedChanges(app)) ?? -1
            if pending != 0 { blockers.append("node \(n.id) has \(pending) unpublished changes") }
            for shard in 1...scenario.shards {
                let last = jetStream.state(shard: shard).lastSequence
                if core.checkpoint(shard) != last { blockers.append("node \(n.id) shard \(shard) at \(core.checkpoint(shard)) of \(last)") }
            }
            if !core.pausedShards.isEmpty { blockers.append("node \(n.id) paused on schema") }
        }
        return blockers
    }

    /// Cheap whole-cluster invariants after every event (in the spirit of TigerBeetle's `check_state`), so a
    /// broken rule is reported at the event that broke it rather than only at the end of the run:
    /// no checkpoint is beyond what its stream ever held, and a node's checkpoint never moves back (its cores
    /// restart from what they committed) except through a restore or a wiped disk.
    func checkState() {
        for n in nodes {
            guard n.sidecarUp, let core = n.core else { continue }
            for shard in 1...scenario.shards {
                let checkpoint = core.checkpoint(shard)
                let last = jetStream.state(shard: shard).lastSequence
                if checkpoint > last {
                    violations.append("node \(n.id) shard \(shard): checkpoint \(checkpoint) beyond the stream's last sequence \(last) at \(nowMs) ms")
                }
                let highest = n.highestCheckpoint[shard] ?? 0
                if checkpoint < highest {
                    violations.append("node \(n.id) shard \(shard): checkpoint moved back from \(highest) to \(checkpoint) at \(nowMs) ms")
                    n.highestCheckpoint[shard] = checkpoint  // reported once
                } else {
                    n.highestCheckpoint[shard] = checkpoint
                }
            }
        }
    }
}
