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
            let u = Array(s.utf8)
            head(3, UInt64(u.count), into: &out); out.append(contentsOf: u)
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
public struct CBORDecoder {
    public static let depthMax = 32

    private let bytes: [UInt8]
    private var offset = 0

    public static func decode(_ bytes: [UInt8]) throws -> CBOR {
        var d = CBORDecoder(bytes: bytes)
        let v = try d.value(depth: 0)
        guard d.offset == bytes.count else { throw CBORError.trailingBytes(offset: d.offset) }
        return v
    }

    init(bytes: [UInt8]) { self.bytes = bytes }

    private mutating func byte() throws -> UInt8 {
        guard offset < bytes.count else { throw CBORError.truncated(offset: offset) }
        defer { offset += 1 }
        return bytes[offset]
    }

    private mutating func uint(_ count: Int) throws -> UInt64 {
        guard bytes.count - offset >= count else { throw CBORError.truncated(offset: offset) }
        var v: UInt64 = 0
        for i in 0..<count { v = (v << 8) | UInt64(bytes[offset + i]) }
        offset += count
        return v
    }

    private mutating func argument(_ info: UInt8, at start: Int) throws -> UInt64 {
        switch info {
        case 0..<24: return UInt64(info)
        case 24: return try uint(1)
        case 25: return try uint(2)
        case 26: return try uint(4)
        case 27: return try uint(8)
        case 31: throw CBORError.unsupported("indefinite length", offset: start)
        default: throw CBORError.unsupported("additional information \(info)", offset: start)
        }
    }

    /// A length that must fit in what remains: each element needs at least `minBytesEach` bytes.
    private func checkedLength(_ n: UInt64, minBytesEach: Int, at start: Int) throws -> Int {
        let remaining = UInt64(bytes.count - offset)
        guard n <= remaining / UInt64(minBytesEach) else { throw CBORError.truncated(offset: start) }
        return Int(n)
    }

    private mutating func value(depth: Int) throws -> CBOR {
        let start = offset
        guard depth <= Self.depthMax else { throw CBORError.tooDeep(offset: start) }
        let initial = try byte()
        let major = initial >> 5
        let info = initial & 0x1F
        switch major {
        case 0: return .unsigned(try argument(info, at: start))
        case 1: return .negative(try argument(info, at: start))
        case 2:
            let declared = try argument(info, at: start)  // advance first: checkedLength reads the new offset
            let n = try checkedLength(declared, minBytesEach: 1, at: start)
            defer { offset += n }
            return .bytes(Array(bytes[offset..<offset + n]))
        case 3:
            let declared = try argument(info, at: start)  // advance first: checkedLength reads the new offset
            let n = try checkedLength(declared, minBytesEach: 1, at: start)
            guard let s = String(validating: bytes[offset..<offset + n], as: UTF8.self) else {
                throw CBORError.invalidUTF8(offset: start)
            }
            offset += n
            return .text(s)
        case 4:
            let declared = try argument(info, at: start)  // advance first: checkedLength reads the new offset
            let n = try checkedLength(declared, minBytesEach: 1, at: start)
            var a: [CBOR] = []
            a.reserveCapacity(n)
            for _ in 0..<n { a.append(try value(depth: depth + 1)) }
            return .array(a)
        case 5:
            let declared = try argument(info, at: start)  // advance first: checkedLength reads the new offset
            let n = try checkedLength(declared, minBytesEach: 2, at: start)
            var m: [(CBOR, CBOR)] = []
            m.reserveCapacity(n)
            for _ in 0..<n {
                let k = try value(depth: depth + 1)
                let v = try value(depth: depth + 1)
                m.append((k, v))
            }
            return .map(m)
        case 6: throw CBORError.unsupported("tag", offset: start)
        default:
            switch info {
            case 20: return .bool(false)
            case 21: return .bool(true)
            case 22: return .null
            case 25: return .double(halfToDouble(UInt16(try uint(2))))
            case 26: return .double(Double(Float(bitPattern: UInt32(try uint(4)))))
            case 27: return .double(Double(bitPattern: try uint(8)))
            default: throw CBORError.unsupported("simple value \(info)", offset: start)
            }
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
