import Foundation

/// Dates and times between SQLite's ISO-8601 text and PostgreSQL's forms: drivers send them in binary (psycopg does
/// by default) and parse the columns they are told are dates into their own date types.
enum PGTemporal {
    static let microsPerDay: Int64 = 86_400_000_000
    /// 2000-01-01, PostgreSQL's epoch, in days after 1970-01-01.
    static let postgresEpochDays = 10_957

    /// Days after 1970-01-01 of a proleptic Gregorian date (the civil-from-days arithmetic on 400-year eras).
    static func days(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    static func civil(days: Int) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    /// A date, a time of day and an offset read from `YYYY-MM-DD[( |T)HH:MM[:SS[.ffffff]]][Z|±HH[:MM]]`, or
    /// just the time part when `timeOnly`.
    struct Parsed {
        var days = 0
        var micros: Int64 = 0
        var offsetSeconds: Int?
        var hasTime = false
    }

    static func parse(_ text: String, timeOnly: Bool = false) -> Parsed? {
        var s = Substring(text.trimmingCharacters(in: .whitespaces))
        func number(_ count: Int) -> Int? {
            guard s.count >= count, s.prefix(count).allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
            defer { s = s.dropFirst(count) }
            return Int(s.prefix(count))
        }
        func take(_ c: Character) -> Bool {
            guard s.first == c else { return false }
            s = s.dropFirst()
            return true
        }
        var result = Parsed()
        if !timeOnly {
            guard let y = number(4), take("-"), let m = number(2), take("-"), let d = number(2),
                  (1...12).contains(m), (1...31).contains(d) else { return nil }
            result.days = days(year: y, month: m, day: d)
            guard civil(days: result.days) == (y, m, d) else { return nil }
            guard !s.isEmpty else { return result }
            guard take(" ") || take("T") else { return nil }
        }
        guard let h = number(2), take(":"), let mi = number(2), h < 24 || (h == 24 && mi == 0), mi < 60 else { return nil }
        var seconds = 0, fraction: Int64 = 0
        if take(":") {
            guard let sec = number(2), sec < 61 else { return nil }
            seconds = min(sec, 59)
            if take(".") {
                let digits = s.prefix { $0.isASCII && $0.isNumber }
                guard !digits.isEmpty else { return nil }
                s = s.dropFirst(digits.count)
                fraction = Int64(String(digits.prefix(6)).padding(toLength: 6, withPad: "0", startingAt: 0)) ?? 0
            }
        }
        result.micros = Int64(h * 3600 + mi * 60 + seconds) * 1_000_000 + fraction
        result.hasTime = true
        if take("Z") || take("z") {
            result.offsetSeconds = 0
        } else if let sign = s.first, sign == "+" || sign == "-" {
            s = s.dropFirst()
            guard let oh = number(2) else { return nil }
            _ = take(":")
            let om = number(2) ?? 0
            result.offsetSeconds = (sign == "-" ? -1 : 1) * (oh * 3600 + om * 60)
        }
        return s.isEmpty ? result : nil
    }

    /// Microseconds after PostgreSQL's epoch, in UTC when the text carries an offset.
    static func timestampMicros(_ p: Parsed) -> Int64 {
        Int64(p.days - postgresEpochDays) * microsPerDay + p.micros - Int64(p.offsetSeconds ?? 0) * 1_000_000
    }

    static func dateText(days: Int) -> String {
        let (y, m, d) = civil(days: days)
        return String(format: "%04d-%02d-%02d", y, m, d)
    }

    static func timeText(micros: Int64) -> String {
        let seconds = micros / 1_000_000, fraction = micros % 1_000_000
        var text = String(format: "%02lld:%02lld:%02lld", seconds / 3600, seconds / 60 % 60, seconds % 60)
        if fraction != 0 {
            text += "." + String(format: "%06lld", fraction).replacingOccurrences(of: "0+$", with: "", options: .regularExpression)
        }
        return text
    }

    /// PostgreSQL's text form of a timestamp given in microseconds after its epoch ("+00" added for timestamptz).
    static func timestampText(micros: Int64, withZone: Bool) -> String {
        let days = Int((micros - (micros % microsPerDay + microsPerDay) % microsPerDay) / microsPerDay)
        let ofDay = micros - Int64(days) * microsPerDay
        return dateText(days: days + postgresEpochDays) + " " + timeText(micros: ofDay) + (withZone ? "+00" : "")
    }

    /// The text form a date or time column sends: PostgreSQL's own, when the stored text reads as one; otherwise
    /// the text as stored (the driver decides).
    static func text(_ stored: String, oid: Int32) -> String {
        switch oid {
        case PGType.date:
            guard let p = parse(stored), !p.hasTime || p.micros == 0 else { return stored }
            return dateText(days: p.days)
        case PGType.timestamp, PGType.timestamptz:
            guard let p = parse(stored) else { return stored }
            return timestampText(micros: timestampMicros(p), withZone: oid == PGType.timestamptz)
        case PGType.time:
            guard let p = parse(stored, timeOnly: true) else { return stored }
            return timeText(micros: p.micros)
        default:
            return stored
        }
    }

    /// The binary form of a stored date or time, or nil when the stored text does not read as one.
    static func binary(_ stored: String, oid: Int32) -> [UInt8]? {
        switch oid {
        case PGType.date:
            guard let p = parse(stored), !p.hasTime || p.micros == 0 else { return nil }
            return PGType.bigEndian(Int32(truncatingIfNeeded: p.days - postgresEpochDays))
        case PGType.timestamp, PGType.timestamptz:
            guard let p = parse(stored) else { return nil }
            return PGType.bigEndian(timestampMicros(p))
        case PGType.time:
            guard let p = parse(stored, timeOnly: true) else { return nil }
            return PGType.bigEndian(p.micros)
        default:
            return nil
        }
    }

    /// PostgreSQL's range for timestamps (4713 BC to 294276 AD), in microseconds after its epoch.
    static let timestampRange: ClosedRange<Int64> = -211_813_488_000_000_000...9_223_371_331_199_999_999

    /// The text a binary date or time parameter is stored as (what PostgreSQL would print for it); a value out of
    /// PostgreSQL's range is refused, as PostgreSQL refuses it.
    static func text(binary value: Int64, oid: Int32) throws(PGError) -> String {
        switch oid {
        case PGType.date:
            if value == Int64(Int32.max) { return "infinity" }
            if value == Int64(Int32.min) { return "-infinity" }
            guard (-2_451_545...2_147_483_494).contains(value) else { throw PGError("22008", "date out of range in a binary parameter") }
            return dateText(days: Int(value) + postgresEpochDays)
        case PGType.time:
            guard (0...microsPerDay).contains(value) else { throw PGError("22008", "time out of range in a binary parameter") }
            return timeText(micros: value)
        default:
            if value == Int64.max { return "infinity" }
            if value == Int64.min { return "-infinity" }
            guard timestampRange.contains(value) else { throw PGError("22008", "timestamp out of range in a binary parameter") }
            return timestampText(micros: value, withZone: oid == PGType.timestamptz)
        }
    }
}
