internal import CNats
import Foundation

/// A message received on a plain (core NATS) subscription: at most once, no sequence, no ack.
public struct CoreMessage: Sendable {
    public var subject: String
    public var payload: [UInt8]
}

/// Holds the subscriber's handler; passed to libnats as an `Unmanaged` pointer and released once libnats says the
/// subscription is complete (closed, with no handler still running).
final class CoreMessageBox: Sendable {
    let deliver: @Sendable (CoreMessage) -> Void
    init(_ deliver: @escaping @Sendable (CoreMessage) -> Void) { self.deliver = deliver }
}

/// Called by libnats on the subscription's delivery thread; owns `msg`.
private let coreMessageHandler: natsMsgHandler = { _, _, msg, closure in
    defer { natsMsg_Destroy(msg) }
    guard let msg, let closure else { return }
    let subject = natsMsg_GetSubject(msg).map { String(cString: $0) } ?? ""
    let count = Int(natsMsg_GetDataLength(msg))
    var payload = [UInt8](repeating: 0, count: count)
    if count > 0, let data = natsMsg_GetData(msg) {
        payload.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(start: data, count: count)) }
    }
    Unmanaged<CoreMessageBox>.fromOpaque(closure).takeUnretainedValue().deliver(CoreMessage(subject: subject, payload: payload))
}

private let coreSubscriptionComplete: natsOnCompleteCB = { closure in
    if let closure { Unmanaged<CoreMessageBox>.fromOpaque(closure).release() }
}

/// A plain NATS subscription with a handler; `close()` (or deinit) unsubscribes.
public final class CoreSubscription: @unchecked Sendable {
    private let guardian: HandleGuard<OpaquePointer>
    public let subject: String

    init(handle: OpaquePointer, subject: String) {
        self.guardian = HandleGuard(handle, what: "subscription to \(subject)")
        self.subject = subject
    }

    deinit { close() }

    public func close() {
        guard let sub = guardian.take() else { return }
        _ = natsSubscription_Unsubscribe(sub)
        natsSubscription_Destroy(sub)
    }
}

extension NATSConnection {
    /// Publishes on plain NATS: no stream stores it, nobody acknowledges it, a subscriber that is not connected
    /// right now never sees it. For best-effort traffic beside the log, never instead of it.
    public func publish(subject: String, payload: [UInt8]) throws {
        try withHandle { nc in
            let status = payload.withUnsafeBytes { natsConnection_Publish(nc, subject, $0.baseAddress, Int32($0.count)) }
            try check(status, "publishing to \(subject)")
        }
    }

    /// Subscribes to `subject` (wildcards allowed); `handler` runs on a libnats thread for each message.
    public func subscribe(subject: String, handler: @escaping @Sendable (CoreMessage) -> Void) throws -> CoreSubscription {
        let box = Unmanaged.passRetained(CoreMessageBox(handler))
        var sub: OpaquePointer? = nil
        do {
            try withHandle { nc in
                try check(natsConnection_Subscribe(&sub, nc, subject, coreMessageHandler, box.toOpaque()), "subscribing to \(subject)")
            }
        } catch {
            box.release()
            throw error
        }
        guard let sub else { box.release(); throw NATSError.usage("subscribing to \(subject): libnats returned no subscription") }
        // From here libnats owns the box's release: it calls this once the handler can no longer run.
        if natsSubscription_SetOnCompleteCB(sub, coreSubscriptionComplete, box.toOpaque()) != NATS_OK {
            _ = natsSubscription_Unsubscribe(sub)
            natsSubscription_Destroy(sub)
            // Cannot know whether a handler still runs: keep the (tiny) box rather than free it under one.
            throw NATSError.usage("subscribing to \(subject): libnats refused the completion callback")
        }
        return CoreSubscription(handle: sub, subject: subject)
    }
}
