import ArgumentParser
import Dispatch
import Foundation
import HarmonySim
import Synchronization

/// Exit codes: distinct for each kind of failure, so CI and scripts can tell them apart.
enum SimExit: Int32 {
    case passed = 0
    case correctness = 1
    case liveness = 2
    case simulatorCrash = 3
    case badScenario = 4
}

struct HarmonySimCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "harmonysim",
        abstract: "Deterministic simulation of a harmonylite cluster under injected faults.",
        discussion: "Exit codes: 0 passed, 1 correctness failure, 2 liveness failure, 3 simulator crash, 4 bad scenario.",
        subcommands: [Run.self, CheckDeterminism.self, Shrink.self, PlantedBugsCommand.self, Soak.self, Bench.self])
}

func loadScenario(_ path: String) throws -> Scenario {
    let text: String
    do {
        text = try String(contentsOfFile: path, encoding: .utf8)
    } catch {
        throw ExitMessage(code: .badScenario, message: "cannot read scenario \(path): \(error.localizedDescription)")
    }
    do {
        return try ScenarioLoader.parse(text)
    } catch {
        throw ExitMessage(code: .badScenario, message: "\(path): \(error)")
    }
}

struct ExitMessage: Error, CustomStringConvertible {
    var code: SimExit
    var message: String
    var description: String { message }
}

func fail(_ e: ExitMessage) -> Never {
    FileHandle.standardError.write(Data((e.message + "\n").utf8))
    Foundation.exit(e.code.rawValue)
}

/// Puts the cost profile at `path` into `scenario`, or exits with what is wrong with it.
func loadProfile(_ path: String, into scenario: inout Scenario) {
    let text: String
    do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
        fail(ExitMessage(code: .badScenario, message: "cannot read the cost profile \(path): \(error.localizedDescription) (`harmonybench calibrate --output \(path)` writes one)"))
    }
    do { try ScenarioLoader.applyProfile(text, to: &scenario) } catch {
        fail(ExitMessage(code: .badScenario, message: "\(path): \(error)"))
    }
}

/// Parses "1..500" or "7".
func parseSeeds(_ text: String) throws -> ClosedRange<UInt64> {
    let parts = text.components(separatedBy: "..")
    guard let lo = UInt64(parts[0]), let hi = UInt64(parts.count == 2 ? parts[1] : parts[0]), lo <= hi, parts.count <= 2 else {
        throw ValidationError("--seeds takes A..B with A <= B, got '\(text)'")
    }
    return lo...hi
}

/// `extra`: the options the run was given beyond the file and seed (a plant, a profile), for its reproduce line.
func summary(_ r: SimulationResult, file: String, wallSeconds: Double, extra: [String] = []) -> String {
    var lines = [
        "scenario \(r.scenario)  seed \(r.seed)",
        String(format: "simulated %.1f s  events %d  faults %d  writes %d (%d lost unsynced)  conflicts resolved %d",
               Double(r.simulatedMs) / 1000, r.events, r.faultsInjected, r.writes, r.writesLost, r.conflictsResolved),
        "checks passed: \(r.checksPassed.isEmpty ? "none" : r.checksPassed.joined(separator: ", "))",
        "trace hash \(r.traceHashHex)",
    ]
    if let l = r.livenessFailure { lines.append("LIVENESS FAILURE: \(l)") }
    for f in r.correctnessFailures.prefix(10) { lines.append("CORRECTNESS FAILURE: \(f)") }
    lines.append(r.passed ? String(format: "PASS (wall %.2f s)", wallSeconds) : "FAIL — reproduce: harmonysim run \(file) --seed \(r.seed)\(extra.isEmpty ? "" : " " + extra.joined(separator: " ")) --trace")
    return lines.joined(separator: "\n")
}

