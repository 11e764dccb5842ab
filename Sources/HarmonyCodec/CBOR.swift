/// The subset of CBOR (RFC 8949) the wire format needs. Definite lengths only; decoding is strict and bounded.
public enum CBOR: Sendable, Hashable {
    case unsigned(UInt64)
    case negative(UInt64)  // the value is -1 - n
    case bytes([UInt8])
    case text(String)
    case array([CBOR])
    case map([(CBOR, CBOR)])
    case bool(Bool)
    case null
    case double(Double)

    public static func == (a: CBOR, b: CBOR) -> Bool {
        switch (a, b) {
        case (.unsigned(let x), .unsigned(let y)), (.negative(let x), .negative(let y)): return x == y
        case (.bytes(let x), .bytes(let y)): return x == y
        case (.text(let x), .text(let y)): return x == y
        case (.array(let x), .array(let y)): return x == y
        case (.map(let x), .map(let y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        case (.bool(let x), .bool(let y)): return x == y
        case (.null, .null): return true
        case (.double(let x), .double(let y)): return x.bitPattern == y.bitPattern
        default: return false
        }
    }

    public func hash(into h: inout Hasher) {
        switch self {
        case .unsigned(let v): h.combine(0); h.combine(v)
        case .negative(let v): h.combine(1); h.combine(v)
        case .bytes(let v): h.combine(2); h.combine(v)
        case .text(let v): h.combine(3); h.combine(v)
        case .array(let v): h.combine(4); h.combine(v)
        case .map(let v): h.combine(5); for (k, x) in v { h.combine(k); h.combine(x) }
        case .bool(let v): h.combine(6); h.combine(v)
        case .null: h.combine(7)
        case .double(let v): h.combine(8); h.combine(v.bitPattern)
        }
    }

    public init(_ value: Int64) {
        self = value >= 0 ? .unsigned(UInt64(value)) : .negative(UInt64(-(value + 1)))
    }

    /// The value as a signed 64-bit integer, if it is an integer that fits.
    public var int64: Int64? {
        switch self {
        case .unsigned(let v): return v <= UInt64(Int64.max) ? Int64(v) : nil
        case .negative(let n): return n <= UInt64(Int64.max) ? -Int64(n) - 1 : nil
        default: return nil
        }
    }
}

public enum CBORError: Error, Equatable, CustomStringConvertible {
    case truncated(offset: Int)
    case unsupported(String, offset: Int)
    case invalidUTF8(offset: Int)
    case tooDeep(offset: Int)
    case trailingBytes(offset: Int)

    public var description: String {
        switch self {
        case .truncated(let o): return "CBOR input ends early at byte \(o)"
        case .unsupported(let what, let o): return "CBOR \(what) at byte \(o) is not supported"
        case .invalidUTF8(let o): return "CBOR text at byte \(o) is not valid UTF-8"
        case .tooDeep(let o): return "CBOR nesting too deep at byte \(o)"
        case .trailingBytes(let o): return "CBOR has trailing bytes after the value, at byte \(o)"
        }
    }
}

public enum CBOREncoder {
    public static func encode(_ value: CBOR) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(128)
        encode(value, into: &out)
        return out
    }

    static func head(_ major: UInt8, _ n: UInt64, into out: inout [UInt8]) {
        let m = major << 5
        switch n {
        case 0..<24: out.append(m | UInt8(n))
        case 24...0xFF: out.append(m | 24); out.append(UInt8(n))
        case 0x100...0xFFFF:
            out.append(m | 25)
            out.append(UInt8(n >> 8)); out.append(UInt8(n & 0xFF))
        case 0x1_0000...0xFFFF_FFFF:
            out.append(m | 26)
            for s in stride(from: 24, through: 0, by: -8) { out.append(UInt8((n >> UInt64(s)) & 0xFF)) }
        default:
            out.append(m | 27)
            for s in stride(from: 56, through: 0, by: -8) { out.append(UInt8((n >> UInt64(s)) & 0xFF)) }
        }
    }

    public static func encode(_ value: CBOR, into out: inout [UInt8]) {
        switch value {
        case .unsigned(let v): head(0, v, into: &out)
        case .negative(let v): head(1, v, into: &out)
        case .bytes(let b): head(2, UInt64(b.count), into: &out); out.append(contentsOf: b)
        case .text(let s):
            var s = s  // its own UTF-8, without a copy into an array first
            s.withUTF8 { u in
                head(3, UInt64(u.count), into: &out)
                out.append(contentsOf: u)
            }
        case .array(let a):
            head(4, UInt64(a.count), into: &out)
            for e in a { encode(e, into: &out) }
        case .map(let m):
            head(5, UInt64(m.count), into: &out)
            for (k, v) in m { encode(k, into: &out); encode(v, into: &out) }
        case .bool(let b): out.append(b ? 0xF5 : 0xF4)
        case .null: out.append(0xF6)
        case .double(let d):
            out.append(0xFB)
            let bits = d.bitPattern
            for s in stride(from: 56, through: 0, by: -8) { out.append(UInt8((bits >> UInt64(s)) & 0xFF)) }
        }
    }
}

/// Decodes untrusted bytes: every length is checked against what remains, nesting is bounded,
/// so malformed or hostile input throws instead of crashing, hanging or allocating wildly.
/// (The tree is built by `CBORReader`, which the envelope decoder uses without building one.)
public enum CBORDecoder {
    public static let depthMax = 32

    public static func decode(_ bytes: [UInt8]) throws -> CBOR {
        try bytes.withUnsafeBufferPointer { buffer in
            var reader = CBORReader(buffer)
            let v = try reader.value(depth: 0)
            guard reader.offset == buffer.count else { throw CBORError.trailingBytes(offset: reader.offset) }
            return v
        }
    }
}

/// IEEE 754 half precision to double, done by hand so it works on every platform.
func halfToDouble(_ h: UInt16) -> Double {
    let sign: Double = (h & 0x8000) != 0 ? -1 : 1
    let exponent = Int((h >> 10) & 0x1F)
    let fraction = Double(h & 0x3FF)
    switch exponent {
    case 0: return sign * fraction * 0x1p-24
    case 31: return fraction == 0 ? sign * .infinity : .nan
    default: return sign * (1 + fraction / 1024) * Double(sign: .plus, exponent: exponent - 15, significand: 1)
    }
}
