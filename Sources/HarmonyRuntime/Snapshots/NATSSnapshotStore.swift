import Crypto
import Foundation
import HarmonyNATS

/// Snapshots in a JetStream object store bucket (the default store: nothing to set up beyond NATS).
/// The standard layout means `nats object ls harmonylite-snapshots` shows them too.
public final class NATSSnapshotStore: SnapshotStore, @unchecked Sendable {
    let objects: ObjectStore
    public var location: String { "NATS object store bucket \(objects.bucket)" }

    public init(jetStream: JetStream, bucket: String, replicas: Int) throws {
        do {
            objects = try ObjectStore(jetStream: jetStream, bucket: bucket, replicas: replicas)
        } catch {
            throw SnapshotStoreError("opening NATS object store bucket \(bucket): \(error)")
        }
    }

    public func upload(file: String, name: String) throws {
        guard let input = FileHandle(forReadingAtPath: file) else {
            throw SnapshotStoreError("uploading snapshot \(name): cannot read \(file)")
        }
        defer { try? input.close() }
        do {
            // One pass over the file: each chunk is hashed as it is sent; the digest goes into the meta message after.
            var hasher = SHA256()
            try objects.put(name: name, nextChunk: {
                let chunk = Array(try input.read(upToCount: ObjectStore.chunkSize) ?? Data())
                hasher.update(data: chunk)
                return chunk
            }, digest: { "SHA-256=" + ObjectStore.base64URL(Array(hasher.finalize())) })
        } catch {
            throw SnapshotStoreError("uploading snapshot \(name) to \(location): \(error)")
        }
    }

    public func download(name: String, to file: String) throws {
        let temporary = file + ".download"
        _ = FileManager.default.createFile(atPath: temporary, contents: nil)
        guard let output = FileHandle(forWritingAtPath: temporary) else {
            throw SnapshotStoreError("downloading snapshot \(name): cannot write \(temporary)")
        }
        do {
            var hasher = SHA256()
            let info = try objects.get(name: name) { chunk in
                hasher.update(data: chunk)
                try output.write(contentsOf: chunk)
            }
            try output.synchronize()
            try output.close()
            if let expected = info.digest, expected != "SHA-256=" + ObjectStore.base64URL(Array(hasher.finalize())) {
                throw SnapshotStoreError("snapshot \(name) in \(location) does not match its digest \(expected)")
            }
            if FileManager.default.fileExists(atPath: file) { try FileManager.default.removeItem(atPath: file) }
            try FileManager.default.moveItem(atPath: temporary, toPath: file)
        } catch {
            try? output.close()
            try? FileManager.default.removeItem(atPath: temporary)
            if let e = error as? SnapshotStoreError { throw e }
            throw SnapshotStoreError("downloading snapshot \(name) from \(location): \(error)")
        }
    }

    public func list() throws -> [String] {
        do { return try objects.list().map(\.name) } catch { throw SnapshotStoreError("listing \(location): \(error)") }
    }

    public func delete(name: String) throws {
        do { try objects.delete(name: name) } catch { throw SnapshotStoreError("deleting snapshot \(name) from \(location): \(error)") }
    }
}
