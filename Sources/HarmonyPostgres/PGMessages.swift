import NIOCore

/// What a PostgreSQL client sends (protocol 3.0), decoded from its bytes.
public enum FrontendMessage: Equatable, Sendable {
    /// The first message of a session: protocol 3.0 and its parameters (user, database, application_name...).
    case startup(parameters: [String: String])
    case sslRequest
    case gssEncryptionRequest
    case cancel(processID: Int32, secret: Int32)
    /// 'p': a password, or a SASL initial response (mechanism and data) or continuation; which one the server
    /// asked for decides how it is read, so the raw body is kept.
    case password(body: [UInt8])
    case query(String)
    case parse(name: String, query: String, parameterTypes: [Int32])
    case bind(portal: String, statement: String, parameterFormats: [Int16], parameters: [[UInt8]?], resultFormats: [Int16])
    case describe(kind: UInt8, name: String)
    case execute(portal: String, maxRows: Int32)
    case close(kind: UInt8, name: String)
    case sync
    case flush
    case terminate
}

/// A protocol violation: the session ends with an ErrorResponse carrying this (SQLSTATE 08P01).
public struct PGProtocolError: Error, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Cuts the byte stream into frontend messages. Before the startup message there is no type byte; after it,
/// every message is a type byte and a length. A length beyond `maxMessageBytes`, an unknown type or a body that
/// does not parse is a protocol error; nothing is buffered beyond one message.
public struct FrontendDecoder: Sendable {
    public var maxMessageBytes: Int
    public var startupDone = false

    public init(maxMessageBytes: Int) { self.maxMessageBytes = maxMessageBytes }

