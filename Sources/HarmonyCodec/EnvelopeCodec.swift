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
        var out: [UInt8] = []
        out.reserveCapacity(Self.reserveBytesPerRecord)
        if compress {
            writeRecord(record, into: &out)
            return [formatZstd] + (try Zstd.compress(out))
        }
        out.append(formatPlain)
        writeRecord(record, into: &out)
        return out
    }

    /// One message carrying several records, applied in order and atomically by the receiver.
    public static func encodeBatch(_ records: [ChangeRecord], compress: Bool = false) throws -> [UInt8] {
        precondition(!records.isEmpty && records.count <= batchRecordsMax, "batch of \(records.count) records")
        var out: [UInt8] = []
        out.reserveCapacity(records.count * Self.reserveBytesPerRecord)
        if !compress { out.append(formatBatchPlain) }
        CBOREncoder.head(4, UInt64(records.count), into: &out)
        for r in records { writeRecord(r, into: &out) }
        if compress { return [formatBatchZstd] + (try Zstd.compress(out)) }
        return out
    }

    /// Decodes either format into the records it carries, in order.
    /// `decompressedLimit`: a receiver that accepts rows above the default passes its own `max_row_bytes` here.
    public static func decodeAll(_ bytes: [UInt8], decompressedLimit: Int = decompressedBytesMax) throws -> [ChangeRecord] {
        guard let format = bytes.first else { throw EnvelopeError.empty }
        guard format == formatBatchPlain || format == formatBatchZstd else { return [try decode(bytes, decompressedLimit: decompressedLimit)] }
        return try withCheckedBody(bytes, compressed: format == formatBatchZstd, limit: decompressedLimit) { reader in
            let h = try reader.head()
            guard h.major == 4 else { throw EnvelopeError.malformed("batch is not an array") }
            let count = try reader.length(h, minBytesEach: 1)
            guard count > 0, count <= batchRecordsMax else { throw EnvelopeError.malformed("batch has \(count) records") }
            var records: [ChangeRecord] = []
            records.reserveCapacity(count)
            var previous: ChangeRecord?
            for _ in 0..<count {
                let r = try record(&reader, like: previous, valueDepth: 2)
                records.append(r)
                previous = r
            }
            return records
        }
    }

    /// Writes a record's map straight into `out` (no tree of the whole record): keys 0–8 in order, then 9 when the
    /// record names its table definition. Each value is written by `CBOREncoder`.
    static func writeRecord(_ record: ChangeRecord, into out: inout [UInt8]) {
        func put(_ value: CBOR) { CBOREncoder.encode(value, into: &out) }
        func put(_ key: Key, _ value: CBOR) { put(.unsigned(key.rawValue)); put(value) }
        func columns(_ cols: [ChangeRecord.Column]) {
            CBOREncoder.head(4, UInt64(cols.count), into: &out)
            for c in cols {
                out.append(0x82)  // [name, value]
                put(.text(c.name))
                put(value(c.value))
            }
        }
        CBOREncoder.head(5, record.definition == nil ? 9 : 10, into: &out)
        put(.version, .unsigned(envelopeVersion))
        put(.origin, CBOR(record.originNode))
        put(.table, .text(record.table))
        put(.operation, .text(record.operation.rawValue))
        put(.unsigned(Key.primaryKey.rawValue)); columns(record.primaryKey)
        put(.unsigned(Key.row.rawValue)); columns(record.row)
        put(.hlc, CBOR(record.version.hlc))
        put(.versionNode, CBOR(record.version.node))
        put(.schema, .text(record.schemaHash))
        if let d = record.definition {
            put(.definition, .array([CBOR(d.generation), CBOR(d.version.hlc), CBOR(d.version.node)]))
        }
    }

    /// A column value as CBOR: integers, floats, text and bytes as themselves, NULL as null.
    static func value(_ v: DatabaseValue) -> CBOR {
        switch v {
        case .null: return .null
        case .integer(let i): return CBOR(i)
        case .real(let d): return .double(d)
        case .text(let s): return .text(s)
        case .blob(let b): return .bytes(b)
        }
    }

    /// Room reserved per record before encoding: a small row's size, so most messages are written without growing
    /// the buffer (a larger one grows it as usual).
    static let reserveBytesPerRecord = 160

    public static func decode(_ bytes: [UInt8], decompressedLimit: Int = decompressedBytesMax) throws -> ChangeRecord {
        guard let format = bytes.first else { throw EnvelopeError.empty }
        switch format {
        case formatPlain, formatZstd:
            return try withCheckedBody(bytes, compressed: format == formatZstd, limit: decompressedLimit) { reader in
                try record(&reader, like: nil, valueDepth: 1)
            }
        case formatPart: throw EnvelopeError.malformed("this is one part of a split message; it decodes only joined with the others")
        default: throw EnvelopeError.unknownFormat(format)
        }
    }

    /// Runs `decode` on the message's CBOR body (after the format byte, decompressed if need be), so that a malformed
    /// body fails with the CBOR error wherever it lies, before any check of the record's fields.
    ///
    /// A body that decodes is read once: `decode` checks each value it passes on the way, as the whole-body walk
    /// would (so it must read exactly one top-level item, skipping values at the walk's depths). Only a body that
    /// fails, or leaves bytes after its item, is walked whole, to report the CBOR error first where there is one.
    static func withCheckedBody<T>(_ bytes: [UInt8], compressed: Bool, limit: Int,
                                   _ decode: (inout CBORReader) throws -> T) throws -> T {
        func checked(_ body: UnsafeBufferPointer<UInt8>) throws -> T {
            func wholeBodyCheck() throws {
                var walk = CBORReader(body)
                try walk.skip(depth: 0)
                guard walk.offset == body.count else { throw CBORError.trailingBytes(offset: walk.offset) }
            }
            var reader = CBORReader(body)
            let decoded: T
            do {
                decoded = try decode(&reader)
            } catch {
                try wholeBodyCheck()
                throw error
            }
            guard reader.offset == body.count else {
                try wholeBodyCheck()
                throw CBORError.trailingBytes(offset: reader.offset)
            }
            return decoded
        }
        if compressed {
            return try Zstd.decompress(Array(bytes.dropFirst()), limit: limit).withUnsafeBufferPointer(checked)
        }
        return try bytes.withUnsafeBufferPointer { try checked(UnsafeBufferPointer(rebasing: $0[1...])) }
    }

    /// One record map, read in place, every value checked as it is skipped (`withCheckedBody`). `previous`, the batch's record before it, lends its
    /// table name, schema hash and column names when the bytes are the same, so a batch allocates them once.
    /// `valueDepth`: the nesting depth of the record's values in the whole body (1 alone, 2 in a batch).
    static func record(_ reader: inout CBORReader, like previous: ChangeRecord?, valueDepth: Int) throws -> ChangeRecord {
        let map = try reader.head()
        guard map.major == 5 else { throw EnvelopeError.malformed("record is not a map") }
        // Known keys are 0...9: where each one's value starts, found in one pass over the map.
        let known = Int(Key.definition.rawValue) + 1
        return try withUnsafeTemporaryAllocation(of: Int.self, capacity: known) { at in
            at.initialize(repeating: -1)
            var unknownKeys = Set<UInt64>()
            // Checked against the bytes left, as the whole-body walk does (a hostile length would not fit an Int).
            for _ in 0..<(try reader.length(map, minBytesEach: 2)) {
                let k = try reader.head()
                guard k.major == 0 else { throw EnvelopeError.malformed("map key is not an unsigned integer") }
                if k.argument < UInt64(known) {
                    guard at[Int(k.argument)] < 0 else { throw EnvelopeError.malformed("duplicate key \(k.argument)") }
                    at[Int(k.argument)] = reader.offset
                } else {
                    // Unknown keys (a later envelope version) are ignored, but still must not repeat.
                    guard unknownKeys.insert(k.argument).inserted else { throw EnvelopeError.malformed("duplicate key \(k.argument)") }
                }
                try reader.skip(depth: valueDepth)
            }
            let body = reader.bytes
            /// A field's head, and a reader just past it.
            func field(_ key: Key) throws -> (head: CBORReader.Head, reader: CBORReader) {
                let offset = at[Int(key.rawValue)]
                guard offset >= 0 else { throw EnvelopeError.malformed("missing field \(key)") }
                var r = CBORReader(body, at: offset)
                return (try r.head(), r)
            }
            func int(_ key: Key) throws -> Int64 {
                guard let v = CBORReader.int64(try field(key).head) else { throw EnvelopeError.malformed("field \(key) is not a 64-bit integer") }
                return v
            }
            func text(_ key: Key, like known: String?) throws -> String {
                var (h, r) = try field(key)
                guard h.major == 3 else { throw EnvelopeError.malformed("field \(key) is not text") }
                if let known, r.textEquals(h, known) { return known }
                return r.text(h)
            }
            let version = try field(.version).head
            guard version.major == 0, version.argument == envelopeVersion else {
                throw EnvelopeError.malformed("unsupported envelope version")
            }
            guard let operation = ChangeOperation(rawValue: try text(.operation, like: previous?.operation.rawValue)) else {
                throw EnvelopeError.malformed("unknown operation")
            }
            let table = try text(.table, like: previous?.table)
            guard !table.isEmpty else { throw EnvelopeError.malformed("empty table name") }
            let primaryKey = try decodeColumns(try field(.primaryKey), what: "primary key", like: previous?.primaryKey)
            guard !primaryKey.isEmpty else { throw EnvelopeError.malformed("empty primary key") }
            let row = try decodeColumns(try field(.row), what: "row", like: previous?.row)
            if operation == .upsert && row.isEmpty { throw EnvelopeError.malformed("upsert without row values") }
            var decoded = ChangeRecord(originNode: try int(.origin), table: table, operation: operation,
                                       primaryKey: primaryKey, row: row,
                                       version: RowVersion(hlc: try int(.hlc), node: try int(.versionNode)),
                                       schemaHash: try text(.schema, like: previous?.schemaHash))
            if at[Int(Key.definition.rawValue)] >= 0 {
                var (h, r) = try field(.definition)
                func part() throws -> Int64? { CBORReader.int64(try r.head()) }
                guard h.major == 4, h.argument == 3, let g = try part(), g >= 0, let hlc = try part(), let node = try part() else {
                    throw EnvelopeError.malformed("table definition version is not a generation and a version")
                }
                decoded.definition = TableDefinitionVersion(generation: g, version: RowVersion(hlc: hlc, node: node))
            }
            return decoded
        }
    }

    // Columns travel as an array of [name, value] pairs so their order is kept.

    /// A column list read in place; `like` (the previous record's list) lends names with the same bytes.
    static func decodeColumns(_ field: (head: CBORReader.Head, reader: CBORReader), what: String,
                              like previous: [ChangeRecord.Column]?) throws -> [ChangeRecord.Column] {
        var (list, reader) = field
        guard list.major == 4 else { throw EnvelopeError.malformed("\(what) is not an array") }
        let count = Int(list.argument)
        var columns: [ChangeRecord.Column] = []
        columns.reserveCapacity(count)
        // Rows are short: a linear scan finds a repeated name faster than hashing; a set only for wide (or hostile) rows.
        var seen: Set<String>? = count > 32 ? Set(minimumCapacity: count) : nil
        for i in 0..<count {
            let pair = try reader.head()
            guard pair.major == 4, pair.argument == 2 else { throw EnvelopeError.malformed("\(what) entry is not a [name, value] pair") }
            let nameHead = try reader.head()
            guard nameHead.major == 3 else { throw EnvelopeError.malformed("\(what) entry is not a [name, value] pair") }
            let name: String
            if let previous, i < previous.count, reader.textEquals(nameHead, previous[i].name) {
                name = previous[i].name
            } else {
                name = reader.text(nameHead)
            }
            let repeated = seen != nil ? !seen!.insert(name).inserted : columns.contains { $0.name == name }
            guard !repeated else { throw EnvelopeError.malformed("\(what) repeats column \(name)") }
            let v = try reader.head()
            let value: DatabaseValue
            switch v.major {
            case 0, 1:
                guard let i = CBORReader.int64(v) else { throw EnvelopeError.malformed("integer for column \(name) exceeds 64 bits") }
                value = .integer(i)
            case 2: value = .blob(reader.blob(v))
            case 3: value = .text(reader.text(v))
            case 7 where v.info == 22: value = .null
            case 7 where CBORReader.double(v) != nil: value = .real(CBORReader.double(v)!)
            default: throw EnvelopeError.malformed("value for column \(name) has an unsupported type")
            }
            columns.append(ChangeRecord.Column(name, value))
        }
        return columns
    }
}
