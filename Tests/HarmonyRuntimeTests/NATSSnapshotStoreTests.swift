import Foundation
import HarmonyNATS
@testable import HarmonyRuntime
import Testing

/// The default store (the JetStream object store, standard layout), the local directory store, and the
/// snapshot lease, each against a real nats-server on loopback.
@Suite("NATS object store, local store and the snapshot lease", .serialized)
struct NATSSnapshotStoreTests {
    final class Server {
        let directory: String
        let server: EmbeddedNATSServer
        let connection: NATSConnection
        let jetStream: JetStream

        init() throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("objstore-\(UUID().uuidString.prefix(8))").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            server = try EmbeddedNATSServer(bindAddress: "127.0.0.1:\(EmbeddedNATSServer.freePort())", storeDirectory: directory + "/nats",
                                            serverName: "objstore-\(UUID().uuidString.prefix(6))")
            try server.start()
            connection = try NATSConnection(NATSConnectOptions(urls: [server.url]))
            jetStream = try connection.jetStream { _ in }
        }

        deinit {
            jetStream.close()
            connection.close()
            server.stop()
            try? FileManager.default.removeItem(atPath: directory)
        }

        /// A file of `bytes` pseudo-random bytes (so chunk boundaries and order matter).
        func file(_ name: String, bytes: Int, seed: UInt64) throws -> String {
            var state = seed
            var data = [UInt8](repeating: 0, count: bytes)
            for i in 0..<bytes {
                state = state &* 6364136223846793005 &+ 1442695040888963407
                data[i] = UInt8(truncatingIfNeeded: state >> 33)
            }
            let path = directory + "/" + name
            try Data(data).write(to: URL(fileURLWithPath: path))
            return path
        }
    }

    static let older = "harmonylite-snapshot-0000018c00000000-1"
    static let newer = "harmonylite-snapshot-0000018d00000000-2"

    /// What every store must do: upload, list, newest, download byte for byte, prune to `keep`, clear errors.
    func roundTrip(_ store: any SnapshotStore, _ s: Server) throws {
        let a = try s.file("a.db", bytes: 3 * 1024 * 1024 + 17, seed: 1)  // several 128 KiB chunks, a short last one
        let b = try s.file("b.db", bytes: 5000, seed: 2)
        try store.upload(file: a, name: Self.older)
        try store.upload(file: b, name: Self.newer)
        #expect(Set(try store.list()) == [Self.older, Self.newer])
        #expect(try store.newest() == Self.newer)
        let back = s.directory + "/back.db"
        try store.download(name: Self.older, to: back)
        #expect(FileManager.default.contents(atPath: back) == FileManager.default.contents(atPath: a))
        try store.download(name: Self.newer, to: back)  // replaces the file
        #expect(FileManager.default.contents(atPath: back) == FileManager.default.contents(atPath: b))
        try store.prune(keep: 1)
        #expect(try store.list() == [Self.newer])
        let missing = #expect(throws: SnapshotStoreError.self) { try store.download(name: Self.older, to: back) }
        #expect(missing?.description.contains(Self.older) == true)
    }

    @Test func objectStoreRoundTripsInTheStandardLayout() throws {
        let s = try Server()
        let store = try NATSSnapshotStore(jetStream: s.jetStream, bucket: "harmonylite-snapshots", replicas: 1)
        try roundTrip(store, s)
        // The standard layout: stream OBJ_<bucket>, meta with size, chunk count and a SHA-256 digest.
        let info = try #require(try store.objects.info(name: Self.newer))
        #expect(info.size == 5000 && info.chunks == 1 && info.digest?.hasPrefix("SHA-256=") == true)
        #expect(try s.jetStream.streamState(name: "OBJ_harmonylite-snapshots").messages > 0)
        // Deleting purges the chunks: only meta messages (one per name) remain.
        try store.delete(name: Self.newer)
        #expect(try store.list().isEmpty)
        #expect(try s.jetStream.streamState(name: "OBJ_harmonylite-snapshots").messages == 2)
    }

    /// A snapshot whose bytes do not hash to its recorded digest is refused, and no file is left behind.
    @Test func objectStoreRefusesAnObjectThatDoesNotMatchItsDigest() throws {
        let s = try Server()
        let store = try NATSSnapshotStore(jetStream: s.jetStream, bucket: "harmonylite-snapshots", replicas: 1)
        var sent = false
        try store.objects.put(name: Self.newer, nextChunk: {
            defer { sent = true }
            return sent ? [] : Array("not what the digest says".utf8)
        }, digest: { "SHA-256=" + String(repeating: "A", count: 43) + "=" })
        let target = s.directory + "/restore.db"
        let error = #expect(throws: SnapshotStoreError.self) { try store.download(name: Self.newer, to: target) }
        #expect(error?.description.contains("does not match its digest") == true)
        #expect(!FileManager.default.fileExists(atPath: target))
        #expect(!FileManager.default.fileExists(atPath: target + ".download"))
    }

    @Test func localDirectoryRoundTripsAndRefusesPathsOutsideIt() throws {
        let s = try Server()
        let store = LocalSnapshotStore(directory: s.directory + "/snapshots")
        #expect(try store.list().isEmpty)  // a directory that does not exist yet is an empty store
        try roundTrip(store, s)
        #expect(throws: SnapshotStoreError.self) { try store.download(name: "../a.db", to: s.directory + "/x") }
        #expect(throws: SnapshotStoreError.self) { try store.upload(file: s.directory + "/a.db", name: ".hidden") }
    }

    /// One holder at a time; the holder may renew; a released or expired lease can be taken by another node.
    @Test func leaseIsExclusiveUntilReleasedOrExpired() throws {
        let s = try Server()
        let bucket = try s.jetStream.keyValue(bucket: "harmonylite-leases")
        let one = SnapshotLease(bucket: bucket, nodeID: 1, durationMs: 60_000)
        let two = SnapshotLease(bucket: bucket, nodeID: 2, durationMs: 60_000)
        #expect(try one.acquire())
        #expect(try !two.acquire())
        #expect(try one.acquire())  // renewal by the holder
        try one.release()
        #expect(try two.acquire())
        #expect(try !one.acquire())
        let shortLived = SnapshotLease(bucket: bucket, nodeID: 3, durationMs: 1)
        try two.release()
        #expect(try shortLived.acquire())
        Thread.sleep(forTimeInterval: 0.05)
        #expect(try one.acquire())  // node 3 died holding it; the lease expired
        // Compare-and-set: a write based on a stale revision loses.
        let entry = try #require(try bucket.entry(SnapshotLease.key))
        _ = try bucket.put(SnapshotLease.key, Array("{}".utf8))
        #expect(try bucket.compareAndSet(SnapshotLease.key, Array("{}".utf8), lastRevision: entry.revision) == nil)
    }
}
