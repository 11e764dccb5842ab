import Foundation
@testable import HarmonyPostgres
import HarmonySQLite
import Testing

/// What SQLAlchemy's PostgreSQL dialect and psycopg send that SQLite cannot parse, and the values they exchange in
/// binary: each rewrite and each conversion, then the same statements run by a session against SQLite.
@Suite struct PGDialectTests {
    func rewrite(_ sql: String) -> String { String(PGDialect.rewritten(Substring(sql))) }

    @Test func castsBecomeSQLiteCastsOrAreDroppedWhereSQLitesCastWouldMangleTheValue() {
        #expect(rewrite("SELECT $1::VARCHAR, $2::INTEGER, sum(x)::float / count(*)") == "SELECT CAST($1 AS TEXT), CAST($2 AS INTEGER), CAST(sum(x) AS REAL) / count(*)")
        // SQLite's CAST('2024-01-02' AS DATE) is 2024, and CAST(x'00' AS BYTEA) a number: these casts are dropped.
        #expect(rewrite("VALUES ($1::TIMESTAMP WITHOUT TIME ZONE, $2::DATE, $3::BOOLEAN, $4::BYTEA, $5::NUMERIC(12, 2))")
                == "VALUES ($1, $2, $3, $4, CAST($5 AS REAL))")
        #expect(rewrite("SELECT t.\"v\"::text, (a + b)::int8, 'x'::character varying, 1.5::double precision, oid::regtype::text")
                == "SELECT CAST(t.\"v\" AS TEXT), CAST((a + b) AS INTEGER), CAST('x' AS TEXT), CAST(1.5 AS REAL), CAST(oid AS TEXT)")
        #expect(rewrite("SELECT $1::int[], x::pg_catalog.int4") == "SELECT $1, CAST(x AS INTEGER)")
        // Literals, quoted names and comments are not touched.
        let untouched = "SELECT 'a::int', \"b::int\" -- c::int\n/* d::int */"
        #expect(rewrite(untouched) == untouched)
        #expect(rewrite("SELECT 'it''s'::text") == "SELECT CAST('it''s' AS TEXT)")
    }

    @Test func catalogCallsSerialKeysAndValuesAliasesBecomeSQLite() {
        #expect(rewrite("select pg_catalog.version()") == "select version()")
        #expect(rewrite("SELECT current_user, session_user, current_schema(), t.current_role FROM t") == "SELECT current_user(), session_user(), current_schema(), t.current_role FROM t")
        #expect(rewrite("CREATE TABLE a (\n\tid SERIAL NOT NULL, big BIGSERIAL, serial_no TEXT, PRIMARY KEY (id)\n)")
                == "CREATE TABLE a (\n\tid INTEGER NOT NULL, big INTEGER, serial_no TEXT, PRIMARY KEY (id)\n)")
        #expect(rewrite("INSERT INTO s VALUES ('serial')") == "INSERT INTO s VALUES ('serial')")
        #expect(rewrite("INSERT INTO t (a, b) SELECT p0, p1 FROM (VALUES ($1, $2, 0), ($3, $4, 1)) AS imp_sen(p0, p1, sen_counter) ORDER BY sen_counter")
                == "INSERT INTO t (a, b) SELECT p0, p1 FROM (SELECT column1 AS p0, column2 AS p1, column3 AS sen_counter FROM (VALUES ($1, $2, 0), ($3, $4, 1))) AS imp_sen ORDER BY sen_counter")
        #expect(rewrite("SELECT pg_catalog.pg_class.relname FROM pg_catalog.pg_class WHERE relkind = ANY (ARRAY[$1::VARCHAR, $2::VARCHAR]) AND pg_catalog.pg_table_is_visible(pg_catalog.pg_class.oid)")
                == "SELECT temp.pg_class.relname FROM temp.pg_class WHERE relkind IN (CAST($1 AS TEXT), CAST($2 AS TEXT)) AND pg_table_is_visible(temp.pg_class.oid)")
        // What the review found: each of these was mangled.
        #expect(rewrite("/*/ it's */ SELECT 'a::b'") == "/*/ it's */ SELECT 'a::b'")
        #expect(rewrite("SELECT [a::b], [current_user] FROM t") == "SELECT [a::b], [current_user] FROM t")
        #expect(rewrite("SELECT current_user::text") == "SELECT CAST(current_user() AS TEXT)")
        #expect(rewrite("CREATE TABLE c AS SELECT a, b serial FROM x") == "CREATE TABLE c AS SELECT a, b serial FROM x")
        #expect(rewrite("SELECT 1 WHERE x != ANY (ARRAY[1, 2])") == "SELECT 1 WHERE x != ANY (ARRAY[1, 2])")
        #expect(rewrite("SELECT CASE WHEN a THEN 1 ELSE (CASE b WHEN 2 THEN 3 END) END::int") == "SELECT CAST(CASE WHEN a THEN 1 ELSE (CASE b WHEN 2 THEN 3 END) END AS INTEGER)")
    }

    /// Any text at all, hostile or half-typed: the rewrite never traps, rewriting its output changes nothing more,
    /// and text with nothing PostgreSQL-specific in it comes back byte for byte.
    @Test func anyTextIsRewrittenWithoutTrappingAndOnlyOnce() {
        let fragments = ["values", "VALUES", "(", ")", "'", "\"", "`", "[", "]", "--", "/*", "*/", "\n", " ", ";", "x", "1", "$1",
                         "::", ":", "serial", "current_user", "ANY", "ARRAY", "=", "!", ".", "pg_catalog", "END", "CASE", ",",
                         "int", "text", "CREATE TABLE", "SELECT", "é", "AS", "t(a, b)"]
        var state: UInt64 = 42
        func next() -> Int {  // SplitMix64: the same strings every run
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return Int(truncatingIfNeeded: (z ^ (z >> 31)) >> 1)
        }
        for _ in 0..<3000 {
            let text = (0..<(next() % 30)).map { _ in fragments[next() % fragments.count] }.joined()
            let once = rewrite(text)
            #expect(rewrite(once) == once, "\(text)")
        }
        let plain = ["INSERT INTO t VALUES (1, 'a::b', \"c::d\") -- ::int", "CREATE TRIGGER tr AFTER INSERT ON t BEGIN INSERT INTO u VALUES (new.a); END",
                     "SELECT x FROM t WHERE y IN (SELECT z FROM v) ORDER BY 1", "SELECT [values] FROM [t]", "SELECT 'current_user'"]
        for text in plain { #expect(rewrite(text) == text) }
    }

    /// A statement described before it runs has no row to type its expressions by: what the expression shows.
    @Test func selectListExpressionsAreTypedByWhatTheyShow() {
        #expect(PGDialect.selectListTypes("SELECT count(*), count(x) AS n, total(p), 'a', 7, 1.5, lower(name), x + 1, id FROM t WHERE a = $1")
                == [PGType.int8, PGType.int8, PGType.float8, PGType.text, PGType.int8, PGType.float8, PGType.text, nil, nil])
        #expect(PGDialect.selectListTypes("SELECT * FROM t") == nil)
        #expect(PGDialect.selectListTypes("SELECT DISTINCT count(*) FROM (SELECT a, b FROM t)") == [PGType.int8])
        #expect(PGDialect.selectListTypes("INSERT INTO t VALUES (1)") == nil)
    }

    /// SQLAlchemy 2.1's `has_table` (what `create_all` and `drop_all` ask first), as it arrives from psycopg.
    @Test func sqlalchemysHasTableAnswersFromTheDatabase() throws {
        let f = try SessionFixture()
        f.login()
        let hasTable = """
            SELECT pg_catalog.pg_class.relname
            FROM pg_catalog.pg_class JOIN pg_catalog.pg_namespace ON pg_catalog.pg_namespace.oid = pg_catalog.pg_class.relnamespace
            WHERE pg_catalog.pg_class.relname IN ($1::VARCHAR, $2::VARCHAR) AND pg_catalog.pg_class.relkind = ANY (ARRAY[$3::VARCHAR, $4::VARCHAR, $5::VARCHAR, $6::VARCHAR, $7::VARCHAR]) AND pg_catalog.pg_table_is_visible(pg_catalog.pg_class.oid) AND pg_catalog.pg_namespace.nspname != $8::VARCHAR
            """
        let values = ["t", "missing", "r", "p", "f", "v", "m", "pg_catalog"].map { SessionFixture.text($0) }
        func ask(_ status: UInt8) {
            let replies = f.send(.parse(name: "", query: hasTable, parameterTypes: []),
                                 .bind(portal: "", statement: "", parameterFormats: [], parameters: values, resultFormats: []),
                                 .execute(portal: "", maxRows: 0), .sync)
            #expect(replies == [.parseComplete, .bindComplete, .dataRow([SessionFixture.text("t")]), .commandComplete("SELECT 1"),
                                .readyForQuery(status: status)], "\(replies)")
        }
        // First inside a read-only block that is then rolled back (a test fixture's), then again after it.
        _ = f.send(.query("BEGIN READ ONLY; SELECT 1"))
        ask(UInt8(ascii: "T"))
        _ = f.send(.query("ROLLBACK"))
        ask(UInt8(ascii: "I"))
    }

    @Test func numericColumnsAreNumericAndTravelInBinary() throws {
        for (value, text) in [(DatabaseValue.integer(10), "10"), (.real(10.5), "10.5"), (.real(-0.0001), "-0.0001"), (.integer(0), "0"),
                              (.real(1.5e20), "150000000000000000000"), (.real(1e-05), "0.00001"), (.integer(-9_223_372_036_854_775_808), "-9223372036854775808"),
                              (.real(123_456_789.125), "123456789.125")] {
            let binary = try PGType.encode(value, oid: PGType.numeric, binary: true)!
            #expect(try PGType.numericText(binary: binary) == text, "\(value)")
            #expect(try PGType.decode(binary, oid: PGType.numeric, binary: true) == value, "\(value)")
        }
        // 10.5 is 1 group before the point (10), 1 after (5000), scale 1.
        #expect(try PGType.encode(.real(10.5), oid: PGType.numeric, binary: true) == [0, 2, 0, 0, 0, 0, 0, 1, 0, 10, 0x13, 0x88])
        #expect(PGType.oid(declared: "NUMERIC(12, 2)", sample: .integer(10)) == PGType.numeric)
        #expect(PGType.oid(declared: "decimal", sample: .real(1)) == PGType.numeric)
        // Text SQLite keeps in a NUMERIC column (hex, words) is refused in binary, never read digit by digit.
        for text in ["0x123", "inf", "1e999999", "12abc", "--1", "."] {
            #expect(throws: PGError.self, "\(text)") { try PGType.encode(.text(text), oid: PGType.numeric, binary: true) }
        }
        #expect(try PGType.encode(.text(" 12.50 "), oid: PGType.numeric, binary: true) == PGType.encode(.real(12.5), oid: PGType.numeric, binary: true))
        // A whole REAL in an integer column reads as an integer.
        #expect(try PGType.encode(.real(3), oid: PGType.int8, binary: false) == Array("3".utf8))
    }

    @Test func datesAndTimesTravelAsPostgresDoes() throws {
        #expect(PGTemporal.days(year: 2000, month: 1, day: 1) == PGTemporal.postgresEpochDays)
        for days in [-800_000, -1, 0, 59, 10_957, 20_000, 2_932_896] {
            let c = PGTemporal.civil(days: days)
            #expect(PGTemporal.days(year: c.year, month: c.month, day: c.day) == days)
        }
        // Binary parameters (psycopg's default for datetime, date, time) are stored as PostgreSQL prints them.
        let micros = Int64(PGTemporal.days(year: 2024, month: 1, day: 2) - PGTemporal.postgresEpochDays) * PGTemporal.microsPerDay + 11_045_000_250
        #expect(try PGType.decode(PGType.bigEndian(micros), oid: PGType.timestamp, binary: true) == .text("2024-01-02 03:04:05.00025"))
        #expect(try PGType.decode(PGType.bigEndian(micros), oid: PGType.timestamptz, binary: true) == .text("2024-01-02 03:04:05.00025+00"))
        #expect(try PGType.decode(PGType.bigEndian(Int32(-1)), oid: PGType.date, binary: true) == .text("1999-12-31"))
        #expect(try PGType.decode(PGType.bigEndian(Int64(3_600_000_001)), oid: PGType.time, binary: true) == .text("01:00:00.000001"))
        // Stored text in the forms applications write reads back in binary and in PostgreSQL's text form.
        for stored in ["2024-01-02 03:04:05.00025", "2024-01-02T03:04:05.00025", "2024-01-02T05:04:05.00025+02:00", "2024-01-02 03:04:05.00025Z"] {
            #expect(try PGType.encode(.text(stored), oid: PGType.timestamptz, binary: true) == PGType.bigEndian(micros), "\(stored)")
            #expect(try PGType.encode(.text(stored), oid: PGType.timestamptz, binary: false) == Array("2024-01-02 03:04:05.00025+00".utf8))
        }
        #expect(try PGType.encode(.text("1990-05-06"), oid: PGType.date, binary: false) == Array("1990-05-06".utf8))
        #expect(throws: PGError.self) { try PGType.encode(.text("next tuesday"), oid: PGType.date, binary: true) }
        #expect(try PGType.encode(.text("next tuesday"), oid: PGType.date, binary: false) == Array("next tuesday".utf8))
        #expect(PGTemporal.parse("2023-02-29") == nil)
        // Out of PostgreSQL's range (a hostile client's bytes) is refused, never an arithmetic trap.
        for v in [Int64.min + 1, Int64.min + 70_000_000_000, Int64.max - 1, -300_000_000_000_000_000] {
            #expect(throws: PGError.self) { try PGType.decode(PGType.bigEndian(v), oid: PGType.timestamp, binary: true) }
        }
        #expect(throws: PGError.self) { try PGType.decode(PGType.bigEndian(Int64(-1)), oid: PGType.time, binary: true) }
        #expect(throws: PGError.self) { try PGType.decode(PGType.bigEndian(Int32.max - 1), oid: PGType.date, binary: true) }
        // Labels: declared types, unless the column holds numbers (Unix times).
        #expect(PGType.oid(declared: "TIMESTAMP WITHOUT TIME ZONE", sample: .text("x")) == PGType.timestamp)
        #expect(PGType.oid(declared: "TIMESTAMP WITH TIME ZONE", sample: nil) == PGType.timestamptz)
        #expect(PGType.oid(declared: "DATETIME", sample: .integer(1_700_000_000)) == PGType.int8)
        #expect(PGType.oid(declared: "DATE", sample: .null) == PGType.date)
        #expect(PGType.oid(declared: "UUID", sample: .text("x")) == PGType.uuid)
    }

    @Test func uuidAndJSONParametersInBinary() throws {
        let bytes: [UInt8] = [0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]
        #expect(try PGType.decode(bytes, oid: PGType.uuid, binary: true) == .text("12345678-9abc-def0-0123-456789abcdef"))
        #expect(try PGType.encode(.text("12345678-9abc-def0-0123-456789abcdef"), oid: PGType.uuid, binary: true) == bytes)
        #expect(try PGType.decode([1] + Array("{\"a\": 1}".utf8), oid: PGType.jsonb, binary: true) == .text("{\"a\": 1}"))
        #expect(try PGType.encode(.text("[1]"), oid: PGType.jsonb, binary: true) == [1] + Array("[1]".utf8))
    }
}
