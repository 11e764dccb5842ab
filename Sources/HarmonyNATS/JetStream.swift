import Foundation
internal import CNats

/// The outcome of one asynchronous publish, delivered once per `publishAsync` so the caller can advance or retry.
public struct PublishResult: Sendable {
    /// The Nats-Msg-Id given to `publishAsync`.
    public var messageID: String
    /// Stream sequence assigned by the server; nil on error. For a duplicate it is the original's sequence.
    public var sequence: UInt64?
    /// The server recognised the message ID inside the duplicate window and did not store it again.
    public var duplicate: Bool
    /// Why the publish failed (server error, ack timeout, discarded at close); nil on success.
    public var error: String?

    public init(messageID: String, sequence: UInt64?, duplicate: Bool, error: String?) {
        self.messageID = messageID
        self.sequence = sequence
        self.duplicate = duplicate
        self.error = error
    }
}

/// Counters of a stream, used to resume publishing and to check retention.
public struct StreamState: Sendable, Equatable {
    public var firstSequence: UInt64
    public var lastSequence: UInt64
    public var messages: UInt64

    public init(firstSequence: UInt64, lastSequence: UInt64, messages: UInt64) {
        self.firstSequence = firstSequence
        self.lastSequence = lastSequence
        self.messages = messages
    }

    init(_ s: jsStreamState) {
        self.init(firstSequence: s.FirstSeq, lastSequence: s.LastSeq, messages: s.Msgs)
    }
}

/// Holds the user's publish callback; passed to libnats as an `Unmanaged` pointer.
final class PublishCallbackBox: Sendable {
    let deliver: @Sendable (PublishResult) -> Void
    init(_ deliver: @escaping @Sendable (PublishResult) -> Void) { self.deliver = deliver }
}

/// Called by libnats (on its reply-delivery or timer thread) for each async publish.
/// Only reads the C objects it is given and hands a value type to the `@Sendable` closure.
private let publishAckHandler: jsPubAckHandler = { _, msg, pa, pae, closure in
    let id = header(msg, "Nats-Msg-Id") ?? ""
    let result: PublishResult
    if let pa {
        result = PublishResult(messageID: id, sequence: pa.pointee.Sequence,
                               duplicate: pa.pointee.Duplicate, error: nil)
    } else {
        var text = "publish failed"
        if let pae {
            // libnats gives a timeout as "Timeout" twice over; an operator reading the log wants what it means.
            let status = NATSError.statusText(pae.pointee.Err)
            text = pae.pointee.Err == NATS_TIMEOUT
                ? "no acknowledgement from JetStream in time (the server down, unreachable or overloaded)"
                : status
            if let t = pae.pointee.ErrText.map({ String(cString: $0) }), t.lowercased() != status.lowercased() {
                text += ": " + t
            }
            if pae.pointee.ErrCode.rawValue != 0 { text += " [JetStream error \(pae.pointee.ErrCode.rawValue)]" }
        }
        result = PublishResult(messageID: id, sequence: nil, duplicate: false, error: text)
    }
    // The handler owns the original message (see jsPubAckHandler docs).
    natsMsg_Destroy(msg)
    if let closure {
        Unmanaged<PublishCallbackBox>.fromOpaque(closure).takeUnretainedValue().deliver(result)
    }
}

/// A JetStream context (`jsCtx`): streams, async publishing with dedup IDs, pull consumers and KV.
/// What the server knows of a durable consumer: how far it delivered, what is acknowledged, what is left.
public struct ConsumerState: Sendable, Equatable {
    public var deliveredStreamSequence: UInt64
    public var ackFloorStreamSequence: UInt64
    /// Messages in the stream not yet delivered to this consumer.
    public var pending: UInt64
    /// Delivered and not yet acknowledged.
    public var ackPending: Int64
    public var redelivered: Int64
    /// Pull requests waiting at the server.
    public var waiting: Int64
}

public final class JetStream: @unchecked Sendable {
    /// The connection this context was made from (kept alive with it).
    public let connection: NATSConnection
    private let guardian: HandleGuard<OpaquePointer>
    private let box: Unmanaged<PublishCallbackBox>
    private let ackTimeoutMs: Int64
    /// Set after the first successful publishAsync: libnats 3.4.1's js_PublishAsyncGetPendingList
    /// dereferences the pending map, which only exists once something was published (NULL before: crash).
    private let publishedLock = NSLock()
    private var hasPublished = false