func simExitCode(_ r: SimulationResult) -> SimExit {
    r.livenessFailure != nil ? .liveness : (r.correctnessFailures.isEmpty ? .passed : .correctness)
}

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a scenario for one seed, or sweep a range of seeds on every core.")

    @Argument(help: "Scenario TOML file.") var file: String
    @Option(help: "Seed (default: the file's [simulation] seed).") var seed: UInt64?
    @Option(help: "Sweep seeds A..B in child processes, reporting every failing seed.") var seeds: String?
    @Option(help: "Parallel child processes for a sweep.") var jobs: Int = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Switch on a planted bug (for the planted-bug suite).") var plant: [String] = []
    @Flag(help: "Print the readable event log.") var trace = false
    @Flag(help: "Stop a sweep at the first failing seed.") var stopOnFailure = false
    @Option(help: "A cost profile (`harmonybench calibrate`): time advances by its costs, as `harmonysim bench --profile` runs the scenario (to trace one seed of a capacity scenario).")
    var profile: String?

    func run() throws {
        var scenario: Scenario
        do { scenario = try loadScenario(file) } catch let e as ExitMessage { fail(e) }
        scenario.plantedBugs += plant
        if let profile { loadProfile(profile, into: &scenario) }
        if let refusal = scenario.needsACostModel(file: file) { fail(ExitMessage(code: .badScenario, message: refusal)) }
        let extra = plant.flatMap { ["--plant", $0] } + (profile.map { ["--profile", $0] } ?? [])
        if let seeds {
            let range = try parseSeeds(seeds)
            let code = sweep(file: file, seeds: range, extra: extra, jobs: jobs, stopOnFailure: stopOnFailure)
            Foundation.exit(code.rawValue)
        }
        let seed = self.seed ?? scenario.seed
        let start = now()
        let result: SimulationResult
        do {
            result = try Simulation(scenario: scenario, seed: seed, trace: trace).run()
        } catch {
            fail(ExitMessage(code: .simulatorCrash, message: "simulator crashed: \(error)"))
        }
        if trace { for line in result.trace { print(line) } }
        print(summary(result, file: file, wallSeconds: now() - start, extra: extra))
        Foundation.exit(simExitCode(result).rawValue)
    }
}

struct SweepOutcome: Sendable {
    var seed: UInt64
    var code: Int32
    var output: String
}

/// Runs one child process per seed, `jobs` at a time; a crash in one seed cannot take the sweep down.
func sweep(file: String, seeds: ClosedRange<UInt64>, extra: [String], jobs: Int, stopOnFailure: Bool,
           progressEvery: Int = 0, report: (([SweepOutcome]) -> Void)? = nil) -> SimExit {
    let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
    let next = Mutex<UInt64>(seeds.lowerBound)
    let stop = Mutex(false)
    let outcomes = Mutex<[SweepOutcome]>([])
    let start = now()
    DispatchQueue.concurrentPerform(iterations: max(1, jobs)) { _ in
        while true {
            let seed: UInt64? = next.withLock { n in
                guard n <= seeds.upperBound else { return nil }
                defer { n += 1 }
                return n
            }
            guard let seed, !stop.withLock({ $0 }) else { return }
            let p = Process()
            p.executableURL = URL(fileURLWithPath: executable)
            p.arguments = ["run", file, "--seed", String(seed)] + extra
            let pipe = Pipe()
            p.standardOutput = pipe
            p.standardError = pipe
            do { try p.run() } catch {
                outcomes.withLock { $0.append(SweepOutcome(seed: seed, code: SimExit.simulatorCrash.rawValue, output: "cannot start: \(error)")) }
                continue
            }
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            let code = p.terminationReason == .uncaughtSignal ? SimExit.simulatorCrash.rawValue : p.terminationStatus
            let (done, failures) = outcomes.withLock { all in
                all.append(SweepOutcome(seed: seed, code: code, output: String(decoding: data, as: UTF8.self)))
                return (all.count, all.filter { $0.code != 0 }.count)
            }
            if progressEvery > 0 && (done % progressEvery == 0 || done == seeds.count) {
                let elapsed = now() - start
                FileHandle.standardError.write(Data(String(format: "progress: %d/%d seeds, %d failed, %.0f seeds/min, %.0f s\n",
                                                           done, seeds.count, failures, Double(done) / max(elapsed, 0.001) * 60, elapsed).utf8))
            }
            if code != 0 && stopOnFailure { stop.withLock { $0 = true } }
        }
    }
    let all = outcomes.withLock { $0 }.sorted { $0.seed < $1.seed }
    let failed = all.filter { $0.code != 0 }
    if let report {
        report(all)
    } else {
        printSweep(file: file, seeds: seeds, extra: extra, all: all, elapsed: now() - start)
    }
    if failed.contains(where: { $0.code != 1 && $0.code != 2 }) { return .simulatorCrash }
    if failed.contains(where: { $0.code == 1 }) { return .correctness }
    return failed.isEmpty ? .passed : .liveness
}

func printSweep(file: String, seeds: ClosedRange<UInt64>, extra: [String], all: [SweepOutcome], elapsed: Double) {
    let failed = all.filter { $0.code != 0 }
    for f in failed {
        let kind = f.code == 1 ? "correctness failure" : f.code == 2 ? "liveness failure" : "simulator crash (exit \(f.code))"
        print("seed \(f.seed): \(kind)")
        for line in f.output.split(separator: "\n").filter({ $0.contains("FAILURE") }).prefix(3) { print("  \(line)") }
        print("  reproduce: harmonysim run \(file) --seed \(f.seed)\(extra.isEmpty ? "" : " " + extra.joined(separator: " ")) --trace")
    }
    print(String(format: "%@ seeds %llu..%llu: %d passed, %d failed (%.1f seeds/min, wall %.1f s)", file, seeds.lowerBound, seeds.upperBound,
                 all.count - failed.count, failed.count, Double(all.count) / max(elapsed, 0.001) * 60, elapsed))
}

