/// What the front ends read off SQL text before SQLite compiles it.
public enum SQLText {
    /// `sql` without the spaces, semicolons and comments it starts with.
    public static func strippedLeading(_ sql: String) -> Substring {
        var rest = Substring(sql)
        while true {
            rest = rest.drop { $0.isWhitespace || $0 == ";" }
            if rest.hasPrefix("--") {
                rest = rest.drop { $0 != "\n" }
            } else if rest.hasPrefix("/*"), let end = rest.range(of: "*/") {
                rest = rest[end.upperBound...]
            } else {
                return rest
            }
        }
    }

    /// The first keyword, uppercased ("" when there is none).
    public static func firstKeyword(_ sql: String) -> String {
        String(strippedLeading(sql).prefix { $0.isLetter }).uppercased()
    }
}
