import Foundation
import HarmonySQLite

/// PostgreSQL type OIDs the front end speaks, and how SQLite's values map onto them.
public enum PGType {
    public static let bool: Int32 = 16, bytea: Int32 = 17, int8: Int32 = 20, int2: Int32 = 21, int4: Int32 = 23,
                      text: Int32 = 25, objectID: Int32 = 26, float4: Int32 = 700, float8: Int32 = 701, unknown: Int32 = 705,
                      varchar: Int32 = 1043, numeric: Int32 = 1700, date: Int32 = 1082, time: Int32 = 1083,
                      timestamp: Int32 = 1114, timestamptz: Int32 = 1184, uuid: Int32 = 2950, json: Int32 = 114, jsonb: Int32 = 3802
    static let temporal: Set<Int32> = [date, time, timestamp, timestamptz]

    /// A result column's type: from its declared type when it has one (SQLite's affinity rules, BOOLEAN apart),
    /// otherwise from the storage class of its first value; NULL or nothing to go by is text.
    public static func oid(declared: String?, sample: DatabaseValue?) -> Int32 {
        if let declared = declared?.uppercased(), !declared.isEmpty {
            if declared.contains("BOOL") { return bool }
            // Dates, times, UUIDs and JSON are text in SQLite; told their type, drivers hand the application their own
            // date, UUID and parsed JSON values. A column that holds numbers (Unix times, say) is labelled by them.
            switch sample {
            case .integer?, .real?, .blob?: break
            default:
                if declared.contains("TIMESTAMPTZ") || (declared.contains("TIMESTAMP") && declared.contains("WITH TIME ZONE")) { return timestamptz }
                if declared.contains("TIMESTAMP") || declared.contains("DATETIME") { return timestamp }
                if declared.hasPrefix("DATE") { return date }
                if declared.hasPrefix("TIME"), !declared.hasPrefix("TIMETZ"), !declared.contains("WITH TIME ZONE") { return time }
                if declared == "UUID" { return uuid }
                if declared.hasPrefix("JSONB") { return jsonb }
                if declared.hasPrefix("JSON") { return json }
            }
            if declared.contains("INT") { return int8 }
            if declared.contains("CHAR") || declared.contains("CLOB") || declared.contains("TEXT") { return text }
            if declared.contains("BLOB") || declared.contains("BYTEA") { return bytea }
            // NUMERIC and DECIMAL columns hold both INTEGERs and REALs (10, then 10.5): labelled by the first row
            // they were int8, and a driver's integer parser failed on the next. Text that is not a number stays text.
            if declared.contains("NUMERIC") || declared.contains("DECIMAL") {
                if case .text? = sample { return text }
                return numeric
            }
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
        case int4, float4, date: 4
        case int8, float8, time, timestamp, timestamptz: 8
        case uuid: 16
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
            case numeric: return try numericBinary(value)
            case date, time, timestamp, timestamptz:
                guard case .text(let s) = value, let b = PGTemporal.binary(s, oid: oid) else {
                    throw PGError("22007", "value \(value) in a column of type OID \(oid) is not a date or time PostgreSQL can read "
                                  + "(ISO 8601 text such as 2024-01-02 03:04:05); read it in text format, or as TEXT")
                }
                return b
            case uuid:
                if case .blob(let b) = value, b.count == 16 { return b }
                guard case .text(let s) = value, let b = uuidBytes(s) else {
                    throw PGError("22P02", "value \(value) in a UUID column is not a UUID; read it in text format, or as TEXT")
                }
                return b
            case jsonb: return [1] + Array(textForm(value).utf8)
            case bytea:
                if case .blob(let b) = value { return b }
                return Array(textForm(value).utf8)
            default: return Array(textForm(value).utf8)
            }
        }
        if oid == bool, case .integer(let i) = value { return Array((i != 0 ? "t" : "f").utf8) }
        if temporal.contains(oid), case .text(let s) = value { return Array(PGTemporal.text(s, oid: oid).utf8) }
        if oid == uuid, case .blob(let b) = value, b.count == 16 { return Array(uuidText(b).utf8) }
        // An INTEGER column (or one labelled int8 by its first row) can hold a whole REAL such as 3.0 (SQLite's
        // affinity keeps it when it came from an expression): "3" parses as an integer, "3.0" would not.
        if oid == int8, case .real(let d) = value, d.rounded() == d, abs(d) < 9.2e18 { return Array(String(Int64(d)).utf8) }
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
            case numeric: return try decode(Array(try numericText(binary: bytes).utf8), oid: numeric, binary: false)
            case date: return .text(try PGTemporal.text(binary: Int64(try fixed(Int32.self)), oid: oid))
            case time, timestamp, timestamptz: return .text(try PGTemporal.text(binary: try fixed(Int64.self), oid: oid))
            case uuid:
                guard bytes.count == 16 else { throw PGError("22P03", "a binary UUID parameter has \(bytes.count) bytes, expected 16") }
                return .text(uuidText(bytes))
            case json: return try decode(bytes, oid: text, binary: true)
            case jsonb:
                guard bytes.first == 1 else { throw PGError("22P03", "a binary jsonb parameter has an unknown version") }
                return try decode(Array(bytes.dropFirst()), oid: text, binary: true)
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

