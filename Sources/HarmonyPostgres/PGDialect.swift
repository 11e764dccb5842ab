/// PostgreSQL spellings that drivers and toolkits send on their own (SQLAlchemy's PostgreSQL dialect above all)
/// and SQLite cannot parse, rewritten before SQLite compiles the text. Only unambiguous shapes are touched, never
/// inside string literals, quoted identifiers or comments; everything else is SQLite's to accept or refuse.
enum PGDialect {
    enum Kind: Equatable { case space, comment, literal, quoted, word, punct, cast, group }
    struct Token {
        var kind: Kind
        var text: Substring
    }

    /// Whether `sql` holds anything `rewritten` would change: most statements skip the tokenizer.
    static func mayNeedRewrite(_ sql: Substring) -> Bool {
        sql.contains("::") || sql.range(of: "pg_catalog.", options: .caseInsensitive) != nil
            || sql.range(of: "current_", options: .caseInsensitive) != nil || sql.range(of: "session_user", options: .caseInsensitive) != nil
            || sql.range(of: "serial", options: .caseInsensitive) != nil || sql.range(of: "values", options: .caseInsensitive) != nil
    }

    /// `sql` with, outside literals and comments:
    /// - `pg_catalog.` dropped before a function call (`SELECT pg_catalog.version()`, SQLAlchemy's first query);
    /// - `value::type` casts made `CAST(value AS type)` for integer, floating, numeric and text types, and dropped
    ///   for the rest (SQLite's CAST to DATE, TIMESTAMP, BOOLEAN or BYTEA would turn '2024-01-02' into 2024; the
    ///   column's affinity converts the value instead);
    /// - SERIAL, BIGSERIAL and SMALLSERIAL column types made INTEGER, so the key is SQLite's rowid and numbers itself;
    /// - `(VALUES ...) AS alias(a, b)`, a column list SQLite lacks, made `(SELECT column1 AS a, ... FROM (VALUES ...)) AS alias`.
    /// - `pg_catalog.pg_class` and `pg_catalog.pg_namespace` made the session's own `temp.` views of them (see
    ///   `catalogViews`), and `= ANY (ARRAY[a, b])` made `IN (a, b)`: what SQLAlchemy's `has_table` asks before
    ///   `create_all` and `drop_all`.
    static func rewritten(_ sql: Substring) -> Substring {
        guard mayNeedRewrite(sql) else { return sql }
        var tokens = tokenize(sql)
        catalogPrefixes(&tokens)
        callSQLValueFunctions(&tokens)
        rewriteCasts(&tokens)
        // Column definitions of CREATE TABLE only (not CREATE TABLE ... AS SELECT, where a word after a column is its alias).
        let words = tokens.filter { $0.kind == .word }.map { $0.text.uppercased() }
        if words.first == "CREATE", !words.contains("SELECT") { serialToInteger(&tokens) }
        aliasValuesColumns(&tokens)
        anyArrayToIn(&tokens)
        return Substring(tokens.map { String($0.text) }.joined())
    }

