/// One piece of a change message too large for the log's payload limit (NATS defaults to 1 MiB).
///
/// The sender encodes the message as usual, cuts the bytes into parts and publishes them back to back on the
/// change's shard; the receiver keeps parts until it holds all of them, then decodes the joined bytes as one
/// message. The group id is the whole message's id, so every part of one change shares it however often it is sent.
public struct MessagePart: Sendable, Hashable {
    public var groupID: String
    public var index: Int
    public var count: Int
    /// Length of the whole message, so the receiver can refuse an oversized one before storing its pieces.
    public var totalBytes: Int
    public var bytes: [UInt8]

    public init(groupID: String, index: Int, count: Int, totalBytes: Int, bytes: [UInt8]) {
        self.groupID = groupID
        self.index = index
        self.count = count
        self.totalBytes = totalBytes
        self.bytes = bytes
    }

    /// The part's own message id: the log deduplicates parts one by one.
    public var messageID: String { "\(groupID)-p\(index + 1)of\(count)" }
}

extension EnvelopeCodec {
    /// One part of a split message (`MessagePart`), a CBOR map behind the format byte.
    public static let formatPart: UInt8 = 0x05
    /// More parts than this is a hostile or broken sender (64 MiB in 1 KiB parts is 65,536).
    public static let partsMax = 65_536

    enum PartKey: UInt64 {
        case version = 0, group = 1, index = 2, count = 3, total = 4, bytes = 5
    }

    public static func isPart(_ bytes: [UInt8]) -> Bool { bytes.first == formatPart }

    /// Cuts an encoded message into parts of at most `partBytes` message bytes each (header included).
    public static func split(_ message: [UInt8], groupID: String, partBytes: Int) -> [[UInt8]] {
        // The header is the format byte, the map and its small fields: well under 256 bytes for any id we make.
        let header = 64 + groupID.utf8.count
        let chunk = max(1, partBytes - header)
        let count = (message.count + chunk - 1) / chunk
        precondition(count >= 1 && count <= partsMax, "a message of \(message.count) bytes splits into \(count) parts")
        return (0..<count).map { i in
            let part = MessagePart(groupID: groupID, index: i, count: count, totalBytes: message.count,
                                   bytes: Array(message[(i * chunk)..<min(message.count, (i + 1) * chunk)]))
            return encodePart(part)
        }
    }

    public static func encodePart(_ part: MessagePart) -> [UInt8] {
        [formatPart] + CBOREncoder.encode(.map([
            (.unsigned(PartKey.version.rawValue), .unsigned(envelopeVersion)),
            (.unsigned(PartKey.group.rawValue), .text(part.groupID)),
            (.unsigned(PartKey.index.rawValue), .unsigned(UInt64(part.index))),
            (.unsigned(PartKey.count.rawValue), .unsigned(UInt64(part.count))),
            (.unsigned(PartKey.total.rawValue), .unsigned(UInt64(part.totalBytes))),
            (.unsigned(PartKey.bytes.rawValue), .bytes(part.bytes)),
        ]))
    }

    /// Decodes one part, checking it against itself and against `totalBytesMax` (the receiver's own limit).
    public static func decodePart(_ bytes: [UInt8], totalBytesMax: Int) throws -> MessagePart {
        guard bytes.first == formatPart else { throw EnvelopeError.malformed("not a message part") }
        guard case .map(let entries) = try CBORDecoder.decode(Array(bytes.dropFirst())) else {
            throw EnvelopeError.malformed("message part is not a map")
        }
        var fields: [UInt64: CBOR] = [:]
        for (k, v) in entries {
            guard case .unsigned(let key) = k else { throw EnvelopeError.malformed("map key is not an unsigned integer") }
            guard fields.updateValue(v, forKey: key) == nil else { throw EnvelopeError.malformed("duplicate key \(key)") }
        }
        func int(_ key: PartKey) throws -> Int {
            guard case .unsigned(let v) = fields[key.rawValue], v <= UInt64(Int32.max) else {
                throw EnvelopeError.malformed("message part field \(key) is missing or out of range")
            }
            return Int(v)
        }
        guard case .unsigned(let version) = fields[PartKey.version.rawValue], version == envelopeVersion else {
            throw EnvelopeError.malformed("unsupported message part version")
        }
        guard case .text(let group) = fields[PartKey.group.rawValue], !group.isEmpty, group.utf8.count <= 512 else {
            throw EnvelopeError.malformed("message part has no usable group id")
        }
        guard case .bytes(let chunk) = fields[PartKey.bytes.rawValue], !chunk.isEmpty else {
            throw EnvelopeError.malformed("message part carries no bytes")
        }
        let part = MessagePart(groupID: group, index: try int(.index), count: try int(.count), totalBytes: try int(.total), bytes: chunk)
        guard part.count >= 2, part.count <= partsMax, part.index < part.count else {
            throw EnvelopeError.malformed("message part \(part.index + 1) of \(part.count) is out of range")
        }
        guard part.totalBytes <= totalBytesMax else {
            throw EnvelopeError.malformed("split message of \(part.totalBytes) bytes is above this node's limit of \(totalBytesMax) bytes (max_row_bytes)")
        }
        guard chunk.count <= part.totalBytes else { throw EnvelopeError.malformed("message part is larger than its whole message") }
        return part
    }
}