    /// PostgreSQL's binary numeric: base-10000 digits after a header of digit count, weight of the first digit,
    /// sign (or NaN / infinity) and display scale, made from the value's exact decimal text.
    static func numericBinary(_ value: DatabaseValue) throws(PGError) -> [UInt8] {
        func header(_ count: Int, _ weight: Int, _ sign: UInt16, _ scale: Int) -> [UInt8] {
            bigEndian(Int16(count)) + bigEndian(Int16(weight)) + bigEndian(sign) + bigEndian(Int16(scale))
        }
        let text: String
        switch value {
        case .integer(let i): text = String(i)
        case .real(let d):
            if d.isNaN { return header(0, 0, 0xC000, 0) }
            if d.isInfinite { return header(0, 0, d < 0 ? 0xF000 : 0xD000, 0) }
            text = String(d)
        case .text(let s) where isPlainDecimal(s.trimmingCharacters(in: .whitespaces)): text = s.trimmingCharacters(in: .whitespaces)
        default: throw PGError("22P02", "value \(value) cannot be sent as a numeric in binary format")
        }
        // Digits and where the decimal point falls among them, from "-12.5", "1e-05" or "1.5e+20".
        var body = Substring(text)
        let negative = body.hasPrefix("-")
        if negative || body.hasPrefix("+") { body = body.dropFirst() }
        var exponent = 0
        if let e = body.firstIndex(where: { $0 == "e" || $0 == "E" }) {
            exponent = Int(body[body.index(after: e)...]) ?? 0
            body = body[..<e]
        }
        let point = body.firstIndex(of: ".")
        let whole = point.map { body[..<$0] } ?? body
        let fraction = point.map { body[body.index(after: $0)...] } ?? ""
        let digits = Array((whole + fraction).utf8).map { Int($0) - 48 }
        let pointAt = whole.count + exponent
        var intDigits: [Int], fracDigits: [Int]
        if pointAt <= 0 {
            intDigits = []
            fracDigits = Array(repeating: 0, count: -pointAt) + digits
        } else if pointAt >= digits.count {
            intDigits = digits + Array(repeating: 0, count: pointAt - digits.count)
            fracDigits = []
        } else {
            intDigits = Array(digits[..<pointAt])
            fracDigits = Array(digits[pointAt...])
        }
        while intDigits.first == 0 { intDigits.removeFirst() }
        while fracDigits.last == 0 { fracDigits.removeLast() }
        let scale = fracDigits.count
        intDigits = Array(repeating: 0, count: (4 - intDigits.count % 4) % 4) + intDigits
        fracDigits += Array(repeating: 0, count: (4 - fracDigits.count % 4) % 4)
        func groups(_ d: [Int]) -> [Int] { stride(from: 0, to: d.count, by: 4).map { d[$0] * 1000 + d[$0 + 1] * 100 + d[$0 + 2] * 10 + d[$0 + 3] } }
        var all = groups(intDigits) + groups(fracDigits)
        var weight = intDigits.count / 4 - 1
        while all.first == 0 { all.removeFirst(); weight -= 1 }
        while all.last == 0 { all.removeLast() }
        // PostgreSQL's own limits on a numeric's digits and scale; the header's fields are 16 bits.
        guard all.count < 32_768, scale < 16_384, (-32_768..<32_768).contains(weight) else {
            throw PGError("22003", "value \(value) is out of range for a numeric in binary format")
        }
        if all.isEmpty { return header(0, 0, 0, scale) }
        return header(all.count, weight, negative ? 0x4000 : 0, scale) + all.flatMap { bigEndian(Int16($0)) }
    }

