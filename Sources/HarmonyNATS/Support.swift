import Foundation
internal import CNats
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// libnats keeps its last error per thread and never clears it on success, so an old text could end up
/// in a new NATSError. `nats_clearLastError` is exported by libnats but not declared in nats.h: look it up.
private let natsClearLastError: (@convention(c) () -> Void)? = {
    guard let handle = dlopen(nil, RTLD_NOW), let sym = dlsym(handle, "nats_clearLastError") else { return nil }
    return unsafeBitCast(sym, to: (@convention(c) () -> Void).self)
}()

/// Forgets libnats' thread-local last error; called when a wrapper operation starts.
func clearLastNATSError() {
    natsClearLastError?()
}

/// Guards a C handle so that `close()` never frees it while another thread is inside a call using it.
final class HandleGuard<Handle>: @unchecked Sendable {
    private let condition = NSCondition()
    private var handle: Handle?
    private var users = 0
    private let what: String

    init(_ handle: Handle, what: String) {
        self.handle = handle
        self.what = what
    }

    /// Runs `body` with the handle; throws if it has been taken by `close()`.
    func use<R>(_ body: (Handle) throws -> R) throws -> R {
        condition.lock()
        guard let h = handle else {
            condition.unlock()
            throw NATSError.usage("\(what) is closed")
        }
        users += 1
        condition.unlock()
        clearLastNATSError()
        defer {
            condition.lock()
            users -= 1
            if users == 0 { condition.broadcast() }
            condition.unlock()
        }
        return try body(h)
    }

    /// Whether `take()` has not been called yet.
    var isOpen: Bool {
        condition.lock(); defer { condition.unlock() }
        return handle != nil
    }

    /// Refuses new users, waits for current ones to finish, and hands the handle to the caller
    /// (who frees it). Returns nil when it was already taken: this makes close() idempotent.
    func take() -> Handle? {
        condition.lock()
        defer { condition.unlock() }
        guard let h = handle else { return nil }
        handle = nil
        while users > 0 { condition.wait() }
        return h
    }
}

/// A NUL-terminated C copy of a Swift string array, freed in deinit (for `const char **` fields).
final class CStringArray {
    let pointers: UnsafeMutablePointer<UnsafePointer<CChar>?>
    let count: Int

    init(_ strings: [String]) {
        count = strings.count
        pointers = .allocate(capacity: max(1, strings.count))
        for (i, s) in strings.enumerated() {
            pointers[i] = UnsafePointer(strdup(s))
        }
    }

    deinit {
        for i in 0..<count {
            free(UnsafeMutableRawPointer(mutating: pointers[i]))
        }
        pointers.deallocate()
    }
}

/// Runs `body` with a C string for an optional Swift string (nil stays NULL).
func withOptionalCString<R>(_ s: String?, _ body: (UnsafePointer<CChar>?) throws -> R) rethrows -> R {
    if let s { return try s.withCString { try body($0) } }
    return try body(nil)
}

/// Copies `len` bytes at `data` into a Swift array (empty for NULL).
func bytes(_ data: UnsafeRawPointer?, _ len: Int) -> [UInt8] {
    guard let data, len > 0 else { return [] }
    return Array(UnsafeRawBufferPointer(start: data, count: len))
}

/// Reads a header of a libnats message, nil when absent.
func header(_ msg: OpaquePointer?, _ key: String) -> String? {
    guard let msg else { return nil }
    var value: UnsafePointer<CChar>? = nil
    guard natsMsgHeader_Get(msg, key, &value) == NATS_OK, let value else { return nil }
    return String(cString: value)
}
