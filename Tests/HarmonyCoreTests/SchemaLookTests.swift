import Foundation
import HarmonyCodec
@testable import HarmonyCore
import HarmonySQLite
import Testing

/// What a node reads from `sqlite_schema` when it looks: at the first install, after several ALTERs seen at once
/// (the sidecar was down or slow), and index definitions that outlived their table elsewhere. Each test also runs
/// with the planted bug that breaks its rule, and must fail that way.
@Suite("Schema changes seen in one look")
struct SchemaLookTests {
    /// The application on node 2 made a table (with rows) before node 2's sidecar ever installed, while node 1
    /// already replicated. The table reaches node 1 with its rows, and no shard waits for it
    /// (`pre-existing-never-sent`: the rows arrive at node 1, which never gets the table and waits for good).
    @Test(arguments: [PlantedBugs(), .preExistingNeverSent])
    func aTableMadeBeforeTheFirstInstallReachesTheOtherNodes(bug: PlantedBugs) throws {
        let schema = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT);"
        let c = try TestCluster(nodes: 1, schema: schema) { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO kv VALUES (1, 'one')")
        try c.addNode(schema: schema + "CREATE TABLE late (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO late VALUES (7, 'seven');") {
            $0.plantedBugs = bug
        }
        try c.settle()
        #expect(try (userSchema(c, 0) == userSchema(c, 1)) == bug.isEmpty)
        if bug.isEmpty {
            #expect(try c.rows(0, "SELECT * FROM late") == [[7, "seven"]])
            #expect(try c.rows(1, "SELECT * FROM kv") == [[1, "one"]])
        }
        #expect(c.nodes.allSatisfy { $0.pausedShards.isEmpty } == bug.isEmpty)
    }

