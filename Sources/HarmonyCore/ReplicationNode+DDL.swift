import HarmonyCodec
import HarmonySQLite

/// Replicated DDL: publishing the schema state's changes, and applying other nodes' with per-object
/// last-writer-wins (see `SchemaObject.rank`).
extension ReplicationNode {
    static let definitionSchemaHash = "ddl-1"

    /// The message for one entry of the schema state, as it is now (only the latest definition matters).
    func definitionRecord(id: Int64) throws -> ChangeRecord? {
        guard let o = try SchemaObjects.load(requireDatabase(), id: id) else { return nil }
        func text(_ s: String?) -> DatabaseValue { s.map { .text($0) } ?? .null }
        let renames = SchemaObjects.encodeRenames(o.columnRenames)
        let key = [ChangeRecord.Column("type", .text(o.type)), ChangeRecord.Column("name", .text(o.name))]
        return ChangeRecord(originNode: config.nodeID, table: Bookkeeping.ddlTable, operation: .upsert, primaryKey: key,
                            row: key + [ChangeRecord.Column("tbl_name", .text(o.tableName)), ChangeRecord.Column("sql", text(o.sql)),
                                        ChangeRecord.Column("generation", .integer(o.generation)),
                                        ChangeRecord.Column("renamed", text(o.renamed)), ChangeRecord.Column("column_renames", renames)]
                                    + (o.basedOn.map { [ChangeRecord.Column("based_hlc", .integer($0.hlc)), ChangeRecord.Column("based_node", .integer($0.node))] } ?? [])
                                    + (o.tableGeneration.map { [ChangeRecord.Column("table_generation", .integer($0))] } ?? []),
                            version: o.version, schemaHash: Self.definitionSchemaHash)
    }

    static func schemaObject(_ r: ChangeRecord) throws -> SchemaObject {
        func value(_ name: String) -> DatabaseValue { r.row.first { $0.name == name }?.value ?? .null }
        guard let type = value("type").string, ["table", "index", "view", "trigger"].contains(type),
              let name = value("name").string, !name.isEmpty, !name.hasPrefix(Bookkeeping.prefix),
              let table = value("tbl_name").string, let generation = value("generation").int64, generation >= 0
        else { throw ShapeMismatch(description: "schema change without a valid type, name, table or generation") }
        let sql = value("sql").string
        if let sql, !sql.uppercased().hasPrefix("CREATE ") { throw ShapeMismatch(description: "schema change for \(quoteIdentifier(name)) is not a CREATE statement") }
        let renames = try SchemaObjects.decodeRenames(value("column_renames"))
        var o = SchemaObject(type: type, name: name, tableName: table, sql: sql, generation: generation,
                             version: r.version, renamed: value("renamed").string, columnRenames: renames)
        if let hlc = value("based_hlc").int64, let node = value("based_node").int64 { o.basedOn = RowVersion(hlc: hlc, node: node) }
        if o.isDependent { o.tableGeneration = value("table_generation").int64 }
        return o
    }

