import Foundation
import HarmonyNATS

/// At most one node takes a snapshot at a time: a lease in a KV bucket, taken by compare-and-set and
/// expiring on its own if the holder dies mid-upload.
final class SnapshotLease: @unchecked Sendable {
    let bucket: KeyValueBucket
    let nodeID: Int64
    let durationMs: Int64
    static let key = "snapshot"

    init(bucket: KeyValueBucket, nodeID: Int64, durationMs: Int64) {
        self.bucket = bucket
        self.nodeID = nodeID
        self.durationMs = durationMs
    }

    struct Holder: Codable {
        var node: Int64
        var expiresMs: Int64
        enum CodingKeys: String, CodingKey { case node, expiresMs = "expires_ms" }
    }


    /// True when this node now holds the lease (it was free, expired, or already ours) for `durationMs`
    /// (default: the lease's own duration).
    func acquire(durationMs requested: Int64? = nil) throws -> Bool {
        let mine = try JSONEncoder().encode(Holder(node: nodeID, expiresMs: WallClock.nowMs + (requested ?? durationMs)))
        guard let current = try bucket.entry(Self.key) else {
            return try bucket.compareAndSet(Self.key, Array(mine), lastRevision: nil) != nil
        }
        if let holder = try? JSONDecoder().decode(Holder.self, from: Data(current.value)),
           holder.node != nodeID, holder.expiresMs > WallClock.nowMs {
            return false
        }
        return try bucket.compareAndSet(Self.key, Array(mine), lastRevision: current.revision) != nil
    }

    /// Gives the lease back early if we still hold it.
    func release() throws {
        guard let current = try bucket.entry(Self.key),
              let holder = try? JSONDecoder().decode(Holder.self, from: Data(current.value)), holder.node == nodeID
        else { return }
        let expired = try JSONEncoder().encode(Holder(node: nodeID, expiresMs: 0))
        _ = try bucket.compareAndSet(Self.key, Array(expired), lastRevision: current.revision)
    }
}