    /// The next complete message in `buffer` (consumed), nil when more bytes are needed.
    public mutating func next(_ buffer: inout ByteBuffer) throws(PGProtocolError) -> FrontendMessage? {
        if !startupDone {
            guard let length = buffer.getInteger(at: buffer.readerIndex, as: Int32.self) else { return nil }
            guard length >= 8, Int(length) <= min(maxMessageBytes, 10_000) else {
                throw PGProtocolError("a startup message of \(length) bytes")
            }
            guard buffer.readableBytes >= Int(length) else { return nil }
            var body = buffer.readSlice(length: Int(length))!
            body.moveReaderIndex(forwardBy: 4)
            let code = body.readInteger(as: Int32.self)!
            switch code {
            case 80877103: return .sslRequest
            case 80877104: return .gssEncryptionRequest
            case 80877102:
                guard let pid = body.readInteger(as: Int32.self), let secret = body.readInteger(as: Int32.self) else {
                    throw PGProtocolError("a cancel request without its key")
                }
                return .cancel(processID: pid, secret: secret)
            case 196608:
                var parameters: [String: String] = [:]
                while true {
                    let key = try cString(&body)
                    if key.isEmpty { break }
                    parameters[key] = try cString(&body)
                }
                startupDone = true
                return .startup(parameters: parameters)
            default:
                throw PGProtocolError("protocol version \(code >> 16).\(code & 0xFFFF) is not supported (3.0 is)")
            }
        }
        guard buffer.readableBytes >= 5 else { return nil }
        let type = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self)!
        let length = buffer.getInteger(at: buffer.readerIndex + 1, as: Int32.self)!
        guard length >= 4, Int(length) <= maxMessageBytes else {
            throw PGProtocolError("a message of \(length) bytes (the limit is \(maxMessageBytes))")
        }
        guard buffer.readableBytes >= 1 + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: 5)
        var body = buffer.readSlice(length: Int(length) - 4)!
        let message = try parse(type: type, &body)
        guard body.readableBytes == 0 else { throw PGProtocolError("message '\(Character(UnicodeScalar(type)))' has \(body.readableBytes) stray bytes") }
        return message
    }

    private func parse(type: UInt8, _ body: inout ByteBuffer) throws(PGProtocolError) -> FrontendMessage {
        switch type {
        case UInt8(ascii: "Q"): return .query(try cString(&body))
        case UInt8(ascii: "p"): return .password(body: body.readBytes(length: body.readableBytes) ?? [])
        case UInt8(ascii: "P"):
            let name = try cString(&body), query = try cString(&body)
            let count = try int16(&body)
            var types: [Int32] = []
            for _ in 0..<max(0, Int(count)) { types.append(try int32(&body)) }
            return .parse(name: name, query: query, parameterTypes: types)
        case UInt8(ascii: "B"):
            let portal = try cString(&body), statement = try cString(&body)
            var formats: [Int16] = []
            for _ in 0..<max(0, Int(try int16(&body))) { formats.append(try int16(&body)) }
            var values: [[UInt8]?] = []
            for _ in 0..<max(0, Int(try int16(&body))) {
                let n = try int32(&body)
                if n == -1 { values.append(nil); continue }
                guard n >= 0, let bytes = body.readBytes(length: Int(n)) else { throw PGProtocolError("a Bind parameter runs past its message") }
                values.append(bytes)
            }
            var results: [Int16] = []
            for _ in 0..<max(0, Int(try int16(&body))) { results.append(try int16(&body)) }
            return .bind(portal: portal, statement: statement, parameterFormats: formats, parameters: values, resultFormats: results)
        case UInt8(ascii: "D"):
            let kind = try byte(&body)
            guard kind == UInt8(ascii: "S") || kind == UInt8(ascii: "P") else { throw PGProtocolError("Describe of kind \(kind)") }
            return .describe(kind: kind, name: try cString(&body))
        case UInt8(ascii: "E"): return .execute(portal: try cString(&body), maxRows: try int32(&body))
        case UInt8(ascii: "C"):
            let kind = try byte(&body)
            guard kind == UInt8(ascii: "S") || kind == UInt8(ascii: "P") else { throw PGProtocolError("Close of kind \(kind)") }
            return .close(kind: kind, name: try cString(&body))
        case UInt8(ascii: "S"): return .sync
        case UInt8(ascii: "H"): return .flush
        case UInt8(ascii: "X"): return .terminate
        default:
            throw PGProtocolError("unknown message type \(type < 0x80 && type >= 0x20 ? "'\(Character(UnicodeScalar(type)))'" : String(type))")
        }
    }

    private func cString(_ body: inout ByteBuffer) throws(PGProtocolError) -> String {
        guard let end = body.readableBytesView.firstIndex(of: 0) else { throw PGProtocolError("a string without its terminating zero") }
        let bytes = body.readBytes(length: end - body.readerIndex)!
        body.moveReaderIndex(forwardBy: 1)
        guard let text = String(validating: bytes, as: UTF8.self) else { throw PGProtocolError("a string that is not UTF-8") }
        return text
    }

    private func int16(_ body: inout ByteBuffer) throws(PGProtocolError) -> Int16 {
        guard let v = body.readInteger(as: Int16.self) else { throw PGProtocolError("a message ends early") }
        return v
    }

    private func int32(_ body: inout ByteBuffer) throws(PGProtocolError) -> Int32 {
        guard let v = body.readInteger(as: Int32.self) else { throw PGProtocolError("a message ends early") }
        return v
    }

    private func byte(_ body: inout ByteBuffer) throws(PGProtocolError) -> UInt8 {
        guard let v = body.readInteger(as: UInt8.self) else { throw PGProtocolError("a message ends early") }
        return v
    }
}

/// What the server sends, each written as a type byte, a length and a body.
public enum BackendMessage: Equatable, Sendable {
    case authenticationOK
    case authenticationCleartextPassword
    case authenticationMD5Password(salt: [UInt8])
    case authenticationSASL(mechanisms: [String])
    case authenticationSASLContinue([UInt8])
    case authenticationSASLFinal([UInt8])
    case parameterStatus(name: String, value: String)
    case backendKeyData(processID: Int32, secret: Int32)
    case readyForQuery(status: UInt8)
    case rowDescription([PGColumn])
    case dataRow([[UInt8]?])
    case commandComplete(String)
    case emptyQueryResponse
    case parseComplete
    case bindComplete
    case closeComplete
    case noData
    case portalSuspended
    case parameterDescription([Int32])
    case error(PGError)
    case notice(String)