    /// One schema change from another node, inside the apply transaction. It runs only if it outranks what this
    /// node has for the object (DDL the application ran here meanwhile is recorded first, so it competes too).
    /// DDL that SQLite refuses here is reported and recorded as this node's state of the object, never retried
    /// forever; the stream moves on.
    func applyDefinition(_ db: Database, shard: Int, _ message: IncomingMessage, _ record: ChangeRecord,
                         events: inout [ReplicationEvent]) throws -> ApplyOutcome {
        guard config.replicateDDL else { return .consumed }
        let incoming: SchemaObject
        do {
            incoming = try Self.schemaObject(record)
        } catch {
            try park(db, shard: shard, message, reason: "\(error)", events: &events)
            return .consumed
        }
        if !config.tables.admits(incoming.type == "view" ? incoming.name : incoming.tableName),
           !config.plantedBugs.contains(.filteredDefinitionsApplied) {
            // A table this node leaves out (include_tables / exclude_tables), or an index or trigger on one: neither
            // made nor changed here, as its rows are not, and a local table of that name keeps its own definition.
            // Made here, the next look would not see it through the filter and record it dropped, and that DROP would
            // win on every node (the table and its rows gone from the node that made it).
            return .consumed
        }
        if try db.scalar("PRAGMA schema_version")?.int64 != schemaVersion { try refreshCapture() }
        if !config.plantedBugs.contains(.noClockAdvanceOnReceipt) {
            // The clock passes the definition's version now, not at the end of the batch: applying it can make this
            // node record DDL of its own (a side effect on a view, a text SQLite writes its own way), whose version
            // must be above the definition's, or this node keeps a state every other node has replaced, and waits
            // for good for rows stamped with the definition it lost.
            try db.execute("UPDATE \(quoteIdentifier(Bookkeeping.clockTable)) SET hlc = max(hlc, ?)", [.integer(incoming.version.hlc)])
        }
        let local = try SchemaObjects.load(db, type: incoming.type, name: incoming.name)
        let wins = local.map { local in
            config.plantedBugs.contains(.ddlDropNotFinal) ? (incoming.generation, incoming.version) > (local.object.generation, local.object.version)
                : SchemaObject.outranks(incoming, local.object)
        } ?? true
        guard wins || config.plantedBugs.contains(.ddlLastArrivalWins) else {
            if let local, local.object.type == "table", local.object.generation == incoming.generation,
               !config.plantedBugs.contains(.lostRenameDropsColumn) {
                // A losing rename's names still lead to the winner's columns, for the rows written under it; rows
                // waiting for this definition (they name its columns) can now apply.
                var kept = local.object
                kept.columnRenames = SchemaObjects.mergedRenames(winner: local.object, loser: incoming)
                kept.knownColumns.formUnion(SchemaObjects.columnNames(incoming.sql))
                try update(db, local, to: kept)
                if local.object.sql == nil, let to = local.object.renamed, incoming.sql != nil,
                   let target = try SchemaObjects.load(db, type: "table", name: to), target.object.sql != nil,
                   !config.plantedBugs.contains(.lostRenameBeforeRenameTo) {
                    // The table was renamed here since: the losing ALTER's names lead to the columns of the table it
                    // is now. Rows still sent under the old name follow the alias there, and a column the loser
                    // renamed would otherwise be taken for one the winner dropped, its value left at the default,
                    // while the renaming node sends the row again with it at the same version (harmonysim swarm 475).
                    var renamedLoser = incoming
                    renamedLoser.generation = target.object.generation
                    var moved = target.object
                    moved.columnRenames = SchemaObjects.mergedRenames(winner: target.object, loser: renamedLoser)
                    try update(db, target, to: moved)
                }
            }
            if let local, local.object.type == "table", let winner = local.object.sql, let loser = incoming.sql,
               local.object.generation == incoming.generation, let from = incoming.renamed, local.object.renamed == from,
               let table = captured[incoming.name], !config.plantedBugs.contains(.renameRaceValuesLeftOut) {
                // Both are the table a RENAME TO made, and the one that wins here has columns the loser lacks: a column
                // this node added to the old name while another node renamed it, kept when SQLite renamed the table
                // here before the renaming node's definition came. The renaming node took rows written with that
                // column for rows of a losing definition and left the value out; it makes the column, at its default,
                // when this definition reaches it, and skips the rows at the versions it has. So rows written before
                // this definition that hold a value there are sent again as this node's writes (harmonysim swarm seed
                // 4066: one row kept its value on three nodes and had the default on the renaming one).
                let theirs = Set(SchemaObjects.columnNames(loser))
                try SchemaObjects.sendAddedValues(db, table, columns: SchemaObjects.columnNames(winner).filter { !theirs.contains($0) },
                                                  writtenBefore: local.object.version)
            }
            if let local, local.object.isDependent, local.object.version < incoming.version,
               local.object.tableName != incoming.tableName, !config.plantedBugs.contains(.movedDependentNeverSent) {
                // A later text for another table that loses to the state this node holds was written without it. An
                // index moved here onto a renamed table (`renamedHereTo`, `move(_:onto:_:)`) is such a state: every
                // node works it out for itself, so none sends it, and a node that moved the index elsewhere (a
                // concurrent RENAME TO of the same table) would keep its own for good (harmonysim swarm seed 475).
                // Sent again, as it is. (Not for a later text on the same table: no move is involved, and sending
                // such states again made swarm seed 1021 end with an index refused on one node and made elsewhere.)
                try SchemaObjects.queueForPublishing(db, id: local.id)
                definitionsToPublish = true
            }
            events.append(.applied(shard: shard, sequence: message.sequence, table: Bookkeeping.ddlTable, version: record.version, won: false))
            return .consumed
        }
        var stored = incoming
        if try madeOnATableDroppedSince(db, incoming) {
            // Made on a table dropped since (another node had dropped it and made it again): it went with that table.
            stored.sql = nil
        }
        // A table renamed elsewhere from a table this node has (not renamed here yet): that table's state, as this
        // node's concurrent DDL to it competes with the rename (`keepConcurrentDrops`).
        let renamedFrom = try incoming.type == "table" && incoming.sql != nil && local?.object.generation != incoming.generation
            ? incoming.renamed.flatMap { try SchemaObjects.load(db, type: "table", name: $0)?.object }.flatMap { $0.sql == nil ? nil : $0 }
            : nil
        let following = try indexesFollowingAMerge(db, incoming)
        let attempted = try attempt(db, stored)
        var now = attempted.now
        var failure = attempted.failure
        if failure == nil, let to = incoming.renamed { try move(following, onto: to, db) }
        if let local { stored.columnRenames = SchemaObjects.mergedRenames(winner: incoming, loser: local.object) }
        var waitsForItsTable = false
        if failure != nil, incoming.isDependent, incoming.sql != nil, try madeOnATableNotHereYet(db, incoming) {
            // Made on a generation of its table this node has not had yet: kept as an unapplied definition, made when
            // the table arrives.
            waitsForItsTable = true
        } else if failure != nil, incoming.isDependent, incoming.sql != nil, try !db.tableExists(incoming.tableName),
                  try !renamedHere(db, incoming) {
            // Made on a table that was dropped here meanwhile: it went with that table, as on the nodes that had it.
            stored.sql = nil
            failure = nil
        } else if failure != nil, incoming.isDependent, let sql = incoming.sql, try !db.tableExists(incoming.tableName),
                  let table = try renamedHereTo(db, incoming), !config.plantedBugs.contains(.dependentKeptUnderOldTable) {
            // Made on a table renamed here before it arrived: it goes with the table, as SQLite moved it on the nodes
            // that had it first; they send the moved text. Kept under the old name, it outranked those texts whenever
            // the old name's generation was the higher, and never came here (harmonysim swarm seed 31). An index is
            // moved here at once, in that same text; a trigger (whose body may name the table anywhere) waits for it.
            stored.tableName = table
            stored.tableGeneration = try SchemaObjects.generation(ofTableOrView: table, db) ?? 0
            if incoming.type == "index", let moved = CreateIndexText.sql(sql, onTable: table) {
                stored.sql = moved
                (now, failure) = try attempt(db, stored)
            }
        }
        try SchemaObjects.store(db, stored, localSQL: now)
        if incoming.type == "table" && incoming.sql == nil && (incoming.renamed == nil || config.plantedBugs.contains(.dependentOfRenamedTableDropped)) {
            // Its indexes and triggers went with it, in the same version (a rename moved them; see `renamedHere`).
            // Not those made on a later generation of it, waiting here for that table's definition.
            let notLater = config.plantedBugs.contains(.dependentAheadOfItsTableDropped) ? "" : " AND (table_generation IS NULL OR table_generation <= ?4)"
            try db.execute("""
                UPDATE \(SchemaObjects.table) SET sql = NULL, local_sql = NULL, hlc = ?1, node = ?2
                WHERE type IN ('index', 'trigger') AND tbl_name = ?3 AND sql IS NOT NULL\(notLater)
                """, [.integer(incoming.version.hlc), .integer(incoming.version.node), .text(incoming.name), .integer(incoming.generation)])
        }
        if failure == nil, let local { try keepConcurrentDrops(db, winner: incoming, over: local.object) }
        if failure == nil, let renamedFrom { try keepConcurrentDrops(db, winner: incoming, over: renamedFrom, renamed: true) }
        if failure == nil, incoming.type == "table", incoming.sql == nil, let to = incoming.renamed, let local, local.object.sql != nil,
           incoming.basedOn != local.object.version, let target = try SchemaObjects.load(db, type: "table", name: to)?.object {
            // A rename's old half, merging this node's table into one the new name already has here (made here or
            // elsewhere meanwhile), after this node changed the old table: its DROP COLUMN is final against the rename
            // here too. Otherwise its merged rows keep the column empty while the renaming node sends them full at the
            // same versions, which this node skips (harmonysim swarm seed 208).
            try keepConcurrentDrops(db, winner: target, over: local.object, renamed: true)
        }
        if failure == nil, incoming.type == "table", incoming.sql != nil, let local, local.localSQL != nil, incoming.generation > local.object.generation {
            // The old table went, with its indexes and triggers; those the state still holds come back on the new one.
            for var dependent in try SchemaObjects.all(db).map(\.object)
            where dependent.isDependent && dependent.tableName == incoming.name && dependent.sql != nil {
                if let made = dependent.tableGeneration, made < incoming.generation, !config.plantedBugs.contains(.dependentOutlivesItsTable) {
                    dependent.sql = nil  // made on the old table; it went with it
                    try SchemaObjects.store(db, dependent, localSQL: nil)
                    continue
                }
                let remade = try attempt(db, dependent)
                if remade.failure == nil { try SchemaObjects.store(db, dependent, localSQL: remade.now) }
            }
        }
        if failure == nil { try retryUnappliedDefinitions(db) }
        // Side effects on other objects (a view that named a renamed table, rewritten by SQLite) are found by the
        // re-install as DDL of this node's and published: every node that saw the same side effect publishes the
        // same text, and a node that did not (the object was made elsewhere after the rename) receives it.
        try refreshCapture(afterOwnDDL: true)
        if waitsForItsTable, now != stored.sql {
            events.append(.schemaChangeWaiting(shard: shard, sequence: message.sequence, object: incoming.description, table: incoming.tableName))
        } else if let failure, now != stored.sql {
            events.append(.schemaChangeFailed(shard: shard, sequence: message.sequence, object: incoming.description, error: failure))
        } else {
            events.append(.schemaChangeApplied(shard: shard, sequence: message.sequence, object: incoming.description,
                                               dropped: stored.sql == nil, version: incoming.version))
        }
        return .consumed
    }

