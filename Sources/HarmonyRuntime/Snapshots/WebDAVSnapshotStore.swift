import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Snapshots as files in a WebDAV collection (Nextcloud, Apache mod_dav, wsgidav, ...), with HarmonyLite's URL:
/// `https://host/path?dir=/snapshots/for/node&login=user&secret=pass` (Basic auth). Uploads go to a hidden temporary
/// name and are MOVEd into place, so a half-written upload is never listed; missing collections are created (MKCOL).
public final class WebDAVSnapshotStore: SnapshotStore {
    public let location: String
    let endpoint: WebDAVEndpoint
    private let http: BlockingHTTPClient

    public init(settings: RuntimeConfig.WebDAVStoreSettings, idleTimeoutSeconds: Double = 60, transferTimeoutSeconds: Double = 6 * 3600) throws {
        do { endpoint = try WebDAVEndpoint(settings.url) } catch { throw SnapshotStoreError("snapshot.webdav url \(error)") }
        location = "webdav \(endpoint.collectionURL)"
        http = BlockingHTTPClient(idleTimeoutSeconds: idleTimeoutSeconds, transferTimeoutSeconds: transferTimeoutSeconds)
    }

    public func upload(file: String, name: String) throws {
        let target = try endpoint.fileURL(name)
        let temporary = try endpoint.fileURL(".harmonylite-upload-\(UUID().uuidString)-\(name)")
        let what = "uploading snapshot \(name) to \(location)"
        let size: Int64
        do { size = (try FileManager.default.attributesOfItem(atPath: file)[.size] as? NSNumber)?.int64Value ?? 0 } catch {
            throw SnapshotStoreError("\(what): \(error.localizedDescription)")
        }
        try ensureCollection(what: what)
        var put = request("PUT", temporary)
        put.setValue(String(size), forHTTPHeaderField: "Content-Length")
        put.setValue("application/octet-stream", forHTTPHeaderField: "Content-Type")
        do {
            let stored = try http.send(put, body: .file(file), what: what)
            guard (200..<300).contains(stored.status) else { throw failure(what, "PUT", stored) }
            var move = request("MOVE", temporary)
            move.setValue(target, forHTTPHeaderField: "Destination")
            move.setValue("T", forHTTPHeaderField: "Overwrite")
            let moved = try http.send(move, what: what)
            guard (200..<300).contains(moved.status) else { throw failure(what, "MOVE", moved) }
        } catch {
            // Best effort: a leftover temporary file is never listed, but it takes space.
            _ = try? http.send(request("DELETE", temporary), what: what)
            throw error
        }
    }

    public func download(name: String, to file: String) throws {
        let what = "downloading snapshot \(name) from \(location)"
        let reply = try http.download(request("GET", try endpoint.fileURL(name)), to: file, what: what)
        guard (200..<300).contains(reply.status) else {
            if reply.status == 404 { throw SnapshotStoreError("snapshot \(name) not found in \(location)") }
            throw failure(what, "GET", reply)
        }
    }

    public func list() throws -> [String] {
        let what = "listing \(location)"
        var propfind = request("PROPFIND", endpoint.collectionURL)
        propfind.setValue("1", forHTTPHeaderField: "Depth")
        let reply = try http.send(propfind, what: what)
        if reply.status == 404 { return [] }  // no collection yet: nothing was ever uploaded
        guard reply.status == 207 else { throw failure(what, "PROPFIND", reply) }
        guard let xml = XMLElementTexts(reply.body) else { throw SnapshotStoreError("\(what): the reply is not XML: \(reply.text.prefix(200))") }
        return xml.texts(endingWith: ["response", "href"]).compactMap(Self.fileName(fromHref:))
            .filter { $0.hasPrefix(snapshotNamePrefix) }
    }

    public func delete(name: String) throws {
        let what = "deleting snapshot \(name) from \(location)"
        let reply = try http.send(request("DELETE", try endpoint.fileURL(name)), what: what)
        guard (200..<300).contains(reply.status) || reply.status == 404 else { throw failure(what, "DELETE", reply) }
    }

    /// Creates the `dir` collection chain below the base URL when the collection is missing (MKCOL makes one level).
    private func ensureCollection(what: String) throws {
        var probe = request("PROPFIND", endpoint.collectionURL)
        probe.setValue("0", forHTTPHeaderField: "Depth")
        let found = try http.send(probe, what: what)
        if found.status == 207 { return }
        guard found.status == 404 else { throw failure(what, "PROPFIND", found) }
        for url in endpoint.collectionChain {
            let made = try http.send(request("MKCOL", url), what: what)
            // 405: it already exists (a parent of ours, or another node made it meanwhile).
            guard made.status == 201 || made.status == 405 || (200..<300).contains(made.status) else { throw failure(what, "MKCOL \(url)", made) }
        }
    }

