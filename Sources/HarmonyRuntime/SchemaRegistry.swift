import Dispatch
import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonyNATS
import Logging

/// One node's entry in the schema registry (KV bucket `harmonylite-schema-registry`, key `node-<id>`):
/// what it replicates now and what it replicated before, so an operator can follow a rolling upgrade.
public struct SchemaRegistryEntry: Codable, Sendable, Equatable {
    public var nodeID: Int64
    /// Hash over every replicated table's schema hash.
    public var schemaHash: String
    /// The cluster hash before the last change (empty until one happened).
    public var previousHash: String
    /// Bumped each time `schemaHash` changes.
    public var version: Int64
    public var updatedAt: String
    /// Table name -> that table's schema hash.
    public var tables: [String: String]

    enum CodingKeys: String, CodingKey {
        case nodeID = "node_id", schemaHash = "schema_hash", previousHash = "previous_hash", version
        case updatedAt = "updated_at", tables
    }

    /// The combined hash of a set of table hashes, independent of dictionary order.
    public static func combinedHash(_ tables: [String: String]) -> String {
        var h = StableHash()
        for name in tables.keys.sorted() {
            h.combine(name)
            h.combine(tables[name]!)
        }
        return h.hex
    }

    public static let bucket = "harmonylite-schema-registry"
    public static func key(nodeID: Int64) -> String { "node-\(nodeID)" }
}

/// Keeps this node's registry entry current: written at start and again whenever capture is re-installed
/// (DDL seen), from a queue of its own so a slow NATS never holds up replication.
final class SchemaRegistry: @unchecked Sendable {
    let bucket: KeyValueBucket
    let nodeID: Int64
    let log: Logger
    private let queue = DispatchQueue(label: "harmonylite.schema-registry")
    /// Queue only: the last entry written (or read back at start).
    private var last: SchemaRegistryEntry?

    init(bucket: KeyValueBucket, nodeID: Int64, log: Logger) {
        self.bucket = bucket
        self.nodeID = nodeID
        self.log = log
    }

    /// Records the tables' current hashes; a no-op when nothing changed since the last write.
    func update(tables: [String: String]) {
        queue.async { [self] in
            do {
                if last == nil, let stored = try bucket.get(SchemaRegistryEntry.key(nodeID: nodeID)) {
                    last = try? JSONDecoder().decode(SchemaRegistryEntry.self, from: Data(stored))
                }
                let hash = SchemaRegistryEntry.combinedHash(tables)
                if let last, last.schemaHash == hash, last.tables == tables { return }
                let entry = SchemaRegistryEntry(
                    nodeID: nodeID, schemaHash: hash,
                    previousHash: last.map { $0.schemaHash == hash ? $0.previousHash : $0.schemaHash } ?? "",
                    version: (last?.version ?? 0) + (last?.schemaHash == hash ? 0 : 1),
                    updatedAt: UTCTimestamp.iso8601Now(), tables: tables)
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                try bucket.put(SchemaRegistryEntry.key(nodeID: nodeID), Array(try encoder.encode(entry)))
                last = entry
                log.info("schema registry: node \(nodeID) schema \(hash) version \(entry.version) (\(tables.count) tables)")
            } catch {
                log.warning("schema registry update: \(error)")
            }
        }
    }

    /// Waits for queued updates (tests and shutdown).
    func flush() { queue.sync {} }

    /// Every node's entry, by node id.
    static func entries(_ bucket: KeyValueBucket) throws -> [SchemaRegistryEntry] {
        try bucket.keys().sorted().compactMap { key in
            guard key.hasPrefix("node-"), let value = try bucket.get(key) else { return nil }
            return try? JSONDecoder().decode(SchemaRegistryEntry.self, from: Data(value))
        }.sorted { $0.nodeID < $1.nodeID }
    }
}