struct CheckDeterminism: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check-determinism",
                                                    abstract: "Run one seed twice and require the same trace hash.")
    @Argument var file: String
    @Option var seed: UInt64?

    func run() throws {
        let scenario: Scenario
        do { scenario = try loadScenario(file) } catch let e as ExitMessage { fail(e) }
        let seed = self.seed ?? scenario.seed
        let a = try Simulation(scenario: scenario, seed: seed).run()
        let b = try Simulation(scenario: scenario, seed: seed).run()
        print("run 1: trace hash \(a.traceHashHex), \(a.events) events")
        print("run 2: trace hash \(b.traceHashHex), \(b.events) events")
        guard a.traceHash == b.traceHash else {
            fail(ExitMessage(code: .correctness, message: "NOT deterministic: seed \(seed) gave two different traces; compare with --trace"))
        }
        print("deterministic")
    }
}

struct Shrink: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Reduce a failing seed to a smaller fault schedule and save it as a scenario.")
    @Argument var file: String
    @Option var seed: UInt64
    @Option(help: "Where to write the smaller scenario.") var output: String?
    @Option(help: "Switch on a planted bug.") var plant: [String] = []

    func run() throws {
        var scenario: Scenario
        do { scenario = try loadScenario(file) } catch let e as ExitMessage { fail(e) }
        scenario.plantedBugs += plant
        guard let (small, result) = try Shrinker.shrink(scenario, seed: seed, progress: { print($0) }) else {
            print("seed \(seed) passes; nothing to shrink")
            return
        }
        let path = output ?? file.replacingOccurrences(of: ".toml", with: "") + ".shrunk-seed\(seed).toml"
        try ScenarioWriter.toml(small).write(toFile: path, atomically: true, encoding: .utf8)
        print("\(small.faults.count) fault(s), \(small.durationMs) ms; still fails: \(result.livenessFailure ?? result.correctnessFailures.first ?? "")")
        print("wrote \(path) — reproduce: harmonysim run \(path) --seed \(seed)")
    }
}

