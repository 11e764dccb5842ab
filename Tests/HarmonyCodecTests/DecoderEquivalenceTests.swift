import HarmonyCodec
import HarmonySQLite
import HarmonyTestSupport
import Testing

/// The envelope codec writes and reads records in place (no CBOR tree). These tests hold it to the plain reading
/// of the format: a CBOR tree of the record map, encoded or decoded whole. Both must write the same bytes, accept
/// the same messages with the same records, and refuse the same messages with the same error.
@Suite("In-place envelope codec against the tree reading")
struct DecoderEquivalenceTests {
    /// The record map as a tree, keys 0–8 then the optional definition: the format as written down.
    static func referenceEncode(_ record: ChangeRecord) -> [UInt8] {
        func columns(_ cols: [ChangeRecord.Column]) -> CBOR {
            .array(cols.map { c in
                let value: CBOR
                switch c.value {
                case .null: value = .null
                case .integer(let i): value = CBOR(i)
                case .real(let d): value = .double(d)
                case .text(let s): value = .text(s)
                case .blob(let b): value = .bytes(b)
                }
                return .array([.text(c.name), value])
            })
        }
        var entries: [(CBOR, CBOR)] = [
            (.unsigned(0), .unsigned(EnvelopeCodec.envelopeVersion)), (.unsigned(1), CBOR(record.originNode)),
            (.unsigned(2), .text(record.table)), (.unsigned(3), .text(record.operation.rawValue)),
            (.unsigned(4), columns(record.primaryKey)), (.unsigned(5), columns(record.row)),
            (.unsigned(6), CBOR(record.version.hlc)), (.unsigned(7), CBOR(record.version.node)), (.unsigned(8), .text(record.schemaHash)),
        ]
        if let d = record.definition {
            entries.append((.unsigned(9), .array([CBOR(d.generation), CBOR(d.version.hlc), CBOR(d.version.node)])))
        }
        return CBOREncoder.encode(.map(entries))
    }

