import Dispatch
import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonyNATS
import Logging

/// The live side of snapshots: a cluster-wide lease, the periodic snapshot, and fetching the newest one for
/// a node that fell behind the log. Store calls are slow (network, megabytes), so they run on `worker`,
/// never on the node's queue; only `takeSnapshot` and `snapshotReady` run on the queue, as the core requires.
final class SnapshotService: @unchecked Sendable {
    let store: any SnapshotStore
    let settings: RuntimeConfig.SnapshotSettings
    let lease: SnapshotLease?
    let workDirectory: String
    let log: Logger
    let worker = DispatchQueue(label: "harmonylite.snapshots")
    private var timer: DispatchSourceTimer?

    init(store: any SnapshotStore, settings: RuntimeConfig.SnapshotSettings, lease: SnapshotLease?, workDirectory: String, log: Logger) {
        self.store = store
        self.settings = settings
        self.lease = lease
        self.workDirectory = workDirectory
        self.log = log
    }

    /// Every `interval`, the node holding the lease takes and uploads a snapshot, unless the store already
    /// has one younger than two thirds of the interval (another node just took it).
    func startPeriodic(node: LiveNode) {
        guard settings.intervalMs > 0 else { return }
        let t = DispatchSource.makeTimerSource(queue: worker)
        t.schedule(deadline: .now() + .milliseconds(Int(settings.intervalMs)), repeating: .milliseconds(Int(settings.intervalMs)))
        t.setEventHandler { [weak self, weak node] in
            guard let self, let node else { return }
            do {
                if let newest = try self.store.newest(), let takenMs = Self.takenAtMs(newest),
                   Int64(Date().timeIntervalSince1970 * 1000) - takenMs < self.settings.intervalMs * 2 / 3 {
                    self.log.debug("snapshot \(newest) is recent enough; not taking another")
                    return
                }
                _ = try self.takeAndUpload(node: node)
            } catch {
                self.log.warning("periodic snapshot: \(error)")
            }
        }
        t.resume()
        timer = t
    }

    func stop() {
        timer?.cancel()
        timer = nil
        worker.sync {}  // let an upload in progress finish
    }

    /// Takes a snapshot under the lease and uploads it; returns its name, or nil when skipped (the reason is logged).
    /// Runs on the caller's thread, which must not be the node's queue.
    func takeAndUpload(node: LiveNode) throws -> String? {
        if let lease, !(try lease.acquire()) {
            log.info("snapshot skipped: another node holds the snapshot lease")
            return nil
        }
        defer { try? lease?.release() }
        let path = (workDirectory as NSString).appendingPathComponent(".harmonylite-snapshot-\(UUID().uuidString).db")
        defer { try? FileManager.default.removeItem(atPath: path) }
        guard let outcome = try node.onQueue({ core in try core.takeSnapshot(to: path) }) else { return nil }
        switch outcome {
        case .skipped(let reason):
            log.info("snapshot skipped: \(reason)")
            return nil
        case .taken(let info):
            try store.upload(file: path, name: info.name)
            try store.prune(keep: settings.keep)
            log.info("snapshot \(info.name) uploaded to \(store.location), covering \(info.sequences.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " "))")
            return info.name
        }
    }

    /// The core asked for the newest snapshot (it is behind the log): download it and hand it back on the queue.
    func fetchNewest(node: LiveNode) {
        worker.async { [weak self, weak node] in
            guard let self, let node else { return }
            do {
                guard let name = try self.store.newest() else {
                    node.enqueue("answering a snapshot request") { core in core.snapshotUnavailable(reason: "no snapshot in \(self.store.location) yet") }
                    return
                }
                let path = (self.workDirectory as NSString).appendingPathComponent(".harmonylite-restore-\(name).db")
                try self.store.download(name: name, to: path)
                self.log.info("downloaded snapshot \(name) from \(self.store.location); restoring")
                node.enqueue("restoring snapshot \(name)") { core in
                    defer { try? FileManager.default.removeItem(atPath: path) }
                    try core.snapshotReady(at: path)
                }
            } catch {
                node.enqueue("answering a snapshot request") { core in core.snapshotUnavailable(reason: "\(error)") }
            }
        }
    }

    /// The taker's physical clock, from the name (`harmonylite-snapshot-<hlc hex>-<node>`).
    static func takenAtMs(_ name: String) -> Int64? {
        guard name.hasPrefix(snapshotNamePrefix) else { return nil }
        let rest = name.dropFirst(snapshotNamePrefix.count)
        guard let hex = rest.split(separator: "-").first, let hlc = Int64(hex, radix: 16) else { return nil }
        return RowVersion(hlc: hlc, node: 0).physicalMs
    }
}
