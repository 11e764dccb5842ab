/// Reads CBOR in place, without building a `CBOR` tree: every applied change is decoded through it, and a tree
/// of enums and arrays per record cost more than applying the record. It makes the same checks as `CBORDecoder`
/// (lengths against what remains, nesting, UTF-8, the same unsupported items) and throws the same errors.
struct CBORReader {
    let bytes: UnsafeBufferPointer<UInt8>
    var offset: Int

    init(_ bytes: UnsafeBufferPointer<UInt8>, at offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    /// One item's head. Major types 0–5: `argument` is the value or length. Major 7: `info` says which simple
    /// value or float it is and `argument` holds a float's bits.
    struct Head {
        var major: UInt8
        var info: UInt8
        var argument: UInt64
        var start: Int
    }

    mutating func head() throws -> Head {
        let start = offset
        guard offset < bytes.count else { throw CBORError.truncated(offset: offset) }
        let initial = bytes[offset]
        offset += 1
        let major = initial >> 5, info = initial & 0x1F
        switch major {
        case 6: throw CBORError.unsupported("tag", offset: start)
        case 7:
            switch info {
            case 20, 21, 22: return Head(major: 7, info: info, argument: 0, start: start)
            case 25: return Head(major: 7, info: info, argument: try uint(2), start: start)
            case 26: return Head(major: 7, info: info, argument: try uint(4), start: start)
            case 27: return Head(major: 7, info: info, argument: try uint(8), start: start)
            default: throw CBORError.unsupported("simple value \(info)", offset: start)
            }
        default:
            let argument: UInt64
            switch info {
            case 0..<24: argument = UInt64(info)
            case 24: argument = try uint(1)
            case 25: argument = try uint(2)
            case 26: argument = try uint(4)
            case 27: argument = try uint(8)
            case 31: throw CBORError.unsupported("indefinite length", offset: start)
            default: throw CBORError.unsupported("additional information \(info)", offset: start)
            }
            return Head(major: major, info: info, argument: argument, start: start)
        }
    }

    private mutating func uint(_ count: Int) throws -> UInt64 {
        guard bytes.count - offset >= count else { throw CBORError.truncated(offset: offset) }
        var v: UInt64 = 0
        for i in 0..<count { v = (v << 8) | UInt64(bytes[offset + i]) }
        offset += count
        return v
    }

    /// A string's, array's or map's length, which must fit in what remains (`minBytesEach` per element).
    func length(_ h: Head, minBytesEach: Int) throws -> Int {
        let remaining = UInt64(bytes.count - offset)
        guard h.argument <= remaining / UInt64(minBytesEach) else { throw CBORError.truncated(offset: h.start) }
        return Int(h.argument)
    }

    /// Steps over one value, checking it as `CBORDecoder` would, and allocating nothing for ASCII text.
    mutating func skip(depth: Int) throws {
        guard depth <= CBORDecoder.depthMax else { throw CBORError.tooDeep(offset: offset) }
        let h = try head()
        switch h.major {
        case 2:
            offset += try length(h, minBytesEach: 1)
        case 3:
            let n = try length(h, minBytesEach: 1)
            guard Self.isValidUTF8(UnsafeBufferPointer(rebasing: bytes[offset..<offset + n])) else {
                throw CBORError.invalidUTF8(offset: h.start)
            }
            offset += n
        case 4:
            for _ in 0..<(try length(h, minBytesEach: 1)) { try skip(depth: depth + 1) }
        case 5:
            for _ in 0..<(try length(h, minBytesEach: 2)) {
                try skip(depth: depth + 1)
                try skip(depth: depth + 1)
            }
        default:
            break
        }
    }

    /// One value as a `CBOR` tree, with the same checks as `skip` (for `CBORDecoder`: message parts, stored
    /// definitions, tests).
    mutating func value(depth: Int) throws -> CBOR {
        guard depth <= CBORDecoder.depthMax else { throw CBORError.tooDeep(offset: offset) }
        let h = try head()
        switch h.major {
        case 0: return .unsigned(h.argument)
        case 1: return .negative(h.argument)
        case 2:
            _ = try length(h, minBytesEach: 1)
            return .bytes(blob(h))
        case 3:
            let n = try length(h, minBytesEach: 1)
            guard let s = String(validating: UnsafeBufferPointer(rebasing: bytes[offset..<offset + n]), as: UTF8.self) else {
                throw CBORError.invalidUTF8(offset: h.start)
            }
            offset += n
            return .text(s)
        case 4:
            let n = try length(h, minBytesEach: 1)
            var items: [CBOR] = []
            items.reserveCapacity(n)
            for _ in 0..<n { items.append(try value(depth: depth + 1)) }
            return .array(items)
        case 5:
            let n = try length(h, minBytesEach: 2)
            var entries: [(CBOR, CBOR)] = []
            entries.reserveCapacity(n)
            for _ in 0..<n {
                let k = try value(depth: depth + 1)
                entries.append((k, try value(depth: depth + 1)))
            }
            return .map(entries)
        default:
            switch h.info {
            case 20: return .bool(false)
            case 21: return .bool(true)
            case 22: return .null
            default: return .double(Self.double(h)!)  // `head` lets only floats through besides these
            }
        }
    }

    /// ASCII is checked here byte by byte; anything else by the standard library's own validation.
    static func isValidUTF8(_ text: UnsafeBufferPointer<UInt8>) -> Bool {
        if !text.contains(where: { $0 >= 0x80 }) { return true }
        return String(validating: text, as: UTF8.self) != nil
    }

    /// The text whose head was just read (already checked by `skip`).
    mutating func text(_ h: Head) -> String {
        let n = Int(h.argument)
        defer { offset += n }
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[offset..<offset + n]), as: UTF8.self)
    }

    /// The byte string whose head was just read.
    mutating func blob(_ h: Head) -> [UInt8] {
        let n = Int(h.argument)
        defer { offset += n }
        return Array(bytes[offset..<offset + n])
    }

    /// Whether the text whose head was just read has the same bytes as `known` (then it is stepped over).
    mutating func textEquals(_ h: Head, _ known: String) -> Bool {
        let n = Int(h.argument)
        var known = known
        let same = known.withUTF8 { k in
            k.count == n && (n == 0 || memcmpEqual(k.baseAddress!, bytes.baseAddress! + offset, n))
        }
        if same { offset += n }
        return same
    }

    /// An integer item's value as a signed 64-bit integer, if it is one and fits.
    static func int64(_ h: Head) -> Int64? {
        switch h.major {
        case 0: return h.argument <= UInt64(Int64.max) ? Int64(h.argument) : nil
        case 1: return h.argument <= UInt64(Int64.max) ? -Int64(h.argument) - 1 : nil
        default: return nil
        }
    }

    /// A float item's value (half, single or double precision).
    static func double(_ h: Head) -> Double? {
        guard h.major == 7 else { return nil }
        switch h.info {
        case 25: return halfToDouble(UInt16(h.argument))
        case 26: return Double(Float(bitPattern: UInt32(h.argument)))
        case 27: return Double(bitPattern: h.argument)
        default: return nil
        }
    }
}

private func memcmpEqual(_ a: UnsafePointer<UInt8>, _ b: UnsafePointer<UInt8>, _ n: Int) -> Bool {
    for i in 0..<n where a[i] != b[i] { return false }
    return true
}
