import HarmonyCore

/// A clock whose time moves only when its owner says so (`advance`), for driving a core by hand: the timers the
/// core asks for are recorded, and `advance` returns those that fell due, earliest first.
/// Not thread-safe: one test or one simulated node owns it.
public final class ManualClock: NodeClock {
    public var nowMs: Int64
    /// Each timer's due time; a second request for the same timer replaces the first, as the protocol says.
    public private(set) var scheduled: [NodeTimer: Int64] = [:]

    public init(nowMs: Int64 = 1_700_000_000_000) {
        self.nowMs = nowMs
    }

    public func schedule(_ timer: NodeTimer, afterMs delayMs: Int64) {
        scheduled[timer] = nowMs + max(delayMs, 0)
    }

    /// Moves time forward and returns the timers now due (removed from `scheduled`), earliest first, ties in
    /// `NodeTimer` declaration order, so the same calls always fire in the same order.
    public func advance(byMs deltaMs: Int64) -> [NodeTimer] {
        precondition(deltaMs >= 0, "time only moves forward, got \(deltaMs) ms")
        nowMs += deltaMs
        let due = NodeTimer.allCases.compactMap { t in scheduled[t].flatMap { $0 <= nowMs ? (t, $0) : nil } }
            .sorted { $0.1 < $1.1 }
            .map(\.0)
        for t in due { scheduled[t] = nil }
        return due
    }
}
