import HarmonyTestSupport
import Testing
@testable import HarmonyTOML

/// Parses `text` expecting failure; returns the TOMLError (or records an issue).
private func parseError(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) -> TOMLError? {
    do {
        let table = try TOMLParser.parse(text)
        Issue.record("expected an error, parsed \(table)", sourceLocation: sourceLocation)
        return nil
    } catch let error as TOMLError {
        return error
    } catch {
        Issue.record("unexpected error type \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

private let sampleConfig = """
    db_path = "/var/lib/harmonylite/data.db"
    node_id = 1 # comment
    cleanup_interval = 30000
    publish = true
    ratio = 0.25
    tags = ["a", "b"]          # arrays
    [replication_log]
    shards = 4
    compress = true
    [snapshot.s3]               # dotted table headers -> nested tables
    endpoint = "s3.amazonaws.com"
    [[faults]]                  # arrays of tables
    kind = "partition"
    at_ms = 5000
    [[faults]]
    kind = "crash"
    """

@Suite struct DocumentTests {
    @Test func sampleConfigParses() throws {
        let t = try TOMLParser.parse(sampleConfig)
        #expect(t.keys == ["db_path", "node_id", "cleanup_interval", "publish", "ratio", "tags",
                           "replication_log", "snapshot", "faults"])
        #expect(t["db_path"] == .string("/var/lib/harmonylite/data.db"))
        #expect(t["node_id"] == .integer(1))
        #expect(t["cleanup_interval"] == 30000)
        #expect(t["publish"] == true)
        #expect(t["ratio"] == 0.25)
        #expect(t["tags"] == ["a", "b"])
        #expect(t["replication_log"] == ["shards": 4, "compress": true])
        #expect(t["snapshot"] == ["s3": ["endpoint": "s3.amazonaws.com"]])
        #expect(t["faults"] == [["kind": "partition", "at_ms": 5000], ["kind": "crash"]])
        #expect(t.line(of: "db_path") == 1)
        #expect(t.line(of: "tags") == 6)
        #expect(t.line(of: "replication_log") == 7)
        #expect(t.line(of: "snapshot") == 10)
        #expect(t.line(of: "faults") == 12)
        #expect(t.line(of: "missing") == nil)
        #expect(t["snapshot"]?.tableValue?.line(of: "s3") == 10)
        let faults = try #require(t["faults"]?.arrayValue)
        #expect(faults[1].tableValue?.line == 15)
        #expect(faults[1].tableValue?.line(of: "kind") == 16)
    }

    @Test func emptyAndBlankDocuments() throws {
        #expect(try TOMLParser.parse("").isEmpty)
        #expect(try TOMLParser.parse("\n\n  # only a comment\r\n\t\n").isEmpty)
    }

    @Test func crlfLineEndings() throws {
        let t = try TOMLParser.parse("a = 1\r\nb = \"x\"\r\n[t]\r\nc = true\r\n")
        #expect(t == ["a": 1, "b": "x", "t": ["c": true]])
        #expect(t.line(of: "b") == 2)
    }

    @Test func keysKeepFileOrder() throws {
        let t = try TOMLParser.parse("z = 1\na = 2\nm = 3\n")
        #expect(t.keys == ["z", "a", "m"])
        #expect(t.column(of: "a") == 1)
    }

    @Test func quotedAndDottedKeys() throws {
        let t = try TOMLParser.parse("""
            "quoted key" = 1
            'literal.key' = 2
            a.b.c = 3
            a . b . d = 4
            site."google.com" = true
            1234 = "bare digits"
            -_- = "dash"
            "" = "empty"
            """)
        #expect(t["quoted key"] == 1)
        #expect(t["literal.key"] == 2)
        #expect(t["a"] == ["b": ["c": 3, "d": 4]])
        #expect(t["site"] == ["google.com": true])
        #expect(t["1234"] == "bare digits")
        #expect(t["-_-"] == "dash")
        #expect(t[""] == "empty")
    }

    @Test func headersNestAndMerge() throws {
        let t = try TOMLParser.parse("""
            [a.b.c]
            x = 1
            [a]
            y = 2
            [a.b.d]
            z = 3
            ["quoted header".x]
            q = 1
            [ spaced . header ]
            s = 1
            """)
        #expect(t["a"] == ["b": ["c": ["x": 1], "d": ["z": 3]], "y": 2])
        #expect(t.line(of: "a") == 3, "implicit table takes the line of its explicit header")
        #expect(t["quoted header"] == ["x": ["q": 1]])
        #expect(t["spaced"] == ["header": ["s": 1]])
    }

    @Test func dottedKeysThenSubHeader() throws {
        let t = try TOMLParser.parse("""
            [fruit]
            apple.color = "red"
            apple.taste.sweet = true
            [fruit.apple.texture]
            smooth = true
            """)
        #expect(t["fruit"] == ["apple": ["color": "red", "taste": ["sweet": true], "texture": ["smooth": true]]])
    }

    @Test func arraysOfTablesWithSubtables() throws {
        let t = try TOMLParser.parse("""
            [[fruits]]
            name = "apple"
            [fruits.physical]
            color = "red"
            [[fruits.varieties]]
            name = "red delicious"
            [[fruits.varieties]]
            name = "granny smith"
            [[fruits]]
            name = "banana"
            [[fruits.varieties]]
            name = "plantain"
            """)
        #expect(t["fruits"] == [
            ["name": "apple", "physical": ["color": "red"],
             "varieties": [["name": "red delicious"], ["name": "granny smith"]]],
            ["name": "banana", "varieties": [["name": "plantain"]]],
        ])
    }
}

