import Foundation

/// Keeps a repeating log line from filling the log: the same line is written at most once per `windowMs`; the
/// next one written after the window says how many were held back. Only for lines an operator must see but
/// that a stuck state repeats every few seconds (a snapshot that cannot be had, a failing publish).
struct RepeatLimiter {
    let windowMs: Int64
    let capacityMax: Int
    private var lastWrittenMs: [String: Int64] = [:]
    private var heldBack: [String: Int] = [:]

    init(windowMs: Int64 = 60_000, capacityMax: Int = 256) {
        precondition(windowMs > 0 && capacityMax > 0, "repeat limiter bounds must be positive")
        self.windowMs = windowMs
        self.capacityMax = capacityMax
    }

    /// The line to write now (with a count of the repeats held back since the last one), or nil to hold it back.
    /// `key` groups lines that differ only in detail (a change id); by default the line itself.
    mutating func admit(_ line: String, key: String? = nil, nowMs: Int64) -> String? {
        let key = key ?? line
        if let last = lastWrittenMs[key], nowMs - last < windowMs {
            heldBack[key, default: 0] += 1
            return nil
        }
        if lastWrittenMs.count >= capacityMax { lastWrittenMs.removeAll(); heldBack.removeAll() }  // bounded memory
        lastWrittenMs[key] = nowMs
        let repeats = heldBack.removeValue(forKey: key) ?? 0
        return repeats == 0 ? line : "\(line) (\(repeats) more time(s) since it was last logged)"
    }
}
