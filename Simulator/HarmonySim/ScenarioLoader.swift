import HarmonyCore
import HarmonyTOML

/// Reads a scenario TOML file; every error names the key and its line.
public enum ScenarioLoader {
    public static func parse(_ text: String) throws -> Scenario {
        let root = try TOMLReader(parsing: text)
        try root.rejectUnknownKeys(allowed: ["simulation", "workload", "network", "jetstream", "snapshot", "core", "storage", "swarm", "faults", "costs"])
        var s = Scenario()
        if let t = try root.table("simulation") {
            try t.rejectUnknownKeys(allowed: ["name", "seed", "nodes", "shards", "duration_ms", "heal_at_ms", "quiesce_within_ms"])
            s.name = try t.string("name") ?? s.name
            if let seed = try t.int("seed") {
                guard seed >= 0 else { throw t.error(at: "seed", "key '\(t.fullKey("seed"))' must not be negative") }
                s.seed = UInt64(seed)
            }
            s.nodes = try bounded(t, "nodes", s.nodes, 1...16)
            s.shards = try bounded(t, "shards", s.shards, 1...64)
            s.durationMs = Int64(try bounded(t, "duration_ms", Int(s.durationMs), 1...86_400_000))
            if t.contains("heal_at_ms") { s.healAtMs = Int64(try bounded(t, "heal_at_ms", 0, 0...86_400_000)) }
            s.quiesceWithinMs = Int64(try bounded(t, "quiesce_within_ms", Int(s.quiesceWithinMs), 100...86_400_000))
        }
        if let t = try root.table("workload") {
            try t.rejectUnknownKeys(allowed: ["keys", "tables", "write_interval_ms_min", "write_interval_ms_max", "insert_weight", "update_weight",
                                              "delete_weight", "key_change_weight", "transaction_weight", "transaction_ops_max",
                                              "writes_racing_alter", "large_value_permille", "large_value_bytes", "oversized_value_permille",
                                              "ddl_interval_ms", "ddl_kinds", "bulk_rows", "bulk_batch", "writer_node",
                                              "small_writes_connection"])
            s.bulkRows = try bounded(t, "bulk_rows", s.bulkRows, 0...10_000_000)
            s.bulkBatch = try bounded(t, "bulk_batch", s.bulkBatch, 1...100_000)
            let writer = try bounded(t, "writer_node", 0, 0...s.nodes)
            s.writerNodes = writer == 0 ? [] : [writer]
            s.keys = try bounded(t, "keys", s.keys, 1...1_000_000)
            s.tables = try bounded(t, "tables", s.tables, 1...100)
            s.writeIntervalMsMin = Int64(try bounded(t, "write_interval_ms_min", Int(s.writeIntervalMsMin), 1...3_600_000))
            s.writeIntervalMsMax = Int64(try bounded(t, "write_interval_ms_max", Int(s.writeIntervalMsMax), Int(s.writeIntervalMsMin)...3_600_000))
            s.insertWeight = try bounded(t, "insert_weight", s.insertWeight, 0...1000)
            s.updateWeight = try bounded(t, "update_weight", s.updateWeight, 0...1000)
            s.deleteWeight = try bounded(t, "delete_weight", s.deleteWeight, 0...1000)
            s.keyChangeWeight = try bounded(t, "key_change_weight", s.keyChangeWeight, 0...1000)
            s.writesRacingAlter = try bounded(t, "writes_racing_alter", s.writesRacingAlter, 0...10)
            s.transactionWeight = try bounded(t, "transaction_weight", s.transactionWeight, 0...1000)
            s.transactionOpsMax = try bounded(t, "transaction_ops_max", s.transactionOpsMax, 2...100)
            s.smallWritesOwnConnection = try t.bool("small_writes_connection") ?? s.smallWritesOwnConnection
            s.largeValuePermille = try bounded(t, "large_value_permille", s.largeValuePermille, 0...1000)
            s.largeValueBytes = try bounded(t, "large_value_bytes", s.largeValueBytes, 1...(16 << 20))
            s.oversizedValuePermille = try bounded(t, "oversized_value_permille", s.oversizedValuePermille, 0...1000)
            s.ddlIntervalMs = Int64(try bounded(t, "ddl_interval_ms", Int(s.ddlIntervalMs), 0...3_600_000))
            if let kinds = try t.stringArray("ddl_kinds") {
                let known = Set(Simulation.ddlKindNames)
                if let bad = kinds.first(where: { !known.contains($0) }) {
                    throw t.error(at: "ddl_kinds", "key '\(t.fullKey("ddl_kinds"))' names unknown kind '\(bad)'; known: \(Array(Set(known)).sorted().joined(separator: ", "))")
                }
                s.ddlKinds = kinds
            }
            if s.insertWeight + s.updateWeight + s.deleteWeight == 0 {
                throw t.error(at: "insert_weight", "workload needs a positive insert, update or delete weight")
            }
        }
        if let t = try root.table("network") {
            try t.rejectUnknownKeys(allowed: ["delay_ms_min", "delay_ms_max", "duplicate_permille", "lost_ack_permille",
                                              "publish_timeout_ms", "detect_delay_ms_max"])
            s.delayMsMin = Int64(try bounded(t, "delay_ms_min", Int(s.delayMsMin), 0...60_000))
            s.delayMsMax = Int64(try bounded(t, "delay_ms_max", Int(s.delayMsMax), Int(s.delayMsMin)...60_000))
            s.duplicatePermille = try bounded(t, "duplicate_permille", s.duplicatePermille, 0...1000)
            s.lostAckPermille = try bounded(t, "lost_ack_permille", s.lostAckPermille, 0...1000)
            s.publishTimeoutMs = Int64(try bounded(t, "publish_timeout_ms", Int(s.publishTimeoutMs), Int(2 * s.delayMsMax + 1)...600_000))
            s.detectDelayMsMax = Int64(try bounded(t, "detect_delay_ms_max", Int(s.detectDelayMsMax), 0...60_000))
        }
        if let t = try root.table("jetstream") {
            try t.rejectUnknownKeys(allowed: ["duplicate_window_ms", "max_entries", "ack_wait_ms", "max_payload_bytes", "redelivery",
                                              "dropped_redelivery_permille"])
            s.duplicateWindowMs = Int64(try bounded(t, "duplicate_window_ms", Int(s.duplicateWindowMs), 0...86_400_000))
            s.maxEntries = try bounded(t, "max_entries", s.maxEntries, 0...100_000_000)
            s.ackWaitMs = Int64(try bounded(t, "ack_wait_ms", Int(s.ackWaitMs), 10...600_000))
            s.maxPayloadBytes = try bounded(t, "max_payload_bytes", s.maxPayloadBytes, 2048...(64 << 20))
            switch try t.string("redelivery") {
            case nil, "in-order": s.scatteredRedelivery = false
            case "scattered": s.scatteredRedelivery = true
            case let other?: throw t.error(at: "redelivery", "redelivery is \"in-order\" or \"scattered\", not \"\(other)\"")
            }
            s.droppedRedeliveryPermille = try bounded(t, "dropped_redelivery_permille", s.droppedRedeliveryPermille, 0...1000)
        }
        if let t = try root.table("snapshot") {
            try t.rejectUnknownKeys(allowed: ["interval_ms", "keep"])
            s.snapshotIntervalMs = Int64(try bounded(t, "interval_ms", Int(s.snapshotIntervalMs), 0...86_400_000))
            s.snapshotKeep = try bounded(t, "keep", s.snapshotKeep, 1...1000)
        }
        if let t = try root.table("core") {
            try t.rejectUnknownKeys(allowed: ["scan_interval_ms", "cleanup_interval_ms", "crash_point_permille", "interleave_permille", "publish_batch_max", "max_row_bytes", "planted_bugs", "replicate_ddl",
                                                "scan_max_changes", "publish_in_flight_max", "hole_repair_after_ms", "hints", "lock_batch_rows", "lock_pause_ms"])
            s.scanIntervalMs = Int64(try bounded(t, "scan_interval_ms", Int(s.scanIntervalMs), 1...3_600_000))
            s.cleanupIntervalMs = Int64(try bounded(t, "cleanup_interval_ms", Int(s.cleanupIntervalMs), 1...3_600_000))
            s.crashPointPermille = try bounded(t, "crash_point_permille", s.crashPointPermille, 0...1000)
            s.interleavePermille = try bounded(t, "interleave_permille", s.interleavePermille, 0...1000)
            s.publishBatchMax = try bounded(t, "publish_batch_max", s.publishBatchMax, 1...4096)
            s.scanMaxChanges = try bounded(t, "scan_max_changes", s.scanMaxChanges, 1...100_000)
            s.publishInFlightMax = try bounded(t, "publish_in_flight_max", s.publishInFlightMax, 1...100_000)
            s.holeRepairAfterMs = Int64(try bounded(t, "hole_repair_after_ms", Int(s.holeRepairAfterMs), 0...86_400_000))
            s.maxRowBytes = try bounded(t, "max_row_bytes", s.maxRowBytes, 1024...(1 << 30))
            s.replicateDDL = try t.bool("replicate_ddl") ?? s.replicateDDL
            s.hints = try t.bool("hints") ?? s.hints
            s.lockBatchRows = try bounded(t, "lock_batch_rows", s.lockBatchRows, 1...1_000_000)
            s.lockPauseMs = Int64(try bounded(t, "lock_pause_ms", Int(s.lockPauseMs), 0...60_000))
            s.plantedBugs = try t.stringArray("planted_bugs") ?? []
            let known = Set(PlantedBugsNames.all)
            if let bad = s.plantedBugs.first(where: { !known.contains($0) }) {
                throw t.error(at: "planted_bugs", "key '\(t.fullKey("planted_bugs"))' names unknown bug '\(bad)'; known: \(PlantedBugsNames.all.joined(separator: ", "))")
            }
        }
        if let t = try root.table("storage") {
            try t.rejectUnknownKeys(allowed: ["busy_permille", "read_error_permille", "write_error_permille", "fsync_error_permille"])
            s.storageFaults.busyPermille = try bounded(t, "busy_permille", 0, 0...1000)
            s.storageFaults.readErrorPermille = try bounded(t, "read_error_permille", 0, 0...1000)
            s.storageFaults.writeErrorPermille = try bounded(t, "write_error_permille", 0, 0...1000)
            s.storageFaults.fsyncErrorPermille = try bounded(t, "fsync_error_permille", 0, 0...1000)
        }
        if let t = try root.table("costs") { try applyCosts(t, to: &s) }
        if let t = try root.table("swarm") {
            try t.rejectUnknownKeys(allowed: ["enabled"])
            s.swarm = try t.bool("enabled") ?? false
        }
        for f in try root.tableArray("faults") {
            try f.rejectUnknownKeys(allowed: ["kind", "node", "at_ms", "duration_ms", "offset_ms", "drift_ppm"])
            let kindName = try f.required("kind", f.string)
            guard let kind = Fault.Kind(rawValue: kindName) else {
                throw f.error(at: "kind", "key '\(f.fullKey("kind"))' is '\(kindName)'; expected one of \(Fault.Kind.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            let node = try bounded(f, "node", 0, 0...s.nodes)
            var fault = Fault(kind: kind, node: node, atMs: Int64(try bounded(f, "at_ms", 0, 0...86_400_000)),
                              durationMs: Int64(try bounded(f, "duration_ms", 0, 0...86_400_000)))
            fault.offsetMs = Int64(try bounded(f, "offset_ms", 0, -86_400_000...86_400_000))
            fault.driftPpm = Int64(try bounded(f, "drift_ppm", 0, -900_000...900_000))
            if [.crash, .wipe, .powerLoss, .lateJoin].contains(kind) && node == 0 {
                throw f.error(at: "node", "key '\(f.fullKey("node"))' must name one node (1...\(s.nodes)) for a \(kind.rawValue) fault")
            }
            s.faults.append(fault)
        }
        if s.largeValuePermille > 0 && 2 * s.largeValueBytes + 1024 > s.maxRowBytes {
            // A row can carry the value twice (v, and extra after a rolling ALTER); above the limit it is refused.
            throw SimulationError.invalid("workload.large_value_bytes (\(s.largeValueBytes)) must stay under half of core.max_row_bytes (\(s.maxRowBytes)) minus 512, or large writes are refused rather than replicated")
        }
        return s
    }

    /// A cost profile file (`[costs]` only, as `harmonybench calibrate` writes it), for `harmonysim bench --profile`
    /// and `harmonysim run --profile`.
    public static func applyProfile(_ text: String, to s: inout Scenario) throws {
        let root = try TOMLReader(parsing: text)
        try root.rejectUnknownKeys(allowed: ["costs"])
        guard let t = try root.table("costs") else { throw SimulationError.invalid("the profile has no [costs] table") }
        try applyCosts(t, to: &s)
    }

    /// A `[costs]` table: the cost model, and the live sidecar's settings it goes with, which replace the scenario's.
    static func applyCosts(_ t: TOMLReader, to s: inout Scenario) throws {
        try t.rejectUnknownKeys(allowed: ["publish_rtt_us", "server_message_us", "server_byte_ns", "server_message_us_4_streams",
                                          "scan_change_us", "publish_message_us", "apply_batch_us", "apply_message_us", "apply_change_us",
                                          "app_insert_row_us", "app_commit_us", "look_us", "look_wait_us", "ack_flush_us", "ack_flush_wait_us", "bytes_per_change", "deliver_batch", "deliver_bytes_max", "max_ack_pending", "publish_batch_max",
                                          "publish_in_flight_max", "publish_ack_timeout_ms", "cores", "apply_own_change_us", "runtime_publish_change_us",
                                          "runtime_apply_change_us", "server_change_us", "runtime_publish_message_us",
                                          "runtime_apply_message_us", "runtime_server_message_us", "observer_us_per_ms", "stamp_change_us", "stamp_table_us", "apply_table_us", "apply_scattered_change_us"])
        func cost(_ key: String, _ value: Double) throws -> Double {
            guard let v = try t.double(key) ?? t.int(key).map(Double.init) else { return value }
            guard v >= 0, v < 1e9 else { throw t.error(at: key, "key '\(t.fullKey(key))' must be a cost from 0 up, got \(v)") }
            return v
        }
        var m = CostModel()
        m.publishRttUs = try cost("publish_rtt_us", m.publishRttUs)
        // Streams share the server: the dearer of the one-stream and four-stream figures is what a message costs it.
        m.serverMessageUs = max(try cost("server_message_us", 0), try cost("server_message_us_4_streams", 0))
        m.serverByteNs = try cost("server_byte_ns", 0)
        m.scanChangeUs = try cost("scan_change_us", 0)
        m.publishMessageUs = try cost("publish_message_us", 0)
        m.applyBatchUs = try cost("apply_batch_us", 0)
        m.applyMessageUs = try cost("apply_message_us", 0)
        m.applyChangeUs = try cost("apply_change_us", 0)
        let scattered = try cost("apply_scattered_change_us", -1)  // absent: -1, as apply_change_us
        m.applyScatteredChangeUs = scattered < 0 ? nil : scattered
        m.appInsertRowUs = try cost("app_insert_row_us", 0)
        m.appCommitUs = try cost("app_commit_us", 0)
        m.lookUs = try cost("look_us", 0)
        m.stampChangeUs = try cost("stamp_change_us", 0)
        m.stampTableUs = try cost("stamp_table_us", 0)
        m.applyTableUs = try cost("apply_table_us", 0)
        m.lookWaitUs = try cost("look_wait_us", 0)
        m.ackFlushUs = try cost("ack_flush_us", 0)
        m.ackFlushWaitUs = try cost("ack_flush_wait_us", 0)
        m.applyOwnChangeUs = try cost("apply_own_change_us", 0)
        m.runtimePublishChangeUs = try cost("runtime_publish_change_us", 0)
        m.runtimeApplyChangeUs = try cost("runtime_apply_change_us", 0)
        m.serverChangeUs = try cost("server_change_us", 0)
        m.runtimePublishMessageUs = try cost("runtime_publish_message_us", 0)
        m.runtimeApplyMessageUs = try cost("runtime_apply_message_us", 0)
        m.runtimeServerMessageUs = try cost("runtime_server_message_us", 0)
        m.observerUsPerMs = try cost("observer_us_per_ms", 0)
        m.deliverBatch = try bounded(t, "deliver_batch", m.deliverBatch, 1...100_000)
        m.deliverBytesMax = try bounded(t, "deliver_bytes_max", m.deliverBytesMax, 1...(1 << 30))
        m.cores = try bounded(t, "cores", m.cores, 0...1024)
        _ = try cost("bytes_per_change", 0)  // informational: the simulator encodes with the real codec
        _ = try bounded(t, "max_ack_pending", 4096, 1...1_000_000)  // informational: never reached at these loads
        s.costs = m
        s.publishBatchMax = try bounded(t, "publish_batch_max", s.publishBatchMax, 1...4096)
        s.publishInFlightMax = try bounded(t, "publish_in_flight_max", s.publishInFlightMax, 1...100_000)
        s.publishTimeoutMs = Int64(try bounded(t, "publish_ack_timeout_ms", Int(s.publishTimeoutMs), 1...600_000))
    }

    static func bounded(_ t: TOMLReader, _ key: String, _ defaultValue: Int, _ range: ClosedRange<Int>) throws -> Int {
        guard let v = try t.int(key) else { return defaultValue }
        guard range.contains(v) else {
            throw t.error(at: key, "key '\(t.fullKey(key))' must be between \(range.lowerBound) and \(range.upperBound), got \(v)")
        }
        return v
    }
}

enum PlantedBugsNames {
    static let all = PlantedBugs.all.map(\.name)
}

/// Writes a scenario back as TOML: used by `shrink` to save the smaller failing schedule.
public enum ScenarioWriter {
    public static func toml(_ s: Scenario) -> String {
        var out = """
            # \(s.name): written by harmonysim
            [simulation]
            name = "\(s.name)"
            seed = \(s.seed)
            nodes = \(s.nodes)
            shards = \(s.shards)
            duration_ms = \(s.durationMs)

            """
        if let heal = s.healAtMs { out += "heal_at_ms = \(heal)\n" }
        out += """
            quiesce_within_ms = \(s.quiesceWithinMs)

            [workload]
            keys = \(s.keys)
            tables = \(s.tables)
            write_interval_ms_min = \(s.writeIntervalMsMin)
            write_interval_ms_max = \(s.writeIntervalMsMax)
            insert_weight = \(s.insertWeight)
            update_weight = \(s.updateWeight)
            delete_weight = \(s.deleteWeight)
            key_change_weight = \(s.keyChangeWeight)
            writes_racing_alter = \(s.writesRacingAlter)
            transaction_weight = \(s.transactionWeight)
            transaction_ops_max = \(s.transactionOpsMax)
            small_writes_connection = \(s.smallWritesOwnConnection)
            large_value_permille = \(s.largeValuePermille)
            large_value_bytes = \(s.largeValueBytes)
            oversized_value_permille = \(s.oversizedValuePermille)
            ddl_interval_ms = \(s.ddlIntervalMs)
            ddl_kinds = [\(s.ddlKinds.map { "\"\($0)\"" }.joined(separator: ", "))]

            [network]
            delay_ms_min = \(s.delayMsMin)
            delay_ms_max = \(s.delayMsMax)
            duplicate_permille = \(s.duplicatePermille)
            lost_ack_permille = \(s.lostAckPermille)
            publish_timeout_ms = \(s.publishTimeoutMs)
            detect_delay_ms_max = \(s.detectDelayMsMax)

            [jetstream]
            duplicate_window_ms = \(s.duplicateWindowMs)
            max_entries = \(s.maxEntries)
            ack_wait_ms = \(s.ackWaitMs)
            max_payload_bytes = \(s.maxPayloadBytes)
            redelivery = "\(s.scatteredRedelivery ? "scattered" : "in-order")"
            dropped_redelivery_permille = \(s.droppedRedeliveryPermille)

            [snapshot]
            interval_ms = \(s.snapshotIntervalMs)
            keep = \(s.snapshotKeep)

            [core]
            scan_interval_ms = \(s.scanIntervalMs)
            cleanup_interval_ms = \(s.cleanupIntervalMs)
            crash_point_permille = \(s.crashPointPermille)
            interleave_permille = \(s.interleavePermille)
            publish_batch_max = \(s.publishBatchMax)
            scan_max_changes = \(s.scanMaxChanges)
            publish_in_flight_max = \(s.publishInFlightMax)
            hole_repair_after_ms = \(s.holeRepairAfterMs)
            max_row_bytes = \(s.maxRowBytes)
            replicate_ddl = \(s.replicateDDL)
            hints = \(s.hints)
            lock_batch_rows = \(s.lockBatchRows)
            lock_pause_ms = \(s.lockPauseMs)
            planted_bugs = [\(s.plantedBugs.map { "\"\($0)\"" }.joined(separator: ", "))]

            [storage]
            busy_permille = \(s.storageFaults.busyPermille)
            read_error_permille = \(s.storageFaults.readErrorPermille)
            write_error_permille = \(s.storageFaults.writeErrorPermille)
            fsync_error_permille = \(s.storageFaults.fsyncErrorPermille)

            [swarm]
            enabled = \(s.swarm)

            """
        for f in s.faults {
            out += """

                [[faults]]
                kind = "\(f.kind.rawValue)"
                node = \(f.node)
                at_ms = \(f.atMs)
                duration_ms = \(f.durationMs)

                """
            if f.offsetMs != 0 { out += "offset_ms = \(f.offsetMs)\n" }
            if f.driftPpm != 0 { out += "drift_ppm = \(f.driftPpm)\n" }
        }
        return out
    }
}
