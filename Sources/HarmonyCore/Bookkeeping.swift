import HarmonySQLite

/// Names of everything harmonylite creates inside the user's database; all start with `__harmonylite__`.
public enum Bookkeeping {
    public static let prefix = "__harmonylite__"
    /// One row: the hybrid-logical clock, this node's id, and the flag that silences capture while the sidecar applies.
    public static let clockTable = "__harmonylite___clock"
    public static let globalLog = "__harmonylite___change_log_global"
    /// What the capture triggers write: table, kind, epoch and key of each local change, in commit order. The sidecar
    /// stamps versions on these and moves them into the change logs (`ChangeCapture.stampCaptured`), so an application
    /// write costs one insert of bookkeeping, not four.
    public static let captureQueue = "__harmonylite___capture_queue"
    /// Per-stream sequence checkpoints, advanced in the same transaction as the apply.
    public static let checkpointTable = "__harmonylite___checkpoint"
    /// Every schema epoch of every captured table: its hash, columns and key, so old change-log rows publish with the shape they were written in.
    public static let schemaTable = "__harmonylite___schema"
    /// Messages that could not be applied (constraint failures, undecodable payloads), kept for the operator.
    public static let parkedTable = "__harmonylite___parked"

    /// Parts of split messages (rows above the log's payload limit) received but not yet complete; restored with
    /// a snapshot, since the snapshot's checkpoint may sit between two parts of one change.
    public static let partsTable = "__harmonylite___message_parts"
    /// The `stream` of a parked row that is a local change refused for its size (`seq` is its global change-log id).
    public static let localParkedStream = "(local change)"

    /// Tables renamed here (ALTER TABLE ... RENAME TO): old name -> current name, so changes other nodes still make
    /// under the old name apply to the table.
    public static let aliasTable = "__harmonylite___table_aliases"

    /// Replicated DDL: the last known definition of every user table, index, view and trigger, with its version
    /// (see `SchemaObject`). Its global-log entries name this table and point at a row of it.
    public static let ddlTable = "__harmonylite___ddl"

    /// Not a table: the name messages and global-log entries use for a hole repair's request that every node send
    /// its rows again (see `ReplicationNode.repairHoleIfDue`).
    public static let repairRequest = "__harmonylite___repair_request"

    /// Not a table: the name of a request that every node send the definitions of objects it had before its first
    /// install (see `ReplicationNode.requestPreExistingDefinitions`).
    public static let definitionRequest = "__harmonylite___definition_request"

    public static func changeLog(_ table: String) -> String { "\(prefix)\(table)_change_log" }
    public static func versionTable(_ table: String) -> String { "\(prefix)\(table)_version" }
    public static func trigger(_ table: String, _ kind: String) -> String { "\(prefix)\(table)_on_\(kind)" }

    public static func valueColumn(_ column: String) -> String { "val_\(column)" }
    public static func keyColumn(_ column: String) -> String { "pk_\(column)" }
}
