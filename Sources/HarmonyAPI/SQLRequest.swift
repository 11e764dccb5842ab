import Foundation
import HarmonySQLite

/// A refusal or failure the API answers with an HTTP status and one sentence (and, in an array, which statement).
public struct APIError: Error, Equatable, CustomStringConvertible {
    public var status: Int
    public var message: String
    public var statement: Int?
    public init(status: Int, _ message: String, statement: Int? = nil) {
        self.status = status
        self.message = message
        self.statement = statement
    }
    public var description: String { message }

    /// The error body: `{"error": "...", "statement": i}` (statement only for an array).
    public var body: [UInt8] {
        var members: [(key: String, value: JSONValue)] = [("error", .string(message))]
        if let statement { members.append(("statement", .integer(Int64(statement)))) }
        return JSONWriter.encode(.object(members))
    }
}

/// A statement's parameters as the client sent them: an array for `?`, an object for `:name`, `@name`, `$name`.
public enum SQLParameters: Equatable, Sendable {
    case none
    case positional([DatabaseValue])
    case named([String: DatabaseValue])
}

public struct SQLCommand: Equatable, Sendable {
    public var sql: String
    public var parameters: SQLParameters
    public init(sql: String, parameters: SQLParameters = .none) {
        self.sql = sql
        self.parameters = parameters
    }
}

/// One `POST /` body: one command, or an array of them that runs in one transaction.
public struct SQLRequest: Equatable, Sendable {
    public var commands: [SQLCommand]
    public var isBatch: Bool

    public init(commands: [SQLCommand], isBatch: Bool) {
        self.commands = commands
        self.isBatch = isBatch
    }

    /// Reads a body; every mistake is a 400 that says what and where.
    public static func decode(_ body: [UInt8]) throws(APIError) -> SQLRequest {
        let document: JSONValue
        do { document = try JSONReader.parse(body) } catch { throw APIError(status: 400, error.description) }
        switch document {
        case .object:
            return SQLRequest(commands: [try command(document, index: nil)], isBatch: false)
        case .array(let items):
            guard !items.isEmpty else { throw APIError(status: 400, "the array of statements is empty") }
            var commands: [SQLCommand] = []
            for (i, item) in items.enumerated() { commands.append(try command(item, index: i)) }
            return SQLRequest(commands: commands, isBatch: true)
        default:
            throw APIError(status: 400, #"the body must be {"sql": ..., "params": ...} or an array of them"#)
        }
    }

    static func command(_ value: JSONValue, index: Int?) throws(APIError) -> SQLCommand {
        let at = index.map { "statement \($0): " } ?? ""
        guard case .object(let members) = value else {
            throw APIError(status: 400, #"\#(at)each statement must be an object {"sql": ..., "params": ...}"#, statement: index)
        }
        for member in members where member.key != "sql" && member.key != "params" {
            throw APIError(status: 400, #"\#(at)unknown field "\#(member.key)" (allowed: "sql", "params")"#, statement: index)
        }
        guard case .string(let sql)? = value["sql"] else {
            throw APIError(status: 400, #"\#(at)"sql" must be a string"#, statement: index)
        }
        switch value["params"] {
        case nil, .null?:
            return SQLCommand(sql: sql)
        case .array(let items)?:
            var values: [DatabaseValue] = []
            for (i, item) in items.enumerated() { values.append(try parameter(item, name: "params[\(i)]", at: at, index: index)) }
            return SQLCommand(sql: sql, parameters: .positional(values))
        case .object(let pairs)?:
            var values: [String: DatabaseValue] = [:]
            for pair in pairs { values[pair.key] = try parameter(pair.value, name: "params.\(pair.key)", at: at, index: index) }
            return SQLCommand(sql: sql, parameters: .named(values))
        default:
            throw APIError(status: 400, #"\#(at)"params" must be an object (named parameters) or an array (? parameters)"#, statement: index)
        }
    }

    /// JSON to an SQLite value: numbers keep INTEGER or REAL, booleans become 1 and 0, and a BLOB is
    /// `{"base64": "..."}`.
    static func parameter(_ value: JSONValue, name: String, at: String, index: Int?) throws(APIError) -> DatabaseValue {
        switch value {
        case .null: return .null
        case .bool(let b): return .integer(b ? 1 : 0)
        case .integer(let i): return .integer(i)
        case .real(let d): return .real(d)
        case .string(let s): return .text(s)
        case .object(let members):
            if members.count == 1, members[0].key == "base64", case .string(let text) = members[0].value {
                guard let data = Data(base64Encoded: text) else {
                    throw APIError(status: 400, "\(at)\(name) is not valid base64", statement: index)
                }
                return .blob([UInt8](data))
            }
            throw APIError(status: 400, #"\#(at)\#(name): an object parameter must be a BLOB, {"base64": "..."}"#, statement: index)
        case .array:
            throw APIError(status: 400, #"\#(at)\#(name): an array is not an SQL value (a BLOB is {"base64": "..."})"#, statement: index)
        }
    }
}

extension JSONWriter {
    /// An SQLite value as the API returns it: the mirror of `SQLRequest.parameter`.
    public mutating func sqlValue(_ v: DatabaseValue) {
        switch v {
        case .null: null()
        case .integer(let i): integer(i)
        case .real(let d): real(d)
        case .text(let s): string(s)
        case .blob(let b):
            raw(#"{"base64":"#)
            string(Data(b).base64EncodedString())
            raw("}")
        }
    }
}

/// Compares two secrets in time that depends only on their lengths, never on where they first differ.
public func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    var difference: UInt8 = a.count == b.count ? 0 : 1
    for i in 0..<max(a.count, b.count) {
        difference |= (i < a.count ? a[i] : 0) ^ (i < b.count ? b[i] : 0)
    }
    return difference == 0
}