    init(connection: NATSConnection, maxPending: Int, ackTimeoutMs: Int64, stallWaitMs: Int64,
         requestTimeoutMs: Int64, onPublishResult: @escaping @Sendable (PublishResult) -> Void) throws {
        self.connection = connection
        self.ackTimeoutMs = max(0, ackTimeoutMs)
        let box = Unmanaged.passRetained(PublishCallbackBox(onPublishResult))
        var jo = jsOptions()
        jsOptions_Init(&jo)
        jo.Wait = max(1, requestTimeoutMs)  // JetStream API requests (stream/consumer/KV calls), ms
        jo.PublishAsync.MaxPending = Int64(max(1, maxPending))
        jo.PublishAsync.StallWait = max(1, stallWaitMs)
        jo.PublishAsync.AckHandler = publishAckHandler
        jo.PublishAsync.AckHandlerClosure = box.toOpaque()
        var js: OpaquePointer? = nil
        do {
            try connection.withHandle { nc in
                try check(natsConnection_JetStream(&js, nc, &jo), "creating JetStream context")
            }
        } catch {
            box.release()
            throw error
        }
        self.box = box
        self.guardian = HandleGuard(js!, what: "JetStream context")
    }

    deinit { close() }

    /// Frees the context. Publishes still waiting for an ack are reported to `onPublishResult` as
    /// errors ("discarded") on this thread. Must not be called from inside `onPublishResult`.
    public func close() {
        guard let js = guardian.take() else { return }
        // Take back messages that have no ack yet: libnats will not call the handler for them any more.
        publishedLock.lock()
        let published = hasPublished
        publishedLock.unlock()
        var pending = natsMsgList()
        if published && js_PublishAsyncGetPendingList(&pending, js) == NATS_OK {
            let callback = box.takeUnretainedValue()
            for i in 0..<Int(pending.Count) {
                let id = header(pending.Msgs[i], "Nats-Msg-Id") ?? ""
                callback.deliver(PublishResult(messageID: id, sequence: nil, duplicate: false,
                                               error: "discarded: JetStream context closed before the ack arrived"))
            }
            natsMsgList_Destroy(&pending)
        }
        // Wait for handlers running right now (libnats counts them as pending until they return).
        var po = jsPubOptions()
        jsPubOptions_Init(&po)
        po.MaxWait = 10_000
        let quiet = js_PublishAsyncComplete(js, &po) == NATS_OK
        jsCtx_Destroy(js)
        // Only free the callback box when no handler can still be using it; otherwise leak it (tiny, and safe).
        if quiet { box.release() }
    }

    func withHandle<R>(_ body: (OpaquePointer) throws -> R) throws -> R {
        try guardian.use(body)
    }

    // MARK: Streams

    /// Creates the stream or updates it to match (subjects, max messages (0 = unlimited), replicas,
    /// duplicate window (0 = server default, 2 min), file storage, discard old).
    public func ensureStream(name: String, subjects: [String], maxMessages: Int64, replicas: Int,
                             duplicateWindowMs: Int64) throws -> StreamState {
        try validateName(name, "stream")
        return try withHandle { js in
            let subjectArray = CStringArray(subjects)
            return try name.withCString { cName in
                var cfg = jsStreamConfig()
                jsStreamConfig_Init(&cfg)
                cfg.Name = cName
                cfg.Subjects = subjectArray.pointers
                cfg.SubjectsLen = Int32(subjectArray.count)
                cfg.MaxMsgs = maxMessages > 0 ? maxMessages : -1
                cfg.Replicas = Int64(max(1, replicas))
                cfg.Duplicates = max(0, duplicateWindowMs) * 1_000_000  // nanoseconds
                cfg.Storage = js_FileStorage
                cfg.Discard = js_DiscardOld
                cfg.Retention = js_LimitsPolicy

                var info: UnsafeMutablePointer<jsStreamInfo>? = nil
                var jerr = jsErrCode(0)
                var s = js_AddStream(&info, js, &cfg, nil, &jerr)
                // Nodes starting together create the same stream at the same moment, and the server can check one
                // request's subjects against the other's new stream before its name counts: "subjects overlap".
                // Asked again, the name exists (same config: fine; another: updated below). A stream of another
                // name that really holds these subjects answers the same each time, and that error stands.
                for _ in 0..<3 where s != NATS_OK && jerr == JSStreamSubjectOverlapErr {
                    usleep(100_000)
                    info = nil
                    jerr = jsErrCode(0)
                    s = js_AddStream(&info, js, &cfg, nil, &jerr)
                }
                var action = "adding stream \(name) (subjects \(subjects.joined(separator: ",")))"
                if s != NATS_OK && jerr == JSStreamNameExistErr {
                    // Exists with a different configuration: bring it in line.
                    info = nil
                    jerr = jsErrCode(0)
                    s = js_UpdateStream(&info, js, &cfg, nil, &jerr)
                    action = "updating stream \(name) (subjects \(subjects.joined(separator: ",")))"
                }
                try check(s, jsCode: jerr, action)
                defer { jsStreamInfo_Destroy(info) }
                guard let info else { throw NATSError.usage("\(action): no stream info returned") }
                return StreamState(info.pointee.State)
            }
        }
    }

