import Foundation
import HarmonyCore
import HarmonyNATS
import HarmonySQLite

/// `-schema-status` and `-schema-status-cluster`: what this database's replicated tables hash to, and what
/// every node last wrote to the schema registry, so an operator can see where a rolling upgrade stands.
public enum SchemaStatus {
    /// Table -> schema hash, for the tables this node replicates (keyless ones are left out, as capture does).
    public static func localTables(_ config: RuntimeConfig) throws -> [String: String] {
        let db = try SQLiteOpener().open(path: config.node.databasePath)
        let keyed = try SchemaReader.admittedSchemas(db, filter: config.node.tables).keyed
        return Dictionary(uniqueKeysWithValues: keyed.map { ($0.name, $0.hash) })
    }

    /// Reads the registry with a short connection attempt (the sidecar's embedded server when `urls` is empty).
    public static func registryEntries(_ config: RuntimeConfig) throws -> [SchemaRegistryEntry] {
        try withRegistry(config) { bucket, _ in try SchemaRegistry.entries(bucket) }
    }

    /// Runs `body` with the registry bucket (and a JetStream context), over a short-lived connection.
    static func withRegistry<T>(_ config: RuntimeConfig, _ body: (KeyValueBucket, JetStream) throws -> T) throws -> T {
        let urls = config.nats.urls.isEmpty ? ["nats://\(config.nats.bindAddress)"] : config.nats.urls
        var options = LiveNode.connectOptions(config, urls: urls)
        options.connectRetries = 1
        options.maxReconnects = 0
        let connection = try NATSConnection(options)
        defer { connection.close() }
        let js = try connection.jetStream { _ in }
        defer { js.close() }
        let bucket = try js.keyValue(bucket: SchemaRegistryEntry.bucket, create: false)
        defer { bucket.close() }
        return try body(bucket, js)
    }

    /// `-schema-forget NODE`: removes a decommissioned node's registry entry, so `-schema-status-cluster` stops
    /// counting it. Refused while a live process holds that node_id.
    public static func forget(_ config: RuntimeConfig, nodeID: Int64) throws -> String {
        try withRegistry(config) { bucket, js in
            if let nodes = try? js.keyValue(bucket: NodeIdentityClaim.bucket, create: false),
               let claim = try nodes.entry("node-\(nodeID)"),
               let holder = try? JSONDecoder().decode(NodeIdentityClaim.Holder.self, from: Data(claim.value)),
               holder.expiresMs > WallClock.nowMs {
                throw NodeIdentityError(description: "node \(nodeID) is running (pid \(holder.pid) on \(holder.host), database \(holder.database)); "
                                        + "stop and decommission it before forgetting it")
            }
            guard try bucket.get(SchemaRegistryEntry.key(nodeID: nodeID)) != nil else {
                return "node \(nodeID) has no entry in \(SchemaRegistryEntry.bucket); nothing to forget"
            }
            try bucket.delete(SchemaRegistryEntry.key(nodeID: nodeID))
            return "forgot node \(nodeID): its entry is gone from \(SchemaRegistryEntry.bucket)"
        }
    }

    /// This node: its tables' hashes now, and its registry entry (or why it could not be read).
    public static func local(_ config: RuntimeConfig) throws -> String {
        let tables = try localTables(config)
        var lines = ["node \(config.node.nodeID): \(config.node.databasePath)",
                     "schema hash \(SchemaRegistryEntry.combinedHash(tables)) over \(tables.count) table(s)"]
        for name in tables.keys.sorted() { lines.append("  \(name): \(tables[name]!)") }
        do {
            if let entry = try registryEntries(config).first(where: { $0.nodeID == config.node.nodeID }) {
                let state = entry.tables == tables ? "matches the database" : "differs from the database (the sidecar has not seen the change yet, or is not running)"
                lines.append("registry: version \(entry.version), schema \(entry.schemaHash), previous \(entry.previousHash.isEmpty ? "-" : entry.previousHash), updated \(entry.updatedAt): \(state)")
            } else {
                lines.append("registry: no entry for node \(config.node.nodeID) yet (has its sidecar run?)")
            }
        } catch {
            lines.append("registry: not reachable (\(error))")
        }
        return lines.joined(separator: "\n")
    }

    /// Every node's entry and whether they agree; `consistent` is false when nodes replicate different schemas.
    public static func cluster(_ config: RuntimeConfig) throws -> (report: String, consistent: Bool) {
        let entries = try registryEntries(config)
        guard !entries.isEmpty else { return ("schema registry is empty: no node has registered yet", true) }
        var lines = ["node  version  schema            previous          updated                   tables"]
        for e in entries {
            let previous = e.previousHash.isEmpty ? "-" : e.previousHash
            lines.append("\(String(e.nodeID).padding(toLength: 6, withPad: " ", startingAt: 0))\(String(e.version).padding(toLength: 9, withPad: " ", startingAt: 0))\(e.schemaHash.padding(toLength: 18, withPad: " ", startingAt: 0))\(previous.padding(toLength: 18, withPad: " ", startingAt: 0))\(e.updatedAt.padding(toLength: 26, withPad: " ", startingAt: 0))\(e.tables.count)")
        }
        let hashes = Set(entries.map(\.schemaHash))
        if hashes.count == 1 {
            lines.append("all \(entries.count) node(s) replicate schema \(hashes.first!)")
            return (lines.joined(separator: "\n"), true)
        }
        // Name the tables that differ, so the operator knows which ALTER is still rolling out.
        let names = Set(entries.flatMap { $0.tables.keys }).sorted()
        for name in names {
            let byHash = Dictionary(grouping: entries, by: { $0.tables[name] ?? "(missing)" })
            guard byHash.count > 1 else { continue }
            let detail = byHash.keys.sorted().map { h in "\(h) on node(s) \(byHash[h]!.map { String($0.nodeID) }.joined(separator: ","))" }
            lines.append("table \(name) differs: \(detail.joined(separator: "; "))")
        }
        lines.append("nodes disagree: \(hashes.count) different schemas (a rolling upgrade in progress, or a node left behind)")
        return (lines.joined(separator: "\n"), false)
    }
}
