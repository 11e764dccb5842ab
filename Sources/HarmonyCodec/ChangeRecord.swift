import HarmonySQLite

/// A row's version: hybrid-logical timestamp, then the writing node's id; a total order for last-writer-wins.
public struct RowVersion: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Physical milliseconds in the upper 48 bits, a logical counter in the lower 16.
    public var hlc: Int64
    public var node: Int64

    public init(hlc: Int64, node: Int64) {
        self.hlc = hlc
        self.node = node
    }

    public static func < (a: RowVersion, b: RowVersion) -> Bool {
        a.hlc != b.hlc ? a.hlc < b.hlc : a.node < b.node
    }

    /// The version of what existed before capture was first installed: below every real write.
    public static let zero = RowVersion(hlc: 0, node: 0)
    public static let logicalBits: Int64 = 16
    public var physicalMs: Int64 { hlc >> Self.logicalBits }
    public var logical: Int64 { hlc & ((1 << Self.logicalBits) - 1) }
    public var description: String { "\(physicalMs).\(logical)@\(node)" }
}

public enum ChangeOperation: String, Sendable, Hashable {
    /// Insert or update: carries the full row, so it can recreate a row another node deleted earlier.
    case upsert
    /// Carries only the primary key; leaves a tombstone on the receiver.
    case delete
}

/// Names one definition of a table among replicated DDL: its generation (how many times a table of that name was
/// dropped before it) and the version of its latest CREATE or ALTER. A receiver compares it with its own to tell a
/// row of a dropped table, or one written under an older or losing definition, from one under a newer definition.
public struct TableDefinitionVersion: Sendable, Hashable {
    public var generation: Int64
    public var version: RowVersion
    public init(generation: Int64, version: RowVersion) {
        self.generation = generation
        self.version = version
    }
}

/// One captured change to one row, as it travels between nodes.
public struct ChangeRecord: Sendable, Hashable {
    public var originNode: Int64
    public var table: String
    public var operation: ChangeOperation
    /// Primary-key columns in key order, with their values.
    public var primaryKey: [Column]
    /// Every column of the row (empty for delete), in the table's column order.
    public var row: [Column]
    public var version: RowVersion
    /// The sender's schema hash for this table at write time.
    public var schemaHash: String
    /// With replicated DDL: which definition of the table the row was read under (see `TableDefinitionVersion`).
    public var definition: TableDefinitionVersion?

    public struct Column: Sendable, Hashable {
        public var name: String
        public var value: DatabaseValue
        public init(_ name: String, _ value: DatabaseValue) {
            self.name = name
            self.value = value
        }
    }

    public init(originNode: Int64, table: String, operation: ChangeOperation, primaryKey: [Column],
                row: [Column], version: RowVersion, schemaHash: String) {
        self.originNode = originNode
        self.table = table
        self.operation = operation
        self.primaryKey = primaryKey
        self.row = row
        self.version = version
        self.schemaHash = schemaHash
    }

    /// The key as an operator reads it in logs and `-parked`: `id=5, region='eu'`.
    public var keyDescription: String { primaryKey.map { "\($0.name)=\($0.value)" }.joined(separator: ", ") }

    /// The id JetStream deduplicates on: stable across republishing, unique per change. Version plus a stable
    /// hash of table and key: a node gives each change its own version, but a clock that fell back (a power loss
    /// and a backwards clock step) could repeat one, and two rows must then still be two messages.
    public var messageID: String {
        "\(version.node)-\(version.hlc)-\(operation == .delete ? "d" : "u")-\(rowHash.hex)"
    }

    /// What `messageID` says, fed to a batch's hash without making the string (this runs for every published change).
    public func combineIdentity(into h: inout StableHash) {
        h.combine(version.node)
        h.combine(version.hlc)
        h.combine(byte: operation == .delete ? 1 : 0)
        h.combine(Int64(bitPattern: rowHash.value))
    }

    private var rowHash: StableHash {
        var h = StableHash()
        h.combine(table)
        for c in primaryKey { h.combine(c.value) }
        return h
    }
}