    /// A table renamed on another node onto a name that is another table here (made here meanwhile): its rows join
    /// that table by last-writer-wins, row versions and tombstones kept, which is what the renaming node does when
    /// this node's rows of that name reach it. Old -> new is recorded as an alias, so rows still sent to the old
    /// name follow. The merged table's rows are sent again under its name (see `ChangeCapture.sendRowsAgain`): the
    /// old table's unsent changes go with its change log. False when the two keys differ (nothing to merge by): the
    /// old table is then only dropped.
    func mergeRows(_ db: Database, from source: String, into target: String) throws -> Bool {
        guard let from = captured[source]?.schema, let into = captured[target], from.primaryKey == into.schema.primaryKey else { return false }
        let to = into.schema
        let q = quoteIdentifier
        let n = from.primaryKey.count
        let keyList = from.primaryKey.map { q(Bookkeeping.keyColumn($0)) }.joined(separator: ", ")
        let entries = try db.query("SELECT \(keyList), hlc, node, deleted FROM \(q(Bookkeeping.versionTable(source))) ORDER BY \(keyList)")
        let rowSQL = rowReadSQL(from).row
        // Columns the target knows under another name (a losing rename's names, merged into its state), and those
        // whose names share a past with one of the target's (the renaming node's own renames, which may never
        // have been sent: its new name took the target's definition first), keep their values.
        var names: [String: String] = [:]
        if !config.plantedBugs.contains(.mergeDropsRenamedColumns) {
            names = renames(of: target, into)
            let sourceRenames = try SchemaObjects.load(db, type: "table", name: source)?.object.columnRenames ?? captured[source]?.currentNameOf ?? [:]
            for (old, new) in SchemaObjects.sameColumns(from.columns, sourceRenames, as: to.columns, tableStates[target]?.columnRenames ?? [:])
            where names[old] == nil {
                names[old] = new
            }
        }
        for entry in entries {
            let keyValues = Array(entry.prefix(n))
            guard let hlc = entry[n].int64, let node = entry[n + 1].int64 else { continue }
            let key = zip(from.primaryKey, keyValues).map { ChangeRecord.Column($0, $1) }
            var record = ChangeRecord(originNode: node, table: target, operation: .delete, primaryKey: key, row: [],
                                      version: RowVersion(hlc: hlc, node: node), schemaHash: from.hash)
            if entry[n + 2].int64 != 1 {
                guard let values = try db.query(rowSQL, keyValues).first else { continue }
                record.operation = .upsert
                record.row = zip(from.columns, values).map { ChangeRecord.Column($0, $1) }
            }
            _ = try applyLWW(db, try resolve(record, against: to, strict: false, currentNameOf: names))
        }
        if !config.plantedBugs.contains(.renameKeepsRowsLocal) { try ChangeCapture.sendRowsAgain(db, to, epoch: into.epoch) }
        try ChangeCapture.recordAlias(db, old: source, current: target)
        if config.replicateDDL, !config.plantedBugs.contains(.lostRenameBeforeRenameTo),
           let state = try SchemaObjects.load(db, type: "table", name: target), state.object.sql != nil {
            // Rows still sent under the old name follow the alias here and resolve by the target's names: those the
            // merge just mapped go on mapping the same way (a column renamed on the old table and not on the target).
            var kept = state.object
            for (old, new) in names.sorted(by: { $0.key < $1.key }) where !to.columns.contains(old) && kept.columnRenames[old] == nil {
                kept.columnRenames[old] = new
            }
            try update(db, state, to: kept)
        }
        return true
    }