@Suite struct ValueTests {
    private func value(_ text: String) throws -> TOMLValue? {
        try TOMLParser.parse("v = " + text)["v"]
    }

    @Test func basicStringEscapes() throws {
        #expect(try value(#""a\"b\\c\nd\te\rf\bg\fh""#) == "a\"b\\c\nd\te\rf\u{08}g\u{0C}h")
        #expect(try value(#""\u00E9\U0001F600 \u0041""#) == "é😀 A")
        #expect(try value(#""""#) == "")
        #expect(try value("\"tab\there é 日本\"") == "tab\there é 日本")
        #expect(try value("\"# not a comment\"") == "# not a comment")
    }

    @Test func literalStrings() throws {
        #expect(try value(#"'C:\Users\nodejs\templates'"#) == #"C:\Users\nodejs\templates"#)
        #expect(try value("''") == "")
        #expect(try value(#"'<\i\c*\s*>'"#) == #"<\i\c*\s*>"#)
    }

    @Test(arguments: [
        ("0", 0), ("+99", 99), ("42", 42), ("-17", -17), ("1_000", 1000), ("5_349_221", 5_349_221),
        ("0xDEADBEEF", 0xDEADBEEF), ("0xdead_beef", 0xDEADBEEF), ("0o755", 0o755), ("0b1101", 13),
        ("9223372036854775807", Int64.max), ("-9223372036854775808", Int64.min), ("-0", 0), ("+0", 0),
        ("0x7FFFFFFFFFFFFFFF", Int64.max),
    ] as [(String, Int64)])
    func integers(text: String, expected: Int64) throws {
        #expect(try value(text) == .integer(expected))
    }

    @Test(arguments: [
        ("1.5", 1.5), ("-0.25", -0.25), ("+1.0", 1.0), ("1e3", 1000), ("6.02e+23", 6.02e23),
        ("1E-2", 0.01), ("6.626e-34", 6.626e-34), ("9_224_617.445_991", 9_224_617.445_991),
        ("0.0", 0), ("-0.0", -0.0), ("0e0", 0), ("1e1_0", 1e10), ("inf", .infinity), ("+inf", .infinity),
        ("-inf", -.infinity),
    ] as [(String, Double)])
    func floats(text: String, expected: Double) throws {
        #expect(try value(text) == .float(expected))
    }

    @Test func nan() throws {
        for text in ["nan", "+nan", "-nan"] {
            #expect(try value(text)?.floatValue?.isNaN == true)
        }
    }

    @Test func booleans() throws {
        #expect(try value("true") == true)
        #expect(try value("false") == false)
    }

