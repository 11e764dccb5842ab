import Dispatch
import Foundation
import HarmonyCore
import HarmonyNATS
import HarmonySQLite
import Logging
import Synchronization

/// Queue helpers, the schema registry, and operators' snapshots (`-save-snapshot`, SIGUSR1).
extension LiveNode {
    /// Runs `body` with the core on the node's queue and returns its result; nil once stopped.
    func onQueue<T>(_ body: (ReplicationNode) throws -> T) throws -> T? {
        try queue.sync { try core.map(body) }
    }

    /// Runs `body` with the core on the node's queue later; a throw follows the error contract.
    func enqueue(_ what: String, _ body: @escaping @Sendable (ReplicationNode) throws -> Void) {
        queue.async { [weak self] in self?.withCore(what, body) }
    }

    /// Queue only: capture was (re)installed, so the registry entry may be stale.
    func schemaChanged() {
        guard let core else { return }
        registry?.update(tables: core.captured.mapValues { $0.schema.hash })
    }

    /// `-save-snapshot`: once this node has applied what the streams held when it started (bounded by
    /// `timeoutSeconds`), asks its core for a snapshot (the core's policy: lease, consistent copy, upload, prune)
    /// and waits for the outcome. Returns its name, or nil when every try was skipped (the reasons are logged).
    public func saveSnapshot(timeoutSeconds: Double) throws -> String? {
        guard snapshots != nil else { throw SnapshotStoreError("[snapshot] enabled = false: there is no store to save to") }
        let targets = router.shards.map { shard in (shard, streamState(shard: shard)?.lastSequence ?? 0) }
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while true {
            let caughtUp = try onQueue { core in targets.allSatisfy { core.checkpoint($0.0) >= $0.1 } } ?? false
            if caughtUp { break }
            // Behind the log's start with no snapshot to restore: it can never catch up, so say so now.
            let cannotRestore: String? = queue.sync {
                guard core?.restoreNeeded == true else { return nil }
                return queueOnly.value.progress.lastRestoreFailure
            }
            if let reason = cannotRestore {
                throw SnapshotStoreError("this node is behind the log's start and needs a snapshot itself, and none can be restored (\(reason)); "
                                         + "save the snapshot from a node that is caught up, or restore this one first")
            }
            guard Date() < deadline else {
                throw SnapshotStoreError("not caught up with the streams after \(Int(timeoutSeconds)) s; no snapshot taken")
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        // Another node's lease or a moment of unacknowledged local writes makes the core skip: try a while longer.
        for _ in 0..<100 {
            switch waitForSnapshot(until: deadline) {
            case .snapshotTaken(let name)?: return name
            case .snapshotFailed(let reason)?: throw SnapshotStoreError(reason)
            default: break
            }
            guard Date() < deadline else { return nil }
            Thread.sleep(forTimeInterval: 0.1)
        }
        return nil
    }

    /// Asks the core for a snapshot now and waits (not on the queue) for its outcome event, or nil at `deadline`.
    func waitForSnapshot(until deadline: Date) -> ReplicationEvent? {
        let done = DispatchSemaphore(value: 0)
        let outcome = Mutex<ReplicationEvent?>(nil)
        queue.sync {
            queueOnly.value.snapshotWaiter = { event in
                outcome.withLock { $0 = event }
                done.signal()
            }
            withCore("taking a snapshot") { $0.snapshotNow() }
        }
        let seconds = max(0, deadline.timeIntervalSinceNow)
        if done.wait(timeout: .now() + .milliseconds(Int(seconds * 1000))) == .timedOut {
            queue.sync { queueOnly.value.snapshotWaiter = nil }
        }
        return outcome.withLock { $0 }
    }

    /// Queue only: a snapshot attempt ended; hand the outcome to `-save-snapshot` if it waits for one.
    /// Returns whether an operator had asked for this snapshot (SIGUSR1 or `-save-snapshot`).
    @discardableResult
    func snapshotAttemptEnded(_ event: ReplicationEvent) -> Bool {
        let asked = queueOnly.value.snapshotRequestedByOperator || queueOnly.value.snapshotWaiter != nil
        queueOnly.value.snapshotRequestedByOperator = false
        if let waiter = queueOnly.value.snapshotWaiter {
            queueOnly.value.snapshotWaiter = nil
            waiter(event)
        }
        return asked
    }

    /// `GET /snapshot`: the newest snapshot in the store, written to `file`; its name, or nil when there is none.
    public func downloadNewestSnapshot(to file: String) throws -> String? {
        guard let store = snapshots?.store else { throw SnapshotStoreError("[snapshot] enabled = false: there is no store to read from") }
        guard let name = try store.newest() else { return nil }
        try store.download(name: name, to: file)
        return name
    }

    /// Where the node may write scratch files (the database's directory, so a copy stays on the same disk).
    public var scratchDirectory: String {
        let directory = (config.node.databasePath as NSString).deletingLastPathComponent
        return directory.isEmpty ? "." : directory
    }

    /// For logs: where snapshots go.
    var snapshotStoreLocation: String? { snapshots?.store.location }

    /// SIGUSR1: a snapshot now, for a running sidecar; the outcome is logged.
    public func requestSnapshotNow() {
        queue.async { [weak self] in
            guard let self else { return }
            self.queueOnly.value.snapshotRequestedByOperator = true
            self.withCore("taking a snapshot") { $0.snapshotNow() }
        }
    }
}
