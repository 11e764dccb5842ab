import Foundation
internal import CNats

/// What the object store keeps about one object: the JSON of ADR-20's meta message, so other NATS clients
/// (`nats object ls/get`) see our snapshots and we see theirs.
public struct ObjectInfo: Codable, Sendable, Equatable {
    public var name: String
    public var bucket: String
    public var nuid: String
    public var size: UInt64
    public var mtime: String
    public var chunks: UInt64
    /// "SHA-256=<base64url>" of the whole object.
    public var digest: String?
    public var deleted: Bool?
    public var options: Options?

    public struct Options: Codable, Sendable, Equatable {
        public var maxChunkSize: Int?
        enum CodingKeys: String, CodingKey { case maxChunkSize = "max_chunk_size" }
    }
}

/// A JetStream object store bucket in the standard layout (ADR-20): stream `OBJ_<bucket>`, chunks on
/// `$O.<bucket>.C.<nuid>`, one rolled-up meta message per object on `$O.<bucket>.M.<base64url(name)>`.
/// libnats 3.4 has no object store API, so it is built here from streams, publishes and consumers.
public final class ObjectStore: @unchecked Sendable {
    public let bucket: String
    public let jetStream: JetStream
    public static let chunkSize = 128 * 1024
    var streamName: String { "OBJ_\(bucket)" }
    var chunkPrefix: String { "$O.\(bucket).C." }
    var metaPrefix: String { "$O.\(bucket).M." }

    /// Opens the bucket, creating its stream when missing (file storage, rollups and direct get allowed).
    public init(jetStream: JetStream, bucket: String, replicas: Int = 1) throws {
        try validateName(bucket, "object store bucket")
        self.bucket = bucket
        self.jetStream = jetStream
        let subjects = CStringArray(["$O.\(bucket).C.>", "$O.\(bucket).M.>"])
        try jetStream.withHandle { js in
            try "OBJ_\(bucket)".withCString { cName in
                var cfg = jsStreamConfig()
                jsStreamConfig_Init(&cfg)
                cfg.Name = cName
                cfg.Subjects = subjects.pointers
                cfg.SubjectsLen = Int32(subjects.count)
                cfg.Storage = js_FileStorage
                cfg.Replicas = Int64(max(1, replicas))
                cfg.Discard = js_DiscardNew
                cfg.AllowRollup = true
                cfg.AllowDirect = true
                var info: UnsafeMutablePointer<jsStreamInfo>? = nil
                var jerr = jsErrCode(0)
                let s = js_AddStream(&info, js, &cfg, nil, &jerr)
                jsStreamInfo_Destroy(info)
                if s != NATS_OK && jerr == JSStreamNameExistErr { clearLastNATSError(); return }  // already there
                try check(s, jsCode: jerr, "creating object store bucket \(bucket) (stream OBJ_\(bucket))")
            }
        }
    }

    /// base64url with padding: how the standard layout encodes names into meta subjects and digests.
    public static func base64URL(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
    }

    static func encodedName(_ name: String) -> String { base64URL(Array(name.utf8)) }

    static func newNUID() -> String {
        let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
        return String((0..<22).map { _ in alphabet[Int.random(in: 0..<alphabet.count)] })
    }

    /// Stores the object: chunks first, then the meta message (a rollup, so only the newest meta is kept),
    /// then the previous version's chunks are purged. Readers never see a half-written object: until the
    /// meta message lands they still see the old one (or none).
    /// `nextChunk` returns up to `chunkSize` bytes, or an empty array at the end; `digest` is asked for after
    /// the last chunk (the meta message goes last), so the caller can hash what it streamed in the same pass.
    @discardableResult
    public func put(name: String, nextChunk: () throws -> [UInt8], digest: () -> String?) throws -> ObjectInfo {
        guard !name.isEmpty else { throw NATSError.invalidArgument("object name must not be empty") }
        let previous = try info(name: name)
        let nuid = Self.newNUID()
        var size: UInt64 = 0
        var chunks: UInt64 = 0
        do {
            while true {
                let chunk = try nextChunk()
                if chunk.isEmpty { break }
                try publish(subject: chunkPrefix + nuid, payload: chunk, rollup: false)
                size += UInt64(chunk.count)
                chunks += 1
            }
        } catch {
            try? purge(subject: chunkPrefix + nuid)  // do not leave orphaned chunks behind
            throw error
        }
        let info = ObjectInfo(name: name, bucket: bucket, nuid: nuid, size: size, mtime: UTCTimestamp.iso8601Now(), chunks: chunks,
                              digest: digest(), deleted: nil, options: .init(maxChunkSize: Self.chunkSize))
        do {
            try publish(subject: metaPrefix + Self.encodedName(name), payload: Array(try JSONEncoder().encode(info)), rollup: true)
        } catch {
            try? purge(subject: chunkPrefix + nuid)
            throw error
        }
        if let previous, previous.nuid != nuid { try? purge(subject: chunkPrefix + previous.nuid) }
        return info
    }

    /// The object's meta data; nil when there is no such object or it was deleted.
    public func info(name: String) throws -> ObjectInfo? {
        guard let payload = try lastMessage(subject: metaPrefix + Self.encodedName(name)) else { return nil }
        let info: ObjectInfo
        do {
            info = try JSONDecoder().decode(ObjectInfo.self, from: Data(payload))
        } catch {
            throw NATSError.usage("object \(name) in bucket \(bucket) has unreadable meta data: \(error)")
        }
        return info.deleted == true ? nil : info
    }

