import HarmonyTestSupport
import HarmonyCodec
import HarmonySQLite
import Testing

let sampleRecord = ChangeRecord(
    originNode: 3, table: "my \"table\"", operation: .upsert,
    primaryKey: [.init("id", .integer(Int64.min)), .init("k", "ü")],
    row: [.init("id", .integer(Int64.min)), .init("k", "ü"), .init("r", .real(-2.5)), .init("b", .blob([0, 9])), .init("n", .null)],
    version: RowVersion(hlc: 0x0123_4567_89AB_CDEF, node: 3), schemaHash: "00ff00ff00ff00ff")

@Suite("CBOR and the change envelope")
struct CodecTests {
    /// Vectors from RFC 8949 appendix A.
    @Test func encodesRFCVectors() {
        #expect(CBOREncoder.encode(.unsigned(1_000_000)) == [0x1a, 0x00, 0x0f, 0x42, 0x40])
        #expect(CBOREncoder.encode(.unsigned(18_446_744_073_709_551_615)) == [0x1b] + Array(repeating: 0xff, count: 8))
        #expect(CBOREncoder.encode(CBOR(-1000)) == [0x39, 0x03, 0xe7])
        #expect(CBOREncoder.encode(.double(1.1)) == [0xfb, 0x3f, 0xf1, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a])
        #expect(CBOREncoder.encode(.text("\u{6c34}")) == [0x63, 0xe6, 0xb0, 0xb4])
        #expect(CBOREncoder.encode(.array([.unsigned(1), .array([.unsigned(2), .unsigned(3)])])) == [0x82, 0x01, 0x82, 0x02, 0x03])
    }

    @Test func decodesHalfAndSinglePrecision() throws {
        #expect(try CBORDecoder.decode([0xf9, 0x3c, 0x00]) == .double(1.0))
        #expect(try CBORDecoder.decode([0xf9, 0xc4, 0x00]) == .double(-4.0))
        #expect(try CBORDecoder.decode([0xfa, 0x47, 0xc3, 0x50, 0x00]) == .double(100000.0))
    }

    @Test(arguments: [false, true])
    func envelopeRoundTrips(compress: Bool) throws {
        let bytes = try EnvelopeCodec.encode(sampleRecord, compress: compress)
        #expect(bytes.first == (compress ? EnvelopeCodec.formatZstd : EnvelopeCodec.formatPlain))
        #expect(try EnvelopeCodec.decode(bytes) == sampleRecord)
    }

    @Test func compressionShrinksRepetitiveRows() throws {
        var big = sampleRecord
        big.row.append(.init("text", .text(String(repeating: "abc", count: 5000))))
        #expect(try EnvelopeCodec.encode(big, compress: true).count < EnvelopeCodec.encode(big).count / 10)
        #expect(try EnvelopeCodec.decode(EnvelopeCodec.encode(big, compress: true)) == big)
    }

    @Test func hostileLengthsThrowWithoutAllocating() {
        // An array claiming 2^64-1 elements in 9 bytes, a text claiming 4 GiB, nesting 10,000 deep.
        #expect(throws: CBORError.self) { try CBORDecoder.decode([0x9b] + Array(repeating: 0xff, count: 8)) }
        #expect(throws: CBORError.self) { try CBORDecoder.decode([0x7a, 0xff, 0xff, 0xff, 0xff, 0x61]) }
        #expect(throws: CBORError.self) { try CBORDecoder.decode(Array(repeating: 0x81, count: 10_000) + [0x00]) }
        #expect(throws: CBORError.self) { try CBORDecoder.decode([0x62, 0xff, 0xfe]) }  // invalid UTF-8
        #expect(throws: CBORError.self) { try CBORDecoder.decode([0x01, 0x02]) }  // trailing bytes
        #expect(throws: CBORError.self) { try CBORDecoder.decode([0x9f, 0xff]) }  // indefinite length
    }

    /// Found by the fuzzer: a byte string whose declared length exceeds what remains, inside a map.
    @Test func overlongByteStringInsideMapThrows() {
        let input: [UInt8] = [1, 170, 88, 41, 4, 191, 2, 90, 3, 62, 3, 72, 69, 97, 198, 73, 127, 95, 178, 206, 75, 178, 110,
                              149, 95, 229, 230, 171, 76, 162, 158, 74, 28, 21, 215, 232, 227, 21, 52, 0, 219, 181, 10, 43]
        #expect(throws: CBORError.self) { try EnvelopeCodec.decode(input) }
        #expect(throws: CBORError.self) { try CBORDecoder.decode([0x58, 0x05, 0x01]) }
        #expect(throws: CBORError.self) { try CBORDecoder.decode([0x65, 0x61]) }
    }

    @Test func zipBombIsRefused() throws {
        let body = CBOREncoder.encode(.bytes(Array(repeating: 0, count: EnvelopeCodec.decompressedBytesMax + 1)))
        let bomb = [EnvelopeCodec.formatZstd] + (try Zstd.compress(body))
        #expect(bomb.count < 100_000)
        #expect(throws: ZstdError.self) { try EnvelopeCodec.decode(bomb) }
    }