    @Test func arrays() throws {
        #expect(try value("[]") == [])
        #expect(try value("[ 1, 2, 3 ]") == [1, 2, 3])
        #expect(try value("[1.5, -2e3]") == [1.5, -2000.0])
        #expect(try value("[true,false,]") == [true, false])
        #expect(try value("[[1, 2], ['a', \"b\"], []]") == [[1, 2], ["a", "b"], []])
        #expect(try value("[1, 'mixed', 2.5]") == [1, "mixed", 2.5])
        #expect(try value("""
            [
              "one",   # first
              "two",
              # a comment line

              "three",
            ]
            """) == ["one", "two", "three"])
        #expect(try value("[{a = 1}, {b = 'x'}]") == [["a": 1], ["b": "x"]])
    }

    @Test func inlineTables() throws {
        #expect(try value("{}") == .table([:]))
        #expect(try value("{ a = 1, b = \"x\" }") == ["a": 1, "b": "x"])
        #expect(try value("{a.b = 1, a.c = 2, d = {e = [1]}}") == ["a": ["b": 1, "c": 2], "d": ["e": [1]]])
        let t = try TOMLParser.parse("x = 1\npoint = { x = 1, y = 2 }\n")
        #expect(t["point"]?.tableValue?.keys == ["x", "y"])
        #expect(t["point"]?.tableValue?.line == 2)
    }

    @Test func typeNames() {
        let values: [TOMLValue] = ["s", 1, 1.5, true, [], [:]]
        #expect(values.map(\.typeName) == ["string", "integer", "float", "boolean", "array", "table"])
    }

    @Test func tableEqualityIgnoresOrderAndLines() throws {
        let a = try TOMLParser.parse("x = 1\ny = 2\n")
        let b = try TOMLParser.parse("\n\ny = 2\nx = 1\n")
        #expect(a == b)
        #expect(a != (try TOMLParser.parse("x = 1\n")))
    }
}

@Suite struct ErrorTests {
    @Test func errorDescriptionFormat() {
        #expect(TOMLError(line: 3, column: 10, message: "m").description == "line 3, column 10: m")
        #expect(TOMLError(line: 3, column: 0, message: "m").description == "line 3: m")
        #expect(TOMLError(line: 0, column: 0, message: "m").description == "m")
    }

    @Test func missingValue() {
        let e = parseError("a = 1\nb = 2\nthe_key = \n")
        #expect(e == TOMLError(line: 3, column: 11, message: "expected a value after '='"))
        #expect(e?.description == "line 3, column 11: expected a value after '='")
        #expect(parseError("a = # comment")?.message == "expected a value after '='")
        #expect(parseError("a =")?.message == "expected a value after '='")
    }

    @Test func duplicateKeys() {
        let e = parseError("a = 1\nb = 2\na = 3\n")
        #expect(e?.line == 3)
        #expect(e?.message == "duplicate key 'a' (first defined at line 1)")
        #expect(parseError("[t]\nx = 1\nx = 2")?.message == "duplicate key 't.x' (first defined at line 2)")
        #expect(parseError("a.b = 1\na.b = 2")?.message == "duplicate key 'a.b' (first defined at line 1)")
        #expect(parseError("a = 1\na.b = 2")?.message == "cannot set key 'a.b': 'a' is already defined at line 1")
        #expect(parseError("v = {a = 1, a = 2}")?.message == "duplicate key 'v.a' (first defined at line 1)")
        #expect(parseError("\"a\" = 1\na = 2")?.message == "duplicate key 'a' (first defined at line 1)")
    }

    @Test func redefinedTables() {
        let e = parseError("[a]\nx = 1\n\n[a]\ny = 2")
        #expect(e == TOMLError(line: 4, column: 1, message: "table 'a' is already defined at line 1"))
        #expect(parseError("[a.b]\n[a]\n[a]")?.message == "table 'a' is already defined at line 2")
        #expect(parseError("[a]\nb.c = 1\n[a.b]")?.message == "table 'a.b' is already defined at line 2")
        #expect(parseError("a = 1\n[a]")?.message == "table 'a' is already defined at line 1")
        #expect(parseError("a = {}\n[a.b]")?.message == "cannot define table 'a.b': 'a' is already a table (line 1)")
        #expect(parseError("a = [1]\n[[a]]")?.message == "cannot define array of tables 'a': already defined at line 1")
        #expect(parseError("[a]\n[[a]]")?.message == "cannot define array of tables 'a': already defined at line 1")
        #expect(parseError("[[a]]\n[a]")?.message == "table 'a' is already defined at line 1")
        #expect(parseError("[a.b.c]\nz = 9\n[a]\nb.c.t = 1")?.message
                == "cannot set key 'a.b.c.t': 'a.b' is already defined at line 1")
        #expect(parseError("a = {b = 1}\na.c = 2")?.message == "cannot set key 'a.c': 'a' is already defined at line 1")
    }

    @Test func integerOverflow() {
        #expect(parseError("n = 9223372036854775808")?.message == "integer '9223372036854775808' does not fit in 64 bits")
        #expect(parseError("n = -9223372036854775809")?.message == "integer '-9223372036854775809' does not fit in 64 bits")
        #expect(parseError("n = 0xFFFFFFFFFFFFFFFF")?.message == "integer '0xFFFFFFFFFFFFFFFF' does not fit in 64 bits")
        #expect(parseError("n = 99999999999999999999999")?.line == 1)
    }

    @Test func unterminatedConstructsReportStartLine() {
        #expect(parseError("a = 1\nb = \"abc\nc = 2") == TOMLError(line: 2, column: 5, message: "unterminated string (missing closing '\"')"))
        #expect(parseError("a = 'abc")?.message == "unterminated string (missing closing \"'\")")
        #expect(parseError("a = \"abc\\")?.line == 1)
        #expect(parseError("x = 1\nlist = [\n  1,\n  2,\n") == TOMLError(line: 2, column: 8, message: "unterminated array (missing ']')"))
        #expect(parseError("t = { a = 1\nb = 2")?.message == "unterminated inline table (missing '}'; inline tables must be on one line)")
        #expect(parseError("a = [1, 2\nb = 3")?.message == "expected ',' or ']' in array started at line 1, found 'b'")
    }

    @Test func unsupportedFeaturesSaySo() {
        #expect(parseError("s = \"\"\"\nmulti\n\"\"\"")?.message == "multi-line strings (\"\"\") are not supported")
        #expect(parseError("s = '''x'''")?.message == "multi-line strings (''') are not supported")
        #expect(parseError("d = 1979-05-27")?.message == "dates and times are not supported ('1979-05-27')")
        #expect(parseError("d = 1979-05-27T07:32:00Z")?.message.hasPrefix("dates and times are not supported") == true)
        #expect(parseError("d = 07:32:00")?.message.hasPrefix("dates and times are not supported") == true)
    }

    @Test(arguments: [
        ("a = hello", "invalid value 'hello' (strings must be quoted)"),
        ("a = True", "invalid value 'True' (strings must be quoted)"),
        ("a = 01", "leading zeros are not allowed in integer '01'"),
        ("a = 1__0", "misplaced underscore in number '1__0'"),
        ("a = _1", "invalid value '_1' (strings must be quoted)"),
        ("a = 1_", "misplaced underscore in number '1_'"),
        ("a = 1.", "invalid float '1.'"),
        ("a = .5", "invalid value '.5' (strings must be quoted)"),
        ("a = 1.e5", "invalid float '1.e5'"),
        ("a = 1e", "invalid float '1e'"),
        ("a = 1.5.3", "invalid float '1.5.3'"),
        ("a = 03.14", "leading zeros are not allowed in float '03.14'"),
        ("a = 0x", "invalid integer '0x'"),
        ("a = 1e400", "float '1e400' is out of range"),
        ("a = [{b = 1}]\n[a.c]", "cannot define table 'a.c': 'a' is already an array (line 1)"),
        ("a = 0xG1", "invalid integer '0xG1'"),
        ("a = -0x1", "invalid integer '-0x1'"),
        ("a = 0b102", "invalid integer '0b102'"),
        ("a = \"\\x41\"", "invalid escape sequence '\\x' in string"),
        ("a = \"\\u12\"", "escape \\u needs exactly 4 hex digits"),
        ("a = \"\\uD800\"", "escape is not a valid Unicode scalar value"),
        ("a = \"\\U00110000\"", "escape is not a valid Unicode scalar value"),
        ("a = \"bell\u{07}\"", "control character U+0007 must be escaped in a string"),
        ("a = 1 b = 2", "expected end of line after value, found 'b'"),
        ("a = [1 2]", "expected ',' or ']' in array started at line 1, found '2'"),
        ("a = [,]", "expected a value, found ','"),
        ("a = {a = 1,}", "trailing comma is not allowed in an inline table"),
        ("a = {a = 1 b = 2}", "expected ',' or '}' in inline table, found 'b'"),
        ("= 1", "expected a key, found '='"),
        ("a 1", "expected '=' after key 'a', found '1'"),
        ("a.= 1", "expected a key, found '='"),
        ("[a", "expected ']' to close table header, found end of file"),
        ("[[a]", "expected ']]' to close table header, found end of file"),
        ("[[a] ]", "expected ']]' to close table header, found ' '"),
        ("[]", "expected a key, found ']'"),
        ("[a] b = 1", "expected end of line after table header, found 'b'"),
        ("é = 1", "expected a key, found 'é'"),
        ("a = 1\rb = 2", "expected end of line after value, found control character U+000D"),
    ])
    func malformed(text: String, message: String) {
        #expect(parseError(text)?.message == message)
    }

    @Test func errorColumnsCountCharactersNotBytes() {
        let e = parseError("k = \"é\" junk")
        #expect(e?.column == 9)
    }

    @Test func deepNestingIsRejectedNotCrashing() {
        let deep = "a = " + String(repeating: "[", count: 100_000)
        #expect(parseError(deep)?.message.contains("nested too deeply") == true)
        let deepInline = "a = " + String(repeating: "{b = ", count: 10_000)
        #expect(parseError(deepInline)?.message.contains("nested too deeply") == true)
        let longKey = Array(repeating: "k", count: 10_000).joined(separator: ".") + " = 1"
        #expect(parseError(longKey)?.message == "key has too many dotted parts")
        let longHeader = "[" + Array(repeating: "k", count: 60).joined(separator: ".") + "]"
        #expect(parseError(longHeader)?.message.contains("nested too deeply") == true)
        // Within the limit is fine.
        let ok = "a = " + String(repeating: "[", count: 50) + String(repeating: "]", count: 50)
        #expect((try? TOMLParser.parse(ok)) != nil)
    }
}

@Suite struct ReaderTests {
    @Test func typedReads() throws {
        let r = try TOMLReader(parsing: sampleConfig)
        #expect(try r.string("db_path") == "/var/lib/harmonylite/data.db")
        #expect(try r.int("node_id") == 1)
        #expect(try r.double("ratio") == 0.25)
        #expect(try r.double("cleanup_interval") == 30000, "integers are accepted as doubles")
        #expect(try r.bool("publish") == true)
        #expect(try r.stringArray("tags") == ["a", "b"])
        #expect(try r.string("absent") == nil)
        #expect(try r.int("absent") == nil)
        let log = try #require(try r.table("replication_log"))
        #expect(log.path == "replication_log")
        #expect(try log.int("shards") == 4)
        #expect(try r.table("snapshot")?.table("s3")?.string("endpoint") == "s3.amazonaws.com")
        let faults = try r.tableArray("faults")
        #expect(faults.count == 2)
        #expect(try faults.map { try $0.required("kind", $0.string) } == ["partition", "crash"])
        #expect(faults[1].path == "faults[1]")
        #expect(try r.tableArray("absent").isEmpty)
        #expect(try r.table("absent") == nil)
    }

    @Test func typeMismatchNamesKeyAndLine() throws {
        let r = try TOMLReader(parsing: "a = 1\n[replication_log]\ncompress = true\nshards = \"four\"\n")
        let log = try #require(try r.table("replication_log"))
        #expect(throws: TOMLError(line: 4, column: 1,
                                  message: "key 'replication_log.shards' must be an integer, got string")) {
            try log.int("shards")
        }
        #expect(throws: TOMLError(line: 1, column: 1, message: "key 'a' must be a string, got integer")) {
            try r.string("a")
        }
        #expect(throws: TOMLError(line: 3, column: 1, message: "key 'replication_log.compress' must be a number, got boolean")) {
            try log.double("compress")
        }
        #expect(throws: TOMLError(line: 1, column: 1, message: "key 'a' must be a boolean, got integer")) { try r.bool("a") }
        #expect(throws: TOMLError(line: 1, column: 1, message: "key 'a' must be a table, got integer")) { try r.table("a") }
        #expect(throws: TOMLError(line: 2, column: 1, message: "key 'replication_log' must be an array of tables, got table")) {
            try r.tableArray("replication_log")
        }
    }

    @Test func arrayElementTypes() throws {
        let r = try TOMLReader(parsing: "tags = ['a', 2]\nitems = [1]\n")
        #expect(throws: TOMLError(line: 1, column: 1, message: "key 'tags' must be an array of strings, but contains an integer")) {
            try r.stringArray("tags")
        }
        #expect(throws: TOMLError(line: 2, column: 1, message: "key 'items' must be an array of tables, but contains an integer")) {
            try r.tableArray("items")
        }
    }

    @Test func unknownKeys() throws {
        let r = try TOMLReader(parsing: "[replication_log]\nshards = 4\n  shardz = 5\nzzz = 1\n")
        let log = try #require(try r.table("replication_log"))
        #expect(throws: TOMLError(line: 3, column: 3,
                                  message: "unknown key 'replication_log.shardz' (did you mean 'shards'?)")) {
            try log.rejectUnknownKeys(allowed: ["shards", "compress"])
        }
        #expect(throws: TOMLError(line: 4, column: 1, message: "unknown key 'replication_log.zzz'")) {
            try log.rejectUnknownKeys(allowed: ["shards", "shardz", "compress"])
        }
        try r.rejectUnknownKeys(allowed: ["replication_log"])
    }

    @Test func requiredKeys() throws {
        let r = try TOMLReader(parsing: "x = 1\n[[faults]]\nat_ms = 5\n")
        #expect(throws: TOMLError(line: 0, column: 0, message: "missing required key 'db_path'")) {
            try r.required("db_path", r.string)
        }
        let fault = try #require(try r.tableArray("faults").first)
        #expect(throws: TOMLError(line: 2, column: 0, message: "missing required key 'faults[0].kind'")) {
            try fault.required("kind", fault.string)
        }
        #expect(try fault.required("at_ms", fault.int) == 5)
        #expect(fault.error(at: "at_ms", "must be positive").description == "line 3, column 1: must be positive")
    }
}

// MARK: - Robustness

@Suite struct FuzzTests {
    static let corpus: [String] = [
        sampleConfig,
        "a = { b = [1, 2.5, 'x', {c = true}], d.e = -0x1F }\n\"q k\" = \"\\u00E9\\n\"\n",
        "[[x.y]]\nz = [[1], [2, [3]],]\n[x.w]\nv = 1e-3\n[[x.y]]\nz = 0b1010\n",
        "# header\n[a.b]\nc.d = 1_000\n[a.b.e]\nf = inf\ng = 'lit'\n",
    ]
    static let alphabet: [String] = [
        "[", "]", "[[", "]]", "{", "}", "=", ",", ".", "\"", "'", "\\", "\\u", "\\U", "#", "\n", "\r", "\r\n",
        " ", "\t", "a", "b", "0", "1", "9", "_", "-", "+", "e", "x", "0x", "true", "false", "inf", "nan",
        "\"\"\"", "'''", "é", "😀", "\u{0}", "\u{7F}", "1979-05-27", ":", "9223372036854775808",
    ]

    @Test func randomAndMutatedInputsNeverCrash() {
        var rng = SplitMix64(state: 0x5EED_1234)
        var successes = 0, failures = 0
        for iteration in 0..<30_000 {
            let input: String
            if iteration % 4 == 0 {
                input = (0..<rng.below(40)).map { _ in rng.pick(Self.alphabet) }.joined()
            } else {
                var chars = Array(rng.pick(Self.corpus).unicodeScalars).map { String($0) }
                for _ in 0..<(1 + rng.below(6)) {
                    let i = chars.isEmpty ? 0 : rng.below(chars.count + 1)
                    switch rng.below(5) {
                    case 0 where i < chars.count: chars.remove(at: i)
                    case 1: chars.insert(rng.pick(Self.alphabet), at: i)
                    case 2 where i < chars.count: chars[i] = rng.pick(Self.alphabet)
                    case 3: chars = Array(chars.prefix(i))
                    default:
                        if i < chars.count {
                            let end = min(chars.count, i + rng.below(20))
                            chars.insert(contentsOf: chars[i..<end], at: rng.below(chars.count + 1))
                        }
                    }
                }
                input = chars.joined()
            }
            do {
                let table = try TOMLParser.parse(input)
                successes += 1
                // Parsing is deterministic.
                #expect(try TOMLParser.parse(input) == table || input.contains("nan"))
            } catch let error as TOMLError {
                failures += 1
                if error.line < 1 || error.column < 1 || error.message.isEmpty {
                    Issue.record("badly positioned error \(error) for input \(String(reflecting: input))")
                }
            } catch {
                Issue.record("non-TOML error \(error) for input \(String(reflecting: input))")
            }
        }
        // Both outcomes must actually be exercised for the run to mean anything.
        #expect(successes > 500)
        #expect(failures > 500)
    }

    /// Long lines must not make error columns or key positions quadratic.
    @Test func largeInputsParse() throws {
        let array = try TOMLParser.parse("a = [" + (0..<20_000).map(String.init).joined(separator: ", ") + "]")
        #expect(array["a"]?.arrayValue?.count == 20_000)
        let inline = try TOMLParser.parse("t = {" + (0..<5_000).map { "k\($0) = \($0)" }.joined(separator: ", ") + "}")
        #expect(inline["t"]?.tableValue?.column(of: "k4999") != nil)
        let sections = (0..<2_000).map { "[[faults]]\nkind = \"k\($0)\"" }.joined(separator: "\n")
        #expect(try TOMLParser.parse(sections)["faults"]?.arrayValue?.count == 2_000)
    }
}