    private func request(_ method: String, _ url: String) -> URLRequest {
        var request = URLRequest(url: URL(string: url)!)
        request.httpMethod = method
        if let authorization = endpoint.authorization { request.setValue(authorization, forHTTPHeaderField: "Authorization") }
        return request
    }

    /// The last path segment of a PROPFIND href (a path or an absolute URL, percent-encoded), or nil for the collection.
    static func fileName(fromHref href: String) -> String? {
        var path = href.trimmingCharacters(in: .whitespacesAndNewlines)
        if let scheme = path.range(of: "://") {
            path = String(path[scheme.upperBound...].drop { $0 != "/" })
        }
        guard !path.hasSuffix("/"), let last = path.split(separator: "/").last else { return nil }
        return String(last).removingPercentEncoding ?? String(last)
    }

    private func failure(_ what: String, _ method: String, _ reply: BlockingHTTPClient.Reply) -> SnapshotStoreError {
        var text = "\(what): \(method) answered HTTP \(reply.status) \(HTTPURLResponse.localizedString(forStatusCode: reply.status))"
        switch reply.status {
        case 401: text += " (check login and secret in snapshot.webdav url)"
        case 403: text += " (the account may not write to dir \(endpoint.directory))"
        case 507: text += " (the server is out of space)"
        default:
            let body = reply.text.trimmingCharacters(in: .whitespacesAndNewlines)
            if !body.isEmpty { text += ": \(body.prefix(200))" }
        }
        return SnapshotStoreError(text)
    }
}

/// The parts of a WebDAV store URL: where the server is, which collection holds snapshots, and how to log in.
struct WebDAVEndpoint: Sendable, Equatable {
    /// `scheme://host[:port]/base/dir/`, percent-encoded, without the query.
    let collectionURL: String
    /// Collections to create, outermost first: one per segment of `dir` below the base path.
    let collectionChain: [String]
    /// `dir` as configured, for messages.
    let directory: String
    /// `Basic ...` when a login is given.
    let authorization: String?

    /// Parses HarmonyLite's form; errors say what is wrong with "the url" (callers name the key) and never repeat the secret.
    init(_ url: String) throws {
        guard let parts = URLComponents(string: url), let scheme = parts.scheme?.lowercased() else {
            throw SnapshotStoreError("is not a URL; expected https://host/path?dir=/snapshots&login=user&secret=pass")
        }
        guard scheme == "http" || scheme == "https" else {
            throw SnapshotStoreError("must start with http:// or https://, got '\(scheme)://'")
        }
        guard let host = parts.host, !host.isEmpty else { throw SnapshotStoreError("has no host") }
        guard parts.user == nil else {
            throw SnapshotStoreError("must carry the user in login= and secret=, not before the host")
        }
        var directory = "/", login: String?, secret: String?
        for item in parts.queryItems ?? [] {
            switch item.name {
            case "dir": directory = item.value ?? "/"
            case "login": login = item.value
            case "secret": secret = item.value
            default: throw SnapshotStoreError("has unknown parameter '\(item.name)' (expected dir, login, secret)")
            }
        }
        if secret != nil && login == nil { throw SnapshotStoreError("has secret= without login=") }
        let segments = directory.split(separator: "/").map(String.init)
        guard !segments.contains(where: { $0 == "." || $0 == ".." }) else {
            throw SnapshotStoreError("must not have '.' or '..' in dir, got '\(directory)'")
        }
        let hostPart = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
        let base = "\(scheme)://\(hostPart)\(parts.port.map { ":\($0)" } ?? "")"
        let basePath = parts.percentEncodedPath.split(separator: "/").joined(separator: "/")
        var chain: [String] = []
        var path = basePath.isEmpty ? "" : "/" + basePath
        for segment in segments {
            path += "/" + (segment.addingPercentEncoding(withAllowedCharacters: .webDAVSegmentAllowed) ?? segment)
            chain.append(base + path + "/")
        }
        collectionChain = chain
        collectionURL = base + path + "/"
        self.directory = directory
        authorization = login.map { "Basic " + Data("\($0):\(secret ?? "")".utf8).base64EncodedString() }
    }

    /// The URL of one file in the collection; names are plain file names.
    func fileURL(_ name: String) throws -> String {
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw SnapshotStoreError("snapshot name \"\(name)\" is not a plain file name")
        }
        return collectionURL + (name.addingPercentEncoding(withAllowedCharacters: .webDAVSegmentAllowed) ?? name)
    }
}

extension CharacterSet {
    /// Unreserved characters only: everything else in a path segment is percent-encoded.
    static let webDAVSegmentAllowed = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
}