    /// The decimal text of a binary numeric parameter.
    static func numericText(binary bytes: [UInt8]) throws(PGError) -> String {
        func int16(_ at: Int) -> Int { Int(Int16(bitPattern: UInt16(bytes[at]) << 8 | UInt16(bytes[at + 1]))) }
        guard bytes.count >= 8 else { throw PGError("22P03", "a binary numeric parameter has \(bytes.count) bytes, fewer than its header") }
        let count = int16(0), weight = int16(2), sign = UInt16(bitPattern: Int16(int16(4))), scale = int16(6)
        guard count >= 0, bytes.count == 8 + 2 * count, scale >= 0 else { throw PGError("22P03", "a binary numeric parameter is malformed") }
        switch sign {
        case 0xC000: return "NaN"
        case 0xD000: return "Infinity"
        case 0xF000: return "-Infinity"
        case 0, 0x4000: break
        default: throw PGError("22P03", "a binary numeric parameter has an invalid sign")
        }
        let groups = (0..<count).map { int16(8 + 2 * $0) }
        guard groups.allSatisfy({ (0..<10000).contains($0) }), weight > -1000, weight < 1000 else {
            throw PGError("22P03", "a binary numeric parameter is malformed")
        }
        func group(_ w: Int) -> Int {
            let j = weight - w
            return j >= 0 && j < count ? groups[j] : 0
        }
        var whole = "0"
        if weight >= 0 {
            whole = String(group(weight))
            for w in stride(from: weight - 1, through: 0, by: -1) { whole += String(format: "%04d", group(w)) }
        }
        var fraction = ""
        var w = -1
        while fraction.count < scale {
            fraction += String(format: "%04d", group(w))
            w -= 1
        }
        fraction = String(fraction.prefix(scale))
        return (sign == 0x4000 ? "-" : "") + whole + (fraction.isEmpty ? "" : "." + fraction)
    }

    /// `[+-]digits[.digits][e[+-]digits]`: what the binary numeric encoder reads digit by digit (Double's parser
    /// also takes hex, "inf" and the like, which SQLite keeps as TEXT in a NUMERIC column).
    static func isPlainDecimal(_ s: String) -> Bool {
        var rest = Substring(s)
        if rest.first == "+" || rest.first == "-" { rest = rest.dropFirst() }
        let mantissa = rest.prefix { $0 != "e" && $0 != "E" }
        let exponent = rest.dropFirst(mantissa.count)
        let parts = mantissa.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        guard !mantissa.isEmpty, parts.allSatisfy({ $0.allSatisfy { $0.isASCII && $0.isNumber } }),
              parts.contains(where: { !$0.isEmpty }), mantissa.filter({ $0 == "." }).count <= 1 else { return false }
        guard !exponent.isEmpty else { return true }
        var digits = exponent.dropFirst()
        if digits.first == "+" || digits.first == "-" { digits = digits.dropFirst() }
        return !digits.isEmpty && digits.count < 6 && digits.allSatisfy { $0.isASCII && $0.isNumber }
    }

    static func uuidText(_ b: [UInt8]) -> String {
        let hex = b.map { String(format: "%02x", $0) }.joined()
        let c = Array(hex)
        return String(c[0..<8]) + "-" + String(c[8..<12]) + "-" + String(c[12..<16]) + "-" + String(c[16..<20]) + "-" + String(c[20..<32])
    }

    static func uuidBytes(_ s: String) -> [UInt8]? {
        let hex = Array(s.filter { $0 != "-" && $0 != "{" && $0 != "}" }.utf8)
        guard hex.count == 32 else { return nil }
        var out: [UInt8] = []
        for i in stride(from: 0, to: 32, by: 2) {
            guard let v = UInt8(String(decoding: hex[i...i + 1], as: UTF8.self), radix: 16) else { return nil }
            out.append(v)
        }
        return out
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
