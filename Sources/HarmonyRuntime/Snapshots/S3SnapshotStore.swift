import Crypto
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import HarmonyNATS

/// Snapshots as objects in an S3 bucket (AWS, MinIO, moto, ...), addressed path-style
/// (`http(s)://endpoint/bucket/path/name`) so any endpoint works without DNS per bucket. Every request is signed
/// with AWS Signature Version 4; a single PUT is atomic, so a half-written upload is never listed.
public final class S3SnapshotStore: SnapshotStore {
    public let location: String
    let endpoint: S3Endpoint
    let bucket: String
    /// "" or the configured path with one trailing slash: object keys are `keyPrefix + name`.
    let keyPrefix: String
    let signer: AWSSignatureV4
    private let http: BlockingHTTPClient

    /// S3 refuses a single PUT above 5 GiB; a larger snapshot would need a multipart upload.
    static let singlePutBytesMax: Int64 = 5 << 30
    /// Read size when hashing a file before upload.
    static let hashChunkBytes = 1 << 20
    /// ListObjectsV2 pages read at most, so a runaway listing ends.
    static let listPagesMax = 10_000
    /// Keys asked for per ListObjectsV2 page (S3 gives at most 1000); tests ask for fewer to exercise paging.
    let listPageKeys: Int

    /// Credentials come from the settings, else from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN.
    public init(settings: RuntimeConfig.S3StoreSettings, environment: [String: String] = ProcessInfo.processInfo.environment,
                idleTimeoutSeconds: Double = 60, transferTimeoutSeconds: Double = 6 * 3600, listPageKeys: Int = 1000) throws {
        precondition((1...1000).contains(listPageKeys))
        self.listPageKeys = listPageKeys
        do { endpoint = try S3Endpoint(settings.endpoint, useSSL: settings.useSSL) } catch { throw SnapshotStoreError("snapshot.s3.endpoint \(error)") }
        guard !settings.bucket.isEmpty else { throw SnapshotStoreError("snapshot.s3.bucket is empty: name the bucket that keeps snapshots") }
        bucket = settings.bucket
        let path = settings.path.split(separator: "/").joined(separator: "/")
        keyPrefix = path.isEmpty ? "" : path + "/"
        location = "s3 bucket '\(bucket)'\(path.isEmpty ? "" : " path '\(path)'") at \(endpoint.baseURL)"
        guard let accessKey = settings.accessKey ?? environment["AWS_ACCESS_KEY_ID"],
              let secret = settings.secret ?? environment["AWS_SECRET_ACCESS_KEY"], !accessKey.isEmpty, !secret.isEmpty else {
            throw SnapshotStoreError("\(location): no credentials; set snapshot.s3.access_key and secret "
                + "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
        }
        signer = AWSSignatureV4(accessKey: accessKey, secret: secret,
                                sessionToken: settings.sessionToken ?? (settings.accessKey == nil ? environment["AWS_SESSION_TOKEN"] : nil),
                                region: settings.region, service: "s3")
        http = BlockingHTTPClient(idleTimeoutSeconds: idleTimeoutSeconds, transferTimeoutSeconds: transferTimeoutSeconds)
    }

    public func upload(file: String, name: String) throws {
        let key = try objectKey(name)
        let (size, sha256) = try Self.sizeAndSHA256(of: file, what: "uploading snapshot \(name) to \(location)")
        guard size <= Self.singlePutBytesMax else {
            throw SnapshotStoreError("uploading snapshot \(name) to \(location): \(size) bytes is over the 5 GiB a single S3 PUT takes")
        }
        var request = signedRequest("PUT", key: key, payloadSHA256: sha256, signedHeaders: ["content-type": "application/octet-stream"])
        request.setValue(String(size), forHTTPHeaderField: "Content-Length")
        let what = "uploading snapshot \(name) to \(location)"
        let reply = try http.send(request, body: .file(file), what: what)
        guard (200..<300).contains(reply.status) else { throw failure(what, reply) }
    }

    public func download(name: String, to file: String) throws {
        let what = "downloading snapshot \(name) from \(location)"
        let reply = try http.download(signedRequest("GET", key: try objectKey(name)), to: file, what: what)
        guard (200..<300).contains(reply.status) else {
            if errorCode(reply) == "NoSuchKey" { throw SnapshotStoreError("snapshot \(name) not found in \(location)") }
            throw failure(what, reply)
        }
    }

    public func list() throws -> [String] {
        var names: [String] = []
        var continuation: String?
        for _ in 0..<Self.listPagesMax {
            var query = [("list-type", "2"), ("max-keys", String(listPageKeys)), ("prefix", keyPrefix + snapshotNamePrefix)]
            if let continuation { query.append(("continuation-token", continuation)) }
            let what = "listing \(location)"
            let reply = try http.send(signedRequest("GET", key: nil, query: query), what: what)
            guard (200..<300).contains(reply.status) else { throw failure(what, reply) }
            guard let xml = XMLElementTexts(reply.body) else { throw SnapshotStoreError("\(what): the reply is not XML: \(reply.text.prefix(200))") }
            for key in xml.texts(endingWith: ["Contents", "Key"]) where key.hasPrefix(keyPrefix) {
                let name = String(key.dropFirst(keyPrefix.count))
                if !name.contains("/") { names.append(name) }  // deeper keys belong to someone else's layout
            }
            guard xml.texts(endingWith: ["IsTruncated"]).first == "true" else { return names }
            guard let next = xml.texts(endingWith: ["NextContinuationToken"]).first, !next.isEmpty else {
                throw SnapshotStoreError("\(what): a truncated listing came without NextContinuationToken")
            }
            continuation = next
        }
        throw SnapshotStoreError("listing \(location): more than \(Self.listPagesMax) pages of snapshots; prune the bucket")
    }

    public func delete(name: String) throws {
        let what = "deleting snapshot \(name) from \(location)"
        let reply = try http.send(signedRequest("DELETE", key: try objectKey(name)), what: what)
        guard (200..<300).contains(reply.status) || errorCode(reply) == "NoSuchKey" else { throw failure(what, reply) }
    }

    /// Creates the bucket (in the configured region); one that already exists and is ours is fine. For tests and
    /// setup tools: the store itself never creates buckets, it reports a missing one.
    public func createBucket() throws {
        var body: [UInt8] = []
        if signer.region != "us-east-1" {
            body = Array(("<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                + "<LocationConstraint>\(signer.region)</LocationConstraint></CreateBucketConfiguration>").utf8)
        }
        var request = signedRequest("PUT", key: nil, payloadSHA256: AWSSignatureV4.payloadSHA256(body))
        request.setValue(String(body.count), forHTTPHeaderField: "Content-Length")
        let what = "creating bucket '\(bucket)' at \(endpoint.baseURL)"
        let reply = try http.send(request, body: body.isEmpty ? .none : .bytes(body), what: what)
        guard (200..<300).contains(reply.status) || errorCode(reply) == "BucketAlreadyOwnedByYou" else { throw failure(what, reply) }
    }

    /// The object key of a snapshot; names are plain file names, so one can never reach outside `path`.
    func objectKey(_ name: String) throws -> String {
        guard !name.isEmpty, !name.contains("/"), !name.hasPrefix(".") else {
            throw SnapshotStoreError("snapshot name \"\(name)\" is not a plain file name")
        }
        return keyPrefix + name
    }

    /// A request on the bucket (`key` nil) or one object, signed for `payloadSHA256` (the empty body's by default).
    func signedRequest(_ method: String, key: String?, query: [(String, String)] = [],
                       payloadSHA256: String = AWSSignatureV4.emptyPayloadSHA256, signedHeaders: [String: String] = [:],
                       date: Date = Date()) -> URLRequest {
        let path = "/" + AWSSignatureV4.uriEncode(bucket) + (key.map { "/" + AWSSignatureV4.uriEncode($0, keepingSlashes: true) } ?? "")
        let canonicalQuery = AWSSignatureV4.canonicalQuery(query)
        var request = URLRequest(url: URL(string: endpoint.baseURL + path + (canonicalQuery.isEmpty ? "" : "?" + canonicalQuery))!)
        request.httpMethod = method
        let headers = signer.signedHeaders(method: method, host: endpoint.hostHeader, path: path, canonicalQuery: canonicalQuery,
                                           headers: signedHeaders, payloadSHA256: payloadSHA256, date: date)
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        return request
    }

    /// The file's size and the hex SHA-256 of its bytes, read in chunks (the signature covers the payload hash).
    static func sizeAndSHA256(of file: String, what: String) throws -> (Int64, String) {
        guard let handle = FileHandle(forReadingAtPath: file) else { throw SnapshotStoreError("\(what): cannot open \(file)") }
        defer { try? handle.close() }
        var hasher = SHA256()
        var size: Int64 = 0
        while true {
            let chunk: Data
            do { chunk = try handle.read(upToCount: hashChunkBytes) ?? Data() } catch {
                throw SnapshotStoreError("\(what): reading \(file): \(error.localizedDescription)")
            }
            if chunk.isEmpty { break }
            hasher.update(data: chunk)
            size += Int64(chunk.count)
        }
        return (size, lowercaseHex(hasher.finalize()))
    }

    private func errorCode(_ reply: BlockingHTTPClient.Reply) -> String? {
        XMLElementTexts(reply.body)?.texts(endingWith: ["Error", "Code"]).first
    }

    /// An error with the HTTP status and S3's own Code and Message, plus what to do for the usual causes.
    private func failure(_ what: String, _ reply: BlockingHTTPClient.Reply) -> SnapshotStoreError {
        let xml = XMLElementTexts(reply.body)
        let code = xml?.texts(endingWith: ["Error", "Code"]).first
        var text = "\(what): HTTP \(reply.status)"
        if let code { text += " \(code)" }
        if let message = xml?.texts(endingWith: ["Error", "Message"]).first { text += ": \(message)" }
        if xml == nil && !reply.body.isEmpty { text += ": \(reply.text.prefix(200))" }
        switch code {
        case "NoSuchBucket": text += " (create bucket '\(bucket)' first, or fix snapshot.s3.bucket)"
        case "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken":
            text += " (check snapshot.s3 access_key, secret and session_token)"
        case "AuthorizationHeaderMalformed": text += " (check snapshot.s3.region)"
        default: break
        }
        return SnapshotStoreError(text)
    }
}

/// Where requests go: scheme, host and port from `[snapshot.s3] endpoint` (`host`, `host:port`, or a URL whose
/// scheme overrides `use_ssl`). Errors describe "the endpoint"; callers name the key.
struct S3Endpoint: Sendable, Equatable {
    let baseURL: String
    /// Exactly what the HTTP client sends as Host, because the signature covers it.
    let hostHeader: String

    init(_ endpoint: String, useSSL: Bool) throws {
        var text = endpoint.trimmingCharacters(in: .whitespaces)
        var scheme = useSSL ? "https" : "http"
        if let range = text.range(of: "://") {
            scheme = text[..<range.lowerBound].lowercased()
            text = String(text[range.upperBound...])
        }
        while text.hasSuffix("/") { text.removeLast() }
        guard scheme == "http" || scheme == "https" else {
            throw SnapshotStoreError("must be host[:port] or an http(s) URL, got scheme '\(scheme)'")
        }
        guard let parts = URLComponents(string: "\(scheme)://\(text)"), let host = parts.host, !host.isEmpty,
              parts.path.isEmpty, parts.query == nil, parts.user == nil else {
            throw SnapshotStoreError("must be host[:port] (the bucket goes in snapshot.s3.bucket)"
                + (endpoint.contains("@") ? "" : ", got '\(endpoint)'"))
        }
        let bracketed = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
        let defaultPort = scheme == "https" ? 443 : 80
        hostHeader = parts.port.map { $0 == defaultPort ? bracketed : "\(bracketed):\($0)" } ?? bracketed
        baseURL = "\(scheme)://\(hostHeader)"
    }
}

/// AWS Signature Version 4 (header form): a key derived from the secret for one day, region and service signs a
/// canonical form of method, path, query, headers and payload hash. `service` is "s3" here ("iam" in tests).
struct AWSSignatureV4: Sendable {
    var accessKey: String
    var secret: String
    var sessionToken: String?
    var region: String
    var service: String

    static let emptyPayloadSHA256 = payloadSHA256([])

    /// The hex digest SigV4 puts in x-amz-content-sha256 for a body held in memory.
    static func payloadSHA256(_ body: [UInt8]) -> String { lowercaseHex(SHA256.hash(data: body)) }

    /// The headers to set on the request: `headers` as given, plus host, x-amz-date, x-amz-content-sha256,
    /// x-amz-security-token (with a session token) and Authorization. `path` is already URI-encoded.
    func signedHeaders(method: String, host: String, path: String, canonicalQuery: String, headers: [String: String],
                       payloadSHA256: String, date: Date) -> [String: String] {
        let (amzDate, day) = Self.timestamps(date)
        var all = Dictionary(uniqueKeysWithValues: headers.map { ($0.key.lowercased(), $0.value.trimmingCharacters(in: .whitespaces)) })
        all["host"] = host
        all["x-amz-date"] = amzDate
        all["x-amz-content-sha256"] = payloadSHA256
        if let sessionToken { all["x-amz-security-token"] = sessionToken }
        let names = all.keys.sorted()
        let signedNames = names.joined(separator: ";")
        let canonicalRequest = [
            method, path.isEmpty ? "/" : path, canonicalQuery,
            names.map { "\($0):\(all[$0]!)\n" }.joined(), signedNames, payloadSHA256,
        ].joined(separator: "\n")
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let stringToSign = ["AWS4-HMAC-SHA256", amzDate, scope, lowercaseHex(SHA256.hash(data: Array(canonicalRequest.utf8)))]
            .joined(separator: "\n")
        var key = Array("AWS4\(secret)".utf8)
        for part in [day, region, service, "aws4_request"] { key = hmacSHA256(key: key, message: Array(part.utf8)) }
        let signature = lowercaseHex(hmacSHA256(key: key, message: Array(stringToSign.utf8)))
        all["authorization"] = "AWS4-HMAC-SHA256 Credential=\(accessKey)/\(scope), SignedHeaders=\(signedNames), Signature=\(signature)"
        all["host"] = nil  // URLSession sends Host itself, from the URL, which gives the same value
        return all
    }

    /// RFC 3986 percent-encoding of everything but unreserved characters (and `/` in object keys), as SigV4 wants.
    static func uriEncode(_ text: String, keepingSlashes: Bool = false) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            case UInt8(ascii: "/") where keepingSlashes:
                out += "/"
            default:
                out += "%" + String(byte >> 4, radix: 16, uppercase: true) + String(byte & 0x0f, radix: 16, uppercase: true)
            }
        }
        return out
    }

    /// The query as SigV4 signs it, which is also how we send it: encoded names and values, sorted.
    static func canonicalQuery(_ items: [(String, String)]) -> String {
        items.map { (uriEncode($0.0), uriEncode($0.1)) }
            .sorted { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
            .map { "\($0.0)=\($0.1)" }.joined(separator: "&")
    }

    /// `20240102T030405Z` and `20240102`, in UTC.
    static func timestamps(_ date: Date) -> (String, String) {
        let stamp = UTCTimestamp.compact(seconds: Int(date.timeIntervalSince1970))
        return (stamp, String(stamp.prefix(8)))
    }
}
