import Foundation

/// Where snapshots are kept between nodes. Names sort by time (`harmonylite-snapshot-<hlc hex>-<node>`), so
/// "newest" is the greatest name; the snapshot file itself carries the stream sequences it covers.
/// Calls block and run off the node's queue; every failure throws a `SnapshotStoreError` saying what and where.
public protocol SnapshotStore: Sendable {
    /// For logs: the kind of store and where it points, without secrets.
    var location: String { get }
    /// Stores the file under `name`, replacing nothing else; a half-written upload must never be listed.
    func upload(file: String, name: String) throws
    /// Writes the snapshot called `name` to `file` (created or replaced).
    func download(name: String, to file: String) throws
    /// Every snapshot name in the store, in any order.
    func list() throws -> [String]
    func delete(name: String) throws
}

public struct SnapshotStoreError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension SnapshotStore {
    /// The newest snapshot name, if any.
    public func newest() throws -> String? {
        try list().filter { $0.hasPrefix(snapshotNamePrefix) }.max()
    }

    /// Deletes all but the newest `keep` snapshots (history, not one object overwritten in place).
    public func prune(keep: Int) throws {
        let names = try list().filter { $0.hasPrefix(snapshotNamePrefix) }.sorted()
        for name in names.dropLast(max(keep, 1)) { try delete(name: name) }
    }
}

public let snapshotNamePrefix = "harmonylite-snapshot-"
