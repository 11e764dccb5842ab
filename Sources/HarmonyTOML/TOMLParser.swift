/// Parses a practical subset of TOML 1.0 (everything but dates/times and multi-line strings)
/// into a `TOMLTable`, with errors that carry the line and column of the problem.
public enum TOMLParser {
    /// Deepest nesting of tables and arrays accepted, so hostile input cannot exhaust the stack.
    public static let maxDepth = 100

    public static func parse(_ text: String) throws -> TOMLTable {
        var parser = Parser(bytes: Array(text.utf8))
        return try parser.parseDocument()
    }
}

/// A table under construction; `kind` decides what may still be added to it.
private final class Node {
    enum Kind { case implicit, header, dotted, inline }
    enum Item { case value(TOMLValue), table(Node), tables(ArrayOfTables) }
    struct Slot { var key: String; var item: Item; var line: Int; var column: Int }

    var kind: Kind
    let path: [String]
    let depth: Int
    var line: Int, column: Int
    var slots: [Slot] = []
    var index: [String: Int] = [:]

    init(_ kind: Kind, path: [String], depth: Int, line: Int, column: Int) {
        (self.kind, self.path, self.depth, self.line, self.column) = (kind, path, depth, line, column)
    }

    func slot(_ key: String) -> Slot? { index[key].map { slots[$0] } }
    func add(_ key: String, _ item: Item, line: Int, column: Int) {
        index[key] = slots.count
        slots.append(Slot(key: key, item: item, line: line, column: column))
    }

    func freeze() -> TOMLTable {
        var table = TOMLTable()
        table.line = line > 0 ? line : nil
        for s in slots {
            switch s.item {
            case .value(let v): table.set(s.key, v, line: s.line, column: s.column)
            case .table(let n): table.set(s.key, .table(n.freeze()), line: n.line, column: n.column)
            case .tables(let a): table.set(s.key, .array(a.tables.map { .table($0.freeze()) }), line: s.line, column: s.column)
            }
        }
        return table
    }
}

private final class ArrayOfTables {
    var tables: [Node]
    init(_ first: Node) { tables = [first] }
}

/// Renders a key path for messages: bare parts as-is, others quoted.
private func render(_ path: [String]) -> String {
    path.map { !$0.isEmpty && $0.utf8.allSatisfy(isBareKeyByte) ? $0 : "\"" + $0 + "\"" }.joined(separator: ".")
}

private func isBareKeyByte(_ b: UInt8) -> Bool {
    (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || isDigit(b) || b == 0x5F || b == 0x2D
}

private func isDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }

private func hexValue(_ b: UInt8) -> UInt8? {
    switch b {
    case 0x30...0x39: return b - 0x30
    case 0x41...0x46: return b - 0x41 + 10
    case 0x61...0x66: return b - 0x61 + 10
    default: return nil
    }
}

private struct Parser {
    /// A saved position, so errors can point at where a construct started.
    struct Mark { var line: Int; var lineStart: Int; var pos: Int }

    let bytes: [UInt8]
    var pos = 0, line = 1, lineStart = 0
    let root: Node
    var current: Node

    init(bytes: [UInt8]) {
        self.bytes = bytes
        root = Node(.implicit, path: [], depth: 0, line: 0, column: 0)
        current = root
    }

    // MARK: Scanning

    var mark: Mark { Mark(line: line, lineStart: lineStart, pos: pos) }
    var atEnd: Bool { pos >= bytes.count }
    func peek(_ offset: Int = 0) -> UInt8? { pos + offset < bytes.count ? bytes[pos + offset] : nil }
    func atNewline() -> Bool { peek() == 0x0A || (peek() == 0x0D && peek(1) == 0x0A) }

    /// Consumes `b` if it is next.
    mutating func eat(_ b: UInt8) -> Bool {
        guard peek() == b else { return false }
        pos += 1
        return true
    }

    /// Remembers the last column computed, so columns cost linear time on long lines.
    final class ColumnCache { var lineStart = -1, pos = 0, column = 1 }
    let cache = ColumnCache()

