internal import CNats

/// A libnats failure carrying the status, the JetStream error code and what was being done, so logs explain themselves.
public struct NATSError: Error, CustomStringConvertible, Sendable {
    /// The raw `natsStatus` value (0 = NATS_OK; -1 when the error comes from this wrapper, not libnats).
    public var status: Int32
    /// The JetStream API error code (`jsErrCode`, e.g. 10058 "stream name already in use"), 0 when none.
    public var jetStreamCode: Int32
    /// Human-readable text: the action, the libnats status text and libnats' last error text.
    public var message: String

    public init(status: Int32, jetStreamCode: Int32 = 0, message: String) {
        self.status = status
        self.jetStreamCode = jetStreamCode
        self.message = message
    }

    public var description: String { message }

    /// True when libnats reported NATS_TIMEOUT.
    public var isTimeout: Bool { status == Int32(bitPattern: NATS_TIMEOUT.rawValue) }
    /// True when libnats reported NATS_NOT_FOUND.
    public var isNotFound: Bool { status == Int32(bitPattern: NATS_NOT_FOUND.rawValue) }

    /// Builds an error for a failed libnats call. Must run on the thread that made the call,
    /// right after it, because `nats_GetLastError` is thread-local.
    static func libnats(_ status: natsStatus, jsCode: jsErrCode = jsErrCode(0), while action: String) -> NATSError {
        var text = "\(action): \(statusText(status))"
        var lastStatus = NATS_OK
        if let last = nats_GetLastError(&lastStatus), lastStatus == status {
            let detail = stripSourceLocation(String(cString: last))
            if !detail.isEmpty && detail != statusText(status) {
                text += " (\(detail))"
            }
        }
        if jsCode.rawValue != 0 {
            if let known = knownJetStreamErrors[Int(jsCode.rawValue)], !text.lowercased().contains(known) {
                text += " [JetStream error \(jsCode.rawValue): \(known)]"
            } else {
                text += " [JetStream error \(jsCode.rawValue)]"
            }
        }
        return NATSError(status: Int32(bitPattern: status.rawValue),
                         jetStreamCode: Int32(bitPattern: jsCode.rawValue),
                         message: text)
    }

    /// An error detected by this wrapper itself (object already closed, inconsistent options).
    static func usage(_ message: String) -> NATSError {
        NATSError(status: -1, message: message)
    }

    /// A bad argument caught before calling libnats (status NATS_INVALID_ARG, like libnats' own checks).
    static func invalidArgument(_ message: String) -> NATSError {
        NATSError(status: Int32(bitPattern: NATS_INVALID_ARG.rawValue), message: message)
    }

    /// libnats prefixes its error texts with "(file.c:123): "; that is noise in our logs.
    static func stripSourceLocation(_ text: String) -> String {
        guard text.hasPrefix("("), let close = text.range(of: "): ") else { return text }
        let inside = text[text.index(after: text.startIndex)..<close.lowerBound]
        guard inside.contains(".c:"), !inside.contains(" ") else { return text }
        return String(text[close.upperBound...])
    }

    /// Texts for the JetStream codes that libnats reports without the server's description.
    private static let knownJetStreamErrors: [Int: String] = [
        10008: "jetstream system temporarily unavailable",
        10014: "consumer not found",
        10023: "insufficient resources",
        10037: "no message found",
        10039: "jetstream not enabled for account",
        10047: "insufficient storage resources available",
        10058: "stream name already in use with a different configuration",
        10059: "stream not found",
        10065: "subjects overlap with an existing stream",
        10076: "jetstream not enabled",
    ]

    static func statusText(_ status: natsStatus) -> String {
        if let t = natsStatus_GetText(status) { return String(cString: t) }
        return "natsStatus \(status.rawValue)"
    }
}

/// Throws a `NATSError` describing `action` unless `status` is NATS_OK.
@inline(__always)
func check(_ status: natsStatus, jsCode: jsErrCode = jsErrCode(0), _ action: @autoclosure () -> String) throws {
    if status != NATS_OK {
        throw NATSError.libnats(status, jsCode: jsCode, while: action())
    }
}

/// Rejects names that libnats or the server would not catch quickly: a space makes the JetStream API
/// subject invalid, so the server silently drops the request and the call only fails after the timeout.
func validateName(_ name: String, _ kind: String) throws {
    guard !name.isEmpty else { throw NATSError.invalidArgument("invalid \(kind) name '': must not be empty") }
    for ch in name.unicodeScalars {
        if ch == "." || ch == "*" || ch == ">" || ch == "/" || ch == "\\"
            || ch.properties.isWhitespace || ch.value < 0x20 || ch.value == 0x7F {
            throw NATSError.invalidArgument("invalid \(kind) name '\(name)': must not contain '\(ch.escaped(asASCII: true))'")
        }
    }
}