    /// DROP COLUMN is final against a concurrent ALTER of the table. Whole-table last-writer-wins alone would let a
    /// later concurrent ALTER bring back, empty, a column this node dropped (with its values) while nodes that
    /// never dropped it keep theirs. So a winning definition made without this node's (not based on it, or a CREATE
    /// of the same name made elsewhere, based on nothing) that has a column this node knew and no longer has is
    /// followed here by that column's DROP again, as this node's own DDL: it outranks the winner, and every node
    /// ends without the column. `renamed`: the winner is another node's RENAME TO of `local`'s table, which it replaces
    /// here (a rename that raced a DROP COLUMN brought the column back, empty here and with its values on the renaming
    /// node, and the two never agreed: harmonysim, `ddl.toml`).
    func keepConcurrentDrops(_ db: Database, winner: SchemaObject, over local: SchemaObject, renamed: Bool = false) throws {
        guard winner.type == "table", let winnerSQL = winner.sql, let localSQL = local.sql, renamed || winner.generation == local.generation,
              winner.basedOn != local.version, !config.plantedBugs.contains(.concurrentDropUndone) else { return }
        let q = quoteIdentifier
        let mine = Set(SchemaObjects.columnNames(localSQL))
        // A winner's column whose name, or any name it had (a concurrent rename of the dropped column), is gone here
        // without having been renamed here.
        let dropped = SchemaObjects.columnNames(winnerSQL).filter { column in
            !mine.contains(column) && SchemaObjects.lineage(of: column, winner.columnRenames).contains { name in
                local.knownColumns.contains(name) && !mine.contains(name) && local.columnRenames[name] == nil
            }
        }
        for column in dropped {
            try db.execute("SAVEPOINT harmonylite_redrop", [])
            do {
                // The user's indexes on the column go with it (SQLite refuses to drop an indexed column); their own
                // DROPs are published with this one.
                let indexes = try db.query("""
                    SELECT il.name FROM pragma_index_list(?1) AS il
                    WHERE il.origin = 'c' AND EXISTS (SELECT 1 FROM pragma_index_info(il.name) AS ii WHERE ii.name = ?2)
                    ORDER BY il.name
                    """, [.text(winner.name), .text(column)]).compactMap { $0[0].string }
                for index in indexes where !config.plantedBugs.contains(.redropBlockedByIndex) { try db.execute("DROP INDEX \(q(index))") }
                // SQLite re-checks every view on DROP COLUMN, so a view already broken (over a table dropped
                // elsewhere) would block the re-drop for good: it is set aside and made again, text unchanged.
                let broken = try brokenViews(db)
                for view in broken { try db.execute("DROP VIEW \(q(view.name))") }
                try db.execute("ALTER TABLE \(q(winner.name)) DROP COLUMN \(q(column))")
                for view in broken { try db.execute(view.sql) }
            } catch let error as SQLiteError where !error.isTransientStorageFailure {
                try db.execute("ROLLBACK TO harmonylite_redrop", [])  // a key column, or one a view or CHECK names: left as the winner has it
            }
            try db.execute("RELEASE harmonylite_redrop", [])
        }
    }

    /// Writes a table's changed state (its column names, as a losing ALTER or a merge left them) and keeps the
    /// in-memory copy rows are resolved by in step; nothing when nothing changed.
    func update(_ db: Database, _ state: (id: Int64, object: SchemaObject, localSQL: String?), to updated: SchemaObject) throws {
        guard updated != state.object else { return }
        try SchemaObjects.store(db, updated, localSQL: state.localSQL)
        tableStates[updated.name] = try SchemaObjects.load(db, type: "table", name: updated.name)?.object
    }

    /// The indexes this node has on a table whose rename's old half is about to merge it into a table the new name
    /// already has here (made here or elsewhere meanwhile). SQLite's DROP of the old table takes them along, where
    /// every node that gets them later moves them onto the new name (`renamedHereTo`); this node's drop, ranked under
    /// the old table's generation, never outranks those moves (harmonysim swarm seeds 435 and 475).
    func indexesFollowingAMerge(_ db: Database, _ incoming: SchemaObject) throws -> [SchemaObject] {
        guard incoming.type == "table", incoming.sql == nil, let to = incoming.renamed, !config.plantedBugs.contains(.mergedRenameDropsIndex),
              try db.tableExists(incoming.name), try db.tableExists(to) else { return [] }
        return try SchemaObjects.all(db).filter { entry in
            entry.object.type == "index" && entry.object.tableName == incoming.name && entry.object.sql != nil
                && entry.localSQL == entry.object.sql && (entry.object.tableGeneration ?? 0) == incoming.generation
        }.map(\.object)
    }

