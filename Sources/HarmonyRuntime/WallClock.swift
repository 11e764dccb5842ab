import Foundation

/// The live runtime's one reading of wall-clock time (the core never reads it; it gets `NodeClock`).
public enum WallClock {
    /// Milliseconds since the Unix epoch.
    public static var nowMs: Int64 { Int64(Date().timeIntervalSince1970 * 1000) }
}