    /// As a live consumer delivers them: the held-back row is redelivered on its own, and the definitions sent on
    /// request arrive singly behind it. They apply on arrival, and the held-back row is asked for again at once.
    @Test func definitionsSentOnRequestApplyWhenDeliveredSinglyBehindTheHeldBackRow() throws {
        let schema = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT);"
        let c = try TestCluster(nodes: 1, schema: schema)
        try c.addNode(schema: schema + "CREATE TABLE late (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO late VALUES (7, 'seven');")
        try c.publish(1)
        try c.deliver(0)  // node 1 holds the row back and asks
        #expect(c.nodes[0].pausedShards[1] == 1)
        try c.publish(0)
        try c.deliver(1)  // node 2 answers
        try c.publish(1)
        let answers = c.streams.messages(shard: 1, from: 3)
        #expect(answers.count == 2)
        c.ports[0].deliverFrom[1] = nil
        for message in answers.reversed() { try c.nodes[0].messagesArrived(shard: 1, [message]) }
        #expect(try c.rows(0, "SELECT count(*) FROM sqlite_schema WHERE name = 'late'") == [[1]])
        #expect(c.ports[0].deliverFrom[1] == 1)  // asked again from the held-back row
        try c.deliver(0)
        #expect(try c.rows(0, "SELECT * FROM late") == [[7, "seven"]])
        #expect(c.nodes[0].pausedShards.isEmpty)
    }

    /// Every node started with the same tables; their pre-existing copies (version zero) go out and change nothing,
    /// and a later ALTER on one node wins over another node's pre-existing copy whatever the arrival order.
    @Test func preExistingCopiesChangeNothingWhereTheTableIsAlready() throws {
        let c = try TestCluster(nodes: 2, schema: "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT);")
        try c.apps[0].execute("ALTER TABLE kv ADD COLUMN n INTEGER")
        try c.publish(0)
        try c.deliver(1)
        try c.settle()
        try expectSameEverywhere(c, tables: ["kv"])
        #expect(try c.rows(1, "SELECT name FROM pragma_table_info('kv') ORDER BY cid") == [["k"], ["v"], ["n"]])
    }

    /// A RENAME COLUMN of the last column reads as a rename, and a write made concurrently under the old name lands in
    /// the renamed column.
    @Test func aRenameOfTheLastColumnHoldingValuesIsStillARename() throws {
        let c = try TestCluster(nodes: 2, schema: "CREATE TABLE t (id INTEGER PRIMARY KEY, b INTEGER, a TEXT);")
        try c.apps[0].execute("INSERT INTO t VALUES (1, 10, 'kept')")
        try c.settle()
        try c.apps[1].execute("UPDATE t SET a = 'newer' WHERE id = 1")  // written under the old name, concurrently
        try c.apps[0].execute("ALTER TABLE t RENAME COLUMN a TO c")
        try c.publish(1)
        try c.settle()
        try expectSameEverywhere(c, tables: ["t"])
        #expect(try c.rows(1, "SELECT id, b, c FROM t") == [[1, 10, "newer"]])
    }

    /// Node 1 dropped t and made it again (another definition, with column c5 still) before sending anything; node 2,
    /// not knowing, made an index on t(c5). The index belongs to the table it was made on: it goes with it on node 2
    /// and never lands on node 1's new t (`dependent-outlives-its-table`: it is made on the new t everywhere).
    @Test(arguments: [PlantedBugs(), .dependentOutlivesItsTable])
    func anIndexOnATableDroppedElsewhereGoesWithThatTable(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, c5 INTEGER);") { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t VALUES (1, 'old', 5)")
        try c.settle()
        try c.apps[0].execute("DROP TABLE t; CREATE TABLE t (id INTEGER PRIMARY KEY, c5 INTEGER, a TEXT); INSERT INTO t VALUES (2, 6, 'new')")
        try c.apps[1].execute("CREATE INDEX ix ON t (\"c5\")")
        try c.publish(1)
        try c.publish(0)
        try c.settle()
        let indexes = "SELECT name FROM sqlite_schema WHERE type = 'index' AND name = 'ix'"
        #expect(try (c.rows(0, indexes).isEmpty && c.rows(1, indexes).isEmpty) == bug.isEmpty)
        try expectSameEverywhere(c, tables: ["t"])
        #expect(try c.rows(1, "SELECT * FROM t") == [[2, 6, "new"]])
        #expect(c.nodes.allSatisfy { $0.pausedShards.isEmpty })
    }

    /// Node 1 made t and dropped its column a; node 2, not knowing t yet, made t with a (the same migration run
    /// there later). The later CREATE wins the table, but node 1's DROP was concurrent with it: a goes everywhere
    /// (`concurrent-drop-undone`: a comes back empty on node 1 and keeps node 2's value there).
    @Test(arguments: [PlantedBugs(), .concurrentDropUndone])
    func aDropConcurrentWithACreateElsewhereIsKept(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT);") { $0.plantedBugs = bug }
        try c.apps[0].execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER); INSERT INTO t VALUES (1, 'x', 1)")
        try c.publish(0)
        try c.apps[0].execute("ALTER TABLE t DROP COLUMN a")
        try c.publish(0)
        try c.apps[1].execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER); INSERT INTO t VALUES (2, 'y', 2)")
        try c.publish(1)
        try c.settle()
        #expect(try userSchema(c, 0) == userSchema(c, 1))
        try expectNodesAgree(c, on: "SELECT * FROM t ORDER BY id", unless: bug)
        if bug.isEmpty {
            #expect(try c.rows(1, "SELECT * FROM t ORDER BY id") == [[1, 1], [2, 2]])
        }
    }

    /// Node 1 dropped column a of t, then table u, which leaves view v over u broken; node 2, not knowing, added
    /// column c to t later. Node 2's ALTER wins the table, so node 1 drops a again. SQLite re-checks every view on
    /// DROP COLUMN and would refuse it for v, which is broken anyway: v is set aside and made again around the drop
    /// (`redrop-blocked-by-broken-view`: a stays on node 1, empty, and keeps node 2's values there).
    @Test(arguments: [PlantedBugs(), .redropBlockedByBrokenView])
    func aConcurrentDropIsKeptPastAViewBrokenByAnotherDrop(bug: PlantedBugs) throws {
        let schema = "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER); CREATE TABLE u (x INTEGER PRIMARY KEY); CREATE VIEW v AS SELECT * FROM u;"
        let c = try TestCluster(nodes: 2, schema: schema) { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t VALUES (1, 'x', 1)")
        try c.settle()
        try c.apps[0].execute("ALTER TABLE t DROP COLUMN a; DROP TABLE u")
        try c.publish(0)
        try c.apps[1].execute("ALTER TABLE t ADD COLUMN c INTEGER")
        try c.publish(1)
        try c.settle()
        #expect(try userSchema(c, 0) == userSchema(c, 1))
        try expectNodesAgree(c, on: "SELECT * FROM t ORDER BY id", unless: bug)
        if bug.isEmpty {
            #expect(try c.rows(1, "SELECT name FROM pragma_table_info('t') ORDER BY cid") == [["id"], ["b"], ["c"]])
            #expect(try c.rows(0, "SELECT sql FROM sqlite_schema WHERE name = 'v'") == [["CREATE VIEW v AS SELECT * FROM u"]])
        }
        #expect(c.nodes.allSatisfy { $0.pausedShards.isEmpty })
    }

    /// Node 1 dropped column b of t while node 2, not knowing, made index ix on t ("b"), quoted as tools write it.
    /// SQLite reads a double-quoted name that matches no column as a string: ix would index the constant 'b' on
    /// node 1, and on node 2 once b went, and SQLite then refuses every later DROP COLUMN on either database. Instead
    /// ix fails where b is gone, goes with b on node 2, and a later DROP COLUMN works everywhere
    /// (`dependent-on-dropped-column-as-string`: that DROP COLUMN fails with "error in index ix after drop column").
    @Test(arguments: [PlantedBugs(), .dependentOnDroppedColumnAsString])
    func anIndexOnAColumnDroppedElsewhereIsNotMadeOnAConstant(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c INTEGER);") { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t VALUES (1, 'x', 5, 6)")
        try c.settle()
        try c.apps[0].execute("ALTER TABLE t DROP COLUMN b")
        try c.publish(0)
        try c.apps[1].execute(#"CREATE INDEX ix ON t ("b")"#)
        try c.publish(1)
        try c.settle()
        #expect(try userSchema(c, 0) == userSchema(c, 1))
        let laterDrop = Result { try c.apps[0].execute("ALTER TABLE t DROP COLUMN a") }
        #expect(((try? laterDrop.get()) != nil) == bug.isEmpty, "\(laterDrop)")
        guard bug.isEmpty else { return }
        try c.settle()
        #expect(try userSchema(c, 0) == userSchema(c, 1))
        for i in c.nodes.indices {
            #expect(try c.rows(i, "SELECT * FROM t") == [[1, 6]], "node \(i + 1)")
            #expect(try c.rows(i, "SELECT name FROM sqlite_schema WHERE name = 'ix'").isEmpty, "node \(i + 1)")
        }
        #expect(c.nodes.allSatisfy { $0.pausedShards.isEmpty })
    }

    /// Node 2 took node 1's RENAME COLUMN b TO r, DROP COLUMN a and ADD COLUMN c in one definition; its capture,
    /// seeing (id, a, b) become (id, r, c) at once, pairs the columns by place (a to r, b to c). Node 2's next ALTER
    /// keeps the replicated rename b -> r, so a row node 3 wrote under the old definition lands in r everywhere
    /// (`history-overrides-state-renames`: node 2's ALTER says b -> c, and the row lands in c on nodes 1 and 2).
    @Test(arguments: [PlantedBugs(), .historyOverridesStateRenames])
    func aLocalAlterKeepsTheReplicatedRenamesOverThisNodesGuess(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 3, schema: "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER);") { $0.plantedBugs = bug }
        try c.apps[2].execute("INSERT INTO t VALUES (1, 'x', 5)")  // under the old definition, sent later
        try c.apps[0].execute("ALTER TABLE t RENAME COLUMN b TO r; ALTER TABLE t DROP COLUMN a; ALTER TABLE t ADD COLUMN c REAL")
        try c.publish(0)
        try c.deliver(1)
        try c.apps[1].execute("ALTER TABLE t ADD COLUMN d INTEGER")
        try c.publish(1)
        try c.deliver(0)
        try c.settle()
        #expect(try userSchema(c, 0) == userSchema(c, 2))
        let row = "SELECT id, r, c, d FROM t ORDER BY id"
        #expect(try (c.rows(0, row) == c.rows(2, row)) == bug.isEmpty)
        if bug.isEmpty {
            for i in c.nodes.indices { #expect(try c.rows(i, row) == [[1, 5, .null, .null]], "node \(i + 1)") }
        }
        #expect(c.nodes.allSatisfy { $0.pausedShards.isEmpty })
    }

    /// Node 1 made index ix on t while node 2, not knowing, renamed t to u. On node 1 the rename moves ix onto u, and
    /// node 1 sends the moved text; on node 2, ix waits for it instead of counting as gone with a dropped t
    /// (`dependent-of-renamed-table-dropped`: node 2 never has ix; its drop outranks node 1's moved text, and since
    /// losing texts are answered with the state that beat them, node 1 loses the application's index too).
    @Test(arguments: [PlantedBugs(), .dependentOfRenamedTableDropped])
    func anIndexMadeOnATableRenamedElsewhereFollowsTheRename(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER);") { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t VALUES (1, 'x', 5)")
        try c.settle()
        try c.apps[0].execute("CREATE INDEX ix ON t (b)")
        try c.publish(0)
        try c.apps[1].execute("ALTER TABLE t RENAME TO u")
        try c.publish(1)
        try c.deliver(1)
        try c.deliver(0)
        try c.settle()
        let index = "SELECT tbl_name FROM sqlite_schema WHERE type = 'index' AND name = 'ix'"
        for i in 0...1 { #expect(try (c.rows(i, index) == [["u"]]) == bug.isEmpty) }
        #expect(try userSchema(c, 0) == userSchema(c, 1))
        #expect(try c.rows(0, "SELECT * FROM u") == [[1, "x", 5]])
        #expect(c.nodes.allSatisfy { $0.pausedShards.isEmpty })
        if bug.isEmpty { #expect(try c.nodes[1].divergedSchemaObjects().isEmpty) }
    }

    /// Node 3 renamed b to r7 and node 1, later, to r9: node 1's rename wins, and node 1 keeps r7 as a name of r9.
    /// Node 1 then renamed t to u. A row node 3 wrote into r7 before hearing of either arrives at node 1 for t and
    /// follows the rename to u; u kept t's names, so the value lands in r9 as on node 3
    /// (`rename-to-forgets-merged-names`: u knows only b -> r9, and node 1 drops the value).
    @Test(arguments: [PlantedBugs(), .renameToForgetsMergedNames])
    func aTableRenamedKeepsTheNamesItsColumnsHad(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 3, schema: "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER);") { $0.plantedBugs = bug }
        try c.apps[2].execute("ALTER TABLE t RENAME COLUMN b TO r7")
        try c.publish(2)
        Thread.sleep(forTimeInterval: 0.002)  // a later version than node 3's, whatever the clock's resolution
        try c.apps[0].execute("ALTER TABLE t RENAME COLUMN b TO r9")
        try c.publish(0)
        try c.deliver(0)  // node 3's rename loses here; r7 leads to r9
        try c.apps[0].execute("ALTER TABLE t RENAME TO u")
        try c.publish(0)
        try c.apps[2].execute("INSERT INTO t (id, a, r7) VALUES (1, 'x', 5)")
        try c.publish(2)
        try c.settle()
        #expect(try userSchema(c, 0) == userSchema(c, 2))
        let row = "SELECT id, a, r9 FROM u"
        #expect(try (c.rows(0, row) == c.rows(2, row)) == bug.isEmpty)
        if bug.isEmpty {
            for i in c.nodes.indices { #expect(try c.rows(i, row) == [[1, "x", 5]], "node \(i + 1)") }
        }
        #expect(c.nodes.allSatisfy { $0.pausedShards.isEmpty })
    }

    /// Node 1 renamed a to r while node 2 dropped c; node 1's ALTER wins, so node 2 renames a, and drops c again.
    /// Node 2 writes the new name quoted, so its text differs from node 1's and the table is rebuilt from node 1's
    /// text. The columns are renamed in place first, so index ix on a is remade on r
    /// (`rebuild-remakes-dependents-by-old-names`: ix is remade from its old text, where "a" no longer names a
    /// column, so it fails, and ix is lost).
    @Test(arguments: [PlantedBugs(), .rebuildRemakesDependentsByOldNames])
    func aRebuiltTableKeepsItsIndexesOnRenamedColumns(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, c TEXT); CREATE INDEX ix ON t (\"a\");") { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t VALUES (1, 'x', 'y')")
        try c.settle()
        try c.apps[1].execute("ALTER TABLE t DROP COLUMN c")
        try c.publish(1)
        Thread.sleep(forTimeInterval: 0.002)  // a later version than node 2's DROP
        try c.apps[0].execute("ALTER TABLE t RENAME COLUMN \"a\" TO r")
        try c.publish(0)
        try c.settle()
        #expect(try c.rows(0, "SELECT * FROM t ORDER BY id") == c.rows(1, "SELECT * FROM t ORDER BY id"))
        let ix = "SELECT sql FROM sqlite_schema WHERE name = 'ix'"
        #expect(try (c.rows(1, ix) == [["CREATE INDEX ix ON t (\"r\")"]]) == bug.isEmpty)
        if bug.isEmpty {
            try expectSameEverywhere(c, tables: ["t"])
            #expect(try c.rows(0, ix) == [["CREATE INDEX ix ON t (\"r\")"]])
            #expect(try c.rows(1, "SELECT * FROM t") == [[1, "x"]])
        }
    }

    /// Node 1 renamed column b to r, then table t to u; node 2, not knowing, created u with b, later, so node 2's u
    /// wins and r is b again. On node 2 the renamed t merges into its u: r's values go to b, as on node 1
    /// (`merge-drops-renamed-columns`: node 2 merges by column name alone and loses them).
    @Test(arguments: [PlantedBugs(), .mergeDropsRenamedColumns])
    func aTableRenamedOntoAnotherKeepsItsRenamedColumnsValues(bug: PlantedBugs) throws {
        let c = try TestCluster(nodes: 2, schema: "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER);") { $0.plantedBugs = bug }
        try c.apps[0].execute("INSERT INTO t VALUES (1, 'x', 5)")
        try c.settle()
        try c.apps[0].execute("ALTER TABLE t RENAME COLUMN b TO r")
        try c.publish(0)
        try c.apps[0].execute("ALTER TABLE t RENAME TO u")
        try c.publish(0)
        try c.apps[1].execute("CREATE TABLE u (id INTEGER PRIMARY KEY, a TEXT, b INTEGER)")
        try c.publish(1)
        try c.settle()
        #expect(try userSchema(c, 0) == userSchema(c, 1))
        try expectNodesAgree(c, on: "SELECT * FROM u ORDER BY id", unless: bug)
        if bug.isEmpty { #expect(try c.rows(1, "SELECT * FROM u") == [[1, "x", 5]]) }
        #expect(c.nodes.allSatisfy { $0.pausedShards.isEmpty })
    }

    /// Node 2's application made table late before node 2's sidecar first ran, then altered it once the sidecar ran.
    /// late's rows reach node 1, which never had it; the ALTER follows them on the stream, and node 2 no longer
    /// answers with late at version zero. Node 1 applies the ALTER found behind the held-back row, and takes the rows
    /// (`definitions-ahead-only-version-zero`: node 1 waits for good on a definition that never comes).
    @Test(arguments: [PlantedBugs(), .definitionsAheadOnlyVersionZero])
    func aPreExistingTableAlteredLaterStillReachesTheOtherNodes(bug: PlantedBugs) throws {
        let schema = "CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT);"
        let c = try TestCluster(nodes: 1, schema: schema) { $0.plantedBugs = bug }
        try c.addNode(schema: schema + "CREATE TABLE late (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO late VALUES (7, 'seven');") {
            $0.plantedBugs = bug
        }
        try c.publish(1)
        try c.apps[1].execute("ALTER TABLE late ADD COLUMN n INTEGER")
        try c.publish(1)
        try c.settle()
        #expect(c.nodes.allSatisfy { $0.pausedShards.isEmpty } == bug.isEmpty)
        if bug.isEmpty {
            try expectSameEverywhere(c, tables: ["late"])
            #expect(try c.rows(0, "SELECT * FROM late") == [[7, "seven", .null]])
        }
    }
}
