import HarmonySQLite

public enum EnvelopeError: Error, CustomStringConvertible, Equatable {
    case empty
    case unknownFormat(UInt8)
    case malformed(String)

    public var description: String {
        switch self {
        case .empty: return "change message is empty"
        case .unknownFormat(let b): return "change message has unknown format byte 0x\(String(b, radix: 16))"
        case .malformed(let why): return "change message is malformed: \(why)"
        }
    }
}

/// The wire form of a `ChangeRecord`: one format byte, then a CBOR map with small integer keys.
///
/// Format byte 0x01 is plain CBOR, 0x02 is CBOR compressed with zstd. The map carries an
/// envelope version (key 0) so later versions can add keys; unknown keys are ignored.
public enum EnvelopeCodec {
    public static let formatPlain: UInt8 = 0x01
    public static let formatZstd: UInt8 = 0x02
    /// Several records of one shard in one message (a CBOR array of record maps), amortising the log's per-message cost.
    public static let formatBatchPlain: UInt8 = 0x03
    public static let formatBatchZstd: UInt8 = 0x04
    /// A batch larger than this is refused on decode.
    public static let batchRecordsMax = 100_000
    public static let envelopeVersion: UInt64 = 1
    /// A decompressed message larger than this is refused (zip-bomb guard).
    public static let decompressedBytesMax = 64 << 20

    enum Key: UInt64 {
        case version = 0, origin = 1, table = 2, operation = 3, primaryKey = 4, row = 5, hlc = 6, versionNode = 7, schema = 8
        /// Optional: [generation, hlc, node] of the table definition (replicated DDL).
        case definition = 9
    }

    public static func encode(_ record: ChangeRecord, compress: Bool = false) throws -> [UInt8] {
        let body = CBOREncoder.encode(recordMap(record))
        if compress { return [formatZstd] + (try Zstd.compress(body)) }
        return [formatPlain] + body
    }

    /// One message carrying several records, applied in order and atomically by the receiver.
    public static func encodeBatch(_ records: [ChangeRecord], compress: Bool = false) throws -> [UInt8] {
        precondition(!records.isEmpty && records.count <= batchRecordsMax, "batch of \(records.count) records")
        let body = CBOREncoder.encode(.array(records.map(recordMap)))
        if compress { return [formatBatchZstd] + (try Zstd.compress(body)) }
        return [formatBatchPlain] + body
    }

    /// Decodes either format into the records it carries, in order.
    /// `decompressedLimit`: a receiver that accepts rows above the default passes its own `max_row_bytes` here.
    public static func decodeAll(_ bytes: [UInt8], decompressedLimit: Int = decompressedBytesMax) throws -> [ChangeRecord] {
        guard let format = bytes.first else { throw EnvelopeError.empty }
        guard format == formatBatchPlain || format == formatBatchZstd else { return [try decode(bytes, decompressedLimit: decompressedLimit)] }
        let body = format == formatBatchZstd
            ? try Zstd.decompress(Array(bytes.dropFirst()), limit: decompressedLimit) : Array(bytes.dropFirst())
        guard case .array(let items) = try CBORDecoder.decode(body) else { throw EnvelopeError.malformed("batch is not an array") }
        guard !items.isEmpty, items.count <= batchRecordsMax else { throw EnvelopeError.malformed("batch has \(items.count) records") }
        return try items.map(record)
    }

    static func recordMap(_ record: ChangeRecord) -> CBOR {
        var entries: [(CBOR, CBOR)] = [
            (.unsigned(Key.version.rawValue), .unsigned(envelopeVersion)),
            (.unsigned(Key.origin.rawValue), CBOR(record.originNode)),
            (.unsigned(Key.table.rawValue), .text(record.table)),
            (.unsigned(Key.operation.rawValue), .text(record.operation.rawValue)),
            (.unsigned(Key.primaryKey.rawValue), columns(record.primaryKey)),
            (.unsigned(Key.row.rawValue), columns(record.row)),
            (.unsigned(Key.hlc.rawValue), CBOR(record.version.hlc)),
            (.unsigned(Key.versionNode.rawValue), CBOR(record.version.node)),
            (.unsigned(Key.schema.rawValue), .text(record.schemaHash)),
        ]
        if let d = record.definition {
            entries.append((.unsigned(Key.definition.rawValue),
                            .array([CBOR(d.generation), CBOR(d.version.hlc), CBOR(d.version.node)])))
        }
        return .map(entries)
    }

    public static func decode(_ bytes: [UInt8], decompressedLimit: Int = decompressedBytesMax) throws -> ChangeRecord {
        guard let format = bytes.first else { throw EnvelopeError.empty }
        let body: [UInt8]
        switch format {
        case formatPlain: body = Array(bytes.dropFirst())
        case formatZstd: body = try Zstd.decompress(Array(bytes.dropFirst()), limit: decompressedLimit)
        case formatPart: throw EnvelopeError.malformed("this is one part of a split message; it decodes only joined with the others")
        default: throw EnvelopeError.unknownFormat(format)
        }
        return try record(try CBORDecoder.decode(body))
    }

