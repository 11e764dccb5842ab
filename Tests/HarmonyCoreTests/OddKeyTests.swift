import Foundation
import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

/// Keys SQLite allows that applications use: STRICT tables, typeless keys holding each storage class, BLOB and
/// REAL keys (empty, -0.0, 1e308), NOCASE, Unicode names, the Int64 extremes, a WITHOUT ROWID key in another
/// column order, a DESC key. Every row, update and delete arrives exactly, and nothing is parked.
@Suite("Keys of every kind SQLite allows")
struct OddKeyTests {
    @Test func everyKindOfKeyReplicatesExactly() throws {
        let schema = """
            CREATE TABLE s (id INTEGER PRIMARY KEY, v TEXT) STRICT;
            CREATE TABLE typeless (k PRIMARY KEY, v);
            CREATE TABLE blobk (k BLOB PRIMARY KEY, v);
            CREATE TABLE realk (k REAL PRIMARY KEY, v);
            CREATE TABLE nocase (k TEXT COLLATE NOCASE PRIMARY KEY, v);
            CREATE TABLE "ünï cødé 表" ("ключ" INTEGER PRIMARY KEY, "値" TEXT);
            CREATE TABLE wr (a TEXT, b INT, v, PRIMARY KEY (b, a)) WITHOUT ROWID;
            CREATE TABLE desck (k INT, v, PRIMARY KEY (k DESC));
            """
        let c = try TestCluster(nodes: 2, schema: schema)
        try c.apps[0].execute("""
            INSERT INTO s VALUES (1, 'strict');
            INSERT INTO typeless VALUES (1, 'int'), ('1', 'text'), (x'01', 'blob'), (2.5, 'real'), ('', 'empty');
            INSERT INTO blobk VALUES (x'', 'empty blob'), (x'00ff', 'b');
            INSERT INTO realk VALUES (1.5, 'a'), (-0.0, 'negzero'), (1e308, 'big');
            INSERT INTO nocase VALUES ('Abc', 1);
            INSERT INTO "ünï cødé 表" VALUES (9223372036854775807, 'max'), (-9223372036854775808, 'min');
            INSERT INTO wr VALUES ('x', 1, 'w');
            INSERT INTO desck VALUES (3, 'd');
            UPDATE typeless SET v = 'int2' WHERE k = 1;
            UPDATE nocase SET v = 2 WHERE k = 'abc';
            DELETE FROM blobk WHERE k = x'';
            """)
        try c.settle()
        for t in ["s", "typeless", "blobk", "realk", "nocase", "\"ünï cødé 表\"", "wr", "desck"] {
            let a = try c.rows(0, "SELECT * FROM \(t) ORDER BY 1"), b = try c.rows(1, "SELECT * FROM \(t) ORDER BY 1")
            #expect(a == b, "\(t)")
            #expect(!a.isEmpty, "\(t)")
        }
        #expect(try c.rows(1, "SELECT k, v FROM typeless ORDER BY 1").count == 5)
        #expect(try c.rows(1, "SELECT v FROM nocase") == [[2]])
        #expect(try c.rows(1, "SELECT count(*) FROM blobk") == [[1]])
        #expect(try c.rows(1, "SELECT error FROM \(quoteIdentifier(Bookkeeping.parkedTable))").isEmpty)
    }
}