    /// Random records (every value type, integer widths at each head size, odd names): the same bytes as the tree.
    @Test func encodingMatchesTheTree() throws {
        var rng = SplitMix64(state: 0xE1C0DE)
        func randomInt() -> Int64 {
            let edges: [Int64] = [0, 23, 24, 255, 256, 65_535, 65_536, 4_294_967_295, 4_294_967_296, .max, -1, -24, -25, -256, -257, .min]
            return Bool.random(using: &rng) ? edges.randomElement(using: &rng)! : Int64.random(in: .min ... .max, using: &rng)
        }
        func randomValue() -> DatabaseValue {
            switch Int.random(in: 0..<5, using: &rng) {
            case 0: return .null
            case 1: return .integer(randomInt())
            case 2: return .real(Double(bitPattern: UInt64.random(in: 0 ... .max, using: &rng)))
            case 3: return .text(String(repeating: ["a", "é", "\"", "水", "😀"].randomElement(using: &rng)!, count: Int.random(in: 0..<40, using: &rng)))
            default: return .blob((0..<Int.random(in: 0..<300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
            }
        }
        for i in 0..<2_000 {
            let names = (0..<Int.random(in: 1..<30, using: &rng)).map { "c\($0)" + String(repeating: "x", count: Int.random(in: 0..<20, using: &rng)) }
            var r = ChangeRecord(originNode: randomInt(), table: "t \"\(i)\" ü", operation: i % 3 == 0 ? .delete : .upsert,
                                 primaryKey: [.init(names[0], randomValue())], row: names.map { .init($0, randomValue()) },
                                 version: RowVersion(hlc: randomInt(), node: randomInt()), schemaHash: String(i, radix: 16))
            if i % 2 == 0 { r.definition = TableDefinitionVersion(generation: Int64.random(in: 0...1_000, using: &rng), version: RowVersion(hlc: randomInt(), node: randomInt())) }
            #expect(try EnvelopeCodec.encode(r) == [EnvelopeCodec.formatPlain] + Self.referenceEncode(r))
            #expect(try EnvelopeCodec.encodeBatch([r, sampleRecord]) == [EnvelopeCodec.formatBatchPlain]
                    + CBOREncoder.encode(.array([try CBORDecoder.decode(Self.referenceEncode(r)), try CBORDecoder.decode(Self.referenceEncode(sampleRecord))])))
            let decoded = try EnvelopeCodec.decode(EnvelopeCodec.encode(r, compress: i % 5 == 0))
            // NaN payloads compare unequal as doubles; compare the bits through the encoding instead.
            #expect(try EnvelopeCodec.encode(decoded) == EnvelopeCodec.encode(r))
        }
    }

    /// The format as written down: the whole body as a CBOR tree first, then each field checked in order.
    static func referenceDecodeAll(_ bytes: [UInt8]) throws -> [ChangeRecord] {
        guard let format = bytes.first else { throw EnvelopeError.empty }
        let body = Array(bytes.dropFirst())
        switch format {
        case EnvelopeCodec.formatPlain: return [try referenceRecord(try CBORDecoder.decode(body))]
        case EnvelopeCodec.formatBatchPlain:
            guard case .array(let items) = try CBORDecoder.decode(body) else { throw EnvelopeError.malformed("batch is not an array") }
            guard !items.isEmpty, items.count <= EnvelopeCodec.batchRecordsMax else {
                throw EnvelopeError.malformed("batch has \(items.count) records")
            }
            return try items.map(referenceRecord)
        default: throw EnvelopeError.unknownFormat(format)
        }
    }

    static let keyNames = ["version", "origin", "table", "operation", "primaryKey", "row", "hlc", "versionNode", "schema", "definition"]

    static func referenceRecord(_ value: CBOR) throws -> ChangeRecord {
        guard case .map(let entries) = value else { throw EnvelopeError.malformed("record is not a map") }
        var fields = [CBOR?](repeating: nil, count: keyNames.count)
        var unknown = Set<UInt64>()
        for (k, v) in entries {
            guard case .unsigned(let key) = k else { throw EnvelopeError.malformed("map key is not an unsigned integer") }
            if key < UInt64(fields.count) {
                guard fields[Int(key)] == nil else { throw EnvelopeError.malformed("duplicate key \(key)") }
                fields[Int(key)] = v
            } else {
                guard unknown.insert(key).inserted else { throw EnvelopeError.malformed("duplicate key \(key)") }
            }
        }
        func field(_ i: Int) throws -> CBOR {
            guard let v = fields[i] else { throw EnvelopeError.malformed("missing field \(keyNames[i])") }
            return v
        }
        func int(_ i: Int) throws -> Int64 {
            guard let v = try field(i).int64 else { throw EnvelopeError.malformed("field \(keyNames[i]) is not a 64-bit integer") }
            return v
        }
        func text(_ i: Int) throws -> String {
            guard case .text(let s) = try field(i) else { throw EnvelopeError.malformed("field \(keyNames[i]) is not text") }
            return s
        }
        func columns(_ c: CBOR, _ what: String) throws -> [ChangeRecord.Column] {
            guard case .array(let items) = c else { throw EnvelopeError.malformed("\(what) is not an array") }
            var out: [ChangeRecord.Column] = []
            for item in items {
                guard case .array(let pair) = item, pair.count == 2, case .text(let name) = pair[0] else {
                    throw EnvelopeError.malformed("\(what) entry is not a [name, value] pair")
                }
                guard !out.contains(where: { $0.name == name }) else { throw EnvelopeError.malformed("\(what) repeats column \(name)") }
                let value: DatabaseValue
                switch pair[1] {
                case .null: value = .null
                case .unsigned, .negative:
                    guard let i = pair[1].int64 else { throw EnvelopeError.malformed("integer for column \(name) exceeds 64 bits") }
                    value = .integer(i)
                case .double(let d): value = .real(d)
                case .text(let s): value = .text(s)
                case .bytes(let b): value = .blob(b)
                default: throw EnvelopeError.malformed("value for column \(name) has an unsupported type")
                }
                out.append(.init(name, value))
            }
            return out
        }
        guard case .unsigned(let version) = try field(0), version == EnvelopeCodec.envelopeVersion else {
            throw EnvelopeError.malformed("unsupported envelope version")
        }
        guard let operation = ChangeOperation(rawValue: try text(3)) else { throw EnvelopeError.malformed("unknown operation") }
        let table = try text(2)
        guard !table.isEmpty else { throw EnvelopeError.malformed("empty table name") }
        let key = try columns(try field(4), "primary key")
        guard !key.isEmpty else { throw EnvelopeError.malformed("empty primary key") }
        let row = try columns(try field(5), "row")
        if operation == .upsert && row.isEmpty { throw EnvelopeError.malformed("upsert without row values") }
        var record = ChangeRecord(originNode: try int(1), table: table, operation: operation, primaryKey: key, row: row,
                                  version: RowVersion(hlc: try int(6), node: try int(7)), schemaHash: try text(8))
        if let d = fields[9] {
            guard case .array(let parts) = d, parts.count == 3, let g = parts[0].int64, g >= 0,
                  let h = parts[1].int64, let n = parts[2].int64 else {
                throw EnvelopeError.malformed("table definition version is not a generation and a version")
            }
            record.definition = TableDefinitionVersion(generation: g, version: RowVersion(hlc: h, node: n))
        }
        return record
    }

    /// Either both decoders fail with the same error, or both return the same records.
    static func outcome(_ decode: () throws -> [ChangeRecord]) -> String {
        do { return "ok \(try decode())" } catch { return "error \(error)" }
    }

    static var samples: [[UInt8]] {
        var defined = sampleRecord
        defined.definition = TableDefinitionVersion(generation: 2, version: RowVersion(hlc: 99, node: 4))
        var deleted = sampleRecord
        deleted.operation = .delete
        deleted.row = []
        var long = sampleRecord
        long.table = "a table name well past fifteen bytes"
        long.row.append(.init("a column name well past fifteen bytes", .text("ünïcödé text well past fifteen bytes")))
        return [
            try! EnvelopeCodec.encode(sampleRecord), try! EnvelopeCodec.encode(defined),
            try! EnvelopeCodec.encodeBatch([sampleRecord, deleted, defined, long, long, sampleRecord]),
        ]
    }

    @Test func validMessagesDecodeAlike() throws {
        for bytes in Self.samples {
            let decoded = try EnvelopeCodec.decodeAll(bytes)
            #expect(decoded == (try Self.referenceDecodeAll(bytes)))
            #expect(!decoded.isEmpty)
        }
    }

    /// Random byte edits of valid single and batched messages: the same records or the same error, every time.
    @Test func mutatedMessagesDecodeAlike() {
        var rng = SplitMix64(state: 0xDEC0DE)
        let samples = Self.samples
        var accepted = 0, refused = 0
        for i in 0..<30_000 {
            var input = samples[i % samples.count]
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let at = Int.random(in: 1..<input.count, using: &rng)
                switch Int.random(in: 0..<4, using: &rng) {
                case 0: input[at] = UInt8.random(in: 0...255, using: &rng)
                case 1: input[at] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
                case 2: input.removeSubrange(at...)
                default: input.insert(UInt8.random(in: 0...255, using: &rng), at: at)
                }
                if input.count < 2 { break }
            }
            let new = Self.outcome { try EnvelopeCodec.decodeAll(input) }
            let reference = Self.outcome { try Self.referenceDecodeAll(input) }
            #expect(new == reference, "input \(input)")
            if new != reference { return }
            if new.hasPrefix("ok") { accepted += 1 } else { refused += 1 }
        }
        // Both kinds occur, so the comparison covers success and refusal.
        #expect(accepted > 1_000 && refused > 1_000, "accepted \(accepted), refused \(refused)")
    }

    /// Text anywhere, even under a key this version ignores, must be valid UTF-8; a well-formed later key is ignored.
    @Test func invalidTextIsRefusedWhereverItIs() throws {
        guard case .map(let m) = try CBORDecoder.decode(Array(try EnvelopeCodec.encode(sampleRecord).dropFirst())) else {
            Issue.record("not a map"); return
        }
        let good = [UInt8(0x01)] + CBOREncoder.encode(.map(m + [(.unsigned(40), .text("é"))]))
        #expect(try EnvelopeCodec.decode(good) == sampleRecord)
        var bad = good
        bad[bad.count - 1] = 0xFF  // the last byte of "é" (0xC3 0xA9)
        #expect(throws: CBORError.invalidUTF8(offset: bad.count - 4)) { try EnvelopeCodec.decode(bad) }
    }
}
