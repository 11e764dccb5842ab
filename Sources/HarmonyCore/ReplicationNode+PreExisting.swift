import HarmonyCodec
import HarmonySQLite

/// Objects that existed before a node's first install are recorded at version zero: every node is expected to have
/// its own copy (the seeds' rule: the same schema everywhere before replicating). Views, indexes and triggers go out
/// once at that install (see `SchemaObjects.detect`); tables are sent only on request. When one node's
/// application made a table the others never had (before that node's sidecar first ran, while the others already
/// replicated), its rows would wait for good elsewhere. A node that receives such rows asks every node for their
/// pre-existing definitions; each answers by sending its own at version zero, which fill gaps and lose to every
/// recorded state.
extension ReplicationNode {
    static let definitionRequestSchemaHash = "definition-request-1"
    /// How long a node waits for an answer before asking again (a lost request, a crash of the one node that had it).
    static let preExistingAskAgainMs: Int64 = 30_000

    /// Inside the apply transaction (outside any message's savepoint), for a row of `table` that this node has no
    /// table or schema state for, written under a pre-existing definition (version zero) on its node.
    func requestPreExistingDefinitions(_ db: Database, table: String, shard: Int, sequence: UInt64, events: inout [ReplicationEvent]) throws {
        let now = env.clock.nowMs
        if let asked = preExistingDefinitionsAskedAt[table], now - asked < Self.preExistingAskAgainMs { return }
        preExistingDefinitionsAskedAt[table] = now
        try queueRequest(db, Bookkeeping.definitionRequest)
        events.append(.preExistingDefinitionsAsked(shard: shard, sequence: sequence, table: table))
    }

    /// Another node asked: queue every pre-existing object this node still has, tables first, inside the apply
    /// transaction. Nodes that have them already keep theirs (version zero never outranks a recorded state).
    func applyDefinitionRequest(_ db: Database, shard: Int, _ message: IncomingMessage, _ record: ChangeRecord,
                                events: inout [ReplicationEvent]) throws -> ApplyOutcome {
        guard record.originNode != config.nodeID, config.replicateDDL, !config.plantedBugs.contains(.preExistingNeverSent),
              try db.tableExists(Bookkeeping.ddlTable) else { return .consumed }
        // Queued as `sendEverythingAgain` queues every recorded definition, here only those of version zero.
        try db.execute("""
            INSERT INTO \(quoteIdentifier(Bookkeeping.globalLog)) (change_table_id, table_name)
            SELECT id, ? FROM \(SchemaObjects.table) WHERE hlc = 0 AND node = 0 AND sql IS NOT NULL
            ORDER BY \(SchemaObjects.madeInDependencyOrder)
            """, [.text(Bookkeeping.ddlTable)])
        let queued = Int(try db.scalar("SELECT changes()")?.int64 ?? 0)
        if queued > 0 { definitionsToPublish = true }
        events.append(.preExistingDefinitionsSent(shard: shard, sequence: message.sequence, by: record.originNode, count: queued))
        return .consumed
    }

    /// A shard held back on rows of a table no node has sent a CREATE for: the answer to this node's request comes
    /// on the same stream, behind the held-back message. Definitions found further on of objects this node has no
    /// state for at all apply now: pre-existing ones (version zero), and a later ALTER of a pre-existing table by
    /// its node (which then no longer answers with it at version zero). Per-object ranking makes the order in which
    /// definitions apply irrelevant, so applying them early changes nothing else, and again in order is a no-op.
    /// Only looked for while a request is unanswered: it decodes each message behind the held-back one.
    func applyDefinitionsAhead(_ db: Database, shard: Int, _ message: IncomingMessage,
                                          events: inout [ReplicationEvent]) throws -> Bool {
        guard config.replicateDDL, !EnvelopeCodec.isPart(message.payload),
              let records = try? EnvelopeCodec.decodeAll(message.payload, decompressedLimit: messageBytesAccepted), !records.isEmpty,
              records.allSatisfy({ $0.table == Bookkeeping.ddlTable }),
              !config.plantedBugs.contains(.definitionsAheadOnlyVersionZero) || records.allSatisfy({ $0.version == .zero }),
              let objects = try? records.map(Self.schemaObject) else { return false }
        var applied = false
        for (record, object) in zip(records, objects) where try SchemaObjects.load(db, type: object.type, name: object.name) == nil {
            _ = try applyDefinition(db, shard: shard, message, record, events: &events)
            applied = true
        }
        return applied  // (the capture refresh that applying runs forgets the tables asked for that are here now)
    }
}
