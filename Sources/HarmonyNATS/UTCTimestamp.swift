#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// UTC times as text from `clock_gettime` and `gmtime_r`. Foundation's formatters (`ISO8601DateFormatter`,
/// `DateFormatter`, even `Date.ISO8601FormatStyle`) open ICU's calendar and time-zone data to do it: 3-5 MiB
/// more resident memory in every node for one timestamp. Thread-safe; no formatter object is built.
public enum UTCTimestamp {
    /// `2025-01-31T12:34:56.789Z`: log lines and the object store's modification times.
    public static func iso8601Now() -> String {
        let (seconds, milliseconds) = now()
        return iso8601(seconds: seconds, milliseconds: milliseconds)
    }

    public static func iso8601(seconds: Int, milliseconds: Int) -> String {
        let ms = max(0, min(999, milliseconds))
        return text(seconds: seconds, pattern: "%Y-%m-%dT%H:%M:%S") + (ms < 10 ? ".00" : ms < 100 ? ".0" : ".") + String(ms) + "Z"
    }

    /// `20250131T123456Z`: a time that fits in a file name.
    public static func compactNow() -> String { compact(seconds: now().seconds) }

    /// The same for a given time (S3 signs requests with it).
    public static func compact(seconds: Int) -> String { text(seconds: seconds, pattern: "%Y%m%dT%H%M%S") + "Z" }

    private static func now() -> (seconds: Int, milliseconds: Int) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return (Int(ts.tv_sec), Int(ts.tv_nsec / 1_000_000))
    }

    private static func text(seconds: Int, pattern: String) -> String {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        return withUnsafeTemporaryAllocation(of: CChar.self, capacity: 32) { buffer -> String in
            let n = strftime(buffer.baseAddress!, buffer.count, pattern, &parts)
            return String(decoding: UnsafeRawBufferPointer(start: buffer.baseAddress!, count: n), as: UTF8.self)
        }
    }
}