    public func write(into out: inout ByteBuffer) {
        func frame(_ type: UInt8, _ body: (inout ByteBuffer) -> Void) {
            out.writeInteger(type)
            let lengthAt = out.writerIndex
            out.writeInteger(Int32(0))
            body(&out)
            out.setInteger(Int32(out.writerIndex - lengthAt), at: lengthAt)
        }
        func cString(_ s: String, _ b: inout ByteBuffer) {
            b.writeString(s)
            b.writeInteger(UInt8(0))
        }
        switch self {
        case .authenticationOK: frame(UInt8(ascii: "R")) { $0.writeInteger(Int32(0)) }
        case .authenticationCleartextPassword: frame(UInt8(ascii: "R")) { $0.writeInteger(Int32(3)) }
        case .authenticationMD5Password(let salt): frame(UInt8(ascii: "R")) { $0.writeInteger(Int32(5)); $0.writeBytes(salt) }
        case .authenticationSASL(let mechanisms):
            frame(UInt8(ascii: "R")) { b in
                b.writeInteger(Int32(10))
                for m in mechanisms { cString(m, &b) }
                b.writeInteger(UInt8(0))
            }
        case .authenticationSASLContinue(let data): frame(UInt8(ascii: "R")) { $0.writeInteger(Int32(11)); $0.writeBytes(data) }
        case .authenticationSASLFinal(let data): frame(UInt8(ascii: "R")) { $0.writeInteger(Int32(12)); $0.writeBytes(data) }
        case .parameterStatus(let name, let value): frame(UInt8(ascii: "S")) { cString(name, &$0); cString(value, &$0) }
        case .backendKeyData(let pid, let secret): frame(UInt8(ascii: "K")) { $0.writeInteger(pid); $0.writeInteger(secret) }
        case .readyForQuery(let status): frame(UInt8(ascii: "Z")) { $0.writeInteger(status) }
        case .rowDescription(let columns):
            frame(UInt8(ascii: "T")) { b in
                b.writeInteger(Int16(columns.count))
                for c in columns {
                    cString(c.name, &b)
                    b.writeInteger(Int32(0))  // table OID
                    b.writeInteger(Int16(0))  // column number
                    b.writeInteger(c.typeOID)
                    b.writeInteger(c.typeSize)
                    b.writeInteger(Int32(-1))  // type modifier
                    b.writeInteger(c.format)
                }
            }
        case .dataRow(let values):
            frame(UInt8(ascii: "D")) { b in
                b.writeInteger(Int16(values.count))
                for v in values {
                    if let v {
                        b.writeInteger(Int32(v.count))
                        b.writeBytes(v)
                    } else {
                        b.writeInteger(Int32(-1))
                    }
                }
            }
        case .commandComplete(let tag): frame(UInt8(ascii: "C")) { cString(tag, &$0) }
        case .emptyQueryResponse: frame(UInt8(ascii: "I")) { _ in }
        case .parseComplete: frame(UInt8(ascii: "1")) { _ in }
        case .bindComplete: frame(UInt8(ascii: "2")) { _ in }
        case .closeComplete: frame(UInt8(ascii: "3")) { _ in }
        case .noData: frame(UInt8(ascii: "n")) { _ in }
        case .portalSuspended: frame(UInt8(ascii: "s")) { _ in }
        case .parameterDescription(let types):
            frame(UInt8(ascii: "t")) { b in
                b.writeInteger(Int16(types.count))
                for t in types { b.writeInteger(t) }
            }
        case .error(let e):
            frame(UInt8(ascii: "E")) { b in
                for (code, value) in [("S", e.severity), ("V", e.severity), ("C", e.code), ("M", e.message)] + (e.detail.map { [("D", $0)] } ?? []) {
                    b.writeInteger(UInt8(ascii: Unicode.Scalar(code)!))
                    cString(value, &b)
                }
                b.writeInteger(UInt8(0))
            }
        case .notice(let message):
            frame(UInt8(ascii: "N")) { b in
                for (code, value) in [("S", "NOTICE"), ("V", "NOTICE"), ("C", "00000"), ("M", message)] {
                    b.writeInteger(UInt8(ascii: Unicode.Scalar(code)!))
                    cString(value, &b)
                }
                b.writeInteger(UInt8(0))
            }
        }
    }
}

/// A column as RowDescription announces it.
public struct PGColumn: Equatable, Sendable {
    public var name: String
    public var typeOID: Int32
    public var typeSize: Int16
    /// 0 text, 1 binary.
    public var format: Int16
    public init(name: String, typeOID: Int32, typeSize: Int16, format: Int16) {
        self.name = name
        self.typeOID = typeOID
        self.typeSize = typeSize
        self.format = format
    }
}

/// An ErrorResponse: SQLSTATE, severity (ERROR, or FATAL when the session ends) and message.
public struct PGError: Error, Equatable, Sendable {
    public var severity = "ERROR"
    public var code: String
    public var message: String
    public var detail: String?
    public init(_ code: String, _ message: String, severity: String = "ERROR", detail: String? = nil) {
        self.code = code
        self.message = message
        self.severity = severity
        self.detail = detail
    }
}