struct PlantedBugsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "planted-bugs",
                                                    abstract: "Show that every planted bug is caught within a bounded number of seeds.")
    @Option(help: "Directory holding the scenarios.") var scenarios = "scenarios"
    @Option(help: "Seeds to try per bug.") var seeds = "1..20"
    @Option var jobs: Int = ProcessInfo.processInfo.activeProcessorCount

    /// The scenario that exposes each bug.
    static let targets: [(bug: String, scenario: String)] = [
        ("hint-ignores-version", "swarm.toml"),
        ("apply-in-arrival-order", "partition.toml"),
        ("skip-own-messages", "late-joiner.toml"),
        ("mark-published-before-ack", "partition.toml"),
        ("checkpoint-outside-apply-transaction", "crash.toml"),
        ("drop-tombstones", "crash.toml"),
        ("no-clock-advance-on-receipt", "clock-skew.toml"),
        ("ack-schema-mismatch", "schema-skew.toml"),
        ("restore-without-checkpoints", "truncation.toml"),
        ("drop-schema-hash-on-decode", "schema-skew.toml"),
        ("restore-without-clock-advance", "snapshot-faults.toml"),
        ("key-change-without-delete", "partition.toml"),
        ("ack-failed-apply", "storage-faults.toml"),
        ("drop-changes-when-mark-fails", "storage-faults.toml"),
        ("snapshot-with-pending-changes", "snapshot-faults.toml"),
        ("sidecar-writes-captured", "crash.toml"),
        ("apply-before-stamping", "crash.toml"),
        ("apply-stamps-one-batch", "bulk-import.toml"),
        ("publish-oversized-rows", "large-rows.toml"),
        ("parts-in-memory", "large-rows.toml"),
        ("no-resubscribe-on-stall", "duplicate-node-id.toml"),
        ("stall-ignores-gaps", "lost-delivery.toml"),
        ("backfill-at-current-time", "operations.toml"),
        ("pause-on-older-unknown-schema", "operations.toml"),
        ("ddl-last-arrival-wins", "ddl-races.toml"),
        ("ddl-drop-not-final", "ddl-races.toml"),
        ("lost-rename-drops-column", "ddl-races.toml"),
        ("apply-unseen-definition-stripped", "ddl-races.toml"),
        ("generation-jump-keeps-rows", "ddl-races.toml"),
        ("concurrent-drop-undone", "ddl-races.toml"),
        ("ddl-storage-failure-is-refusal", "ddl-storage.toml"),
        ("drop-and-add-read-as-rename", "ddl-storage.toml"),
        ("apply-newer-definition-stripped", "ddl-storage.toml"),
        ("recreated-table-seen-as-alter", "ddl-storage.toml"),
        ("lane-moves-scan-cursor", "partition.toml"),
        ("ahead-of-stamp-from-clock-only", "bulk-import.toml"),
        ("ahead-lane-ignores-later-writes", "small-commits.toml"),
        ("alias-any-generation", "ddl.toml"),
        ("rename-keeps-rows-local", "ddl.toml"),
        ("hole-repair-without-resend", "hole-repair.toml"),
        ("echoes-survive-restore", "snapshot-faults.toml"),
    ]

    /// Bugs whose scenario shows them only in rarer schedules: searched up to this seed whatever `--seeds` says
    /// (the sweep stops at the first seed that catches them). Each is also caught by a unit test of the core.
    /// ddl-storage-failure-is-refusal needs a disk failing inside a DDL statement (most failures come at commit): 6 of
    /// seeds 301..900, the first at 321 (every injected fault moved when applying stopped writing the clock row's
    /// `applying` flag); DDLTests.aFullDiskDuringAnotherNodesDDLIsRetriedNotRefused makes one happen every time.
    /// restore-without-clock-advance needs a write right after a restore whose snapshot came from a node with a faster
    /// clock (2 of seeds 1..60); SnapshotTests.aWriteAfterARestoreIsNewerThanEverythingRestored makes one every time.
    /// drop-and-add-read-as-rename needs a DROP and an ADD of the same type on one table while that node's sidecar is
    /// down, then a concurrent ALTER elsewhere (seed 264 is the first; 178 and 264 of 1..400 while only a failed stamp
    /// was tried again in place, 34 and 95 before either a stamp or a cleanup was: each moved every later fault);
    /// DDLTests.aDropAndAnAddOfTheSameDefinitionAreNotARename makes one every time.
    /// (Not listed: apply-newer-definition-stripped. ddl-races.toml showed it only through other bugs, DROP-plus-ADD
    /// pairs read as renames and then a write whose acknowledgement a crash lost, and passes 1..200 with it since both
    /// were fixed; ddl-storage.toml catches it on seed 10. Nor recreated-table-seen-as-alter there: ddl-races.toml
    /// caught it on seed 20 alone, and on none of 1..200 once a rename's merge kept its indexes; ddl-storage.toml
    /// catches it on seed 3, ddl.toml on 9.)
    /// echoes-survive-restore needs a node to restore a snapshot while a message it sent before is still on its way
    /// back (seeds 24 and 27 of 1..30 catch it); EchoTests.ownMessagesApplyAgainAfterARestore makes one every time.
    /// apply-stamps-one-batch needs a change from another node to arrive for a key an import still holds unstamped
    /// and newer (seed 1 with `redelivery = "scattered"`; with in-order redelivery, once nodes asked for what they
    /// sent back in order after a stamp, none of 1..60); BulkImportTests.changesFromOtherNodesWaitUntilTheImportIsStamped
    /// makes one every time.
    static let atLeastSeeds: [String: UInt64] = ["alias-any-generation": 100, "rename-keeps-rows-local": 60,
                                                 "ddl-storage-failure-is-refusal": 400, "restore-without-clock-advance": 60,
                                                 "drop-and-add-read-as-rename": 300,
                                                 "apply-stamps-one-batch": 60, "echoes-survive-restore": 60]

    func run() throws {
        let requested = try parseSeeds(seeds)
        var missed: [String] = []
        for (bug, scenario) in Self.targets {
            let range = requested.lowerBound...max(requested.upperBound, Self.atLeastSeeds[bug] ?? 0)
            let file = (scenarios as NSString).appendingPathComponent(scenario)
            let code = sweep(file: file, seeds: range, extra: ["--plant", bug], jobs: jobs, stopOnFailure: true) { all in
                if let first = all.first(where: { $0.code == 1 || $0.code == 2 }) {
                    let how = first.output.split(separator: "\n").first { $0.contains("FAILURE") }.map(String.init) ?? ""
                    print("\(bug): caught on \(scenario) by seed \(first.seed) — \(how.prefix(160))")
                } else {
                    print("\(bug): NOT caught on \(scenario) in seeds \(range.lowerBound)..\(range.upperBound)")
                }
            }
            if code == .passed || code == .simulatorCrash { missed.append(bug) }
        }
        let caught = Self.targets.count - missed.count
        print("planted bugs: \(caught) passed, \(missed.count) failed\(missed.isEmpty ? "" : " (not caught: \(missed.joined(separator: ", ")))")")
        if !missed.isEmpty { Foundation.exit(SimExit.correctness.rawValue) }
    }
}