    /// First/last sequence and message count of a stream.
    public func streamState(name: String) throws -> StreamState {
        try validateName(name, "stream")
        return try withHandle { js in
            var info: UnsafeMutablePointer<jsStreamInfo>? = nil
            var jerr = jsErrCode(0)
            try check(js_GetStreamInfo(&info, js, name, nil, &jerr), jsCode: jerr, "getting info of stream \(name)")
            defer { jsStreamInfo_Destroy(info) }
            guard let info else { throw NATSError.usage("getting info of stream \(name): no stream info returned") }
            return StreamState(info.pointee.State)
        }
    }

    /// Deletes a stream (used by tests and tooling).
    public func deleteStream(name: String) throws {
        try validateName(name, "stream")
        try withHandle { js in
            var jerr = jsErrCode(0)
            try check(js_DeleteStream(js, name, nil, &jerr), jsCode: jerr, "deleting stream \(name)")
        }
    }

    // MARK: Publishing

    /// Asynchronous publish with a Nats-Msg-Id; the result (from a libnats thread) goes to onPublishResult.
    /// Blocks only when MaxPending acks are outstanding (up to stallWaitMs, then throws).
    public func publishAsync(subject: String, payload: [UInt8], messageID: String) throws {
        try withHandle { js in
            var po = jsPubOptions()
            jsPubOptions_Init(&po)
            po.MaxWait = ackTimeoutMs
            let s: natsStatus = messageID.withCString { cID in
                po.MsgId = messageID.isEmpty ? nil : cID
                return payload.withUnsafeBytes { buf in
                    js_PublishAsync(js, subject, buf.baseAddress, Int32(buf.count), &po)
                }
            }
            try check(s, "publishing \(payload.count) bytes to \(subject) with message id \(messageID)")
            publishedLock.lock()
            hasPublished = true
            publishedLock.unlock()
        }
    }

    /// Waits until every async publish has its result delivered; throws a timeout error otherwise.
    public func waitForPublishes(timeoutMs: Int64) throws {
        try withHandle { js in
            var po = jsPubOptions()
            jsPubOptions_Init(&po)
            po.MaxWait = max(1, timeoutMs)
            try check(js_PublishAsyncComplete(js, &po), "waiting \(timeoutMs) ms for async publish acks")
        }
    }

    // MARK: Consumers

    /// A durable pull consumer starting at `startSequence` (an existing durable of that name is deleted and
    /// recreated so the caller's checkpoint decides). `startSequence` 0 means "from the first message".
    public func pullSubscribe(stream: String, subject: String, durable: String, startSequence: UInt64,
                              ackWaitMs: Int64, maxAckPending: Int) throws -> PullSubscription {
        try validateName(stream, "stream")
        try validateName(durable, "durable")
        return try withHandle { js in
            let what = "durable \(durable) on stream \(stream)"
            var jerr = jsErrCode(0)
            let ds = js_DeleteConsumer(js, stream, durable, nil, &jerr)
            if ds != NATS_OK && !(ds == NATS_NOT_FOUND && jerr == JSConsumerNotFoundErr) {
                try check(ds, jsCode: jerr, "deleting old \(what)")
            }
            clearLastNATSError()  // "not found" above is expected; keep its text out of later errors

            try stream.withCString { cStream in
                try durable.withCString { cDurable in
                    try subject.withCString { cSubject in
                        var cc = jsConsumerConfig()
                        jsConsumerConfig_Init(&cc)
                        cc.Durable = cDurable
                        cc.FilterSubject = cSubject
                        if startSequence > 0 {
                            cc.DeliverPolicy = js_DeliverByStartSequence
                            cc.OptStartSeq = startSequence
                        } else {
                            cc.DeliverPolicy = js_DeliverAll
                        }
                        cc.AckPolicy = js_AckExplicit
                        cc.AckWait = max(1, ackWaitMs) * 1_000_000  // nanoseconds
                        cc.MaxAckPending = Int64(max(1, maxAckPending))
                        var info: UnsafeMutablePointer<jsConsumerInfo>? = nil
                        jerr = jsErrCode(0)
                        let s = js_AddConsumer(&info, js, cStream, &cc, nil, &jerr)
                        jsConsumerInfo_Destroy(info)
                        try check(s, jsCode: jerr, "creating \(what) from sequence \(startSequence) (subject \(subject))")
                    }
                }
            }

            // Our own inbox and pull requests, not js_PullSubscribe (see PullSubscription for why).
            var cInbox: UnsafeMutablePointer<natsInbox>? = nil
            try check(natsInbox_Create(&cInbox), "making an inbox for \(what)")
            defer { natsInbox_Destroy(cInbox) }
            let inbox = String(cString: UnsafeRawPointer(cInbox!).assumingMemoryBound(to: CChar.self))
            var sub: OpaquePointer? = nil
            try connection.withHandle { nc in
                try check(natsConnection_SubscribeSync(&sub, nc, inbox), "subscribing to the inbox of \(what)")
            }
            // No client-side cap: the consumer's max ack pending already bounds what can wait here, and a capped
            // inbox would drop messages that then come back only after the ack wait.
            _ = natsSubscription_SetPendingLimits(sub, -1, -1)
            return PullSubscription(inbox: InboxSubscription(sub!), inboxSubject: inbox, stream: stream, durable: durable,
                                    jetStream: self, description: what)
        }
    }

