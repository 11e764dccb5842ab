/// A parse or validation error that names where in the file the problem is.
public struct TOMLError: Error, CustomStringConvertible, Equatable {
    /// 1-based line; 0 when the problem has no position (e.g. a missing key in the root table).
    public var line: Int
    /// 1-based column (in Unicode scalars); 0 when only the line is known.
    public var column: Int
    public var message: String

    public init(line: Int, column: Int, message: String) {
        self.line = line
        self.column = column
        self.message = message
    }

    public var description: String {
        if line <= 0 { return message }
        if column <= 0 { return "line \(line): \(message)" }
        return "line \(line), column \(column): \(message)"
    }
}
