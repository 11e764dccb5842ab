import HarmonyAPI
import HarmonyTestSupport
import Testing

@Suite struct JSONTests {
    func parse(_ text: String) throws -> JSONValue { try JSONReader.parse(Array(text.utf8)) }

    @Test func numbersKeepTheirKindAndTheWholeInt64Range() throws {
        #expect(try parse("9223372036854775807") == .integer(.max))
        #expect(try parse("-9223372036854775808") == .integer(.min))
        #expect(try parse("1") == .integer(1))
        #expect(try parse("1.0") == .real(1.0))
        #expect(try parse("1e3") == .real(1000))
        #expect(throws: JSONSyntaxError.self) { try parse("9223372036854775808") }
    }

    @Test func realsRoundTripBitForBit() throws {
        var rng = SplitMix64(state: 7)
        for _ in 0..<2_000 {
            let v = Double(bitPattern: rng.next())
            guard v.isFinite else { continue }
            var w = JSONWriter()
            w.real(v)
            let back = try JSONReader.parse(w.bytes)
            #expect(back == .real(v), "\(v)")
        }
        var w = JSONWriter()
        w.real(.infinity)
        #expect(try JSONReader.parse(w.bytes) == .real(.infinity))
    }

    @Test func stringsRoundTripIncludingEscapesAndAstralCharacters() throws {
        let text = "quote \" backslash \\ nul \u{0} tab \t emoji 😀 é"
        #expect(try JSONReader.parse(JSONWriter.encode(.string(text))) == .string(text))
        #expect(try parse(#""\ud83d\ude00""#) == .string("😀"))
    }

    @Test func malformedDocumentsAreRefusedWithAnOffset() {
        for bad in ["", "{", "[1,]", #"{"a":1,}"#, "01", "1.", "tru", #"{"a":1 "b":2}"#, #""\x""#, "[1] 2",
                    #"{"a":1,"a":2}"#, #""\ud83d""#, "\"raw\nnewline\""] {
            #expect(throws: JSONSyntaxError.self, "\(bad)") { try parse(bad) }
        }
        let deep = String(repeating: "[", count: 10_000) + String(repeating: "]", count: 10_000)
        #expect(throws: JSONSyntaxError.self) { try parse(deep) }
    }

    @Test func randomBytesNeverCrashTheReader() {
        var rng = SplitMix64(state: 11)
        let alphabet = Array(#"{}[],:"\ -0123456789.eEtrufalsn"#.utf8) + [0, 0xFF, 0xC3]
        for _ in 0..<20_000 {
            let n = Int(rng.next() % 24)
            let bytes = (0..<n).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }
            _ = try? JSONReader.parse(bytes)
        }
    }
}
