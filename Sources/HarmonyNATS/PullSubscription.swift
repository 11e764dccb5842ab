import Dispatch
import Foundation
internal import CNats

/// Owns the plain `natsSubscription` on a pull consumer's inbox; unsubscribed and freed when the last user
/// (the subscription object or a fetch running right now) lets go of it.
final class InboxSubscription: @unchecked Sendable {
    let sub: OpaquePointer
    init(_ sub: OpaquePointer) { self.sub = sub }
    deinit {
        _ = natsSubscription_Unsubscribe(sub)
        natsSubscription_Destroy(sub)
    }
}

/// A pull subscription on a durable consumer: the caller fetches batches at its own pace.
///
/// The pull requests are ours, sent from a plain inbox subscription, not libnats' `js_PullSubscribe`:
/// libnats 3.4.1's fetch writes past the end of its message array when it starts with messages left on its
/// inbox and more keep coming for older requests (fixed upstream in 3.10, nats.c #749). A reconnect makes
/// exactly that: every fetch made while cut off is sent at once when the connection comes back, and their
/// answers pile up. The heap corruption that followed killed the node.
public final class PullSubscription: @unchecked Sendable {
    private let lock = NSLock()
    private var inbox: InboxSubscription?
    /// Kept so the JetStream context outlives the subscription on the Swift side too.
    public let jetStream: JetStream
    private let connection: NATSConnection
    /// `$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>`: where pull requests go.
    private let requestSubject: String
    private let inboxSubject: String
    private let what: String

    init(inbox: InboxSubscription, inboxSubject: String, stream: String, durable: String, jetStream: JetStream, description: String) {
        self.inbox = inbox
        self.inboxSubject = inboxSubject
        self.requestSubject = "$JS.API.CONSUMER.MSG.NEXT.\(stream).\(durable)"
        self.jetStream = jetStream
        self.connection = jetStream.connection
        self.what = description
    }

    deinit { close() }

    /// Blocks up to timeoutMs; returns [] on timeout. Returns early with fewer than `batch` messages
    /// when the server has no more right now. Never returns more than `batch`: anything beyond waits on the
    /// inbox for the next call. Not for concurrent use from several threads.
    /// `maxBytes`: the server sends at most that many bytes of messages per request (JetStream's `max_bytes`), so a
    /// batch of large messages cannot fill the caller's memory; a single message above it still comes, alone.
    public func fetch(batch: Int, timeoutMs: Int64, maxBytes: Int? = nil) throws -> [FetchedMessage] {
        guard batch > 0, timeoutMs > 0 else {
            throw NATSError.usage("fetching from \(what): batch (\(batch)) and timeoutMs (\(timeoutMs)) must be positive")
        }
        lock.lock()
        let held = inbox
        lock.unlock()
        guard let held else { throw NATSError.usage("fetching from \(what): subscription is closed") }
        let deadline = DispatchTime.now().uptimeNanoseconds + UInt64(timeoutMs) * 1_000_000
        var result: [FetchedMessage] = []

        // Answers to earlier requests that came after their fetch gave up: take them first, without waiting.
        // Their end-of-request statuses say nothing about this fetch.
        while result.count < batch, let item = try next(held, waitMs: 0) {
            if case .message(let m) = item { result.append(m) }
        }
        guard result.count < batch else { return result }
        // While disconnected a request would only be queued, and answered in a pile at reconnect.
        guard connection.isConnected else {
            if result.isEmpty { Thread.sleep(forTimeInterval: Double(min(timeoutMs, 100)) / 1000) }
            return result
        }

        // Ask for the rest: without waiting first, so what the server has comes back at once; if it has nothing,
        // ask again and wait for the first message up to the deadline (as libnats' simple fetch does).
        var noWait = batch - result.count > 1
        var sendRequest = true
        var bytesLimit = maxBytes
        while result.count < batch {
            let now = DispatchTime.now().uptimeNanoseconds
            guard now < deadline else { break }
            let remainingMs = Int64((deadline - now) / 1_000_000)
            guard remainingMs > 0 else { break }
            if sendRequest {
                sendRequest = false
                try sendPullRequest(batch: bytesLimit == nil && maxBytes != nil ? 1 : batch - result.count, expiresMs: remainingMs,
                                    noWait: noWait, maxBytes: bytesLimit)
            }
            guard let item = try next(held, waitMs: remainingMs) else { break }
            switch item {
            case .message(let m):
                result.append(m)
            case .heartbeat:
                continue
            case .noMessages:
                if noWait && result.isEmpty {
                    noWait = false
                    sendRequest = true
                    continue
                }
                return result
            case .requestEnded:
                return result
            case .maxBytesReached:
                // The next message alone is larger than the limit: ask for it by itself, without one.
                if result.isEmpty && bytesLimit != nil {
                    bytesLimit = nil
                    sendRequest = true
                    continue
                }
                return result
            case .failed(let text):
                if result.isEmpty { throw NATSError.usage("fetching up to \(batch) messages from \(what): \(text)") }
                return result
            }
        }
        return result
    }

    /// Stops fetching. The durable consumer stays on the server; the inbox subscription is freed once a fetch
    /// running right now returns. Idempotent.
    public func close() {
        lock.lock()
        inbox = nil
        lock.unlock()
    }

    /// What one message on the inbox is.
    private enum InboxItem {
        case message(FetchedMessage)
        /// 100: an idle heartbeat or flow control.
        case heartbeat
        /// 404: nothing to deliver right now (for a request that does not wait).
        case noMessages
        /// 408 or 409 "... Completed": a request expired or was fulfilled.
        case requestEnded
        /// 409 "Message Size Exceeds MaxBytes": the request's `max_bytes` is used up, or the next message alone is larger.
        case maxBytesReached
        /// Anything else: the consumer was deleted, too many waiting requests, no JetStream (503)...
        case failed(String)
    }