    /// Makes each index again on `table`, in the text SQLite's RENAME TO would have given it, under its own version:
    /// what the nodes that receive it after the rename make of it.
    func move(_ indexes: [SchemaObject], onto table: String, _ db: Database) throws {
        guard !indexes.isEmpty else { return }
        let generation = try SchemaObjects.generation(ofTableOrView: table, db) ?? 0
        for index in indexes {
            guard let sql = index.sql, let moved = CreateIndexText.sql(sql, onTable: table) else { continue }
            var stored = index
            stored.tableName = table
            stored.tableGeneration = generation
            stored.sql = moved
            try SchemaObjects.store(db, stored, localSQL: try attempt(db, stored).now)
        }
    }

    /// True when an index or trigger was made on an older generation of its table than the one this node has: that
    /// table was dropped and made again since, and the dependent went with it, as on the nodes that had it.
    func madeOnATableDroppedSince(_ db: Database, _ dependent: SchemaObject) throws -> Bool {
        guard dependent.isDependent, let made = dependent.tableGeneration, !config.plantedBugs.contains(.dependentOutlivesItsTable),
              let current = try SchemaObjects.generation(ofTableOrView: dependent.tableName, db) else { return false }
        return made < current
    }

    /// True when an index or trigger was made on a generation of its table newer than any this node has had, or on a
    /// table this node has no state for: that table's definition has not arrived (DDL found further on the stream
    /// and applied ahead of it, behind a held-back row; a pre-existing copy sent before the table is asked for), so
    /// failing to make the dependent here says nothing about a drop. Recording it as gone would lose it for good once
    /// the table arrives, since the dependent's version no longer outranks itself.
    func madeOnATableNotHereYet(_ db: Database, _ dependent: SchemaObject) throws -> Bool {
        guard !config.plantedBugs.contains(.dependentAheadOfItsTableDropped) else { return false }
        guard let current = try SchemaObjects.generation(ofTableOrView: dependent.tableName, db) else { return true }
        return (dependent.tableGeneration ?? 0) > current
    }

    /// Whether an index or trigger was made on a table this node has since renamed (not dropped): on the nodes that
    /// made it, that rename moves it onto the new name, and each publishes the moved text as its own DDL, which
    /// lands here. Until then it waits unapplied; taking it for dropped would outrank the moved text for good.
    func renamedHere(_ db: Database, _ dependent: SchemaObject) throws -> Bool {
        guard !config.plantedBugs.contains(.dependentOfRenamedTableDropped) else { return false }
        return try renamedHereTo(db, dependent) != nil
    }

    /// The name the dependent's table (the generation it was made on) has here since a RENAME TO, if it has one.
    func renamedHereTo(_ db: Database, _ dependent: SchemaObject) throws -> String? {
        guard let table = try SchemaObjects.load(db, type: "table", name: dependent.tableName)?.object,
              table.sql == nil, let now = table.renamed, table.generation == dependent.tableGeneration ?? 0 else { return nil }
        guard try db.tableExists(now) else { return nil }
        // The table the rename (or a rename's merge) filled must still be the one there: dropped since, it took the
        // dependent with it, as on the nodes that moved it before the drop; one made again under the name is another
        // table (harmonysim swarm seed 805: an index came after its table was renamed, dropped and made again).
        if let alias = try ChangeCapture.tableAliases(db)[dependent.tableName], alias.current == now,
           alias.filledTableIsGone(currentGeneration: try SchemaObjects.generation(ofTableOrView: now, db)),
           !config.plantedBugs.contains(.dependentFollowsToRemadeTable) {
            return nil
        }
        return now
    }

    /// Views that cannot be read now (they name a table or column that is gone), in name order.
    func brokenViews(_ db: Database) throws -> [(name: String, sql: String)] {
        guard !config.plantedBugs.contains(.redropBlockedByBrokenView) else { return [] }
        let views = try db.query("SELECT name, sql FROM sqlite_schema WHERE type = 'view' AND sql IS NOT NULL ORDER BY name")
            .compactMap { row in row[0].string.flatMap { name in row[1].string.map { (name: name, sql: $0) } } }
        return try views.filter { view in
            do {
                _ = try db.query("SELECT * FROM \(quoteIdentifier(view.name)) LIMIT 0")
                return false
            } catch let error as SQLiteError where !error.isTransientStorageFailure {
                return true
            }
        }
    }

    /// Objects whose replicated definition this node could not take (SQLite refused it here): `type "name"` each, in
    /// name order. Empty when this node's schema is the cluster's. Those waiting for their table are not among them.
    public func divergedSchemaObjects() throws -> [String] {
        try unappliedSchemaObjects().filter { !$0.waitsForTable }.map(\.description)
    }

    /// Indexes and triggers made on a table whose definition has not arrived here: `type "name" on "table"` each.
    public func schemaObjectsWaitingForTheirTable() throws -> [String] {
        try unappliedSchemaObjects().filter(\.waitsForTable).map { "\($0.description) on \(quoteIdentifier($0.table))" }
    }

