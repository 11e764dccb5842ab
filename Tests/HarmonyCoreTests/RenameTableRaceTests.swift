import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

/// `ALTER TABLE ... RENAME TO` racing other DDL and writes on other nodes. Each test runs once as the core is and
/// once with the planted bug that breaks the rule it checks, and must fail that way.
@Suite("RENAME TO races")
struct RenameTableRaceTests {
    static let schema = "CREATE TABLE t1 (id INTEGER PRIMARY KEY, v TEXT);"

    /// An index or trigger made on t1 while another node renamed t1 (made again before, so the old name's generation
    /// is above the new name's): it ends on the new name everywhere, in the text SQLite gave it on the node that made
    /// it. The renaming node moves an index at once, and a trigger when that text arrives
    /// (`dependent-kept-under-old-table`: refused there, it outranks that text, and the renaming node never has it;
    /// harmonysim swarm seed 31).
    @Test(arguments: [PlantedBugs(), .dependentKeptUnderOldTable], ["CREATE INDEX ix ON t1 (v)",
                      "CREATE TRIGGER tr AFTER INSERT ON t1 BEGIN SELECT 1; END"])
    func anIndexOrTriggerMadeWhileItsTableWasRenamedElsewhereFollowsTheRename(bug: PlantedBugs, ddl: String) throws {
        let c = try TestCluster(nodes: 2, schema: Self.schema) { $0.plantedBugs = bug }
        try c.apps[0].execute("DROP TABLE t1")
        try c.settle()
        try c.apps[0].execute("CREATE TABLE t1 (id INTEGER PRIMARY KEY, v TEXT)")
        try c.settle()
        try c.apps[1].execute(ddl)
        try c.publish(1)
        try c.apps[0].execute("ALTER TABLE t1 RENAME TO t2")
        try c.publish(0)
        try c.settle()
        let moved = try #require(try c.rows(1, "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name IN ('ix', 'tr')").first)
        #expect(moved[2] == "t2")
        #expect(try userSchema(c, 0).contains(moved) == bug.isEmpty)
        #expect(try (c.nodes[0].divergedSchemaObjects() == []) == bug.isEmpty)
    }

    /// Three at once: node 1 drops a column of t1, node 2 renames t1 to t2, node 3 makes a t2 of its own. Node 1
    /// hears of node 3's t2 first, so the rename merges its t1 into that table: its DROP COLUMN is final there too.
    /// Otherwise the merged rows keep the column empty on node 1, while node 2 sends them full at the same versions,
    /// which node 1 skips (`concurrent-drop-undone`; harmonysim swarm seed 208).
    @Test(arguments: [PlantedBugs(), .concurrentDropUndone])
    func aDropColumnRacingARenameOntoANewTableIsFinal(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 3, schema: "CREATE TABLE t1 (id INTEGER PRIMARY KEY, v TEXT, w TEXT);") { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t1 VALUES (1, 'a', 'x'), (2, 'b', 'y')")
        try c.settle()
        try c.apps[0].execute("ALTER TABLE t1 DROP COLUMN w")
        try c.apps[1].execute("ALTER TABLE t1 RENAME TO t2")
        try c.apps[2].execute("CREATE TABLE t2 (id INTEGER PRIMARY KEY, v TEXT, w TEXT)")
        for i in [2, 1, 0] { try c.publish(i) }
        try c.settle()
        for i in 1...2 {
            #expect(try userSchema(c, i) == userSchema(c, 0))
            #expect(try (c.rows(i, "SELECT * FROM t2 ORDER BY id") == c.rows(0, "SELECT * FROM t2 ORDER BY id")) == bug.isEmpty)
        }
        #expect(try (c.rows(0, "SELECT * FROM t2 ORDER BY id") == [[1, "a"], [2, "b"]]) == bug.isEmpty)
    }

