import Foundation
import HarmonySQLite

/// PostgreSQL type OIDs the front end speaks, and how SQLite's values map onto them.
public enum PGType {
    public static let bool: Int32 = 16, bytea: Int32 = 17, int8: Int32 = 20, int2: Int32 = 21, int4: Int32 = 23,
                      text: Int32 = 25, objectID: Int32 = 26, float4: Int32 = 700, float8: Int32 = 701, unknown: Int32 = 705,
                      varchar: Int32 = 1043, numeric: Int32 = 1700

    /// A result column's type: from its declared type when it has one (SQLite's affinity rules, BOOLEAN apart),
    /// otherwise from the storage class of its first value; NULL or nothing to go by is text.
    public static func oid(declared: String?, sample: DatabaseValue?) -> Int32 {
        if let declared = declared?.uppercased(), !declared.isEmpty {
            if declared.contains("BOOL") { return bool }
            if declared.contains("INT") { return int8 }
            if declared.contains("CHAR") || declared.contains("CLOB") || declared.contains("TEXT") { return text }
            if declared.contains("BLOB") || declared.contains("BYTEA") { return bytea }
            if declared.contains("REAL") || declared.contains("FLOA") || declared.contains("DOUB") { return float8 }
        }
        switch sample {
        case .integer?: return int8
        case .real?: return float8
        case .blob?: return bytea
        default: return text
        }
    }

    public static func size(_ oid: Int32) -> Int16 {
        switch oid {
        case bool: 1
        case int2: 2
        case int4, float4: 4
        case int8, float8: 8
        default: -1
        }
    }

    /// One value in a DataRow, in the column's type and format (0 text, 1 binary).
    public static func encode(_ value: DatabaseValue, oid: Int32, binary: Bool) throws(PGError) -> [UInt8]? {
        if case .null = value { return nil }
        if binary {
            switch oid {
            case int8: return bigEndian(try integer(value))
            case int4: return bigEndian(Int32(truncatingIfNeeded: try integer(value)))
            case int2: return bigEndian(Int16(truncatingIfNeeded: try integer(value)))
            case float8: return bigEndian(try real(value).bitPattern)
            case float4: return bigEndian(Float(try real(value)).bitPattern)
            case bool: return [try integer(value) != 0 ? 1 : 0]
            case bytea:
                if case .blob(let b) = value { return b }
                return Array(textForm(value).utf8)
            default: return Array(textForm(value).utf8)
            }
        }
        if oid == bool, case .integer(let i) = value { return Array((i != 0 ? "t" : "f").utf8) }
        return Array(textForm(value).utf8)
    }

    /// PostgreSQL's text output: shortest round-trip REALs, bytea as \x hex.
    static func textForm(_ value: DatabaseValue) -> String {
        switch value {
        case .null: return ""
        case .integer(let i): return String(i)
        case .real(let d):
            if d.isNaN { return "NaN" }
            if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
            return String(d)
        case .text(let s): return s
        case .blob(let b): return "\\x" + b.map { String(format: "%02x", $0) }.joined()
        }
    }

    static func integer(_ value: DatabaseValue) throws(PGError) -> Int64 {
        switch value {
        case .integer(let i): return i
        case .real(let d) where d.rounded() == d && abs(d) < 9.2e18: return Int64(d)
        case .text(let s) where Int64(s) != nil: return Int64(s)!
        default: throw PGError("22P02", "value \(value) cannot be sent as an integer in binary format")
        }
    }

    static func real(_ value: DatabaseValue) throws(PGError) -> Double {
        switch value {
        case .real(let d): return d
        case .integer(let i): return Double(i)
        case .text(let s) where Double(s) != nil: return Double(s)!
        default: throw PGError("22P02", "value \(value) cannot be sent as a floating-point number in binary format")
        }
    }

    static func bigEndian<T: FixedWidthInteger>(_ v: T) -> [UInt8] {
        withUnsafeBytes(of: v.bigEndian) { Array($0) }
    }

    /// A Bind parameter as SQLite will see it, from its type OID (0: unspecified) and format.
    public static func decode(_ bytes: [UInt8]?, oid: Int32, binary: Bool) throws(PGError) -> DatabaseValue {
        guard let bytes else { return .null }
        if binary {
            func fixed<T: FixedWidthInteger>(_: T.Type) throws(PGError) -> T {
                guard bytes.count == MemoryLayout<T>.size else {
                    throw PGError("22P03", "a binary parameter of type \(oid) has \(bytes.count) bytes, expected \(MemoryLayout<T>.size)")
                }
                return bytes.reduce(T.zero) { ($0 << 8) | T($1) }
            }
            switch oid {
            case int8: return .integer(try fixed(Int64.self))
            case int4: return .integer(Int64(try fixed(Int32.self)))
            case int2: return .integer(Int64(try fixed(Int16.self)))
            case objectID: return .integer(Int64(try fixed(UInt32.self)))
            case float8: return .real(Double(bitPattern: try fixed(UInt64.self)))
            case float4: return .real(Double(Float(bitPattern: try fixed(UInt32.self))))
            case bool: return .integer(try fixed(UInt8.self) != 0 ? 1 : 0)
            case bytea: return .blob(bytes)
            case text, varchar, unknown, 0, 19, 1042:
                guard let s = String(validating: bytes, as: UTF8.self) else { throw PGError("22021", "a text parameter is not valid UTF-8") }
                return .text(s)
            default:
                throw PGError("0A000", "binary parameters of type OID \(oid) are not supported; send them in text format")
            }
        }
        guard let s = String(validating: bytes, as: UTF8.self) else { throw PGError("22021", "a parameter is not valid UTF-8") }
        switch oid {
        case int8, int4, int2, objectID:
            guard let i = Int64(s.trimmingCharacters(in: .whitespaces)) else { throw PGError("22P02", "invalid input syntax for type integer: \"\(s)\"") }
            return .integer(i)
        case float8, float4:
            guard let d = parseReal(s) else { throw PGError("22P02", "invalid input syntax for type double precision: \"\(s)\"") }
            return .real(d)
        case numeric:
            if let i = Int64(s) { return .integer(i) }
            guard let d = parseReal(s) else { throw PGError("22P02", "invalid input syntax for type numeric: \"\(s)\"") }
            return .real(d)
        case bool:
            switch s.lowercased() {
            case "t", "true", "1", "yes", "on", "y": return .integer(1)
            case "f", "false", "0", "no", "off", "n": return .integer(0)
            default: throw PGError("22P02", "invalid input syntax for type boolean: \"\(s)\"")
            }
        case bytea:
            guard s.hasPrefix("\\x") else { return .blob(Array(s.utf8)) }
            let hex = Array(s.utf8.dropFirst(2))
            guard hex.count % 2 == 0 else { throw PGError("22P02", "invalid hexadecimal data: odd number of digits") }
            var out: [UInt8] = []
            out.reserveCapacity(hex.count / 2)
            var i = 0
            while i < hex.count {
                guard let v = UInt8(String(decoding: hex[i...i + 1], as: UTF8.self), radix: 16) else {
                    throw PGError("22P02", "invalid hexadecimal digit in a bytea parameter")
                }
                out.append(v)
                i += 2
            }
            return .blob(out)
        default:
            return .text(s)
        }
    }

    static func parseReal(_ s: String) -> Double? {
        switch s.lowercased() {
        case "infinity", "+infinity", "inf": return .infinity
        case "-infinity", "-inf": return -.infinity
        case "nan": return .nan
        default: return Double(s.trimmingCharacters(in: .whitespaces))
        }
    }
}
