import Dispatch

/// State that belongs to one dispatch queue, checked on every access, as swift-nio's `NIOLoopBound` checks its
/// event loop: a read or write from any other thread stops the process at once instead of racing silently.
final class QueueBound<Value>: @unchecked Sendable {
    let queue: DispatchQueue
    private var storage: Value

    init(_ value: Value, queue: DispatchQueue) {
        self.queue = queue
        self.storage = value
    }

    var value: Value {
        _read {
            dispatchPrecondition(condition: .onQueue(queue))
            yield storage
        }
        _modify {
            dispatchPrecondition(condition: .onQueue(queue))
            yield &storage
        }
    }
}