    /// Three at once: node 1 makes an index on t1, node 2 renames t1 to t2, node 3 makes a t2 of its own. Node 1
    /// hears of node 3's t2 first, so the rename merges its t1 into that table, and SQLite's DROP of t1 takes the
    /// index along. Every other node gets the index after the rename and moves it onto t2; node 1 moves it there too
    /// (`merged-rename-drops-index`: node 1 records the loss as its own DROP INDEX, and the application's index is
    /// gone everywhere; in harmonysim swarm seeds 435 and 475, where t2's generation was the higher, that DROP ranked
    /// below the moved index and node 1 alone was without it).
    @Test(arguments: [PlantedBugs(), .mergedRenameDropsIndex])
    func anIndexMadeOnATableMergedByARenameFollowsIt(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 3, schema: Self.schema) { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t1 VALUES (1, 'a'), (2, 'b')")
        try c.settle()
        try c.apps[0].execute("CREATE INDEX ix ON t1 (v)")
        try c.apps[1].execute("ALTER TABLE t1 RENAME TO t2")
        try c.apps[2].execute("CREATE TABLE t2 (id INTEGER PRIMARY KEY, v TEXT)")
        for i in [2, 1, 0] { try c.publish(i) }
        try c.settle()
        let index: [DatabaseValue] = ["index", "ix", "t2", #"CREATE INDEX ix ON "t2" (v)"#]
        for i in 0...2 {
            #expect(try userSchema(c, i).contains(index) == bug.isEmpty)
            #expect(try c.nodes[i].divergedSchemaObjects() == [])
        }
        try expectNodesAgree(c, on: "SELECT * FROM t2 ORDER BY id", unless: [])
    }

    /// Two nodes rename t1 to two names at once: node 2 to t2 (made and dropped before, so its generation is the
    /// higher), node 1 to t3, after making an index on t1. Node 1's SQLite moves the index onto t3, recorded as its
    /// own later DDL. Node 2 gets the index after its rename and moves it onto t2 under the index's first version,
    /// which no node sends; that state outranks node 1's later text (the table's generation comes first), so node 2
    /// sends it again, under an id of its own, and node 1 moves the index to t2 as well (`moved-dependent-never-sent`:
    /// node 1 keeps it on t3 for good; `resent-definition-deduplicated`: JetStream drops the copy as node 1's first
    /// message; harmonysim swarm seed 475).
    @Test(arguments: [PlantedBugs(), .movedDependentNeverSent, .resentDefinitionDeduplicated])
    func anIndexMovedByTwoRenamesEndsOnOneTable(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: Self.schema) { $0.plantedBugs = bug }
        try c.apps[0].execute("CREATE TABLE t2 (id INTEGER PRIMARY KEY)")
        try c.settle()
        try c.apps[0].execute("DROP TABLE t2")
        try c.settle()
        try c.apps[0].execute("CREATE INDEX ix ON t1 (v)")
        try c.publish(0)
        try c.apps[1].execute("ALTER TABLE t1 RENAME TO t2")
        try c.publish(1)
        try c.apps[0].execute("ALTER TABLE t1 RENAME TO t3")
        try c.publish(0)
        try c.settle()
        let onT2: [DatabaseValue] = ["index", "ix", "t2", #"CREATE INDEX ix ON "t2" (v)"#]
        #expect(try userSchema(c, 1).contains(onT2))
        #expect(try userSchema(c, 0).contains(onT2) == bug.isEmpty)
        #expect(try (userSchema(c, 0) == userSchema(c, 1)) == bug.isEmpty)
    }

    /// Node 1 makes an index on t1 and writes a row to it, and says nothing yet (its sidecar was stopped, as in a
    /// `-cleanup`). Meanwhile node 2 renames t1 to t2, drops t2 and makes a new t2. Node 1's index and row come last:
    /// the nodes that get them after all that find t1 renamed to a t2 that is no longer the renamed table, and both
    /// went with the one dropped, as on node 1, where the rename moved them and the drop took them
    /// (`dependent-follows-to-remade-table`: nodes 2 and 3 put the index on the new t2, and node 1 alone is without
    /// it; `row-follows-to-remade-table`: the row of the dropped table comes back in the new one, on every node;
    /// harmonysim swarm seed 805 for the index).
    @Test(arguments: [PlantedBugs(), .dependentFollowsToRemadeTable, .rowFollowsToRemadeTable])
    func anIndexAndARowArrivingAfterTheirRenamedTableWasDroppedAndMadeAgainAreGone(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 3, schema: Self.schema) { $0.plantedBugs = bug }
        try c.apps[0].execute("CREATE INDEX ix ON t1 (v)")
        try c.apps[0].execute("INSERT INTO t1 VALUES (1, 'written before the rename')")
        for ddl in ["ALTER TABLE t1 RENAME TO t2", "DROP TABLE t2", "CREATE TABLE t2 (id INTEGER PRIMARY KEY, v TEXT)"] {
            try c.apps[1].execute(ddl)
            try c.publish(1)
            try c.deliver(2)
        }
        try c.publish(0)
        try c.settle()
        let withoutIndex = try userSchema(c, 0)
        #expect(!withoutIndex.contains { $0[1] == "ix" })
        for i in 0...2 {
            // The table made again starts empty (under the bug the row comes back on every node, node 1's own echo
            // included, into a table that never had it).
            #expect(try (c.rows(i, "SELECT * FROM t2") == []) == !bug.contains(.rowFollowsToRemadeTable))
        }
        for i in 1...2 {
            #expect(try (userSchema(c, i) == withoutIndex) == !bug.contains(.dependentFollowsToRemadeTable))
            #expect(try c.nodes[i].divergedSchemaObjects() == [])
        }
    }

