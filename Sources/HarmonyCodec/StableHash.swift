import HarmonySQLite

/// FNV-1a, 64-bit: stable across processes, platforms and releases (unlike `Hasher`), for shard routing and schema hashes.
public struct StableHash {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    public init() {}

    public mutating func combine<S: Sequence>(bytes: S) where S.Element == UInt8 {
        for b in bytes {
            value ^= UInt64(b)
            value = value &* 0x0000_0100_0000_01B3
        }
    }

    /// One byte: the separators and type tags, without an array per call (this runs for every published change).
    public mutating func combine(byte b: UInt8) {
        value ^= UInt64(b)
        value = value &* 0x0000_0100_0000_01B3
    }

    public mutating func combine(_ text: String) {
        combine(bytes: text.utf8)
        combine(byte: 0)  // separator so ("ab","c") and ("a","bc") differ
    }

    public mutating func combine(_ n: Int64) {
        withUnsafeBytes(of: n.littleEndian) { combine(bytes: $0) }
    }

    /// Type tag first, so integer 1, real 1.0 and text '1' hash differently.
    public mutating func combine(_ v: DatabaseValue) {
        switch v {
        case .null: combine(byte: 0)
        case .integer(let i): combine(byte: 1); combine(i)
        case .real(let d): combine(byte: 2); combine(Int64(bitPattern: d.bitPattern))
        case .text(let s): combine(byte: 3); combine(Int64(s.utf8.count)); combine(bytes: s.utf8)
        case .blob(let b): combine(byte: 4); combine(Int64(b.count)); combine(bytes: b)
        }
    }

    public var hex: String {
        let s = String(value, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}