    private func unappliedSchemaObjects() throws -> [(description: String, table: String, waitsForTable: Bool)] {
        let db = requireDatabase()
        guard config.replicateDDL, try db.tableExists(Bookkeeping.ddlTable) else { return [] }
        return try db.query("SELECT \(SchemaObjects.columns) FROM \(SchemaObjects.table) WHERE sql IS NOT local_sql ORDER BY name, type")
            .map(SchemaObjects.object).map { entry in
                let o = entry.object
                let waits = o.isDependent && o.sql != nil && entry.localSQL == nil ? try madeOnATableNotHereYet(db, o) : false
                return (o.description, o.tableName, waits)
            }
    }

    /// Objects whose winning definition SQLite refused earlier (an index that arrived before its table's rename, a
    /// view over a table not here yet) are tried again after each schema change applied here.
    func retryUnappliedDefinitions(_ db: Database) throws {
        let unapplied = try db.query("""
            SELECT \(SchemaObjects.columns) FROM \(SchemaObjects.table)
            WHERE sql IS NOT NULL AND local_sql IS NOT sql ORDER BY CASE type WHEN 'table' THEN 0 ELSE 1 END, id
            """).map(SchemaObjects.object)
        for entry in unapplied {
            if try madeOnATableDroppedSince(db, entry.object) {
                // It waited for a table that was dropped and made again since: it went with that table.
                var gone = entry.object
                gone.sql = nil
                try SchemaObjects.store(db, gone, localSQL: nil)
                continue
            }
            let (now, failure) = try attempt(db, entry.object)
            if failure == nil { try SchemaObjects.store(db, entry.object, localSQL: now) }
        }
    }

    /// DDL the application ran here may be what an unapplied definition waited for (the table an index was made on,
    /// created by hand as /health advises): they are tried again, as after another node's DDL. True when one was made.
    func retryUnappliedAfterLocalDDL(_ db: Database) throws -> Bool {
        guard try db.tableExists(Bookkeeping.ddlTable),
              try (db.scalar("SELECT count(*) FROM \(SchemaObjects.table) WHERE sql IS NOT NULL AND local_sql IS NOT sql")?.int64 ?? 0) > 0
        else { return false }
        let before = try db.scalar("PRAGMA schema_version")?.int64
        if db.isInTransaction {
            try retryUnappliedDefinitions(db)
        } else {
            try writeTransaction(db) { try retryUnappliedDefinitions(db) }
        }
        return try db.scalar("PRAGMA schema_version")?.int64 != before
    }

    /// Runs one definition inside a savepoint (undone if SQLite refuses it); returns the object's `sqlite_schema`
    /// text afterwards and SQLite's reason when it refused. A busy, full or failing disk is not a refusal: it
    /// fails the whole apply, which is retried.
    func attempt(_ db: Database, _ o: SchemaObject) throws -> (now: String?, failure: String?) {
        if o.type == "index", !config.plantedBugs.contains(.outrankedIndexKept),
           let existing = try SchemaObjects.currentSQL(db, type: "index", name: o.name), existing != o.sql {
            // The index this definition outranks goes even when SQLite refuses the definition here (a column of
            // it unknown here): kept, this node alone would have an index the cluster's definition replaced, and
            // would go on publishing it as its own DDL (harmonysim swarm seed 475).
            try db.execute("DROP INDEX \(quoteIdentifier(o.name))")
        }
        try db.execute("SAVEPOINT harmonylite_ddl", [])
        var failure: String?
        do {
            try execute(db, o)
        } catch let error as SQLiteError where error.isTransientStorageFailure && !config.plantedBugs.contains(.ddlStorageFailureIsRefusal) {
            throw error
        } catch {
            try db.execute("ROLLBACK TO harmonylite_ddl", [])
            failure = (error as? SQLiteError)?.message ?? "\(error)"
        }
        try db.execute("RELEASE harmonylite_ddl", [])
        let now = try SchemaObjects.currentSQL(db, type: o.type, name: o.name)
        return (now, failure)
    }

    /// Makes this database's object match `o`'s definition exactly (`sqlite_schema` text included).
    ///
    /// First as the application's connection ran it: SQLite rewrites the views and trigger bodies that name a renamed
    /// table or column, as it did on the node that ran the DDL. A side effect this node records as its own DDL then
    /// has the text the author sent; left as it was, a trigger that names its own table would keep the old name in
    /// its body, and that later text would win on every node, breaking the trigger and every later rename.
    /// If SQLite refuses (one view broken here, naming a table another node dropped, makes every ALTER fail the
    /// schema check), again with `legacy_alter_table` on: SQLite then neither rewrites nor re-checks views and trigger
    /// bodies elsewhere in the schema. The node that ran the DDL publishes what it did to its views and triggers;
    /// those arrive as their own changes.
    func execute(_ db: Database, _ o: SchemaObject) throws {
        if !config.plantedBugs.contains(.appliedRenameKeepsBodies) {
            try db.execute("SAVEPOINT harmonylite_rewrite", [])
            do {
                try executeDefinition(db, o)
                try db.execute("RELEASE harmonylite_rewrite", [])
                return
            } catch let error as SQLiteError where error.isTransientStorageFailure {
                throw error
            } catch {
                try db.execute("ROLLBACK TO harmonylite_rewrite", [])
                try db.execute("RELEASE harmonylite_rewrite", [])
            }
        }
        try db.execute("PRAGMA legacy_alter_table = ON")
        defer { try? db.execute("PRAGMA legacy_alter_table = OFF") }
        try executeDefinition(db, o)
    }

