/// Typed, path-aware access to a parsed table, so config loaders get errors like
/// `line 7, column 1: key 'replication_log.shards' must be an integer, got string` for free.
public struct TOMLReader: Sendable {
    public let table: TOMLTable
    /// Dotted path of `table` from the document root ("" for the root, "faults[0]" for an array element).
    public let path: String

    public init(_ table: TOMLTable, path: String = "") {
        self.table = table
        self.path = path
    }

    /// Parses `text` and wraps the root table.
    public init(parsing text: String) throws {
        self.init(try TOMLParser.parse(text))
    }

    public var keys: [String] { table.keys }
    public func contains(_ key: String) -> Bool { table[key] != nil }
    public func value(_ key: String) -> TOMLValue? { table[key] }

    /// Full dotted name of `key` for messages, e.g. `replication_log.shards`.
    public func fullKey(_ key: String) -> String { path.isEmpty ? key : path + "." + key }

    /// An error positioned at `key` (or at this table when the key is absent), for callers'
    /// own checks: `throw reader.error(at: "shards", "key 'replication_log.shards' must be positive")`.
    public func error(at key: String, _ message: String) -> TOMLError {
        TOMLError(line: table.line(of: key) ?? table.line ?? 0, column: table.column(of: key) ?? 0, message: message)
    }

    private func typeError(_ key: String, _ expected: String, _ got: TOMLValue) -> TOMLError {
        error(at: key, "key '\(fullKey(key))' must be \(expected), got \(got.typeName)")
    }

    public func string(_ key: String) throws -> String? {
        guard let v = table[key] else { return nil }
        guard case .string(let s) = v else { throw typeError(key, "a string", v) }
        return s
    }

    public func int(_ key: String) throws -> Int? {
        guard let v = table[key] else { return nil }
        guard case .integer(let i) = v else { throw typeError(key, "an integer", v) }
        guard let n = Int(exactly: i) else { throw error(at: key, "key '\(fullKey(key))' is out of range") }
        return n
    }

    /// Reads a float; integers are accepted and converted.
    public func double(_ key: String) throws -> Double? {
        switch table[key] {
        case nil: return nil
        case .float(let d)?: return d
        case .integer(let i)?: return Double(i)
        case let v?: throw typeError(key, "a number", v)
        }
    }

    public func bool(_ key: String) throws -> Bool? {
        guard let v = table[key] else { return nil }
        guard case .bool(let b) = v else { throw typeError(key, "a boolean", v) }
        return b
    }

    public func stringArray(_ key: String) throws -> [String]? {
        guard let v = table[key] else { return nil }
        guard case .array(let items) = v else { throw typeError(key, "an array of strings", v) }
        return try items.map { item in
            guard case .string(let s) = item else {
                throw error(at: key, "key '\(fullKey(key))' must be an array of strings, but contains \(item.typeNameWithArticle)")
            }
            return s
        }
    }

    public func table(_ key: String) throws -> TOMLReader? {
        guard let v = table[key] else { return nil }
        guard case .table(let t) = v else { throw typeError(key, "a table", v) }
        return TOMLReader(t, path: fullKey(key))
    }

    /// Reads `[[key]]` sections (or an array of inline tables); an absent key gives an empty array.
    public func tableArray(_ key: String) throws -> [TOMLReader] {
        guard let v = table[key] else { return [] }
        guard case .array(let items) = v else { throw typeError(key, "an array of tables", v) }
        return try items.enumerated().map { i, item in
            guard case .table(let t) = item else {
                throw error(at: key, "key '\(fullKey(key))' must be an array of tables, but contains \(item.typeNameWithArticle)")
            }
            return TOMLReader(t, path: fullKey(key) + "[\(i)]")
        }
    }

    /// Turns an optional read into a required one: `try r.required("kind", r.string)`.
    public func required<T>(_ key: String, _ read: (String) throws -> T?) throws -> T {
        guard let value = try read(key) else {
            throw error(at: key, "missing required key '\(fullKey(key))'")
        }
        return value
    }

    /// Throws on the first key (in file order) not in `allowed`, suggesting a close match.
    public func rejectUnknownKeys(allowed: Set<String>) throws {
        for entry in table.entries where !allowed.contains(entry.key) {
            var message = "unknown key '\(fullKey(entry.key))'"
            let near = allowed.map { ($0, editDistance($0, entry.key)) }
                .filter { $0.1 <= 2 }
                .min { $0.1 != $1.1 ? $0.1 < $1.1 : $0.0 < $1.0 }
            if let near { message += " (did you mean '\(near.0)'?)" }
            throw TOMLError(line: entry.line, column: entry.column, message: message)
        }
    }
}

/// Levenshtein distance over Unicode scalars, for "did you mean" hints.
private func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a.unicodeScalars), b = Array(b.unicodeScalars)
    if a.isEmpty || b.isEmpty { return max(a.count, b.count) }
    var previous = Array(0...b.count)
    for i in 1...a.count {
        var row = [i] + Array(repeating: 0, count: b.count)
        for j in 1...b.count {
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        previous = row
    }
    return previous[b.count]
}