    /// The next message on the inbox, waiting up to `waitMs` (0: only what is there); nil when none came.
    private func next(_ inbox: InboxSubscription, waitMs: Int64) throws -> InboxItem? {
        var msg: OpaquePointer? = nil
        clearLastNATSError()
        let s = natsSubscription_NextMsg(&msg, inbox.sub, waitMs)
        if s == NATS_TIMEOUT { clearLastNATSError(); return nil }
        // Messages were dropped because the inbox overflowed: they stay unacknowledged and come again.
        if s == NATS_SLOW_CONSUMER { clearLastNATSError(); return .heartbeat }
        if s == NATS_NO_RESPONDERS { return .failed("no responders: the consumer does not exist, or JetStream is not enabled on the server") }
        try check(s, "waiting for messages from \(what)")
        guard let msg else { return nil }
        defer { natsMsg_Destroy(msg) }
        let reply = natsMsg_GetReply(msg).map { String(cString: $0) } ?? ""
        if reply.hasPrefix("$JS.ACK.") {
            var meta: UnsafeMutablePointer<jsMsgMetaData>? = nil
            try check(natsMsg_GetMetaData(&meta, msg), "reading JetStream metadata of a message from \(what)")
            defer { jsMsgMetaData_Destroy(meta) }
            return .message(FetchedMessage(payload: bytes(natsMsg_GetData(msg), Int(natsMsg_GetDataLength(msg))),
                                           reply: reply, connection: connection,
                                           streamSequence: meta!.pointee.Sequence.Stream,
                                           deliveries: meta!.pointee.NumDelivered, storedAtNs: meta!.pointee.Timestamp))
        }
        let status = header(msg, "Status") ?? ""
        let text = header(msg, "Description") ?? ""
        switch status {
        case "100": return .heartbeat
        case "404": return .noMessages
        case "408": return .requestEnded
        case "409" where text.lowercased().contains("completed"): return .requestEnded
        case "409" where text.lowercased().contains("maxbytes"): return .maxBytesReached
        case "": return .failed("a message without JetStream metadata arrived on the consumer's inbox")
        default: return .failed("the server answered \(status) \(text)")
        }
    }

    /// One pull request answered on this subscription's inbox (internal so tests can leave one unclaimed, as a fetch
    /// that gave up does).
    func sendPullRequest(batch: Int, expiresMs: Int64, noWait: Bool, maxBytes: Int? = nil) throws {
        // Expire a little before our own deadline so the server's answer is not left for the next fetch.
        let expiresNs = (expiresMs >= 20 ? expiresMs - 10 : expiresMs) * 1_000_000
        var body = "{\"batch\":\(batch),\"expires\":\(expiresNs)"
        if noWait { body += ",\"no_wait\":true" }
        if let maxBytes { body += ",\"max_bytes\":\(maxBytes)" }
        body += "}"
        try connection.withHandle { nc in
            let s = body.withCString { natsConnection_PublishRequestString(nc, requestSubject, inboxSubject, $0) }
            try check(s, "asking \(what) for up to \(batch) messages")
        }
    }
}

/// One JetStream message from a pull consumer: its payload and where to acknowledge it (no C memory kept).
public final class FetchedMessage: @unchecked Sendable {
    public let streamSequence: UInt64
    /// How many times the server has delivered this message (1 on first delivery).
    public let deliveries: UInt64
    public let payload: [UInt8]
    /// When the server stored the message, in nanoseconds since 1970 (its clock).
    public let storedAtNs: Int64
    /// The `$JS.ACK...` subject the server gave the message.
    private let reply: String
    private let connection: NATSConnection
    private let lock = NSLock()
    private var answered = false

    init(payload: [UInt8], reply: String, connection: NATSConnection, streamSequence: UInt64, deliveries: UInt64, storedAtNs: Int64) {
        self.payload = payload
        self.storedAtNs = storedAtNs
        self.reply = reply
        self.connection = connection
        self.streamSequence = streamSequence
        self.deliveries = deliveries
    }

    /// Acknowledges the message. With `waitForServer`, waits for the server's confirmation
    /// (use it before advancing a checkpoint that must not replay).
    public func ack(waitForServer: Bool = false) throws {
        try answer("+ACK", final: true, waitForServer: waitForServer, "acking stream sequence \(streamSequence)")
    }

    /// Asks the server to redeliver the message after `delayMs` milliseconds (0 = now).
    public func nak(delayMs: Int64) throws {
        let body = delayMs > 0 ? "-NAK {\"delay\":\(delayMs * 1_000_000)}" : "-NAK"
        try answer(body, final: true, waitForServer: false, "nak'ing stream sequence \(streamSequence)")
    }

    /// Tells the server the message is still being worked on (resets its ack wait).
    public func inProgress() throws {
        try answer("+WPI", final: false, waitForServer: false, "marking stream sequence \(streamSequence) in progress")
    }

    /// Sends one acknowledgement body to the message's reply subject; after an ack or nak, later ones are no-ops.
    private func answer(_ body: String, final: Bool, waitForServer: Bool, _ action: String) throws {
        lock.lock(); defer { lock.unlock() }
        guard !answered else { return }
        try connection.withHandle { nc in
            if waitForServer {
                var response: OpaquePointer? = nil
                try check(natsConnection_RequestString(&response, nc, reply, body, 5_000), "\(action) (waiting for the server)")
                natsMsg_Destroy(response)
            } else {
                try check(natsConnection_PublishString(nc, reply, body), action)
            }
        }
        if final { answered = true }
    }
}