    /// 1-based column of `m`, counted in Unicode scalars.
    func column(_ m: Mark) -> Int {
        let resume = cache.lineStart == m.lineStart && cache.pos <= m.pos
        var col = resume ? cache.column : 1
        for b in bytes[(resume ? cache.pos : m.lineStart)..<min(m.pos, bytes.count)] where b & 0xC0 != 0x80 { col += 1 }
        (cache.lineStart, cache.pos, cache.column) = (m.lineStart, m.pos, col)
        return col
    }

    func error(_ message: String, at m: Mark? = nil) -> TOMLError {
        let m = m ?? mark
        return TOMLError(line: m.line, column: column(m), message: message)
    }

    /// Describes the character at the current position for "found ..." messages.
    func found() -> String {
        guard let b = peek() else { return "end of file" }
        if atNewline() { return "end of line" }
        if b < 0x20 || b == 0x7F { return "control character " + codePoint(b) }
        var end = pos + 1
        while end < bytes.count && bytes[end] & 0xC0 == 0x80 { end += 1 }
        return "'" + String(decoding: bytes[pos..<end], as: UTF8.self) + "'"
    }

    func codePoint(_ b: UInt8) -> String { "U+00" + (b < 0x10 ? "0" : "") + String(b, radix: 16, uppercase: true) }

    mutating func skipSpaces() { while peek() == 0x20 || peek() == 0x09 { pos += 1 } }

    mutating func consumeNewline() {
        pos += peek() == 0x0D ? 2 : 1
        line += 1
        lineStart = pos
    }

    mutating func skipComment() {
        if peek() == 0x23 { while !atEnd && !atNewline() { pos += 1 } }
    }

    /// Skips spaces, comments and newlines (between lines, and inside arrays).
    mutating func skipBlank() {
        while true {
            skipSpaces()
            skipComment()
            guard atNewline() else { return }
            consumeNewline()
        }
    }

    mutating func expectEndOfLine(after what: String) throws {
        skipSpaces()
        skipComment()
        if atEnd { return }
        guard atNewline() else { throw error("expected end of line after \(what), found \(found())") }
        consumeNewline()
    }

    // MARK: Structure

    mutating func parseDocument() throws -> TOMLTable {
        while true {
            skipBlank()
            if atEnd { return root.freeze() }
            if peek() == 0x5B {
                try parseHeader()
            } else {
                try parseKeyValue(into: current)
                try expectEndOfLine(after: "value")
            }
        }
    }