    func executeDefinition(_ db: Database, _ o: SchemaObject) throws {
        let q = quoteIdentifier
        var existing = try SchemaObjects.currentSQL(db, type: o.type, name: o.name)
        if existing != nil, let before = try SchemaObjects.load(db, type: o.type, name: o.name)?.object, o.generation > before.generation,
           !config.plantedBugs.contains(.generationJumpKeepsRows) {
            // Dropped and made again elsewhere, the DROP superseded before it was sent: this one goes first, rows and all.
            try db.execute("DROP \(o.type.uppercased()) \(q(o.name))")
            if o.type == "table" { try ChangeCapture.forgetChangeLog(db, o.name) }
            existing = nil
        }
        guard let sql = o.sql else {
            if o.type == "table", let to = o.renamed, existing != nil, try !db.tableExists(to) {
                try db.execute("ALTER TABLE \(q(o.name)) RENAME TO \(q(to))")  // the rename's other half may not be here yet
            } else if existing != nil {
                if o.type == "table", let to = o.renamed, !config.plantedBugs.contains(.renameOntoTableDropsRows) {
                    _ = try mergeRows(db, from: o.name, into: to)
                }
                try db.execute("DROP \(o.type.uppercased()) \(q(o.name))")
            }
            return
        }
        if existing == sql { return }
        guard o.type == "table" else {
            if existing != nil { try db.execute("DROP \(o.type.uppercased()) \(q(o.name))") }
            try createIndexOrView(db, o, sql)
            return
        }
        // The names this node's own renames gave the columns (a concurrent rename that lost is undone, not dropped).
        var localName = o.name
        if existing == nil {
            if let from = o.renamed, try db.tableExists(from) {
                try db.execute("ALTER TABLE \(q(from)) RENAME TO \(q(o.name))")
                localName = from
            } else {
                try db.execute(sql)
                return
            }
        }
        let localRenames = try SchemaObjects.load(db, type: "table", name: localName)?.object.columnRenames ?? captured[localName]?.currentNameOf ?? [:]
        try transformTable(db, o.name, to: sql, columnRenames: o.columnRenames, localRenames: localRenames)
    }

    /// SQLite reads a double-quoted name that matches no column as a string. An index or view made elsewhere on a
    /// column this node has dropped (a concurrent DROP COLUMN) would then index or select a constant here, and SQLite
    /// would refuse every later DROP COLUMN on this database ("error in index ... after drop column"). So such a name
    /// fails the definition, which waits like any refused one. A name the table never had is the author's string.
    func createIndexOrView(_ db: Database, _ o: SchemaObject, _ sql: String) throws {
        guard o.type == "index" || o.type == "view" else { return try db.execute(sql) }
        try executeRefusingDroppedColumns(db, sql, table: o.type == "index" ? o.tableName : nil)
    }

    /// Runs an index, view or trigger text with double-quoted names read as names only, unless the name that does not
    /// resolve was never a column of `table` (of any table when nil): then it is the author's string, read as one.
    func executeRefusingDroppedColumns(_ db: Database, _ sql: String, table: String?) throws {
        guard !config.plantedBugs.contains(.dependentOnDroppedColumnAsString) else { return try db.execute(sql) }
        do {
            try db.withDoubleQuotedStringsInDDL(false) { try db.execute(sql) }
        } catch let error as SQLiteError where error.message.hasPrefix("no such column: ") {
            let name = String(error.message.dropFirst("no such column: ".count).split(separator: ".").last ?? "")
            let tables = try SchemaObjects.tableStates(db).filter { table == nil || $0.key == table }
            if tables.values.contains(where: { $0.knownColumns.contains(name) }) { throw error }
            try db.execute(sql)
        }
    }

    /// The ALTERs that turn the local table into the target, as the node that changed it ran them: renamed columns,
    /// dropped columns, then added ones with their definition text cut from the target (SQLite edits the CREATE text
    /// the same way on every node). If the result is not the target's exact text, the table is rebuilt.
    /// `localRenames`: old -> current names of this node's columns; a column renamed here to another name than the
    /// target's (a concurrent rename) is renamed to the target's name, its values kept.
    func transformTable(_ db: Database, _ table: String, to target: String, columnRenames: [String: String],
                        localRenames: [String: String] = [:]) throws {
        let q = quoteIdentifier
        func localSQL() throws -> String? { try SchemaObjects.currentSQL(db, type: "table", name: table) }
        if try localSQL() == target { return }
        let definitions = CreateTableText.columnDefinitions(target)
        let before = try db.query("SELECT name FROM pragma_table_info(?)", [.text(table)]).compactMap { $0[0].string }
        var copyAs = columnRenames
        if let wanted = definitions?.map(\.name), !config.plantedBugs.contains(.lostRenameDropsColumn) {
            copyAs.merge(SchemaObjects.sameColumns(before, localRenames, as: wanted, columnRenames)) { theirs, _ in theirs }
        }
        if let definitions {
            try db.execute("SAVEPOINT harmonylite_alter", [])
            do {
                let wanted = definitions.map(\.name)
                var local = before
                for old in copyAs.keys.sorted() {
                    let new = copyAs[old]!
                    guard local.contains(old), !local.contains(new), wanted.contains(new), !wanted.contains(old) else { continue }
                    try db.execute("ALTER TABLE \(q(table)) RENAME COLUMN \(q(old)) TO \(q(new))")
                    local = local.map { $0 == old ? new : $0 }
                }
                for column in local where !wanted.contains(column) {
                    try db.execute("ALTER TABLE \(q(table)) DROP COLUMN \(q(column))")
                }
                for d in definitions where !local.contains(d.name) {
                    try db.execute("ALTER TABLE \(q(table)) ADD COLUMN \(d.text)")
                }
                if try localSQL() == target {
                    try db.execute("RELEASE harmonylite_alter", [])
                    return
                }
            } catch let error as SQLiteError where !error.isTransientStorageFailure {
                // A column SQLite cannot drop or add this way (indexed, a key, NOT NULL without default): rebuild.
            }
            try db.execute("ROLLBACK TO harmonylite_alter", [])
            try db.execute("RELEASE harmonylite_alter", [])
        }
        if config.plantedBugs.contains(.ddlWithoutRebuild) { return }
        try rebuildTable(db, table, as: target, columnRenames: copyAs)
    }

