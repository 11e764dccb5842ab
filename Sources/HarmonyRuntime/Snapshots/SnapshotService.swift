import Dispatch
import Foundation
import HarmonyCore
import HarmonyNATS
import Logging

/// The live snapshot store port: the configured store (NATS object store, local directory, S3, WebDAV, SFTP)
/// and the cluster-wide lease in a KV bucket. The policy (when, under which lease, how many to keep) is the
/// core's (`ReplicationNode+SnapshotPolicy`); this only carries out its requests. Store calls are slow
/// (network, megabytes), so each runs on `worker` and answers on the node's queue; none blocks the core.
final class SnapshotService: SnapshotStorePort, @unchecked Sendable {
    let store: any SnapshotStore
    let lease: SnapshotLease?
    let workDirectory: String
    let log: Logger
    let worker = DispatchQueue(label: "harmonylite.snapshots")
    /// Where answers go; set once by `LiveNode` before its core starts.
    weak var node: LiveNode?

    init(store: any SnapshotStore, lease: SnapshotLease?, workDirectory: String, log: Logger) {
        self.store = store
        self.lease = lease
        self.workDirectory = workDirectory
        self.log = log
    }

    /// Lets an upload or download in progress finish.
    func stop() {
        worker.sync {}
    }

    func scratchPath() -> String {
        (workDirectory as NSString).appendingPathComponent(".harmonylite-snapshot-\(UUID().uuidString).db")
    }

    func discard(path: String) {
        worker.async { Self.remove(path) }
    }

    static func remove(_ path: String) {
        for suffix in ["", "-wal", "-shm", "-journal"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }

    /// Runs `request` on the worker and hands its result, or its error's text, to `answer` on the node's queue.
    private func carryOut<T: Sendable>(_ what: String, _ request: @escaping @Sendable () throws -> T,
                                       answer: @escaping @Sendable (ReplicationNode, T?, String?) throws -> Void) {
        worker.async { [weak self] in
            guard let node = self?.node else { return }
            let result: T?, error: String?
            do {
                result = try request()
                error = nil
            } catch let e {
                result = nil
                error = "\(e)"
            }
            node.enqueue(what) { core in try answer(core, result, error) }
        }
    }

    func requestNewestName() {
        carryOut("listing snapshots", { [store] in try store.newest() }) { core, name, error in
            core.snapshotNewestNameArrived(name ?? nil, error: error)
        }
    }

    func acquireLease(durationMs: Int64) {
        carryOut("taking the snapshot lease", { [lease] in try lease?.acquire(durationMs: durationMs) ?? true }) { core, granted, error in
            try core.snapshotLeaseAnswered(granted: granted ?? false, error: error)
        }
    }

    func releaseLease() {
        worker.async { [lease, log] in
            do { try lease?.release() } catch { log.warning("giving the snapshot lease back: \(error) (it expires by itself)") }
        }
    }

    func upload(path: String, name: String) {
        carryOut("uploading snapshot \(name)", { [store] in
            defer { Self.remove(path) }
            try store.upload(file: path, name: name)
        }) { core, _, error in
            core.snapshotUploaded(name: name, error: error)
        }
    }

    func prune(keep: Int) {
        carryOut("pruning snapshots", { [store] in try store.prune(keep: keep) }) { core, _, error in
            core.snapshotsPruned(error: error)
        }
    }

    /// The core is behind the log: download the newest snapshot and hand it back on the queue.
    func requestNewestSnapshot() {
        worker.async { [weak self] in
            guard let self, let node = self.node else { return }
            do {
                guard let name = try self.store.newest() else {
                    let location = self.store.location
                    node.enqueue("answering a snapshot request") { core in core.snapshotUnavailable(reason: "no snapshot in \(location) yet") }
                    return
                }
                let path = (self.workDirectory as NSString).appendingPathComponent(".harmonylite-restore-\(name).db")
                try self.store.download(name: name, to: path)
                self.log.info("downloaded snapshot \(name) from \(self.store.location); restoring")
                node.enqueue("restoring snapshot \(name)") { core in try core.snapshotReady(at: path) }
            } catch {
                node.enqueue("answering a snapshot request") { core in core.snapshotUnavailable(reason: "\(error)") }
            }
        }
    }
}

/// With `[snapshot] enabled = false`: no periodic snapshots, and every request is answered with the reason,
/// so a node that needs a snapshot says why it cannot get one instead of waiting silently.
final class DisabledSnapshotStore: SnapshotStorePort, @unchecked Sendable {
    weak var node: LiveNode?
    static let reason = "snapshots are disabled ([snapshot] enabled = false)"

    private func answer(_ what: String, _ body: @escaping @Sendable (ReplicationNode) throws -> Void) {
        node?.enqueue(what, body)
    }

    func scratchPath() -> String { "/nonexistent/harmonylite-snapshot" }
    func discard(path: String) {}
    func requestNewestName() { answer("listing snapshots") { $0.snapshotNewestNameArrived(nil, error: Self.reason) } }
    func acquireLease(durationMs: Int64) { answer("taking the snapshot lease") { try $0.snapshotLeaseAnswered(granted: false, error: Self.reason) } }
    func releaseLease() {}
    func upload(path: String, name: String) { answer("uploading a snapshot") { $0.snapshotUploaded(name: name, error: Self.reason) } }
    func prune(keep: Int) { answer("pruning snapshots") { $0.snapshotsPruned(error: Self.reason) } }
    func requestNewestSnapshot() {
        answer("answering a snapshot request") {
            $0.snapshotUnavailable(reason: "this node is behind the log's start and needs a snapshot, but \(Self.reason)")
        }
    }
}