    @Test func integerOutsideInt64IsRejected() throws {
        var fields: [(CBOR, CBOR)] = []
        guard case .map(let m) = try CBORDecoder.decode(Array(try EnvelopeCodec.encode(sampleRecord).dropFirst())) else {
            Issue.record("not a map"); return
        }
        fields = m.map { k, v in k == .unsigned(6) ? (k, .unsigned(UInt64.max)) : (k, v) }
        #expect(throws: EnvelopeError.self) { try EnvelopeCodec.decode([0x01] + CBOREncoder.encode(.map(fields))) }
    }

    /// The decoder's checks on the record map and column lists, which user data and hostile senders both reach.
    @Test func recordMapAndColumnListsAreValidated() throws {
        guard case .map(let m) = try CBORDecoder.decode(Array(try EnvelopeCodec.encode(sampleRecord).dropFirst())) else {
            Issue.record("not a map"); return
        }
        func decode(_ entries: [(CBOR, CBOR)]) throws -> ChangeRecord { try EnvelopeCodec.decode([0x01] + CBOREncoder.encode(.map(entries))) }
        // A later envelope version's extra key is ignored; the same key twice (known or not) is refused.
        #expect(try decode(m + [(.unsigned(40), .text("future"))]) == sampleRecord)
        #expect(throws: EnvelopeError.malformed("duplicate key 2")) { try decode(m + [(.unsigned(2), .text("other"))]) }
        #expect(throws: EnvelopeError.malformed("duplicate key 40")) {
            try decode(m + [(.unsigned(40), .null), (.unsigned(40), .null)])
        }
        #expect(throws: EnvelopeError.malformed("missing field table")) { try decode(m.filter { $0.0 != .unsigned(2) }) }
        // A repeated column name, in a short row (linear check) and in a wide one (set check).
        for width in [3, 40] {
            var row = (0..<width).map { CBOR.array([.text("c\($0)"), .unsigned(UInt64($0))]) }
            row.append(.array([.text("c1"), .null]))
            let entries = m.map { k, v in k == .unsigned(5) ? (k, CBOR.array(row)) : (k, v) }
            #expect(throws: EnvelopeError.malformed("row repeats column c1")) { try decode(entries) }
        }
    }

    /// Random bytes and random mutations of valid messages: decoding must throw or succeed, never crash or hang.
    @Test func fuzzedInputNeverCrashes() throws {
        var rng = SplitMix64(state: 0x5EED)
        let valid = [try EnvelopeCodec.encode(sampleRecord), try EnvelopeCodec.encode(sampleRecord, compress: true)]
        var decoded = 0, rejected = 0
        for i in 0..<20_000 {
            var input: [UInt8]
            if i % 4 == 0 {
                input = (0..<Int.random(in: 0..<64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                if !input.isEmpty && i % 8 == 0 { input[0] = 0x01 }
            } else {
                input = valid[i % 2]
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    let at = Int.random(in: 0..<input.count, using: &rng)
                    switch Int.random(in: 0..<3, using: &rng) {
                    case 0: input[at] = UInt8.random(in: 0...255, using: &rng)
                    case 1: input.removeSubrange(at...)
                    default: input.insert(UInt8.random(in: 0...255, using: &rng), at: at)
                    }
                    if input.isEmpty { break }
                }
            }
            do {
                _ = try EnvelopeCodec.decode(input)
                decoded += 1
            } catch {
                rejected += 1
            }
        }
        #expect(decoded + rejected == 20_000)
        #expect(rejected > 10_000)
    }

    @Test func messageIDIsStableAndDistinguishesOperationAndRow() {
        var d = sampleRecord
        d.operation = .delete
        #expect(sampleRecord.messageID == "3-81985529216486895-u-1aa4f7535975c82c")
        #expect(d.messageID != sampleRecord.messageID)
        // Same version on another row (a completed write can share an hlc): a different id, so no dedup loss.
        var other = sampleRecord
        other.primaryKey[0].value = .integer(7)
        #expect(other.messageID != sampleRecord.messageID)
    }
}

@Suite("Batched envelopes")
struct BatchCodecTests {
    @Test(arguments: [false, true])
    func batchRoundTripsInOrder(compress: Bool) throws {
        var second = sampleRecord
        second.operation = .delete
        second.row = []
        let bytes = try EnvelopeCodec.encodeBatch([sampleRecord, second, sampleRecord], compress: compress)
        #expect(try EnvelopeCodec.decodeAll(bytes) == [sampleRecord, second, sampleRecord])
    }

    @Test func singleRecordMessagesStillDecode() throws {
        #expect(try EnvelopeCodec.decodeAll(EnvelopeCodec.encode(sampleRecord)) == [sampleRecord])
    }

    @Test func malformedBatchesThrow() {
        #expect(throws: (any Error).self) { try EnvelopeCodec.decodeAll([EnvelopeCodec.formatBatchPlain] + CBOREncoder.encode(.array([]))) }
        #expect(throws: (any Error).self) { try EnvelopeCodec.decodeAll([EnvelopeCodec.formatBatchPlain] + CBOREncoder.encode(.map([]))) }
        #expect(throws: (any Error).self) { try EnvelopeCodec.decodeAll([EnvelopeCodec.formatBatchPlain, 0x81, 0x01]) }
        #expect(throws: (any Error).self) { try EnvelopeCodec.decodeAll([EnvelopeCodec.formatBatchZstd, 1, 2, 3]) }
    }
}
