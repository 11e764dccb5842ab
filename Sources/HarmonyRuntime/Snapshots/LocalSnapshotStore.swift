import Foundation

/// Snapshots as files in one directory (local disk or a shared mount). Uploads are written under a hidden
/// temporary name and renamed, so a crash mid-copy never leaves a listed, truncated snapshot.
public struct LocalSnapshotStore: SnapshotStore {
    public let directory: String
    public var location: String { "local directory \(directory)" }

    public init(directory: String) { self.directory = directory }

    func path(_ name: String) throws -> String {
        // Names come from us or from a listing, but never let one climb out of the directory.
        guard !name.isEmpty, !name.contains("/"), !name.hasPrefix(".") else {
            throw SnapshotStoreError("snapshot name \"\(name)\" is not a plain file name")
        }
        return (directory as NSString).appendingPathComponent(name)
    }

    public func upload(file: String, name: String) throws {
        let target = try path(name)
        let temporary = (directory as NSString).appendingPathComponent(".\(name).\(UUID().uuidString).partial")
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: file, toPath: temporary)
            try syncFile(temporary)
            if FileManager.default.fileExists(atPath: target) { try FileManager.default.removeItem(atPath: target) }
            try FileManager.default.moveItem(atPath: temporary, toPath: target)
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw SnapshotStoreError("uploading snapshot \(name) to \(location): \(error.localizedDescription)")
        }
    }

    public func download(name: String, to file: String) throws {
        let source = try path(name)
        guard FileManager.default.fileExists(atPath: source) else {
            throw SnapshotStoreError("snapshot \(name) not found in \(location)")
        }
        do {
            if FileManager.default.fileExists(atPath: file) { try FileManager.default.removeItem(atPath: file) }
            try FileManager.default.copyItem(atPath: source, toPath: file)
        } catch {
            throw SnapshotStoreError("downloading snapshot \(name) from \(location): \(error.localizedDescription)")
        }
    }

    public func list() throws -> [String] {
        guard FileManager.default.fileExists(atPath: directory) else { return [] }
        do {
            return try FileManager.default.contentsOfDirectory(atPath: directory).filter { !$0.hasPrefix(".") }
        } catch {
            throw SnapshotStoreError("listing \(location): \(error.localizedDescription)")
        }
    }

    public func delete(name: String) throws {
        let target = try path(name)
        guard FileManager.default.fileExists(atPath: target) else { return }
        do {
            try FileManager.default.removeItem(atPath: target)
        } catch {
            throw SnapshotStoreError("deleting snapshot \(name) from \(location): \(error.localizedDescription)")
        }
    }

    /// fsync, so the rename publishes a snapshot whose bytes are on disk.
    func syncFile(_ path: String) throws {
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        try handle.synchronize()
    }
}
