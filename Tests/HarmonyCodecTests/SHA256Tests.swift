import HarmonyCodec
import Testing

private func hex(_ s: String) -> [UInt8] {
    var out: [UInt8] = []
    var it = s.utf8.makeIterator()
    while let hi = it.next(), let lo = it.next() { out.append(UInt8(String(decoding: [hi, lo], as: UTF8.self), radix: 16)!) }
    return out
}

private func ascii(_ s: String) -> [UInt8] { Array(s.utf8) }

@Suite("SHA-256 and HMAC-SHA256")
struct SHA256Tests {
    /// FIPS 180-4 / NIST CAVP examples, including the two-block messages.
    @Test func hashesNISTVectors() {
        #expect(lowercaseHex(SHA256.hash([])) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(lowercaseHex(SHA256.hash(ascii("abc"))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(lowercaseHex(SHA256.hash(ascii("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")))
            == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(lowercaseHex(SHA256.hash(ascii(
            "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu")))
            == "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1")
    }

    @Test func hashesOneMillionA() {
        #expect(lowercaseHex(SHA256.hash([UInt8](repeating: 0x61, count: 1_000_000)))
            == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    /// The million-'a' vector fed in 997-byte chunks (prime, so chunks straddle block boundaries everywhere).
    @Test func incrementalChunksGiveTheSameDigest() {
        var h = SHA256()
        let chunk = [UInt8](repeating: 0x61, count: 997)
        var fed = 0
        while fed < 1_000_000 {
            let n = min(chunk.count, 1_000_000 - fed)
            h.update(Array(chunk[0..<n]))
            fed += n
        }
        #expect(lowercaseHex(h.finalize()) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    /// Every split point of a 200-byte message (around 55/56/64-byte padding edges too) gives the one-shot digest.
    @Test func everySplitPointGivesTheSameDigest() {
        let message = (0..<200).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        for length in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 200] {
            let prefix = Array(message[0..<length])
            let expected = SHA256.hash(prefix)
            for split in 0...length {
                var h = SHA256()
                h.update(Array(prefix[0..<split]))
                h.update(Array(prefix[split...]))
                #expect(h.finalize() == expected, "length \(length), split at \(split)")
            }
        }
    }

    /// `finalize` leaves the hasher usable: a digest mid-stream, then more bytes, then the digest of the whole.
    @Test func finalizeDoesNotConsumeTheState() {
        var h = SHA256()
        h.update(ascii("ab"))
        #expect(h.finalize() == SHA256.hash(ascii("ab")))
        #expect(h.finalize() == SHA256.hash(ascii("ab")))
        h.update(ascii("c"))
        #expect(lowercaseHex(h.finalize()) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    /// RFC 4231 test cases 1-4, 6 and 7 (case 5 is a truncated MAC).
    @Test func authenticatesRFC4231Vectors() {
        let cases: [([UInt8], [UInt8], String)] = [
            ([UInt8](repeating: 0x0b, count: 20), ascii("Hi There"),
             "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
            (ascii("Jefe"), ascii("what do ya want for nothing?"),
             "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
            ([UInt8](repeating: 0xaa, count: 20), [UInt8](repeating: 0xdd, count: 50),
             "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
            (Array(1...25), [UInt8](repeating: 0xcd, count: 50),
             "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
            ([UInt8](repeating: 0xaa, count: 131), ascii("Test Using Larger Than Block-Size Key - Hash Key First"),
             "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
            ([UInt8](repeating: 0xaa, count: 131), ascii(
                "This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm."),
             "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
        ]
        for ((key, message, expected), number) in zip(cases, [1, 2, 3, 4, 6, 7]) {
            #expect(HMACSHA256.authenticate(key: key, message: message) == hex(expected), "RFC 4231 case \(number)")
        }
    }
}
