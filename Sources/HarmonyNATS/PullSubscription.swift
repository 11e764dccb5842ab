import Foundation
internal import CNats

/// Owns a `natsSubscription`. Fetched messages keep it alive, because acking a `natsMsg`
/// dereferences its subscription: it is destroyed only when the subscription and all its messages are gone.
final class SubscriptionHandle: @unchecked Sendable {
    let sub: OpaquePointer
    init(_ sub: OpaquePointer) { self.sub = sub }
    // Destroy (not Unsubscribe) so the durable consumer stays on the server.
    deinit { natsSubscription_Destroy(sub) }
}

/// A pull subscription on a durable consumer: the caller fetches batches at its own pace.
public final class PullSubscription: @unchecked Sendable {
    private let lock = NSLock()
    private var handle: SubscriptionHandle?
    /// Kept so the JetStream context outlives the subscription on the Swift side too.
    public let jetStream: JetStream
    private let what: String

    init(handle: SubscriptionHandle, jetStream: JetStream, description: String) {
        self.handle = handle
        self.jetStream = jetStream
        self.what = description
    }

    deinit { close() }

    /// Blocks up to timeoutMs; returns [] on timeout. Returns early with fewer than `batch` messages
    /// when the server has no more right now.
    public func fetch(batch: Int, timeoutMs: Int64) throws -> [FetchedMessage] {
        guard batch > 0, timeoutMs > 0 else {
            throw NATSError.usage("fetching from \(what): batch (\(batch)) and timeoutMs (\(timeoutMs)) must be positive")
        }
        lock.lock()
        let h = handle
        lock.unlock()
        guard let h else { throw NATSError.usage("fetching from \(what): subscription is closed") }

        var list = natsMsgList()
        var jerr = jsErrCode(0)
        clearLastNATSError()
        let s = natsSubscription_Fetch(&list, h.sub, Int32(clamping: batch), timeoutMs, &jerr)
        if s == NATS_TIMEOUT { return [] }
        try check(s, jsCode: jerr, "fetching up to \(batch) messages from \(what)")
        defer { natsMsgList_Destroy(&list) }  // frees the array and any message not taken below

        var result: [FetchedMessage] = []
        result.reserveCapacity(Int(list.Count))
        for i in 0..<Int(list.Count) {
            guard let msg = list.Msgs[i] else { continue }
            var meta: UnsafeMutablePointer<jsMsgMetaData>? = nil
            try check(natsMsg_GetMetaData(&meta, msg), "reading JetStream metadata of a message from \(what)")
            let streamSeq = meta!.pointee.Sequence.Stream
            let delivered = meta!.pointee.NumDelivered
            jsMsgMetaData_Destroy(meta)
            list.Msgs[i] = nil  // ownership moves to the FetchedMessage
            result.append(FetchedMessage(msg: msg, subscription: h, streamSequence: streamSeq, deliveries: delivered))
        }
        return result
    }

    /// Stops fetching. The durable consumer stays on the server; the C subscription is freed once
    /// messages already fetched from it are released too. Idempotent.
    public func close() {
        lock.lock()
        handle = nil
        lock.unlock()
    }
}

/// One JetStream message from a pull consumer; owns its `natsMsg` (destroyed in deinit).
public final class FetchedMessage: @unchecked Sendable {
    public let streamSequence: UInt64
    /// How many times the server has delivered this message (1 on first delivery).
    public let deliveries: UInt64
    public let payload: [UInt8]
    private let lock = NSLock()
    private let msg: OpaquePointer
    private let subscription: SubscriptionHandle

    init(msg: OpaquePointer, subscription: SubscriptionHandle, streamSequence: UInt64, deliveries: UInt64) {
        self.msg = msg
        self.subscription = subscription
        self.streamSequence = streamSequence
        self.deliveries = deliveries
        self.payload = bytes(natsMsg_GetData(msg), Int(natsMsg_GetDataLength(msg)))
    }

    deinit { natsMsg_Destroy(msg) }

    /// Acknowledges the message. With `waitForServer`, waits for the server's confirmation
    /// (use it before advancing a checkpoint that must not replay).
    public func ack(waitForServer: Bool = false) throws {
        lock.lock(); defer { lock.unlock() }
        clearLastNATSError()
        if waitForServer {
            var jerr = jsErrCode(0)
            try check(natsMsg_AckSync(msg, nil, &jerr), jsCode: jerr, "acking stream sequence \(streamSequence) (sync)")
        } else {
            try check(natsMsg_Ack(msg, nil), "acking stream sequence \(streamSequence)")
        }
    }

    /// Asks the server to redeliver the message after `delayMs` milliseconds (0 = now).
    public func nak(delayMs: Int64) throws {
        lock.lock(); defer { lock.unlock() }
        clearLastNATSError()
        if delayMs > 0 {
            try check(natsMsg_NakWithDelay(msg, delayMs, nil), "nak'ing stream sequence \(streamSequence) with delay \(delayMs) ms")
        } else {
            try check(natsMsg_Nak(msg, nil), "nak'ing stream sequence \(streamSequence)")
        }
    }

    /// Tells the server the message is still being worked on (resets its ack wait).
    public func inProgress() throws {
        lock.lock(); defer { lock.unlock() }
        clearLastNATSError()
        try check(natsMsg_InProgress(msg, nil), "marking stream sequence \(streamSequence) in progress")
    }
}
