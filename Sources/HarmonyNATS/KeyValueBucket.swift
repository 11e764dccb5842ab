import Foundation
internal import CNats

/// A JetStream key-value bucket (`kvStore`), used for small shared state such as snapshots' metadata.
public final class KeyValueBucket: @unchecked Sendable {
    public let bucket: String
    /// Kept so the JetStream context outlives the bucket on the Swift side too.
    public let jetStream: JetStream
    private let guardian: HandleGuard<OpaquePointer>

    init(kv: OpaquePointer, jetStream: JetStream, bucket: String) {
        self.bucket = bucket
        self.jetStream = jetStream
        self.guardian = HandleGuard(kv, what: "key-value bucket \(bucket)")
    }

    deinit { close() }

    /// Frees the C store handle (the bucket stays on the server). Idempotent.
    public func close() {
        if let kv = guardian.take() { kvStore_Destroy(kv) }
    }

    /// Stores `value` under `key`; returns the new revision.
    @discardableResult
    public func put(_ key: String, _ value: [UInt8]) throws -> UInt64 {
        try guardian.use { kv in
            var revision: UInt64 = 0
            let s = value.withUnsafeBytes { buf in
                kvStore_Put(&revision, kv, key, buf.baseAddress, Int32(buf.count))
            }
            try check(s, "putting \(value.count) bytes at key \(key) in bucket \(bucket)")
            return revision
        }
    }

    /// The latest value of `key`; nil when the key does not exist (or was deleted).
    public func get(_ key: String) throws -> [UInt8]? {
        try guardian.use { kv in
            var entry: OpaquePointer? = nil
            let s = kvStore_Get(&entry, kv, key)
            if s == NATS_NOT_FOUND { return nil }
            try check(s, "getting key \(key) from bucket \(bucket)")
            defer { kvEntry_Destroy(entry) }
            return bytes(kvEntry_Value(entry), Int(kvEntry_ValueLen(entry)))
        }
    }

    /// The latest value of `key` with its revision, for compare-and-set; nil when missing or deleted.
    public func entry(_ key: String) throws -> (value: [UInt8], revision: UInt64)? {
        try guardian.use { kv in
            var entry: OpaquePointer? = nil
            let s = kvStore_Get(&entry, kv, key)
            if s == NATS_NOT_FOUND { clearLastNATSError(); return nil }
            try check(s, "getting key \(key) from bucket \(bucket)")
            defer { kvEntry_Destroy(entry) }
            return (bytes(kvEntry_Value(entry), Int(kvEntry_ValueLen(entry))), kvEntry_Revision(entry))
        }
    }

    /// Stores `value` only if `key` has no value, or only if its revision is still `lastRevision`:
    /// returns the new revision, or nil when another writer got there first (how leases are taken).
    public func compareAndSet(_ key: String, _ value: [UInt8], lastRevision: UInt64?) throws -> UInt64? {
        try guardian.use { kv in
            var revision: UInt64 = 0
            let s = value.withUnsafeBytes { buf in
                if let lastRevision {
                    return kvStore_Update(&revision, kv, key, buf.baseAddress, Int32(buf.count), lastRevision)
                }
                return kvStore_Create(&revision, kv, key, buf.baseAddress, Int32(buf.count))
            }
            if s == NATS_OK { return revision }
            // 10071: wrong last sequence, i.e. someone else wrote the key since we read it.
            let text = nats_GetLastError(nil).map { String(cString: $0) } ?? ""
            if text.contains("10071") || text.lowercased().contains("wrong last sequence") || text.lowercased().contains("key exists") {
                clearLastNATSError()
                return nil
            }
            try check(s, "compare-and-set of key \(key) in bucket \(bucket)")
            return nil
        }
    }

    /// Deletes `key` (a delete marker; `get` then returns nil).
    public func delete(_ key: String) throws {
        try guardian.use { kv in
            try check(kvStore_Delete(kv, key), "deleting key \(key) from bucket \(bucket)")
        }
    }

    /// All keys that currently have a value.
    public func keys() throws -> [String] {
        try guardian.use { kv in
            var list = kvKeysList()
            let s = kvStore_Keys(&list, kv, nil)
            if s == NATS_NOT_FOUND { return [] }
            try check(s, "listing keys of bucket \(bucket)")
            defer { kvKeysList_Destroy(&list) }
            var keys: [String] = []
            for i in 0..<Int(list.Count) {
                if let k = list.Keys[i] { keys.append(String(cString: k)) }
            }
            return keys
        }
    }
}