    /// A durable consumer's progress as the server sees it, or nil when it does not exist.
    public func consumerInfo(stream: String, durable: String) throws -> ConsumerState? {
        try validateName(stream, "stream")
        try validateName(durable, "durable")
        return try withHandle { js in
            var info: UnsafeMutablePointer<jsConsumerInfo>? = nil
            var jerr = jsErrCode(0)
            let s = js_GetConsumerInfo(&info, js, stream, durable, nil, &jerr)
            defer { jsConsumerInfo_Destroy(info) }
            if s == NATS_NOT_FOUND {
                clearLastNATSError()
                return nil
            }
            try check(s, jsCode: jerr, "reading durable \(durable) on stream \(stream)")
            guard let i = info?.pointee else { return nil }
            return ConsumerState(deliveredStreamSequence: i.Delivered.Stream, ackFloorStreamSequence: i.AckFloor.Stream,
                                 pending: i.NumPending, ackPending: i.NumAckPending, redelivered: i.NumRedelivered,
                                 waiting: i.NumWaiting)
        }
    }

    /// Deletes a durable consumer; returns false if it did not exist.
    @discardableResult
    public func deleteConsumer(stream: String, durable: String) throws -> Bool {
        try validateName(stream, "stream")
        try validateName(durable, "durable")
        return try withHandle { js in
            var jerr = jsErrCode(0)
            let s = js_DeleteConsumer(js, stream, durable, nil, &jerr)
            if s == NATS_NOT_FOUND && jerr == JSConsumerNotFoundErr { return false }
            try check(s, jsCode: jerr, "deleting durable \(durable) on stream \(stream)")
            return true
        }
    }

    // MARK: Key-value

    /// Opens a KV bucket, creating it (with `history` revisions per key, on `replicas` servers) when missing
    /// and `create` is true.
    public func keyValue(bucket: String, history: Int = 1, replicas: Int = 1, create: Bool = true) throws -> KeyValueBucket {
        try withHandle { js in
            var kv: OpaquePointer? = nil
            var s = js_KeyValue(&kv, js, bucket)
            if s == NATS_NOT_FOUND && create {
                clearLastNATSError()
                s = bucket.withCString { cBucket in
                    var cfg = kvConfig()
                    kvConfig_Init(&cfg)
                    cfg.Bucket = cBucket
                    cfg.History = UInt8(clamping: min(64, max(1, history)))
                    cfg.Replicas = Int32(clamping: max(1, replicas))
                    return js_CreateKeyValue(&kv, js, &cfg)
                }
                if s != NATS_OK {
                    let failure = NATSError.libnats(s, while: "creating key-value bucket \(bucket)")
                    // Lost a creation race? Bind to what the other creator made.
                    kv = nil
                    if js_KeyValue(&kv, js, bucket) != NATS_OK { throw failure }
                }
            } else {
                try check(s, "opening key-value bucket \(bucket)")
            }
            return KeyValueBucket(kv: kv!, jetStream: self, bucket: bucket)
        }
    }
}
