import Dispatch
import Foundation
import HarmonyNATS
import Logging

/// One live process per `node_id`: a claim in the KV bucket `harmonylite-nodes` (key `node-<id>`), taken by
/// compare-and-set at start and renewed while the node runs. Two processes with one id would split the id's
/// durable consumers between them and both stall; a second one is refused at start instead, naming the first.
final class NodeIdentityClaim: @unchecked Sendable {
    static let bucket = "harmonylite-nodes"
    let kv: KeyValueBucket
    let nodeID: Int64
    let holder: Holder
    let expiryMs: Int64
    let log: Logger
    private let renewals = DispatchQueue(label: "harmonylite.node-claim")
    private var timer: DispatchSourceTimer?
    private var revision: UInt64?

    struct Holder: Codable, Equatable {
        var node: Int64
        var instance: String
        var pid: Int32
        var host: String
        var database: String
        var expiresMs: Int64
        enum CodingKeys: String, CodingKey { case node, instance, pid, host, database, expiresMs = "expires_ms" }
    }

    init(kv: KeyValueBucket, nodeID: Int64, databasePath: String, expiryMs: Int64 = 30_000, log: Logger) {
        precondition(expiryMs >= 3_000, "a node claim must outlive a few renewals")
        self.kv = kv
        self.nodeID = nodeID
        self.expiryMs = expiryMs
        self.log = log
        self.holder = Holder(node: nodeID, instance: UUID().uuidString, pid: getpid(), host: ProcessInfo.processInfo.hostName,
                             database: databasePath, expiresMs: 0)
    }

    var key: String { "node-\(nodeID)" }

    /// Takes the claim, or throws naming the live process that holds it.
    func claim() throws {
        let current = try kv.entry(key)
        if let current, let other = try? JSONDecoder().decode(Holder.self, from: Data(current.value)),
           other.instance != holder.instance, other.expiresMs > WallClock.nowMs, !Self.isGone(other, from: holder) {
            throw NodeIdentityError(description: """
                node_id \(nodeID) is in use by another harmonylite (pid \(other.pid) on \(other.host), database \(other.database)), \
                which renewed its claim \(max(0, (WallClock.nowMs - (other.expiresMs - expiryMs)) / 1000)) s ago. Every node needs its own \
                node_id; if that process is gone, its claim expires within \(expiryMs / 1000) s
                """)
        }
        guard let rev = try write(lastRevision: current?.revision) else {
            throw NodeIdentityError(description: "node_id \(nodeID) was claimed by another process at the same moment; every node needs its own node_id")
        }
        revision = rev
    }

    /// A claim left by a process on this same machine that no longer exists (killed with SIGKILL, crashed): stale
    /// at once, so a restart need not wait for it to expire. A zombie (dead, not yet reaped by its parent: a slow
    /// init after `kill -9`) counts as gone; it answers signals, so it once kept the restart refused.
    static func isGone(_ other: Holder, from me: Holder) -> Bool {
        guard other.host == me.host, other.pid != me.pid else { return false }
        if kill(other.pid, 0) != 0 && errno == ESRCH { return true }
        return isZombie(other.pid)
    }

    /// The process state in /proc/<pid>/stat (the field after the command's closing parenthesis) is Z or X.
    static func isZombie(_ pid: Int32) -> Bool {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return false }
        let state = stat[stat.index(after: close)...].split(separator: " ").first
        return state == "Z" || state == "X"
    }

    private func write(lastRevision: UInt64?) throws -> UInt64? {
        var mine = holder
        mine.expiresMs = WallClock.nowMs + expiryMs
        return try kv.compareAndSet(key, Array(try JSONEncoder().encode(mine)), lastRevision: lastRevision)
    }

    /// Renews the claim every third of its lifetime, off the node's queue.
    func startRenewing() {
        let t = DispatchSource.makeTimerSource(queue: renewals)
        t.schedule(deadline: .now() + .milliseconds(Int(expiryMs / 3)), repeating: .milliseconds(Int(expiryMs / 3)))
        t.setEventHandler { [weak self] in self?.renew() }
        t.resume()
        timer = t
    }

    private func renew() {
        do {
            if let rev = try write(lastRevision: revision) {
                revision = rev
                return
            }
            // Someone else wrote the key: take it back only if it is ours or expired, else say loudly who.
            try claim()
        } catch {
            log.error("renewing this node's claim on node_id \(nodeID): \(error)")
        }
    }

    /// Gives the id back so a replacement can start at once.
    func release() {
        timer?.cancel()
        timer = nil
        renewals.sync {
            guard let current = try? kv.entry(key),
                  let other = try? JSONDecoder().decode(Holder.self, from: Data(current.value)), other.instance == holder.instance
            else { return }
            try? kv.delete(key)
        }
    }
}

public struct NodeIdentityError: Error, CustomStringConvertible, Sendable {
    public var description: String
}
