import Foundation
import HarmonyPostgres
import HarmonyTestSupport
import NIOCore
import Testing

@Suite struct PGCodecTests {
    func decode(_ bytes: [UInt8], startupDone: Bool = true, max: Int = 1 << 20) throws -> [FrontendMessage] {
        var decoder = FrontendDecoder(maxMessageBytes: max)
        decoder.startupDone = startupDone
        var buffer = ByteBuffer(bytes: bytes)
        var out: [FrontendMessage] = []
        while let m = try decoder.next(&buffer) { out.append(m) }
        return out
    }

    /// psql 15's startup message and SSLRequest, as recorded on the wire.
    @Test func recordedStartupAndSSLRequestDecode() throws {
        let sslRequest: [UInt8] = [0x00, 0x00, 0x00, 0x08, 0x04, 0xd2, 0x16, 0x2f]
        #expect(try decode(sslRequest, startupDone: false) == [.sslRequest])
        var startup: [UInt8] = [0x00, 0x03, 0x00, 0x00]
        for s in ["user", "app", "database", "app", "application_name", "psql", "client_encoding", "UTF8"] { startup += Array(s.utf8) + [0] }
        startup += [0]
        let framed = withUnsafeBytes(of: Int32(startup.count + 4).bigEndian, Array.init) + startup
        #expect(try decode(framed, startupDone: false) == [.startup(parameters: ["user": "app", "database": "app", "application_name": "psql", "client_encoding": "UTF8"])])
        let cancel: [UInt8] = [0, 0, 0, 16, 0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 7, 0, 0, 0, 9]
        #expect(try decode(cancel, startupDone: false) == [.cancel(processID: 7, secret: 9)])
    }

    static func hex(_ text: String) -> [UInt8] {
        var out: [UInt8] = []
        var i = text.startIndex
        while i < text.endIndex {
            let j = text.index(i, offsetBy: 2)
            out.append(UInt8(text[i..<j], radix: 16)!)
            i = j
        }
        return out
    }

    /// psycopg 3.3's startup and its extended-protocol burst for `SELECT %b` with the int 42 in binary (Parse with
    /// an int2 parameter, Bind, Describe portal, Execute, Sync), recorded through a TCP proxy; decoded whole and
    /// split at every byte, to check reassembly.
    @Test func recordedPsycopgBytesDecodeAcrossSplits() throws {
        #expect(try decode(Self.hex("0000001f000300007573657200617070006461746162617365006170700000"), startupDone: false)
                == [.startup(parameters: ["user": "app", "database": "app"])])
        let bytes = Self.hex("50000000150053454c454354202431000001000000154200000016000000010001000100000002002a0001000144000000065000450000000900000000005300000004")
        let expected: [FrontendMessage] = [
            .parse(name: "", query: "SELECT $1", parameterTypes: [21]),
            .bind(portal: "", statement: "", parameterFormats: [1], parameters: [[0, 42]], resultFormats: [1]),
            .describe(kind: UInt8(ascii: "P"), name: ""),
            .execute(portal: "", maxRows: 0),
            .sync,
        ]
        #expect(try decode(bytes) == expected)
        for split in 1..<bytes.count {
            var decoder = FrontendDecoder(maxMessageBytes: 1 << 20)
            decoder.startupDone = true
            var buffer = ByteBuffer(bytes: bytes[..<split])
            var out: [FrontendMessage] = []
            while let m = try decoder.next(&buffer) { out.append(m) }
            buffer.writeBytes(bytes[split...])
            while let m = try decoder.next(&buffer) { out.append(m) }
            #expect(out == expected, "split at \(split)")
        }
    }

    @Test func hostileFramesAreProtocolErrors() throws {
        // A length far beyond the limit, a length below the header, an unknown type, stray bytes in a message.
        #expect(throws: PGProtocolError.self) { try decode([0x51, 0x7f, 0xff, 0xff, 0xff], max: 1 << 20) }
        #expect(throws: PGProtocolError.self) { try decode([0x51, 0, 0, 0, 2]) }
        #expect(throws: PGProtocolError.self) { try decode([0x7a, 0, 0, 0, 4]) }
        #expect(throws: PGProtocolError.self) { try decode([0x53, 0, 0, 0, 5, 0]) }
        #expect(throws: PGProtocolError.self) { try decode([0x51, 0, 0, 0, 6, 0x41, 0x42]) }  // no terminating zero
        #expect(throws: PGProtocolError.self) { try decode([0, 0, 0, 8, 0, 2, 0, 0], startupDone: false) }  // protocol 2
        // A truncated message is not an error yet: it waits for the rest.
        #expect(try decode([0x51, 0, 0, 0, 9, 0x41]).isEmpty)
    }

    @Test func randomBytesNeverCrashTheDecoder() {
        var rng = SplitMix64(state: 99)
        let types: [UInt8] = Array("QPBDECSHXp".utf8) + [0, 0xff]
        for round in 0..<5_000 {
            var bytes: [UInt8] = []
            for _ in 0..<rng.below(6) {
                bytes.append(rng.pick(types))
                let length = rng.below(4) == 0 ? Int32(truncatingIfNeeded: rng.next()) : Int32(4 + rng.below(20))
                bytes += withUnsafeBytes(of: length.bigEndian, Array.init)
                bytes += (0..<rng.below(24)).map { _ in rng.below(3) == 0 ? 0 : UInt8(truncatingIfNeeded: rng.next()) }
            }
            _ = try? decode(bytes, startupDone: round % 3 != 0, max: 4096)
        }
    }

    /// RFC 7677's SCRAM-SHA-256 example, end to end on the server's side.
    @Test func scramMatchesTheRFCExample() throws {
        let verifier = SCRAMVerifier(password: "pencil", salt: [UInt8](Data(base64Encoded: "W22ZaJ0SNY7soEsUEjb6gQ==")!), iterations: 4096)
        var exchange = SCRAMExchange(verifier: verifier)
        let serverFirst = try exchange.start(clientFirst: "n,,n=user,r=rOprNGfwEbeRWgbNEkqO", serverNonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
        #expect(serverFirst == "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
        let serverFinal = try exchange.finish(clientFinal: "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
        #expect(serverFinal == "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        #expect(throws: PGError.self) {
            try exchange.finish(clientFinal: "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAAZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
        }
        #expect(pgMD5Answer(user: "app", password: "secret", salt: [1, 2, 3, 4]).count == 35)
    }
}
