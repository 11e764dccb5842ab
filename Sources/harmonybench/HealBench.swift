import ArgumentParser
import Foundation
import HarmonyRuntime
import HarmonySQLite

/// How long a live 3-node cluster takes to converge once a node cut off from NATS gets its connection back: the
/// figure `harmonysim bench scenarios/capacity/partition-heal.toml` predicts, measured on real processes.
struct HealBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "heal",
        abstract: "Cut node 3 off from NATS while every node writes, heal, and time until every node holds the same rows.")

    @Option(help: "Shard counts, comma-separated.") var shards = "1,2,4,8"
    @Option(help: "Runs per shard count.") var rounds = 1
    @Option(help: "Seconds of writing before the cut.") var cutAt = 2.0
    @Option(help: "Seconds node 3 stays cut off; writes stop when it heals.") var cutFor = 10.0
    @Option(help: "Keys the writers share (each write an upsert of a random one).") var keys = 2_000
    @Option(help: "Path to the harmonylite binary.") var binary = ".build/release/harmonylite"
    @Option(help: "Report path prefix (Markdown and JSON).") var report: String?

    struct Run {
        var shards: Int
        var writes: Int
        /// Nil when the nodes were still not equal 120 s after the heal (`note` says what was seen).
        var convergedMs: Double?
        var note = ""
        /// At the heal: node 1's current rows that node 3 did not have yet, and node 3's that node 1 did not.
        var apartAtHeal: (intoCutNode: Int64, fromCutNode: Int64)
    }

    func run() throws {
        let counts = shards.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        var runs: [Run] = []
        for n in counts {
            for _ in 0..<rounds {
                let r = try measure(shards: n)
                print("shards \(n): \(r.writes) writes; at the heal node 3 lacked \(r.apartAtHeal.intoCutNode) of node 1's rows and node 1 \(r.apartAtHeal.fromCutNode) of node 3's; " + (r.convergedMs.map { "every node equal \(String(format: "%.0f", $0)) ms after the heal" } ?? r.note))
                runs.append(r)
            }
        }
        let rows = counts.map { n -> String in
            let mine = runs.filter { $0.shards == n }
            return "| \(n) | \(mine.map { $0.convergedMs.map { String(format: "%.0f ms", $0) } ?? "not in 120 s: \($0.note)" }.joined(separator: ", ")) | \(mine.map { String($0.writes) }.joined(separator: ", ")) | \(mine.map { "\($0.apartAtHeal.intoCutNode) / \($0.apartAtHeal.fromCutNode)" }.joined(separator: ", ")) |"
        }
        let text = """
            # Convergence after a partition heals, live

            Command: `swift build -c release && .build/release/harmonybench heal --shards \(shards) --rounds \(rounds)`
            Machine: \(machineDescription()); SQLite \(sqliteVersion()); one nats-server and 3 harmonylite processes on it.
            Workload (the shape of `scenarios/capacity/partition-heal.toml`): every node upserts a random key of \(keys) every
            10-25 ms. Node 3 reaches nats-server through a TCP relay, which is cut after \(cutAt) s (its connections closed,
            new ones closed on arrival) and healed \(cutFor) s later; the writes stop at the heal. Converged: from the heal
            until all three databases hold the same rows, checked every 50 ms.

            | shards | every node equal after the heal | writes | rows apart at the heal (node 1's missing on node 3 / node 3's missing on node 1) |
            |---|---|---|---|
            \(rows.joined(separator: "\n"))

            """
        print(text)
        if let report {
            try text.write(toFile: report + ".md", atomically: true, encoding: .utf8)
            let json = runs.map { #"{"shards": \#($0.shards), "writes": \#($0.writes), "converged_after_heal_ms": \#($0.convergedMs.map { String(Int($0)) } ?? "null"), "apart_into_cut_node": \#($0.apartAtHeal.intoCutNode), "apart_from_cut_node": \#($0.apartAtHeal.fromCutNode)}"# }
            try ("[" + json.joined(separator: ",\n ") + "]\n").write(toFile: report + ".json", atomically: true, encoding: .utf8)
        }
    }

    func measure(shards: Int) throws -> Run {
        let cluster = try BenchCluster(nodes: 3, shards: shards, schema: "CREATE TABLE kv (id INTEGER PRIMARY KEY, v TEXT NOT NULL);",
                                       binary: binary, relayed: [3])
        defer { cluster.stop() }
        let writers = BenchWriters(cluster: cluster, nodes: [1, 2, 3], keys: keys, intervalSeconds: 0.010...0.025)
        Thread.sleep(forTimeInterval: cutAt)
        cluster.relays[3]!.setCut(true)
        Thread.sleep(forTimeInterval: cutFor)
        try writers.stop()  // the writes stop at the heal
        let check = try BenchReaders(cluster: cluster, nodes: 1...3)
        let readers = check.databases
        // The cut must have kept node 3 apart: it lacks what the others wrote meanwhile, and they lack its writes.
        let missing = try readers[2].scalar("SELECT count(*) FROM kv WHERE v LIKE 'n1w%'")?.int64 ?? 0
        let present = try readers[0].scalar("SELECT count(*) FROM kv WHERE v LIKE 'n1w%'")?.int64 ?? 0
        let ownOnly = try readers[2].scalar("SELECT count(*) FROM kv WHERE v LIKE 'n3w%'")?.int64 ?? 0
        let ownSeen = try readers[0].scalar("SELECT count(*) FROM kv WHERE v LIKE 'n3w%'")?.int64 ?? 0
        guard missing < present, ownSeen < ownOnly else {
            throw ValidationError("the cut did not separate node 3 (node 1's rows: \(present) on node 1, \(missing) on node 3; node 3's: \(ownOnly) on node 3, \(ownSeen) on node 1)")
        }
        cluster.relays[3]!.setCut(false)
        let healed = Date()
        do {
            try waitFor(seconds: 120, "every node to hold the same rows after the heal") { try check.allEqual }
        } catch {
            // What differs, to tell a slow heal from one that never comes.
            let differing = try check.differing(from: 2)
            let dead = cluster.processes.enumerated().filter { !$0.element.isRunning }.map { "node \($0.offset + 1)" }
            cluster.keep = true
            let note = "\(differing) keys differ between nodes 1 and 3; " + (dead.isEmpty ? "every node still running"
                : "\(dead.joined(separator: ", ")) exited (logs in \(cluster.directory))")
            return Run(shards: shards, writes: writers.written, convergedMs: nil, note: note,
                       apartAtHeal: (present - missing, ownOnly - ownSeen))
        }
        return Run(shards: shards, writes: writers.written, convergedMs: Date().timeIntervalSince(healed) * 1000,
                   apartAtHeal: (present - missing, ownOnly - ownSeen))
    }
}