    /// `[a.b]` or `[[a.b]]`: walks from the root, creating implicit tables, and makes the result current.
    mutating func parseHeader() throws {
        let start = mark, col = column(start), at = start.line
        pos += 1
        let isArray = eat(0x5B)
        let parts = try parseKey()
        skipSpaces()
        for _ in 0..<(isArray ? 2 : 1) where !eat(0x5D) {
            throw error("expected '\(isArray ? "]]" : "]")' to close table header, found \(found())")
        }
        try expectEndOfLine(after: "table header")
        guard parts.count * 2 <= TOMLParser.maxDepth else {
            throw error("table header '\(render(parts))' is nested too deeply", at: start)
        }
        let name = render(parts)
        var table = root
        for (i, part) in parts.dropLast().enumerated() {
            switch table.slot(part) {
            case nil:
                let node = Node(.implicit, path: Array(parts[...i]), depth: table.depth + 1, line: at, column: col)
                table.add(part, .table(node), line: at, column: col)
                table = node
            case let slot?:
                switch slot.item {
                case .table(let node): table = node
                case .tables(let array): table = array.tables[array.tables.count - 1]
                case .value(let v):
                    throw error("cannot define table '\(name)': '\(render(Array(parts[...i])))' is already \(v.typeNameWithArticle) (line \(slot.line))", at: start)
                }
            }
        }
        let last = parts[parts.count - 1]
        let node = Node(.header, path: parts, depth: table.depth + (isArray ? 2 : 1), line: at, column: col)
        switch (isArray, table.slot(last)) {
        case (true, nil): table.add(last, .tables(ArrayOfTables(node)), line: at, column: col)
        case (false, nil): table.add(last, .table(node), line: at, column: col)
        case (true, let slot?):
            guard case .tables(let array) = slot.item else {
                throw error("cannot define array of tables '\(name)': already defined at line \(slot.line)", at: start)
            }
            array.tables.append(node)
        case (false, let slot?):
            guard case .table(let existing) = slot.item, existing.kind == .implicit else {
                let line = if case .table(let n) = slot.item { n.line } else { slot.line }
                throw error("table '\(name)' is already defined at line \(line)", at: start)
            }
            (existing.kind, existing.line, existing.column) = (.header, at, col)
            current = existing
            return
        }
        current = node
    }

    /// Parses `key = value` and stores it in `table`. Does not consume the end of line.
    mutating func parseKeyValue(into table: Node) throws {
        let start = mark, col = column(start)
        let parts = try parseKey()
        skipSpaces()
        guard eat(0x3D) else { throw error("expected '=' after key '\(render(parts))', found \(found())") }
        skipSpaces()
        if atEnd || atNewline() || peek() == 0x23 { throw error("expected a value after '='") }
        let depth = table.depth + parts.count
        guard depth <= TOMLParser.maxDepth else { throw error("key '\(render(parts))' is nested too deeply", at: start) }
        let value = try parseValue(path: table.path + parts, depth: depth)

        var t = table
        for part in parts.dropLast() {
            if let slot = t.slot(part) {
                guard case .table(let node) = slot.item, node.kind == .dotted else {
                    throw error("cannot set key '\(render(table.path + parts))': '\(render(t.path + [part]))' is already defined at line \(slot.line)", at: start)
                }
                t = node
            } else {
                let node = Node(.dotted, path: t.path + [part], depth: t.depth + 1, line: start.line, column: col)
                t.add(part, .table(node), line: start.line, column: col)
                t = node
            }
        }
        let last = parts[parts.count - 1]
        if let slot = t.slot(last) {
            throw error("duplicate key '\(render(t.path + [last]))' (first defined at line \(slot.line))", at: start)
        }
        t.add(last, .value(value), line: start.line, column: col)
    }

    /// Parses a possibly dotted key: `a`, `"quoted key"`, `a.'b'.c`.
    mutating func parseKey() throws -> [String] {
        var parts: [String] = []
        repeat {
            skipSpaces()
            switch peek() {
            case 0x22?, 0x27?: parts.append(try parseString())
            case let b? where isBareKeyByte(b):
                let begin = pos
                while let b = peek(), isBareKeyByte(b) { pos += 1 }
                parts.append(String(decoding: bytes[begin..<pos], as: UTF8.self))
            default: throw error("expected a key, found \(found())")
            }
            guard parts.count <= TOMLParser.maxDepth else { throw error("key has too many dotted parts") }
            skipSpaces()
        } while eat(0x2E)
        return parts
    }

    // MARK: Values

    mutating func parseValue(path: [String], depth: Int) throws -> TOMLValue {
        guard depth <= TOMLParser.maxDepth else { throw error("value is nested too deeply (limit \(TOMLParser.maxDepth))") }
        switch peek() {
        case 0x22?, 0x27?: return .string(try parseString())
        case 0x5B?: return try parseArray(path: path, depth: depth)
        case 0x7B?: return try parseInlineTable(path: path, depth: depth)
        default: return try parseScalar()
        }
    }

    mutating func parseArray(path: [String], depth: Int) throws -> TOMLValue {
        let start = mark
        pos += 1
        var items: [TOMLValue] = []
        while true {  // a ']' right after '[' or after a ',' closes the array (trailing comma allowed)
            skipBlank()
            if atEnd { throw error("unterminated array (missing ']')", at: start) }
            if eat(0x5D) { return .array(items) }
            items.append(try parseValue(path: path, depth: depth + 1))
            skipBlank()
            if atEnd { throw error("unterminated array (missing ']')", at: start) }
            if eat(0x5D) { return .array(items) }
            guard eat(0x2C) else { throw error("expected ',' or ']' in array started at line \(start.line), found \(found())") }
        }
    }

    mutating func parseInlineTable(path: [String], depth: Int) throws -> TOMLValue {
        let start = mark
        let node = Node(.inline, path: path, depth: depth, line: start.line, column: column(start))
        pos += 1
        skipSpaces()
        if eat(0x7D) { return .table(node.freeze()) }
        while true {
            skipSpaces()
            if atEnd || atNewline() { break }
            try parseKeyValue(into: node)
            skipSpaces()
            if eat(0x7D) { return .table(node.freeze()) }
            if atEnd || atNewline() { break }
            guard eat(0x2C) else { throw error("expected ',' or '}' in inline table, found \(found())") }
            skipSpaces()
            if peek() == 0x7D { throw error("trailing comma is not allowed in an inline table") }
        }
        throw error("unterminated inline table (missing '}'; inline tables must be on one line)", at: start)
    }

    /// A single-line basic ("...", with escapes) or literal ('...') string.
    mutating func parseString() throws -> String {
        let start = mark, quote = bytes[pos], basic = quote == 0x22
        if peek(1) == quote && peek(2) == quote {
            throw error("multi-line strings (\(basic ? "\"\"\"" : "'''")) are not supported", at: start)
        }
        pos += 1
        var buf: [UInt8] = []
        while true {
            guard let b = peek(), !atNewline() else {
                throw error("unterminated string (missing closing \(basic ? "'\"'" : "\"'\""))", at: start)
            }
            if b == quote { pos += 1; return String(decoding: buf, as: UTF8.self) }
            if basic && b == 0x5C {
                try parseEscape(into: &buf)
            } else if (b < 0x20 && b != 0x09) || b == 0x7F {
                throw error("control character \(codePoint(b)) " + (basic ? "must be escaped in a string" : "is not allowed in a literal string"))
            } else {
                buf.append(b)
                pos += 1
            }
        }
    }

    mutating func parseEscape(into buf: inout [UInt8]) throws {
        let start = mark
        pos += 1
        let c = peek()
        let simple: [UInt8: UInt8] = [0x62: 0x08, 0x74: 0x09, 0x6E: 0x0A, 0x66: 0x0C, 0x72: 0x0D, 0x22: 0x22, 0x5C: 0x5C]
        if let c, let byte = simple[c] {
            buf.append(byte)
            pos += 1
        } else if c == 0x75 || c == 0x55 {  // \uXXXX, \UXXXXXXXX
            pos += 1
            let count = c == 0x75 ? 4 : 8
            var code: UInt32 = 0
            for _ in 0..<count {
                guard let h = peek(), let d = hexValue(h) else {
                    throw error("escape \\\(c == 0x75 ? "u" : "U") needs exactly \(count) hex digits", at: start)
                }
                code = code << 4 | UInt32(d)
                pos += 1
            }
            guard let scalar = Unicode.Scalar(code) else { throw error("escape is not a valid Unicode scalar value", at: start) }
            UTF8.encode(scalar) { buf.append($0) }
        } else {
            let what = found()
            throw error(what.hasPrefix("'") ? "invalid escape sequence '\\\(what.dropFirst().dropLast())' in string"
                                            : "invalid escape sequence: '\\' followed by \(what)", at: start)
        }
    }

    /// Booleans, integers and floats: reads a bare token and classifies it.
    mutating func parseScalar() throws -> TOMLValue {
        let start = mark, begin = pos
        while let b = peek(), isBareKeyByte(b) || b == 0x2B || b == 0x2E || b == 0x3A { pos += 1 }
        let token = Array(bytes[begin..<pos])
        let text = String(decoding: token, as: UTF8.self)
        let fail = { [self] (message: String) in self.error(message, at: start) }
        switch text {
        case "": throw error("expected a value, found \(found())")
        case "true": return .bool(true)
        case "false": return .bool(false)
        case "inf", "+inf": return .float(.infinity)
        case "-inf": return .float(-.infinity)
        case "nan", "+nan", "-nan": return .float(.nan)
        default: break
        }
        if (token.count >= 5 && token[0..<4].allSatisfy(isDigit) && token[4] == 0x2D)
            || (token.count >= 3 && isDigit(token[0]) && isDigit(token[1]) && token[2] == 0x3A) {
            throw fail("dates and times are not supported ('\(text)')")
        }
        let signed = token[0] == 0x2B || token[0] == 0x2D
        guard isDigit(token[0]) || (signed && token.count > 1 && isDigit(token[1])) else {
            throw fail("invalid value '\(text)' (strings must be quoted)")
        }
        if token.count >= 2 && token[0] == 0x30, let radix = [0x78: 16, 0x6F: 8, 0x62: 2][token[1]] {
            return .integer(try parseInteger(Array(token[2...]), radix: radix, negative: false, text: text, fail: fail))
        }
        if token.contains(where: { $0 == 0x2E || $0 == 0x65 || $0 == 0x45 }) {
            return .float(try parseFloat(token, text: text, fail: fail))
        }
        let digits = Array(token[(signed ? 1 : 0)...])
        let value = try parseInteger(digits, radix: 10, negative: token[0] == 0x2D, text: text, fail: fail)
        if digits.count > 1 && digits[0] == 0x30 { throw fail("leading zeros are not allowed in integer '\(text)'") }
        return .integer(value)
    }

    /// Removes underscores, which must each sit between two digits valid for `radix`.
    func stripUnderscores(_ digits: [UInt8], radix: Int, text: String, fail: (String) -> TOMLError) throws -> [UInt8] {
        let isRadixDigit = { (i: Int) in i >= 0 && i < digits.count && (hexValue(digits[i]).map { Int($0) < radix } ?? false) }
        for (i, b) in digits.enumerated() where b == 0x5F && !(isRadixDigit(i - 1) && isRadixDigit(i + 1)) {
            throw fail("misplaced underscore in number '\(text)'")
        }
        return digits.filter { $0 != 0x5F }
    }

    func parseInteger(_ raw: [UInt8], radix: Int, negative: Bool, text: String, fail: (String) -> TOMLError) throws -> Int64 {
        let digits = try stripUnderscores(raw, radix: radix, text: text, fail: fail)
        guard !digits.isEmpty else { throw fail("invalid integer '\(text)'") }
        var magnitude: UInt64 = 0
        for b in digits {
            guard let d = hexValue(b), Int(d) < radix else { throw fail("invalid integer '\(text)'") }
            let (m, o1) = magnitude.multipliedReportingOverflow(by: UInt64(radix))
            let (s, o2) = m.addingReportingOverflow(UInt64(d))
            guard !o1 && !o2, s <= UInt64(Int64.max) + (negative ? 1 : 0) else {
                throw fail("integer '\(text)' does not fit in 64 bits")
            }
            magnitude = s
        }
        return negative ? Int64(bitPattern: 0 &- magnitude) : Int64(magnitude)
    }

    /// Checks the TOML float grammar: [+-] int [. digits] [(e|E) [+-] digits], at least one of the optional parts.
    func parseFloat(_ token: [UInt8], text: String, fail: (String) -> TOMLError) throws -> Double {
        let chars = try stripUnderscores(token, radix: 10, text: text, fail: fail)
        var i = 0
        func sign() { if i < chars.count && (chars[i] == 0x2B || chars[i] == 0x2D) { i += 1 } }
        func digits() -> Int {
            let from = i
            while i < chars.count && isDigit(chars[i]) { i += 1 }
            return i - from
        }
        sign()
        let intStart = i, intDigits = digits()
        var valid = intDigits > 0
        if intDigits > 1 && chars[intStart] == 0x30 { throw fail("leading zeros are not allowed in float '\(text)'") }
        if i < chars.count && chars[i] == 0x2E { i += 1; valid = valid && digits() > 0 }
        if i < chars.count && (chars[i] == 0x65 || chars[i] == 0x45) { i += 1; sign(); valid = valid && digits() > 0 }
        guard valid, i == chars.count, let value = Double(String(decoding: chars, as: UTF8.self)) else {
            throw fail("invalid float '\(text)'")
        }
        guard value.isFinite else { throw fail("float '\(text)' is out of range") }
        return value
    }
}
