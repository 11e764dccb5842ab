/// A parsed TOML value; one case per TOML type this reader supports (no dates, by design).
public indirect enum TOMLValue: Sendable, Equatable {
    case string(String)
    case integer(Int64)
    case float(Double)
    case bool(Bool)
    case array([TOMLValue])
    case table(TOMLTable)

    /// The TOML name of this value's type, for error messages ("string", "integer", ...).
    public var typeName: String {
        switch self {
        case .string: return "string"
        case .integer: return "integer"
        case .float: return "float"
        case .bool: return "boolean"
        case .array: return "array"
        case .table: return "table"
        }
    }

    /// `typeName` with its indefinite article ("an integer", "a string"), for messages.
    var typeNameWithArticle: String {
        let name = typeName
        return (name.first.map { "aeiou".contains($0) } ?? false ? "an " : "a ") + name
    }

    public var stringValue: String? { if case .string(let v) = self { return v } else { return nil } }
    public var integerValue: Int64? { if case .integer(let v) = self { return v } else { return nil } }
    public var floatValue: Double? { if case .float(let v) = self { return v } else { return nil } }
    public var boolValue: Bool? { if case .bool(let v) = self { return v } else { return nil } }
    public var arrayValue: [TOMLValue]? { if case .array(let v) = self { return v } else { return nil } }
    public var tableValue: TOMLTable? { if case .table(let v) = self { return v } else { return nil } }
}

extension TOMLValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }
    public init(floatLiteral value: Double) { self = .float(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(arrayLiteral elements: TOMLValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, TOMLValue)...) {
        var table = TOMLTable()
        for (key, value) in elements { table.set(key, value) }
        self = .table(table)
    }
}

/// A TOML table that keeps its keys in file order and remembers where each key was defined,
/// so callers can report problems by line. Equality ignores order and positions.
public struct TOMLTable: Sendable, Equatable {
    /// One key of the table, with the 1-based line and column where it was defined
    /// (for a table defined by a `[header]`, the header's position; 0 when built in code).
    public struct Entry: Sendable, Equatable {
        public var key: String
        public var value: TOMLValue
        public var line: Int
        public var column: Int
    }

    public private(set) var entries: [Entry] = []
    private var index: [String: Int] = [:]
    /// 1-based line where this table itself was defined (header, key or `{`); nil for the root or code-built tables.
    public internal(set) var line: Int?

    public init() {}

    public var keys: [String] { entries.map(\.key) }
    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }

    public subscript(key: String) -> TOMLValue? {
        guard let i = index[key] else { return nil }
        return entries[i].value
    }

    /// 1-based line where `key` was defined, or where its table header was.
    public func line(of key: String) -> Int? { index[key].map { entries[$0].line } }
    /// 1-based column where `key` was defined.
    public func column(of key: String) -> Int? { index[key].map { entries[$0].column } }

    /// Sets `key`, replacing any existing value in place (keeping its position in the order).
    public mutating func set(_ key: String, _ value: TOMLValue, line: Int = 0, column: Int = 0) {
        let entry = Entry(key: key, value: value, line: line, column: column)
        if let i = index[key] {
            entries[i] = entry
        } else {
            index[key] = entries.count
            entries.append(entry)
        }
    }

    public static func == (lhs: TOMLTable, rhs: TOMLTable) -> Bool {
        guard lhs.entries.count == rhs.entries.count else { return false }
        return lhs.entries.allSatisfy { rhs[$0.key] == $0.value }
    }
}

extension TOMLTable: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, TOMLValue)...) {
        for (key, value) in elements { set(key, value) }
    }
}