struct Soak: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run many seeds of a scenario on every core with a progress line; write a report of every failure.")
    @Argument(help: "Scenario TOML file.") var file = "scenarios/swarm.toml"
    @Option(help: "How many seeds, from --first on.") var count: UInt64 = 10_000
    @Option(help: "First seed.") var first: UInt64 = 1
    @Option(help: "Parallel child processes.") var jobs: Int = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Report path prefix (Markdown and JSON).") var report = "reports/soak"
    @Option(help: "Progress line every this many seeds.") var progress = 100

    func run() throws {
        guard count > 0 else { throw ValidationError("--count must be at least 1") }
        let range = first...(first + count - 1)
        let start = now()
        var all: [SweepOutcome] = []
        let code = sweep(file: file, seeds: range, extra: [], jobs: jobs, stopOnFailure: false, progressEvery: progress) { all = $0 }
        let elapsed = now() - start
        let failed = all.filter { $0.code != 0 }
        printSweep(file: file, seeds: range, extra: [], all: all, elapsed: elapsed)
        var failures = failed.map { f -> String in
            let kind = f.code == 1 ? "correctness" : f.code == 2 ? "liveness" : "simulator crash (exit \(f.code))"
            let first = f.output.split(separator: "\n").first { $0.contains("FAILURE") }.map(String.init) ?? ""
            return "| \(f.seed) | \(kind) | `harmonysim run \(file) --seed \(f.seed) --trace` | \(first.replacingOccurrences(of: "|", with: "/").prefix(200)) |"
        }
        if failures.isEmpty { failures = ["| – | none | | |"] }
        let rate = Double(all.count) / max(elapsed, 0.001) * 60
        let text = """
            # harmonysim soak

            Command: `scripts/soak \(count)\(first == 1 ? "" : " \(first)")` (`harmonysim soak \(file) --count \(count) --first \(first)`, release build), \(jobs) child
            processes on a machine with \(ProcessInfo.processInfo.activeProcessorCount) cores. Each seed of a swarm scenario draws its own
            fault mix (partitions, crashes, power loss, clock jumps and drift, server restarts, a rolling ALTER, late joiners,
            short retention with snapshots, storage faults) and must converge with every check passing.

            | seeds | passed | failed | seeds/min | wall |
            |---|---|---|---|---|
            | \(range.lowerBound)..\(range.upperBound) | \(all.count - failed.count) | \(failed.count) | \(String(format: "%.0f", rate)) | \(String(format: "%.0f s", elapsed)) |

            ## Failures

            | seed | kind | reproduce | first failure line |
            |---|---|---|---|
            \(failures.joined(separator: "\n"))

            """
        try text.write(toFile: report + ".md", atomically: true, encoding: .utf8)
        let failedJSON = failed.map { "{\"seed\": \($0.seed), \"exit\": \($0.code)}" }.joined(separator: ", ")
        try String(format: "{\"scenario\": \"%@\", \"first\": %llu, \"count\": %llu, \"passed\": %d, \"failed\": [%@], \"seeds_per_min\": %.1f, \"wall_s\": %.1f}\n",
                   file, first, count, all.count - failed.count, failedJSON, rate, elapsed)
            .write(toFile: report + ".json", atomically: true, encoding: .utf8)
        print("report: \(report).md")
        Foundation.exit(code.rawValue)
    }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Per shard count: the simulator's speed, or with --profile, predicted throughput, lag and log traffic.")
    @Argument var file: String
    @Option(help: "Comma-separated shard counts.") var shards = "1,2,4,8"
    @Option var seeds = "1..3"
    @Option(help: "A cost profile (`harmonybench calibrate`): time advances by its costs, and the report predicts.") var profile: String?
    @Option(help: "Report path prefix (Markdown and JSON).") var report: String?
    @Option(help: "With --profile: write an SVG chart of throughput and lag p50 against shard count to this path.") var chart: String?
    @Flag(help: "With --profile: also find the highest write rate the cluster keeps up with, per shard count (bisected, first seed).")
    var findRate = false
    @Option(help: "With --profile: offer these rates (writes/s over all writing nodes, comma-separated) instead, as `harmonybench rate` does live, and report each one's rows/s, messages per row and settling time.")
    var rates: String?
    @Flag(help: "With --profile: print each workload write under load of each shard count's first seed (committed at, stored on the log after, sent as a hint after, next node had it after), and the bulk rows the log stored and node 2 had in each 100 ms, as `harmonybench live --probe-times` prints them.")
    var probeTimes = false

    func validate() throws {
        if profile == nil, rates != nil || findRate || chart != nil || probeTimes {
            throw ValidationError("--rates, --find-rate, --chart and --probe-times predict with a cost model: give it with --profile FILE (harmonybench calibrate writes one, e.g. reports/cost-profile.toml)")
        }
    }

    func run() throws {
        var scenario: Scenario
        do { scenario = try loadScenario(file) } catch let e as ExitMessage { fail(e) }
        if let profile {
            loadProfile(profile, into: &scenario)
            if let rates { return try predictRates(scenario, rates) }
            return try predict(scenario)
        }
        let range = try parseSeeds(seeds)
        var rows: [String] = [], json: [String] = []
        for count in shards.split(separator: ",").compactMap({ Int($0) }) {
            scenario.shards = count
            var wall = 0.0, events = 0, simMs: Int64 = 0, writes = 0, passed = 0
            for seed in range {
                let t = now()
                let r = try Simulation(scenario: scenario, seed: seed).run()
                wall += now() - t
                events += r.events; simMs += r.simulatedMs; writes += r.writes; passed += r.passed ? 1 : 0
            }
            let n = Double(range.count)
            rows.append(String(format: "| %d | %.2f | %.0f | %.1f | %d | %d/%d |", count, wall / n, Double(events) / wall,
                               Double(simMs) / 1000 / wall, writes / range.count, passed, range.count))
            json.append(String(format: "{\"shards\": %d, \"wall_s\": %.3f, \"events_per_s\": %.0f, \"sim_s_per_wall_s\": %.2f, \"writes\": %d, \"passed\": %d}",
                               count, wall / n, Double(events) / wall, Double(simMs) / 1000 / wall, writes / range.count, passed))
        }
        let text = """
            # harmonysim speed by shard count

            Command: `harmonysim bench \(file) --shards \(shards) --seeds \(seeds)` (release build), \(ProcessInfo.processInfo.activeProcessorCount) cores.
            Scenario: \(scenario.name), \(scenario.nodes) nodes, \(scenario.durationMs / 1000) s of writes, means over seeds.

            | shards | wall s/run | events/s | simulated s per wall s | writes/run | passed |
            |---|---|---|---|---|---|
            \(rows.joined(separator: "\n"))

            """
        print(text)
        if let report {
            try text.write(toFile: report + ".md", atomically: true, encoding: .utf8)
            try ("[" + json.joined(separator: ",\n ") + "]\n").write(toFile: report + ".json", atomically: true, encoding: .utf8)
        }
    }
}