    /// Creates the table anew from the target's exact text and copies the rows across (columns with the same name,
    /// after renames). Its indexes and triggers are made again where they still fit; their own replicated state
    /// decides the rest. Versions and tombstones stay: they live in the version table, keyed like the rows.
    func rebuildTable(_ db: Database, _ table: String, as target: String, columnRenames: [String: String]) throws {
        let q = quoteIdentifier
        let aside = Bookkeeping.prefix + "_rebuild"
        if !config.plantedBugs.contains(.rebuildRemakesDependentsByOldNames), let wanted = CreateTableText.columnDefinitions(target)?.map(\.name) {
            // Renamed columns are renamed in place first: SQLite then rewrites the table's indexes and triggers to
            // the new names, so they are remade below on the columns they were made on. Remade from their old text,
            // an index on a renamed column would index the old name as a string constant (or not be made at all).
            var present = try db.query("SELECT name FROM pragma_table_xinfo(?) WHERE hidden = 0", [.text(table)]).compactMap { $0[0].string }
            for old in columnRenames.keys.sorted() {
                let new = columnRenames[old]!
                guard present.contains(old), !present.contains(new), wanted.contains(new), !wanted.contains(old) else { continue }
                try db.execute("SAVEPOINT harmonylite_rename", [])
                do {
                    try db.execute("ALTER TABLE \(q(table)) RENAME COLUMN \(q(old)) TO \(q(new))")
                    present = present.map { $0 == old ? new : $0 }
                } catch let error as SQLiteError where !error.isTransientStorageFailure {
                    try db.execute("ROLLBACK TO harmonylite_rename", [])  // copied under the old name below instead
                }
                try db.execute("RELEASE harmonylite_rename", [])
            }
        }
        let dependents = try db.query("""
            SELECT sql FROM sqlite_schema WHERE tbl_name = ? AND type IN ('index', 'trigger') AND sql IS NOT NULL
            AND substr(name, 1, ?) <> ? ORDER BY type, name
            """, [.text(table), .integer(Int64(Bookkeeping.prefix.utf8.count)), .text(Bookkeeping.prefix)]).compactMap { $0[0].string }
        let oldColumns = try db.query("SELECT name FROM pragma_table_xinfo(?) WHERE hidden = 0", [.text(table)]).compactMap { $0[0].string }
        // (Under legacy_alter_table, see `execute`: views and triggers elsewhere keep naming the table.)
        try db.execute("ALTER TABLE \(q(table)) RENAME TO \(q(aside))")
        try db.execute(target)
        let newColumns = Set(try db.query("SELECT name FROM pragma_table_xinfo(?) WHERE hidden = 0", [.text(table)]).compactMap { $0[0].string })
        let copied = oldColumns.compactMap { old -> (String, String)? in
            let new = columnRenames[old] ?? old
            return newColumns.contains(new) ? (old, new) : nil
        }
        let dropped = oldColumns.filter { !newColumns.contains(columnRenames[$0] ?? $0) }
        if !dropped.isEmpty {
            let holding = dropped.map { "\(q($0)) IS NOT NULL" }.joined(separator: " OR ")
            let rows = try db.scalar("SELECT count(*) FROM \(q(aside)) WHERE \(holding)")?.int64 ?? 0
            if rows > 0 { env.events?.record(.definitionDroppedValues(table: table, columns: dropped, rows: rows)) }
        }
        if !copied.isEmpty {
            try db.execute("INSERT INTO \(q(table)) (\(copied.map { q($0.1) }.joined(separator: ", "))) SELECT \(copied.map { q($0.0) }.joined(separator: ", ")) FROM \(q(aside))")
        }
        try db.execute("DROP TABLE \(q(aside))")
        for sql in dependents {
            try db.execute("SAVEPOINT harmonylite_dependent", [])
            do {
                try executeRefusingDroppedColumns(db, sql, table: table)
            } catch let error as SQLiteError where !error.isTransientStorageFailure {
                try db.execute("ROLLBACK TO harmonylite_dependent", [])  // no longer fits the table: its own state decides
            }
            try db.execute("RELEASE harmonylite_dependent", [])
        }
    }

    /// With replicated DDL, where a row written under another definition of its table stands. `.current`: apply as
    /// usual. `.older`: written under a definition this node has since replaced (a later ALTER, or one that won a
    /// race): apply, leaving out columns the table no longer has. `.newer`: its definition has not reached this node
    /// yet; wait for it. `.gone`: the table it was written to was dropped (an earlier generation, or this one dropped): discard.
    enum DefinitionStanding { case current, older, newer, gone }

    func standing(of record: ChangeRecord, in table: String) -> DefinitionStanding {
        guard config.replicateDDL, let theirs = record.definition, let ours = tableStates[table] else { return .current }
        if theirs.generation < ours.generation { return .gone }
        if theirs.generation > ours.generation { return .newer }
        if ours.sql == nil { return .gone }
        if theirs.version == ours.version { return .current }
        if config.plantedBugs.contains(.applyNewerDefinitionStripped) { return .older }
        return theirs.version < ours.version ? .older : .newer
    }
}