    /// Streams the object's chunks in order to `chunk`; returns its meta data. Throws if it is missing or
    /// the chunks do not add up to the size and count the meta message promises.
    @discardableResult
    public func get(name: String, timeoutMs: Int64 = 10_000, chunk: ([UInt8]) throws -> Void) throws -> ObjectInfo {
        guard let info = try info(name: name) else {
            throw NATSError.usage("object \(name) not found in bucket \(bucket)")
        }
        if info.chunks == 0 { return info }
        var received: UInt64 = 0
        var bytesReceived: UInt64 = 0
        try jetStream.withHandle { js in
            var sub: OpaquePointer? = nil
            var jerr = jsErrCode(0)
            var so = jsSubOptions()
            jsSubOptions_Init(&so)
            so.Ordered = true  // an ephemeral consumer that restarts itself on gaps: chunks arrive in order, once
            try check(js_SubscribeSync(&sub, js, chunkPrefix + info.nuid, nil, &so, &jerr), jsCode: jerr,
                      "reading object \(name) from bucket \(bucket)")
            defer { natsSubscription_Unsubscribe(sub); natsSubscription_Destroy(sub) }
            while received < info.chunks {
                var msg: OpaquePointer? = nil
                let s = natsSubscription_NextMsg(&msg, sub, timeoutMs)
                if s == NATS_TIMEOUT {
                    throw NATSError.usage("reading object \(name) from bucket \(bucket): chunk \(received + 1) of \(info.chunks) did not arrive within \(timeoutMs) ms")
                }
                try check(s, "reading chunk \(received + 1) of object \(name) from bucket \(bucket)")
                defer { natsMsg_Destroy(msg) }
                let data = bytes(natsMsg_GetData(msg), Int(natsMsg_GetDataLength(msg)))
                received += 1
                bytesReceived += UInt64(data.count)
                try chunk(data)
            }
        }
        guard bytesReceived == info.size else {
            throw NATSError.usage("object \(name) in bucket \(bucket) is \(bytesReceived) bytes, its meta data says \(info.size)")
        }
        return info
    }

    /// Live (not deleted) objects, by name.
    public func list() throws -> [ObjectInfo] {
        var subjects: [String] = []
        try jetStream.withHandle { js in
            var opts = jsOptions()
            jsOptions_Init(&opts)
            let filter = metaPrefix + ">"
            try filter.withCString { cFilter in
                opts.Stream.Info.SubjectsFilter = cFilter
                var info: UnsafeMutablePointer<jsStreamInfo>? = nil
                var jerr = jsErrCode(0)
                try check(js_GetStreamInfo(&info, js, streamName, &opts, &jerr), jsCode: jerr, "listing object store bucket \(bucket)")
                defer { jsStreamInfo_Destroy(info) }
                if let list = info?.pointee.State.Subjects {
                    for i in 0..<Int(list.pointee.Count) {
                        if let s = list.pointee.List[i].Subject { subjects.append(String(cString: s)) }
                    }
                }
            }
        }
        return try subjects.sorted().compactMap { subject in
            guard let payload = try lastMessage(subject: subject),
                  let info = try? JSONDecoder().decode(ObjectInfo.self, from: Data(payload)), info.deleted != true
            else { return nil }
            return info
        }
    }

    /// Marks the object deleted (a rolled-up meta message, as the standard layout does) and purges its chunks.
    public func delete(name: String) throws {
        guard var info = try info(name: name) else { return }
        let nuid = info.nuid
        info.deleted = true
        info.size = 0
        info.chunks = 0
        info.digest = nil
        info.mtime = UTCTimestamp.iso8601Now()
        try publish(subject: metaPrefix + Self.encodedName(name), payload: Array(try JSONEncoder().encode(info)), rollup: true)
        try purge(subject: chunkPrefix + nuid)
    }

    // MARK: Plumbing

    /// A synchronous publish (waits for the stream's ack); `rollup` replaces earlier messages of the subject.
    func publish(subject: String, payload: [UInt8], rollup: Bool) throws {
        try jetStream.withHandle { js in
            var msg: OpaquePointer? = nil
            try payload.withUnsafeBytes { buf in
                try check(natsMsg_Create(&msg, subject, nil, buf.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(buf.count)),
                          "building a message for \(subject)")
            }
            defer { natsMsg_Destroy(msg) }
            if rollup { try check(natsMsgHeader_Set(msg, "Nats-Rollup", "sub"), "setting the rollup header") }
            var ack: UnsafeMutablePointer<jsPubAck>? = nil
            var jerr = jsErrCode(0)
            var po = jsPubOptions()
            jsPubOptions_Init(&po)
            po.MaxWait = 10_000
            try check(js_PublishMsg(&ack, js, msg, &po, &jerr), jsCode: jerr, "storing \(payload.count) bytes on \(subject)")
            jsPubAck_Destroy(ack)
        }
    }

    func purge(subject: String) throws {
        try jetStream.withHandle { js in
            var opts = jsOptions()
            jsOptions_Init(&opts)
            try subject.withCString { cSubject in
                opts.Stream.Purge.Subject = cSubject
                var jerr = jsErrCode(0)
                try check(js_PurgeStream(js, streamName, &opts, &jerr), jsCode: jerr, "purging \(subject)")
            }
        }
    }

    /// The newest message on `subject`, or nil when there is none.
    func lastMessage(subject: String) throws -> [UInt8]? {
        try jetStream.withHandle { js in
            var msg: OpaquePointer? = nil
            var jerr = jsErrCode(0)
            let s = js_GetLastMsg(&msg, js, streamName, subject, nil, &jerr)
            if s == NATS_NOT_FOUND { clearLastNATSError(); return nil }
            try check(s, jsCode: jerr, "reading \(subject) from stream \(streamName)")
            defer { natsMsg_Destroy(msg) }
            return bytes(natsMsg_GetData(msg), Int(natsMsg_GetDataLength(msg)))
        }
    }
}