    /// A winning definition of an index that SQLite refuses here (it names a column this node does not have, as an
    /// index moved onto a table whose rename of that column lost) still replaces the index of that name this node
    /// had: the node is left without it and says so, like every node that refused it. Kept, the old index read as
    /// the application's own and went on being published as this node's DDL, and this node alone had it
    /// (`outranked-index-kept`; harmonysim swarm seed 475).
    @Test(arguments: [PlantedBugs(), .outrankedIndexKept])
    func anIndexReplacedByADefinitionRefusedHereIsNotKept(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: Self.schema) { $0.plantedBugs = bug }
        try c.apps[0].execute("CREATE INDEX ix ON t1 (v)")
        try c.settle()
        let key = [ChangeRecord.Column("type", .text("index")), ChangeRecord.Column("name", .text("ix"))]
        let outranking = ChangeRecord(
            originNode: 9, table: Bookkeeping.ddlTable, operation: .upsert, primaryKey: key,
            row: key + [ChangeRecord.Column("tbl_name", .text("t1")), ChangeRecord.Column("sql", .text("CREATE INDEX ix ON t1 (r)")),
                        ChangeRecord.Column("generation", .integer(1)), ChangeRecord.Column("table_generation", .integer(0))],
            version: RowVersion(hlc: 1 << 20, node: 9), schemaHash: ReplicationNode.definitionSchemaHash)
        c.streams.append(shard: c.nodes[0].router.shards.lowerBound, messageID: "outranking-ix", payload: try EnvelopeCodec.encode(outranking))
        try c.settle()
        for i in 0...1 {
            #expect(try c.rows(i, "SELECT count(*) FROM sqlite_schema WHERE name = 'ix'") == [[bug.isEmpty ? 0 : 1]])
            #expect(try c.nodes[i].divergedSchemaObjects() == [#"index "ix""#])
        }
    }

    /// Node 1 renames column b of t1 to r and writes r; node 2, not having heard of it, drops column c (a later ALTER,
    /// which wins) and renames t1 to t2. Node 1's rename loses, and its row arrives at node 2 under t1, to follow the
    /// alias to t2: r is b there, as on node 1, which undoes its rename keeping the value (`lost-rename-before-rename-to`:
    /// node 2 takes r for a dropped column and leaves b empty, and sends that on, so the value written is lost; in
    /// harmonysim swarm seed 475 the writer's full copy, sent again at the same version, was skipped, and the nodes
    /// differed).
    @Test(arguments: [PlantedBugs(), .lostRenameBeforeRenameTo])
    func aLosingRenameColumnLeadsToTheColumnOfTheRenamedTable(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: "CREATE TABLE t1 (id INTEGER PRIMARY KEY, b TEXT, c TEXT);") { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t1 VALUES (1, 'old', 'x')")
        try c.settle()
        try c.apps[0].execute("ALTER TABLE t1 RENAME COLUMN b TO r")
        try c.apps[0].execute("UPDATE t1 SET r = 'new' WHERE id = 1")
        try c.publish(0)
        try c.apps[1].execute("ALTER TABLE t1 DROP COLUMN c")
        try c.apps[1].execute("ALTER TABLE t1 RENAME TO t2")
        try c.publish(1)
        try c.settle()
        #expect(try userSchema(c, 0) == userSchema(c, 1))
        for i in 0...1 { #expect(try (c.rows(i, "SELECT * FROM t2") == [[1, "new"]]) == bug.isEmpty) }
    }

    /// Node 1 adds a column to t1 and writes a row with it; node 3, which has not heard of the column, renames t1 to
    /// t2; node 2 applies both, then makes a new t1. The row reaches node 2 last, sent to t1 under the definition with
    /// the column: node 2 follows it to t2, and nothing there or under the new t1 knows the column any more. The
    /// definition it would wait for is of a t1 gone here, so it applies without the column, as on the other nodes
    /// (`wait-for-a-gone-generation`: node 2 waits for good; harmonysim swarm seed 129).
    @Test(arguments: [PlantedBugs(), .waitForAGoneGeneration])
    func aRowForARenamedTablesOldNameMadeAgainIsNotHeldForGood(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 3, schema: "CREATE TABLE t1 (id INTEGER PRIMARY KEY, v TEXT);") { $0.plantedBugs = bug }
        try c.apps[0].execute("ALTER TABLE t1 ADD COLUMN w TEXT")
        try c.publish(0)
        try c.apps[2].execute("ALTER TABLE t1 RENAME TO t2")
        try c.publish(2)
        try c.deliver(1)
        try c.apps[1].execute("CREATE TABLE t1 (id INTEGER PRIMARY KEY, z TEXT)")
        try c.publish(1)
        try c.apps[0].execute("INSERT INTO t1 VALUES (1, 'x', 'y')")
        try c.publish(0)
        try c.settle()
        #expect(c.nodes[1].pausedShards.isEmpty == bug.isEmpty)
        guard bug.isEmpty else { return }  // node 2's stream stands still, with everything after the row
        let sql = "SELECT * FROM t2 ORDER BY id"
        for i in [0, 2] {
            #expect(try userSchema(c, i) == userSchema(c, 1))
            #expect(try c.rows(i, sql) == c.rows(1, sql))
        }
        #expect(try c.rows(1, "SELECT id, v FROM t2") == [[1, "x"]])
    }

    /// One node renames t1 while another drops it, neither having heard of the other. The DROP wins t1 everywhere;
    /// the renamed table keeps its rows on every node, because the renaming node sends them again under the new name
    /// (`rename-keeps-rows-local`: the dropping node makes the new name empty and never gets them).
    @Test(arguments: [PlantedBugs(), .renameKeepsRowsLocal])
    func aRenameRacingADropKeepsTheRowsEverywhere(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: Self.schema) { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t1 VALUES (1, 'one'), (2, 'two')")
        try c.settle()
        try c.apps[0].execute("ALTER TABLE t1 RENAME TO t2")
        try c.publish(0)
        try c.apps[1].execute("DROP TABLE t1")
        try c.publish(1)
        try c.settle()
        #expect(try userSchema(c, 0) == userSchema(c, 1))
        #expect(try c.rows(1, "SELECT count(*) FROM sqlite_schema WHERE name = 't1'") == [[0]])
        let sql = "SELECT * FROM t2 ORDER BY id"
        #expect(try c.rows(0, sql) == [[1, "one"], [2, "two"]])
        try expectNodesAgree(c, on: sql, unless: bug)
        #expect(c.nodes.allSatisfy { $0.pausedShards.isEmpty })
    }

    /// Two nodes rename one table to two different names at once. t1 goes everywhere; both new names exist on every
    /// node, each with all the rows (the table is in effect copied), and later writes to either replicate.
    @Test(arguments: [PlantedBugs(), .renameKeepsRowsLocal])
    func twoRenamesOfOneTableLeaveBothNamesWithTheRows(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: Self.schema) { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t1 VALUES (1, 'one'), (2, 'two')")
        try c.settle()
        try c.apps[0].execute("ALTER TABLE t1 RENAME TO a")
        try c.apps[1].execute("ALTER TABLE t1 RENAME TO b")
        try c.publish(0)
        try c.publish(1)
        try c.settle()
        #expect(try userSchema(c, 0) == userSchema(c, 1))
        for table in ["a", "b"] {
            try expectNodesAgree(c, on: "SELECT * FROM \(table) ORDER BY id", unless: bug)
        }
        if bug.isEmpty {
            #expect(try c.rows(1, "SELECT * FROM a ORDER BY id") == [[1, "one"], [2, "two"]])
            try c.apps[1].execute("INSERT INTO a VALUES (3, 'three')")
            try c.settle()
            #expect(try c.rows(0, "SELECT * FROM a ORDER BY id") == [[1, "one"], [2, "two"], [3, "three"]])
        }
    }

    /// A row reaching a node under the old name while the rename is on its way follows it there and is sent on:
    /// a node that dropped the old name instead never had the row, and gets it under the new one.
    @Test(arguments: [PlantedBugs(), .renameKeepsRowsLocal])
    func aRowWrittenToTheOldNameIsSentOnUnderTheNewOne(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 3, schema: Self.schema) { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t1 VALUES (1, 'one')")
        try c.settle()
        try c.apps[0].execute("ALTER TABLE t1 RENAME TO t2")
        try c.publish(0)
        try c.apps[1].execute("INSERT INTO t1 VALUES (5, 'late')")
        try c.publish(1)
        try c.apps[2].execute("DROP TABLE t1")
        try c.publish(2)
        try c.deliver(0)  // node 1 takes the late row through its alias
        try c.settle()
        let sql = "SELECT * FROM t2 ORDER BY id"
        #expect(try c.rows(0, sql) == [[1, "one"], [5, "late"]])
        #expect(try (c.rows(2, sql) == c.rows(0, sql)) == bug.isEmpty)
    }

    /// t1 was renamed to t2 long ago; later another t1 was made and dropped. Rows of that later t1 arriving after its
    /// drop are discarded, not sent into t2 by the old alias (`alias-any-generation` puts them there on one node).
    @Test(arguments: [PlantedBugs(), .aliasAnyGeneration])
    func rowsOfALaterTableOfTheOldNameDoNotFollowTheAlias(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: Self.schema) { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t1 VALUES (1, 'one')")
        try c.apps[0].execute("ALTER TABLE t1 RENAME TO t2")
        try c.settle()
        try c.apps[0].execute("CREATE TABLE t1 (id INTEGER PRIMARY KEY, v TEXT)")
        try c.settle()
        try c.apps[0].execute("INSERT INTO t1 VALUES (9, 'later table')")
        try c.publish(0)
        try c.apps[1].execute("DROP TABLE t1")
        try c.publish(1)
        try c.settle()
        #expect(try userSchema(c, 0) == userSchema(c, 1))
        let sql = "SELECT * FROM t2 ORDER BY id"
        #expect(try (c.rows(0, sql) == [[1, "one"]] && c.rows(1, sql) == [[1, "one"]]) == bug.isEmpty)
    }

    /// An index made, then its table renamed, both before either was sent: the index's definition (now on the new
    /// name) goes out after the table's, so receivers make it as it arrives (`definitions-in-log-order` sends it
    /// first: the receivers find no such table and must hold the index until the table comes; they used to record
    /// it as gone, and still end with it only because they now wait).
    @Test(arguments: [PlantedBugs(), .definitionsInLogOrder])
    func anIndexMadeBeforeItsTableWasRenamedArrivesAfterTheTable(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: Self.schema) { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t1 VALUES (1, 'one')")
        try c.settle()
        try c.apps[0].execute("CREATE INDEX ix ON t1 (v)")
        try c.nodes[0].databaseChanged()  // the index is recorded, not sent (the log does not answer)
        let held = c.takePublishes(0)
        try c.apps[0].execute("ALTER TABLE t1 RENAME TO t2")
        for m in held { c.nodes[0].publishFailed(token: m.token) }
        try c.nodes[0].timerFired(.publishRetry)
        try c.settle()
        let indexes = "SELECT name, tbl_name FROM sqlite_schema WHERE type = 'index' AND name = 'ix'"
        #expect(try c.rows(0, indexes) == [["ix", "t2"]])
        #expect(try c.rows(1, indexes) == [["ix", "t2"]])
        let waited = c.events[1].events.contains { if case .schemaChangeWaiting = $0 { return true } else { return false } }
        #expect(waited != bug.isEmpty, "the index arrived \(waited ? "before" : "after") its table")
    }

    /// A rename seen together with the rows sent again for it: the rows never go out ahead of the DDL that makes
    /// their table (`rows-ahead-of-new-definitions` lets them, and every receiver holds them back for good: the DDL
    /// they wait for is behind them on the same stream).
    @Test(arguments: [PlantedBugs(), .rowsAheadOfNewDefinitions])
    func rowsSentAgainForARenameNeverOvertakeIt(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: Self.schema) { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t1 VALUES (1, 'one'), (2, 'two')")
        try c.settle()
        try c.apps[0].execute("INSERT INTO t1 VALUES (3, 'three')")
        try c.nodes[0].databaseChanged()
        let inFlight = c.takePublishes(0)
        try c.apps[0].execute("ALTER TABLE t1 RENAME TO t2")
        // The log acknowledges the write: the node publishes on before anything told it of the schema change.
        for m in inFlight { _ = c.streams.append(shard: m.shard, messageID: m.messageID, payload: m.payload) }
        try c.nodes[0].publishAcknowledged(tokens: inFlight.map(\.token))
        try c.settle()
        #expect(c.nodes[1].pausedShards.isEmpty == bug.isEmpty)
        #expect(try (c.rows(1, "SELECT count(*) FROM sqlite_schema WHERE name = 't2'") == [[1]]) == bug.isEmpty)
    }

    /// One node renames t1 while another drops one of its columns, neither having heard of the other. DROP COLUMN is
    /// final against a concurrent ALTER (`keepConcurrentDrops`), and a RENAME TO is one: every node ends with t2
    /// without the column, and later writes replicate. Before, the column came back (empty on the dropping node;
    /// harmonysim's `ddl.toml` found an order in which the renaming node kept its values and the two never agreed).
    /// In both orders of arrival; `concurrent-drop-undone` brings the column back.
    @Test(arguments: [(PlantedBugs(), false), (PlantedBugs(), true), (.concurrentDropUndone, false)])
    func aRenameRacingADropColumnLosesTheColumnEverywhere(bug: PlantedBugs, dropperHearsFirst: Bool) throws {
        let c = try TestCluster(nodes: 2, schema: "CREATE TABLE t1 (id INTEGER PRIMARY KEY, v TEXT, w INTEGER);") { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t1 VALUES (1, 'one', 10), (2, 'two', 20)")
        try c.settle()
        try c.apps[0].execute("ALTER TABLE t1 RENAME TO t2")
        try c.publish(0)
        try c.apps[1].execute("ALTER TABLE t1 DROP COLUMN v")
        try c.publish(1)
        if dropperHearsFirst { try c.deliver(1) }
        try c.settle()
        #expect(try userSchema(c, 0) == userSchema(c, 1))
        let sql = "SELECT * FROM t2 ORDER BY id"
        #expect(try c.rows(0, sql) == c.rows(1, sql))
        #expect(try (c.rows(0, sql) == [[1, 10], [2, 20]]) == bug.isEmpty)
        if bug.isEmpty {
            try c.apps[1].execute("INSERT INTO t2 VALUES (3, 30)")
            try c.apps[0].execute("UPDATE t2 SET w = 11 WHERE id = 1")
            try c.settle()
            #expect(try c.rows(0, sql) == [[1, 11], [2, 20], [3, 30]])
            #expect(try c.rows(1, sql) == [[1, 11], [2, 20], [3, 30]])
        }
        #expect(c.nodes.allSatisfy { $0.pausedShards.isEmpty })
    }

    /// A trigger whose body names its own table, then a RENAME TO of that table: SQLite rewrites the body on the node
    /// that renamed, and every node that applies the rename rewrites it the same way, so the text they record as
    /// their own is the author's. The trigger keeps working everywhere, and so does the next rename
    /// (`applied-rename-keeps-bodies`: applied with `legacy_alter_table` on, the other node's body keeps the old name,
    /// its later text wins on both, inserts fail with "no such table: main.e1", and so does every later ALTER).
    @Test(arguments: [PlantedBugs(), .appliedRenameKeepsBodies])
    func aTriggerNamingItsOwnTableFollowsTheRenameInItsBody(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: "CREATE TABLE e1 (id INTEGER PRIMARY KEY, w INTEGER DEFAULT 0);") { $0.plantedBugs = bug }
        try c.apps[0].execute("CREATE TRIGGER e1_self AFTER INSERT ON e1 BEGIN UPDATE e1 SET w = w + 1 WHERE id = NEW.id; END")
        try c.settle()
        try c.apps[0].execute("ALTER TABLE e1 RENAME TO e2")
        try c.settle()
        for i in 0...1 {
            let body = try c.rows(i, "SELECT sql FROM sqlite_schema WHERE name = 'e1_self'").first?.first?.string ?? ""
            #expect(body.contains(#"UPDATE "e2" SET"#) == bug.isEmpty, "node \(i + 1): \(body)")
        }
        #expect(try userSchema(c, 0) == userSchema(c, 1))
        guard bug.isEmpty else { return }
        try c.apps[1].execute("INSERT INTO e2 (id) VALUES (1)")
        try c.apps[0].execute("INSERT INTO e2 (id) VALUES (2)")
        try c.settle()
        try c.apps[1].execute("ALTER TABLE e2 RENAME TO e3")
        try c.settle()
        for i in 0...1 { #expect(try c.rows(i, "SELECT id, w FROM e3 ORDER BY id") == [[1, 1], [2, 1]]) }
        #expect(try userSchema(c, 0) == userSchema(c, 1))
    }
}
