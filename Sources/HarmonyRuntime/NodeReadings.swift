/// What the node shows at one moment, read once on its queue for `/metrics` and `/health` alike.
struct NodeReadings: Sendable {
    var running = false
    /// Why the core is down between a throw and its restart.
    var coreFailure: String?
    var natsConnected = false
    var replicate = true
    var snapshotsEnabled = false
    /// `[replication_log] hole_repair_after_seconds` in ms (nil: a node behind the log's start waits for good).
    var holeRepairAfterMs: Int64?
    var checkpoints: [Int: UInt64] = [:]
    /// Each stream's last sequence as last reported (absent: not known yet).
    var streamLasts: [Int: UInt64] = [:]
    var pausedShards: Set<Int> = []
    var restoreNeeded = false
    var pendingChanges: Int64 = 0
    var parkedMessages: Int64 = 0
    /// Schema objects whose replicated DDL SQLite refused here (`table "t"`, ...).
    var divergedSchemaObjects: [String] = []
    /// Replicated indexes and triggers waiting for their table's definition (`index "ix" on "t"`, ...).
    var schemaObjectsWaitingForTheirTable: [String] = []
    /// Local writes of a bulk import still to be stamped while changes from other nodes wait for it (nil: none wait).
    var bulkImportQueued: Int64?
}
