import ArgumentParser
import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonySQLite

extension Calibrate {
    /// What each table a look's writes name costs beyond the first, on the node that stamps and sends them and on a
    /// node that applies them. A stamp runs its statements per table (the change log's insert, the version table's,
    /// the epochs), publishing reads each table's rows with that table's statements, and an apply transaction
    /// touches each table's B-trees: the per-change figures, measured on one table, leave all of that out.
    ///
    /// Looks of `writes` single-row commits, once all on one table and once one on each of `tables` tables, with
    /// node 2 applying each look's message as it comes; the difference per look, over the extra tables.
    func measureTables(tables: Int = 20, writes: Int = 20, looks: Int = 200) throws -> [String: Double] {
        precondition(tables > 1 && writes >= tables, "a look that names every table")
        var one = try tableLooks(tables: 1, writes: writes, looks: looks)
        var many = try tableLooks(tables: tables, writes: writes, looks: looks)
        // Once more in the other order: what the machine does meanwhile weighs on both alike.
        many = many.adding(try tableLooks(tables: tables, writes: writes, looks: looks))
        one = one.adding(try tableLooks(tables: 1, writes: writes, looks: looks))
        let extra = Double(tables - 1) * Double(one.looks)
        return [
            "stamp_table_us": max(0, (many.senderUs - one.senderUs) / extra),
            "apply_table_us": max(0, (many.receiverUs - one.receiverUs) / extra),
        ]
    }

    /// CPU time of `looks` looks on the sending node (stamp, read, encode, mark published) and of their applies on
    /// the receiving one.
    struct TableLooks {
        var looks = 0
        var senderUs = 0.0, receiverUs = 0.0

        func adding(_ other: TableLooks) -> TableLooks {
            TableLooks(looks: looks + other.looks, senderUs: senderUs + other.senderUs, receiverUs: receiverUs + other.receiverUs)
        }
    }

    func tableLooks(tables: Int, writes: Int, looks: Int) throws -> TableLooks {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("calibrate-tables-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let names = BenchTables.names(tables)
        let cores = try CalibrationCores(2, in: directory, schema: BenchTables.schema(tables))
        defer { cores.stop() }
        let (nodes, logs) = (cores.nodes, cores.logs)
        let app = try SQLiteOpener().open(path: "\(directory)/node1.db")
        let inserts = try names.map { try app.prepare("INSERT INTO \(quoteIdentifier($0)) (id, v) VALUES (?, ?)") }
        var sender = Spent(), receiver = Spent()
        var sequence: UInt64 = 0, id: Int64 = 0
        for _ in 0..<looks {
            for w in 0..<writes {
                id += 1
                try inserts[w % tables].execute([.integer(id), .text("value-\(id)")])
            }
            let sent = try sender.time {
                try nodes[0].databaseChanged()
                let sent = logs[0].take()
                try nodes[0].publishAcknowledged(tokens: sent.map(\.token))
                return sent
            }
            let delivered = sent.map { m -> IncomingMessage in
                sequence += 1
                return IncomingMessage(sequence: sequence, payload: m.payload)
            }
            try receiver.time { try nodes[1].messagesArrived(shard: 1, delivered) }
        }
        let applier = try SQLiteOpener().open(path: "\(directory)/node2.db")
        let applied = try names.reduce(0) { total, table in
            total + (try applier.scalar("SELECT count(*) FROM \(quoteIdentifier(table))")?.int64 ?? 0)
        }
        guard applied == id else { throw ValidationError("node 2 applied \(applied) of \(id) rows over \(tables) tables") }
        return TableLooks(looks: looks, senderUs: sender.cpuUs, receiverUs: receiver.cpuUs)
    }
}