    static func record(_ value: CBOR) throws -> ChangeRecord {
        guard case .map(let entries) = value else {
            throw EnvelopeError.malformed("record is not a map")
        }
        // Known keys are 0...9: a fixed table instead of a dictionary per record (this runs for every change applied).
        var fields = [CBOR?](repeating: nil, count: Int(Key.definition.rawValue) + 1)
        var unknownKeys = Set<UInt64>()
        for (k, v) in entries {
            guard case .unsigned(let key) = k else { throw EnvelopeError.malformed("map key is not an unsigned integer") }
            if key < UInt64(fields.count) {
                guard fields[Int(key)] == nil else { throw EnvelopeError.malformed("duplicate key \(key)") }
                fields[Int(key)] = v
            } else {
                // Unknown keys (a later envelope version) are ignored, but still must not repeat.
                guard unknownKeys.insert(key).inserted else { throw EnvelopeError.malformed("duplicate key \(key)") }
            }
        }
        func field(_ key: Key) throws -> CBOR {
            guard let v = fields[Int(key.rawValue)] else { throw EnvelopeError.malformed("missing field \(key)") }
            return v
        }
        func int(_ key: Key) throws -> Int64 {
            guard let v = try field(key).int64 else { throw EnvelopeError.malformed("field \(key) is not a 64-bit integer") }
            return v
        }
        func text(_ key: Key) throws -> String {
            guard case .text(let s) = try field(key) else { throw EnvelopeError.malformed("field \(key) is not text") }
            return s
        }
        guard case .unsigned(let version) = try field(.version), version == envelopeVersion else {
            throw EnvelopeError.malformed("unsupported envelope version")
        }
        guard let operation = ChangeOperation(rawValue: try text(.operation)) else {
            throw EnvelopeError.malformed("unknown operation")
        }
        let table = try text(.table)
        guard !table.isEmpty else { throw EnvelopeError.malformed("empty table name") }
        let primaryKey = try decodeColumns(try field(.primaryKey), what: "primary key")
        guard !primaryKey.isEmpty else { throw EnvelopeError.malformed("empty primary key") }
        let row = try decodeColumns(try field(.row), what: "row")
        if operation == .upsert && row.isEmpty { throw EnvelopeError.malformed("upsert without row values") }
        var decoded = ChangeRecord(originNode: try int(.origin), table: table, operation: operation,
                                   primaryKey: primaryKey, row: row,
                                   version: RowVersion(hlc: try int(.hlc), node: try int(.versionNode)),
                                   schemaHash: try text(.schema))
        if let d = fields[Int(Key.definition.rawValue)] {
            guard case .array(let parts) = d, parts.count == 3, let g = parts[0].int64, g >= 0,
                  let h = parts[1].int64, let n = parts[2].int64 else {
                throw EnvelopeError.malformed("table definition version is not a generation and a version")
            }
            decoded.definition = TableDefinitionVersion(generation: g, version: RowVersion(hlc: h, node: n))
        }
        return decoded
    }

    /// Columns travel as an array of [name, value] pairs so their order is kept.
    static func columns(_ cols: [ChangeRecord.Column]) -> CBOR {
        .array(cols.map { .array([.text($0.name), value($0.value)]) })
    }

    static func value(_ v: DatabaseValue) -> CBOR {
        switch v {
        case .null: return .null
        case .integer(let i): return CBOR(i)
        case .real(let d): return .double(d)
        case .text(let s): return .text(s)
        case .blob(let b): return .bytes(b)
        }
    }

    static func decodeColumns(_ c: CBOR, what: String) throws -> [ChangeRecord.Column] {
        guard case .array(let items) = c else { throw EnvelopeError.malformed("\(what) is not an array") }
        var columns: [ChangeRecord.Column] = []
        columns.reserveCapacity(items.count)
        // Rows are short: a linear scan finds a repeated name faster than hashing; a set only for wide (or hostile) rows.
        var seen: Set<String>? = items.count > 32 ? Set(minimumCapacity: items.count) : nil
        for item in items {
            guard case .array(let pair) = item, pair.count == 2, case .text(let name) = pair[0] else {
                throw EnvelopeError.malformed("\(what) entry is not a [name, value] pair")
            }
            let repeated = seen != nil ? !seen!.insert(name).inserted : columns.contains { $0.name == name }
            guard !repeated else { throw EnvelopeError.malformed("\(what) repeats column \(name)") }
            columns.append(ChangeRecord.Column(name, try databaseValue(pair[1], column: name)))
        }
        return columns
    }

    static func databaseValue(_ c: CBOR, column: String) throws -> DatabaseValue {
        switch c {
        case .null: return .null
        case .unsigned, .negative:
            guard let i = c.int64 else { throw EnvelopeError.malformed("integer for column \(column) exceeds 64 bits") }
            return .integer(i)
        case .double(let d): return .real(d)
        case .text(let s): return .text(s)
        case .bytes(let b): return .blob(b)
        default: throw EnvelopeError.malformed("value for column \(column) has an unsupported type")
        }
    }
}