extension Bench {
    /// Runs the scenario under the profile's costs at each shard count and reports what a live cluster would do.
    func predict(_ base: Scenario) throws {
        let range = try parseSeeds(seeds)
        var rows: [String] = [], json: [String] = []
        var throughputs: [Double] = [], lagP50s: [Double] = [], committedLines: [String] = []
        let counts = shards.split(separator: ",").compactMap { Int($0) }
        for count in counts {
            var scenario = base
            scenario.shards = count
            var rates: [Double] = [], lags: [Double] = [], hintLags: [Double] = [], converged: [Double] = [], committed: [Double] = [], stored: [Double] = [], done: [Double] = [], messages = 0, bytes = 0, writes = 0, passed = 0
            for seed in range {
                let sim = try Simulation(scenario: scenario, seed: seed)
                let r = sim.run()
                passed += r.passed ? 1 : 0
                guard let c = r.capacity else { continue }
                if probeTimes, seed == range.lowerBound {
                    print("\(count) shard(s), seed \(seed), under load:")
                    for p in c.probes {
                        print("  write committed at \(p.committedMs) ms, stored on the log after \(p.storedAfterMs.map(String.init) ?? "-") ms, hinted after \(p.hintedAfterMs.map(String.init) ?? "-") ms, seen after \(p.seenAfterMs) ms")
                    }
                    if !c.bulkRowsStoredPer100Ms.isEmpty {
                        print("  bulk rows the log stored per 100 ms: " + c.bulkRowsStoredPer100Ms.map(String.init).joined(separator: " "))
                        print("  bulk rows node 2 had per 100 ms: " + c.bulkRowsAppliedPer100Ms.map(String.init).joined(separator: " "))
                    }
                    print("  hints applied on node 2: \(c.hintsAppliedOnNextNode)")
                    let cpu = sim.cpuUsedBySidecarsAndServerUs.map { String(format: "%.1f", $0 / Double(max(1, c.bulkRows))) }
                    print("  CPU per bulk row, node 1 / 2 / 3 / nats-server: " + cpu.joined(separator: " / ") + " µs")
                }
                if let done = c.bulkDoneMs, done > 0 { rates.append(Double(c.bulkRows) / (Double(done) / 1000)) }
                lags += c.lagsMs
                hintLags += c.hintLagsMs
                if let ms = c.convergedAfterHealMs { converged.append(Double(ms)) }
                if let ms = c.bulkCommittedMs { committed.append(Double(ms)) }
                if let ms = c.bulkStoredMs { stored.append(Double(ms)) }
                if let ms = c.bulkDoneMs { done.append(Double(ms)) }
                messages += c.messages; bytes += c.bytes; writes += c.writes
            }
            let rate = rates.isEmpty ? Double.nan : rates.reduce(0, +) / Double(rates.count)
            let p50 = Self.percentile(lags, 50), p99 = Self.percentile(lags, 99)
            let hintP50 = hintLags.isEmpty ? Double.nan : Self.percentile(hintLags, 50)
            let convergence = converged.count == range.count ? converged.reduce(0, +) / Double(converged.count) : .nan
            let perWrite = writes > 0 ? Double(messages) / Double(writes) : .nan, bytesPerWrite = writes > 0 ? Double(bytes) / Double(writes) : .nan
            let sustainable = findRate ? try Simulation.sustainableWriteRate(scenario, seed: range.lowerBound) : nil
            throughputs.append(rate.isNaN ? sustainable ?? .nan : rate)
            lagP50s.append(p50)
            func seconds(_ xs: [Double]) -> Double { xs.isEmpty ? .nan : xs.reduce(0, +) / Double(xs.count) / 1000 }
            if !committed.isEmpty {
                committedLines.append(String(format: "%d shard(s): %.2f, %.2f, %.2f s", count, seconds(committed), seconds(stored), seconds(done)))
            }
            rows.append(String(format: "| %d | %@ | %.0f | %@ | %.0f | %@ | %.3f | %.0f | %d/%d |", count, rate.isNaN ? "-" : String(format: "%.0f", rate),
                               p50, hintP50.isNaN ? "-" : String(format: "%.0f", hintP50), p99, convergence.isNaN ? "-" : String(format: "%.0f", convergence), perWrite, bytesPerWrite, passed, range.count)
                        + (sustainable.map { String(format: " %.0f |", $0) } ?? ""))
            json.append(String(format: "{\"shards\": %d, \"bulk_rows_per_s\": %.0f, \"lag_ms\": {\"p50\": %.0f, \"p99\": %.0f}, \"hint_sent_ms_p50\": %.0f, \"converged_after_heal_ms\": %.0f, \"messages_per_write\": %.4f, \"bytes_per_write\": %.1f, \"passed\": %d, \"sustainable_writes_per_s\": %.0f}",
                               count, rate.isNaN ? 0 : rate, p50, p99, hintP50.isNaN ? -1 : hintP50, convergence.isNaN ? -1 : convergence, perWrite, bytesPerWrite, passed, sustainable ?? -1))
        }
        let text = """
            # Predicted by the cost model, per shard count

            Command: `harmonysim bench \(file) --shards \(shards) --seeds \(seeds) --profile \(profile ?? "")`.
            Scenario: \(base.name), \(base.nodes) nodes\(base.bulkRows > 0 ? ", a bulk load of \(base.bulkRows) rows on node 1 in \(base.bulkBatch)-row transactions" : ""), workload writes on \(base.writerNodes.isEmpty ? "every node" : "node " + base.writerNodes.map(String.init).joined(separator: ", ")) meanwhile; means over seeds.
            Throughput: bulk rows per second until the last node has them all. Lag: a workload write's commit until the next node (node 1's: node 2) has it, while the bulk load replicates (without a bulk load: every write); of which to sent as a hint: until a subscriber on the hint subjects has it, sent once the log stored it, as `harmonybench live` measures (the sender's share; "-": no hints). Has it: once the transaction applying it commits.
            Converged: from the heal at \(base.healMs) ms (faults and writes over) until every node holds the same rows with nothing in flight, checked every 100 ms ("-": not every seed converged).

            \(findRate ? "Sustainable: the highest rate of single-row writes (every writing node at a steady mean interval, bisected in half milliseconds) after which the cluster still settles within a tenth of the run once writes stop; above it the backlog grows without bound.\n" : "")
            | shards | bulk rows/s | lag p50 ms | of which to sent as a hint, p50 ms | lag p99 ms | converged after heal ms | messages per write | bytes per write | passed |\(findRate ? " sustainable writes/s |" : "")
            |---|---|---|---|---|---|---|---|---|\(findRate ? "---|" : "")
            \(rows.joined(separator: "\n"))
            \(committedLines.isEmpty ? "" : "\nThe application committed the bulk load, the log stored its last message, and the last node had every row after (means over seeds): " + committedLines.joined(separator: "; ") + ".\n")
            """
        print(text)
        if let report {
            try text.write(toFile: report + ".md", atomically: true, encoding: .utf8)
            try ("[" + json.joined(separator: ",\n ") + "]\n").write(toFile: report + ".json", atomically: true, encoding: .utf8)
        }
        if let chart {
            let picture = CapacityChart(title: "\(base.name): predicted by the cost model",
                                        shardCounts: counts,
                                        left: .init(label: base.bulkRows > 0 ? "bulk rows/s" : "sustainable writes/s", values: throughputs),
                                        right: .init(label: "lag p50 (ms)", values: lagP50s))
            try picture.svg.write(toFile: chart, atomically: true, encoding: .utf8)
        }
    }