    /// The two catalog tables answered, as TEMP views over `sqlite_schema` (the application's tables and views,
    /// without SQLite's and harmonylite's own), all in schema `public`.
    static let catalogViews = [
        "CREATE TEMP VIEW IF NOT EXISTS pg_namespace(oid, nspname) AS VALUES (11, 'pg_catalog'), (2200, 'public')",
        #"""
        CREATE TEMP VIEW IF NOT EXISTS pg_class(oid, relname, relnamespace, relkind) AS
        SELECT rowid, name, 2200, CASE type WHEN 'table' THEN 'r' WHEN 'view' THEN 'v' WHEN 'index' THEN 'i' ELSE 'x' END
        FROM main.sqlite_schema WHERE name NOT LIKE 'sqlite\_%' ESCAPE '\' AND name NOT LIKE '\_\_harmonylite%' ESCAPE '\'
        """#,
    ]

    static func tokenize(_ sql: Substring) -> [Token] {
        var tokens: [Token] = []
        var i = sql.startIndex
        func isWord(_ c: Character) -> Bool { c.isLetter || c.isNumber || c == "_" || c == "$" }
        while i < sql.endIndex {
            let c = sql[i]
            let start = i
            let next = sql.index(after: i)
            var kind = Kind.punct
            if c.isWhitespace {
                i = sql[i...].firstIndex { !$0.isWhitespace } ?? sql.endIndex
                kind = .space
            } else if c == "-", next < sql.endIndex, sql[next] == "-" {
                i = sql[i...].firstIndex(of: "\n") ?? sql.endIndex
                kind = .comment
            } else if c == "/", next < sql.endIndex, sql[next] == "*" {
                // From after the opening "/*": in "/*/ ... */" the first "*/" is not the end.
                i = sql[sql.index(after: next)...].range(of: "*/")?.upperBound ?? sql.endIndex
                kind = .comment
            } else if c == "[", tokens.last(where: { !isBlank($0) })?.text.uppercased() != "ARRAY" {
                // SQLite's [bracketed name] (PostgreSQL's ARRAY[...] aside).
                i = sql[next...].firstIndex(of: "]").map { sql.index(after: $0) } ?? sql.endIndex
                kind = .quoted
            } else if c == "'" || c == "\"" || c == "`" {
                // Through the closing quote; a doubled quote stays inside.
                i = next
                while i < sql.endIndex {
                    if sql[i] == c {
                        let after = sql.index(after: i)
                        if after < sql.endIndex, sql[after] == c { i = sql.index(after: after); continue }
                        i = after
                        break
                    }
                    i = sql.index(after: i)
                }
                kind = c == "'" ? .literal : .quoted
            } else if c == ":", next < sql.endIndex, sql[next] == ":" {
                i = sql.index(after: next)
                kind = .cast
            } else if isWord(c) {
                i = sql[i...].firstIndex { !isWord($0) } ?? sql.endIndex
                kind = .word
            } else {
                i = next
            }
            tokens.append(Token(kind: kind, text: sql[start..<i]))
        }
        return tokens
    }

    /// What PostgreSQL would infer for each `$n` the client left untyped, as declared types (`INTEGER`, `DATE`...):
    /// from a cast on it (`$1::int`), from the column an INSERT's VALUES puts it in, or from the column it is
    /// compared with (`price > $1`, `SET name = $2`, `id IN ($3, $4)`, `name LIKE $5`), and LIMIT or OFFSET.
    /// `columns(table)` lists a table's columns and declared types in order. Drivers that encode parameters by the
    /// types a Describe reports (asyncpg) need them; text was all this front end said before.
    static func parameterHints(_ sql: Substring, columns: (String) -> [(name: String, type: String)]) -> [Int: String] {
        let tokens = tokenize(sql).filter { !isBlank($0) }
        func name(_ t: Token) -> String {
            t.kind == .quoted ? String(t.text.dropFirst().dropLast()) : String(t.text)
        }
        func parameter(_ i: Int) -> Int? {
            guard i >= 0, i < tokens.count, tokens[i].kind == .word, tokens[i].text.first == "$" else { return nil }
            return Int(tokens[i].text.dropFirst())
        }
        func isName(_ i: Int) -> Bool { i >= 0 && i < tokens.count && (tokens[i].kind == .word || tokens[i].kind == .quoted) && parameter(i) == nil }
        /// The last part of a qualified name starting at `i` (`main.t`, `t.c`): the name itself.
        func lastPart(from i: Int) -> Int {
            var j = i
            while isName(j), j + 2 < tokens.count, tokens[j + 1].text == ".", isName(j + 2) { j += 2 }
            return j
        }
        var tables: [String] = []
        for i in tokens.indices.dropLast() where tokens[i].kind == .word {
            guard ["INTO", "UPDATE", "FROM", "JOIN"].contains(tokens[i].text.uppercased()) else { continue }
            let j = lastPart(from: i + 1)
            if isName(j) { tables.append(name(tokens[j])) }
        }
        var known: [String: [(name: String, type: String)]] = [:]
        func typeOf(column: String) -> String? {
            for table in tables {
                if known[table] == nil { known[table] = columns(table) }
                if let c = known[table]!.first(where: { $0.name.lowercased() == column.lowercased() }) { return c.type }
            }
            return nil
        }
        var hints: [Int: String] = [:]
        // INSERT ... INTO t [(columns)] VALUES (...), (...)
        if let into = tokens.firstIndex(where: { $0.kind == .word && $0.text.uppercased() == "INTO" }), isName(into + 1),
           let valuesAt = tokens.firstIndex(where: { $0.kind == .word && $0.text.uppercased() == "VALUES" }), valuesAt > into {
            let t = lastPart(from: into + 1)
            var names = columns(name(tokens[t])).map(\.name)
            if t + 1 < valuesAt, tokens[t + 1].text == "(", let close = matching(tokens, t + 1, forward: true) {
                names = tokens[(t + 2)..<close].filter { $0.kind == .word || $0.kind == .quoted }.map(name)
            }
            var i = valuesAt + 1
            while i < tokens.count, tokens[i].text == "(" {
                guard let close = matching(tokens, i, forward: true) else { break }
                var position = 0, depth = 0, start = i + 1
                for k in (i + 1)...close {
                    let text = tokens[k].text
                    if text == "(" { depth += 1 }
                    if text == ")" && depth > 0 { depth -= 1; continue }
                    if depth == 0 && (text == "," || k == close) {
                        if k - start == 1, let n = parameter(start), position < names.count, let type = typeOf(column: names[position]) { hints[n] = hints[n] ?? type }
                        position += 1
                        start = k + 1
                    }
                }
                i = close + 1
                if i < tokens.count, tokens[i].text == "," { i += 1 }
            }
        }
        let comparisons: Set<Substring> = ["=", "<", ">", "!"]
        for i in tokens.indices {
            guard let n = parameter(i), hints[n] == nil else { continue }
            // A cast on it.
            if i + 2 < tokens.count, tokens[i + 1].kind == .cast, tokens[i + 2].kind == .word {
                var words = [tokens[i + 2].text.uppercased()]
                var k = i + 3
                while k < tokens.count, tokens[k].kind == .word, ["PRECISION", "VARYING", "WITH", "WITHOUT", "TIME", "ZONE"].contains(tokens[k].text.uppercased()) {
                    words.append(tokens[k].text.uppercased())
                    k += 1
                }
                hints[n] = words.joined(separator: " ")
                continue
            }
            // LIMIT $n, OFFSET $n.
            if i > 0, tokens[i - 1].kind == .word, ["LIMIT", "OFFSET"].contains(tokens[i - 1].text.uppercased()) { hints[n] = "INTEGER"; continue }
            // column op $n, column LIKE $n, column IN (..., $n, ...).
            var j = i - 1
            if j >= 0, tokens[j].kind == .word, ["LIKE", "GLOB"].contains(tokens[j].text.uppercased()) {
                j -= 1
            } else if j >= 0, comparisons.contains(tokens[j].text) {
                while j >= 0, comparisons.contains(tokens[j].text) { j -= 1 }
            } else {
                var k = i - 1
                var depth = 0
                while k >= 0 {
                    if tokens[k].text == ")" { depth += 1 }
                    if tokens[k].text == "(" { if depth == 0 { break }; depth -= 1 }
                    k -= 1
                }
                guard k >= 1, tokens[k - 1].kind == .word, tokens[k - 1].text.uppercased() == "IN" else {
                    // $n op column.
                    if i + 1 < tokens.count, comparisons.contains(tokens[i + 1].text) {
                        var m = i + 1
                        while m < tokens.count, comparisons.contains(tokens[m].text) { m += 1 }
                        m = lastPart(from: m)
                        if isName(m), let type = typeOf(column: name(tokens[m])) { hints[n] = type }
                    }
                    continue
                }
                j = k - 2
            }
            if isName(j), let type = typeOf(column: name(tokens[j])) { hints[n] = type }
        }
        return hints
    }

    /// The type of each result column of a plain `SELECT a, count(*) AS n, ... FROM` that its expression shows,
    /// for a statement described before it runs (no row to look at): count, length and the like are integers,
    /// total and avg floating, literals their own kind; nil where the expression does not say (or the list has a `*`).
    static func selectListTypes(_ sql: Substring) -> [Int32?]? {
        let tokens = tokenize(sql).filter { !isBlank($0) }
        guard let first = tokens.first, first.kind == .word, first.text.uppercased() == "SELECT" else { return nil }
        var items: [[Token]] = [[]]
        var depth = 0
        for t in tokens.dropFirst() {
            if t.kind == .punct, t.text == "(" { depth += 1 }
            if t.kind == .punct, t.text == ")" { depth -= 1 }
            if depth == 0, t.kind == .word, ["FROM", "WHERE", "GROUP", "ORDER", "LIMIT", "UNION", "EXCEPT", "INTERSECT", "WINDOW", "HAVING"].contains(t.text.uppercased()) { break }
            if depth == 0, t.kind == .punct, t.text == ";" { break }
            if depth == 0, t.kind == .punct, t.text == "," { items.append([]); continue }
            items[items.count - 1].append(t)
        }
        if items.first?.first?.kind == .word, ["DISTINCT", "ALL"].contains(items[0][0].text.uppercased()) { items[0].removeFirst() }
        guard !items.contains(where: { $0.contains { $0.text == "*" && $0.kind == .punct } && !$0.contains { $0.text == "(" } }) else { return nil }
        return items.map { item -> Int32? in
            guard let head = item.first else { return nil }
            // The expression alone, without its alias.
            let expression = item.count >= 3 && item[item.count - 2].kind == .word && item[item.count - 2].text.uppercased() == "AS" ? Array(item.dropLast(2)) : item
            if expression.count == 1 {
                switch head.kind {
                case .literal: return PGType.text
                case .word where head.text.allSatisfy(\.isNumber): return PGType.int8
                default: return nil
                }
            }
            if expression.count == 3, expression[1].text == ".", expression[0].text.allSatisfy(\.isNumber), expression[2].text.allSatisfy(\.isNumber) { return PGType.float8 }
            guard head.kind == .word, expression.count >= 3, expression[1].text == "(", expression.last?.text == ")",
                  matching(expression, 1, forward: true) == expression.count - 1 else { return nil }
            switch head.text.lowercased() {
            case "count", "length", "octet_length", "changes", "total_changes", "last_insert_rowid", "instr", "unicode", "random": return PGType.int8
            case "total", "avg": return PGType.float8
            case "lower", "upper", "trim", "ltrim", "rtrim", "substr", "substring", "replace", "printf", "format", "hex", "quote", "group_concat", "string_agg", "typeof", "char", "json", "json_object", "json_array": return PGType.text
            default: return nil
            }
        }
    }

    /// The statement a `WITH` clause leads to (SELECT, INSERT, REPLACE, UPDATE, DELETE, VALUES): the first of
    /// those words outside the common table expressions' parentheses.
    static func statementAfterWith(_ sql: Substring) -> String? {
        var depth = 0
        for t in tokenize(sql) {
            if t.kind == .punct, t.text == "(" { depth += 1 }
            if t.kind == .punct, t.text == ")" { depth -= 1 }
            if t.kind == .punct, t.text == ";", depth == 0 { return nil }
            guard depth == 0, t.kind == .word else { continue }
            let word = t.text.uppercased()
            if ["SELECT", "INSERT", "REPLACE", "UPDATE", "DELETE", "VALUES"].contains(word) { return word }
        }
        return nil
    }

    static func isBlank(_ t: Token) -> Bool { t.kind == .space || t.kind == .comment }

    static func previousSolid(_ tokens: [Token], before index: Int) -> Int? {
        var j = index - 1
        while j >= 0, isBlank(tokens[j]) { j -= 1 }
        return j >= 0 ? j : nil
    }

    static func nextSolid(_ tokens: [Token], after index: Int) -> Int? {
        var j = index + 1
        while j < tokens.count, isBlank(tokens[j]) { j += 1 }
        return j < tokens.count ? j : nil
    }

    /// The index of the bracket that closes (forward) or opens (backward) the one at `index`.
    static func matching(_ tokens: [Token], _ index: Int, forward: Bool) -> Int? {
        let open: Substring = forward ? tokens[index].text : (tokens[index].text == ")" ? "(" : "[")
        let close: Substring = forward ? (tokens[index].text == "(" ? ")" : "]") : tokens[index].text
        var depth = 0
        var j = index
        while j >= 0, j < tokens.count {
            if tokens[j].kind == .punct {
                if tokens[j].text == (forward ? open : close) { depth += 1 }
                if tokens[j].text == (forward ? close : open) { depth -= 1 }
                if depth == 0 { return j }
            }
            j += forward ? 1 : -1
        }
        return nil
    }

    /// Drops `pg_catalog.` before calls, makes it `temp.` before the tables answered.
    static func catalogPrefixes(_ tokens: inout [Token]) {
        var i = 0
        while i < tokens.count {
            if i + 2 < tokens.count, tokens[i].kind == .word, tokens[i].text.lowercased() == "pg_catalog", tokens[i + 1].text == ".",
               tokens[i + 2].kind == .word {
                if let call = nextSolid(tokens, after: i + 2), tokens[call].text == "(" {
                    tokens.removeSubrange(i...i + 1)
                    continue
                }
                if ["pg_class", "pg_namespace"].contains(tokens[i + 2].text.lowercased()) { tokens[i].text = "temp" }
            }
            i += 1
        }
    }

    /// PostgreSQL's SQL-standard functions called without parentheses (`SELECT current_user`), which SQLite would
    /// take for column names; the session defines each as a function.
    static let valueFunctions: Set<String> = ["current_user", "session_user", "current_role", "current_catalog", "current_schema"]

    static func callSQLValueFunctions(_ tokens: inout [Token]) {
        for i in tokens.indices where tokens[i].kind == .word && valueFunctions.contains(tokens[i].text.lowercased()) {
            if let next = nextSolid(tokens, after: i), tokens[next].text == "(" { continue }
            if let previous = previousSolid(tokens, before: i), tokens[previous].text == "." || tokens[previous].kind == .cast { continue }
            tokens[i] = Token(kind: .group, text: Substring(tokens[i].text + "()"))
        }
    }

    static func anyArrayToIn(_ tokens: inout [Token]) {
        var i = 0
        while i < tokens.count {
            defer { i += 1 }
            guard tokens[i].kind == .word, tokens[i].text.uppercased() == "ANY", let equals = previousSolid(tokens, before: i),
                  tokens[equals].text == "=", equals == 0 || !["!", "<", ">"].contains(tokens[equals - 1].text), let open = nextSolid(tokens, after: i), tokens[open].text == "(",
                  let array = nextSolid(tokens, after: open), tokens[array].text.uppercased() == "ARRAY",
                  let bracket = nextSolid(tokens, after: array), tokens[bracket].text == "[",
                  let bracketEnd = matching(tokens, bracket, forward: true), let close = nextSolid(tokens, after: bracketEnd),
                  tokens[close].text == ")"
            else { continue }
            let list = tokens[(bracket + 1)..<bracketEnd].map { String($0.text) }.joined()
            tokens.replaceSubrange(i...close, with: [Token(kind: .group, text: Substring("(\(list))"))])
            tokens[equals].text = "IN"
            i = equals
        }
    }

    /// What a cast to `type` becomes: the SQLite type to CAST to, or nil to drop the cast and keep the value.
    static func castTarget(_ type: [String]) -> String? {
        switch type.joined(separator: " ") {
        case "INT", "INTEGER", "INT2", "INT4", "INT8", "SMALLINT", "BIGINT", "OID": return "INTEGER"
        case "FLOAT", "FLOAT4", "FLOAT8", "REAL", "DOUBLE PRECISION", "NUMERIC", "DECIMAL": return "REAL"
        case "TEXT", "VARCHAR", "CHAR", "CHARACTER", "CHARACTER VARYING", "BPCHAR", "NAME", "CITEXT": return "TEXT"
        default: return nil
        }
    }

    /// The first part of the qualified name (`t.c`, `main.f`) that ends at `last`.
    static func firstPart(_ tokens: [Token], of last: Int) -> Int {
        var first = last
        while first >= 2, tokens[first - 1].text == ".", [.word, .quoted].contains(tokens[first - 2].kind) { first -= 2 }
        return first
    }

    static func rewriteCasts(_ tokens: inout [Token]) {
        var i = 0
        while i < tokens.count {
            guard tokens[i].kind == .cast else { i += 1; continue }
            // The value: a literal, a parameter, a (qualified) name, a call or a parenthesized expression.
            guard let last = previousSolid(tokens, before: i) else { i += 1; continue }
            var first = last
            switch tokens[last].kind {
            case .word where tokens[last].text.uppercased() == "END":
                // CASE ... END::type: the value is the whole CASE expression.
                var depth = 0
                var j = last
                while j >= 0 {
                    if tokens[j].kind == .word {
                        let word = tokens[j].text.uppercased()
                        if word == "END" { depth += 1 }
                        if word == "CASE" { depth -= 1 }
                        if depth == 0 { break }
                    }
                    j -= 1
                }
                guard j >= 0 else { i += 1; continue }
                first = j
            case .literal, .word, .quoted, .group:
                first = firstPart(tokens, of: last)
            case .punct where tokens[last].text == ")":
                guard let open = matching(tokens, last, forward: false) else { i += 1; continue }
                first = open
                if open > 0, [.word, .quoted].contains(tokens[open - 1].kind) { first = firstPart(tokens, of: open - 1) }
            default:
                i += 1
                continue
            }
            // The type: words (DOUBLE PRECISION, TIMESTAMP WITHOUT TIME ZONE), a schema before it, (n, m), [] pairs.
            guard var end = nextSolid(tokens, after: i), tokens[end].kind == .word || tokens[end].kind == .quoted else { i += 1; continue }
            if let dot = nextSolid(tokens, after: end), tokens[dot].text == ".", let name = nextSolid(tokens, after: dot),
               tokens[name].kind == .word || tokens[name].kind == .quoted {
                end = name
            }
            var words = [tokens[end].text.uppercased()]
            let continuations: Set<String> = ["PRECISION", "VARYING", "WITH", "WITHOUT", "TIME", "ZONE"]
            while let n = nextSolid(tokens, after: end), tokens[n].kind == .word, continuations.contains(tokens[n].text.uppercased()) {
                words.append(tokens[n].text.uppercased())
                end = n
            }
            var isArray = false
            while let n = nextSolid(tokens, after: end), tokens[n].text == "(" || tokens[n].text.hasPrefix("[") {
                if tokens[n].text.hasPrefix("[") {
                    isArray = true
                    if tokens[n].kind == .quoted { end = n; continue }  // "[]" read as one bracketed token
                }
                guard let close = matching(tokens, n, forward: true) else { break }
                end = close
            }
            let value = tokens[first...last].map { String($0.text) }.joined()
            let target = isArray ? nil : castTarget(words)
            let replacement = target.map { "CAST(\(value) AS \($0))" } ?? value
            tokens.replaceSubrange(first...end, with: [Token(kind: .group, text: Substring(replacement))])
            i = first + 1
        }
    }

    static func serialToInteger(_ tokens: inout [Token]) {
        for i in tokens.indices where tokens[i].kind == .word {
            guard ["SERIAL", "SERIAL4", "SERIAL8", "BIGSERIAL", "SMALLSERIAL", "SERIAL2"].contains(tokens[i].text.uppercased()),
                  let name = previousSolid(tokens, before: i), [.word, .quoted].contains(tokens[name].kind),
                  let before = previousSolid(tokens, before: name), tokens[before].text == "(" || tokens[before].text == ","
            else { continue }
            tokens[i].text = "INTEGER"
        }
    }

    static func aliasValuesColumns(_ tokens: inout [Token]) {
        var i = 0
        while i < tokens.count {
            defer { i += 1 }
            guard tokens[i].text == "(", let values = nextSolid(tokens, after: i), tokens[values].text.uppercased() == "VALUES",
                  let close = matching(tokens, i, forward: true), let asWord = nextSolid(tokens, after: close),
                  tokens[asWord].text.uppercased() == "AS", let alias = nextSolid(tokens, after: asWord),
                  [.word, .quoted].contains(tokens[alias].kind), let open = nextSolid(tokens, after: alias), tokens[open].text == "(",
                  let listEnd = matching(tokens, open, forward: true)
            else { continue }
            let names = tokens[(open + 1)..<listEnd].filter { !isBlank($0) && $0.text != "," }
            guard names.allSatisfy({ [.word, .quoted].contains($0.kind) }), !names.isEmpty else { continue }
            let columns = names.enumerated().map { "column\($0.offset + 1) AS \($0.element.text)" }.joined(separator: ", ")
            let inner = tokens[values..<close].map { String($0.text) }.joined()
            let replacement = "(SELECT \(columns) FROM (\(inner))) AS \(tokens[alias].text)"
            tokens.replaceSubrange(i...listEnd, with: [Token(kind: .group, text: Substring(replacement))])
        }
    }
}