    /// The model's side of `harmonybench rate`: each offered rate for the scenario's run, per shard count, with
    /// what the live benchmark reports beside it (rows written per second, messages per row, settling).
    func predictRates(_ base: Scenario, _ text: String) throws {
        let offered = text.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !offered.isEmpty, offered.allSatisfy({ $0 > 0 }) else { throw ValidationError("--rates takes positive writes per second, comma-separated") }
        let range = try parseSeeds(seeds)
        var rows: [String] = [], json: [String] = []
        for count in shards.split(separator: ",").compactMap({ Int($0) }) {
            for rate in offered {
                var scenario = Simulation.offering(base, writesPerSecond: rate)
                scenario.shards = count
                var written = 0.0, messages = 0.0, settled: [Int64] = [], kept = 0, waits = 0.0, waitedMs = 0.0, appWaitUs = 0.0, cpu: [Double] = []
                for seed in range {
                    let sim = try Simulation(scenario: scenario, seed: seed)
                    let r = sim.run()
                    guard let c = r.capacity else { continue }
                    written += Double(c.writes)
                    messages += Double(c.messages)
                    waits += Double(sim.lockWaits)
                    waitedMs += Double(sim.lockWaitedMs)
                    appWaitUs += sim.applicationLockWaitUs
                    let used = sim.cpuUsedBySidecarsAndServerUs
                    cpu = cpu.isEmpty ? used : zip(cpu, used).map { $0 + $1 }
                    if r.passed, let ms = c.convergedAfterHealMs {
                        settled.append(ms)
                        if ms <= max(1_000, scenario.durationMs / 10) { kept += 1 }
                    }
                }
                let n = Double(range.count), seconds = Double(scenario.durationMs) / 1000
                let settledText = settled.count == range.count ? "\(settled.max()!) ms" : "not every seed"
                let cpuText = cpu.map { String(format: "%.0f", $0 / max(1, written)) }.joined(separator: " / ")
                rows.append(String(format: "| %d | %d | %.0f | %@ | %d/%d | %.0f µs | %.3f | %.0f / %.0f ms | %@ |", count, rate, written / n / seconds, settledText,
                                   kept, range.count, appWaitUs / max(1, written), messages / max(1, written), waits / n, waitedMs / n, cpuText))
                json.append(String(format: "{\"shards\": %d, \"offered\": %d, \"rows_per_s\": %.0f, \"settled_ms\": %d, \"kept_up\": %d, \"seeds\": %d, \"application_lock_wait_us\": %.1f, \"messages_per_row\": %.4f, \"lock_waits\": %.0f, \"lock_waited_ms\": %.0f, \"cpu_us_per_row\": [%@]}",
                                   count, rate, written / n / seconds, settled.count == range.count ? Int(settled.max()!) : -1, kept, range.count,
                                   appWaitUs / max(1, written), messages / max(1, written), waits / n, waitedMs / n, cpu.map { String(format: "%.1f", $0 / max(1, written)) }.joined(separator: ", ")))
            }
        }
        let out = """
            # Predicted by the cost model, per offered rate

            Command: `harmonysim bench \(file) --shards \(shards) --seeds \(seeds) --profile \(profile ?? "") --rates \(text)`.
            Scenario: \(base.name), \(base.nodes) nodes, \(base.keys) keys; the offered rate is spread evenly over the writing nodes for \(base.durationMs / 1000) s.
            Settled: from the end of the writes until every node holds the same rows with nothing in flight (the worst seed); kept up: within a tenth of the run, at least 1 s (the live `harmonybench rate`'s criterion).
            Application lock wait: how long a write waited for the write lock on average (`harmonybench rate` times the live writers' BEGIN IMMEDIATE).
            Lock waits: times a sidecar slept in SQLite's busy handler for the write lock, and how long in all (per run).
            CPU per row: what each node's sidecar and the server were charged, per row written (as `harmonybench rate` reports the live processes' CPU time).

            | shards | offered writes/s | rows written/s | settled | kept up | application lock wait | messages per row | lock waits / slept | CPU µs per row: nodes / server |
            |---|---|---|---|---|---|---|---|---|
            \(rows.joined(separator: "\n"))

            """
        print(out)
        if let report {
            try out.write(toFile: report + ".md", atomically: true, encoding: .utf8)
            try ("[" + json.joined(separator: ",\n ") + "]\n").write(toFile: report + ".json", atomically: true, encoding: .utf8)
        }
    }

    static func percentile(_ xs: [Double], _ p: Double) -> Double {
        let s = xs.sorted()
        guard !s.isEmpty else { return .nan }
        return s[min(s.count - 1, Int(Double(s.count - 1) * p / 100 + 0.5))]
    }
}

HarmonySimCommand.main()
