import Foundation
import HarmonyAPI
import HarmonyNATS
import HarmonyRuntime
import HarmonySQLite
import Logging
import NIOHTTP1

/// What each endpoint does (seed 004's shapes), run on a worker thread: `POST /` SQL, `GET /download`,
/// `POST|GET /snapshot`, `GET|DELETE /replications[/{name}]`, `GET /health`, `GET /metrics`.
public final class APIRoutes: Sendable {
    let node: LiveNode
    let gateway: SQLGateway
    let token: [UInt8]?
    let log: Logger

    public init(node: LiveNode, settings: RuntimeConfig.HTTPSettings, log: Logger) {
        self.node = node
        self.gateway = SQLGateway(config: SQLGatewayConfig(databasePath: node.config.node.databasePath,
                                                           statementTimeoutMs: settings.statementTimeoutMs,
                                                           maxResultBytes: settings.maxResultBytes))
        self.token = settings.token.map { Array($0.utf8) }
        self.log = log
    }

    func answer(_ request: APIRequest, _ w: ResponseWriter) {
        let started = ContinuousClock.now
        let path = request.path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? "/"
        let status = route(request, path: path, w)
        // Method, path and status only: SQL text and parameters may hold data that must not reach the logs.
        log.debug("\(request.method) \(path) \(status) in \(ContinuousClock.now - started)")
    }

    private func route(_ r: APIRequest, path: String, _ w: ResponseWriter) -> Int {
        if let token, !authorized(r, token) {
            return fail(w, APIError(status: 401, "this node's HTTP API needs \"Authorization: Bearer <token>\" (http.token)"),
                        headers: [("WWW-Authenticate", "Bearer")])
        }
        if token == nil, r.method != .GET, r.headers.first(name: "origin") != nil {
            // Without a token, any web page the node's user opens could POST SQL to a loopback API (a text/plain body
            // needs no CORS preflight). Browsers name the page's origin on such requests; curl, drivers and
            // services do not.
            return fail(w, APIError(status: 403, "requests from web pages (an Origin header) are refused while http.token is not set: any page the user opens could run SQL here; set http.token"))
        }
        let segments = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        let resource = segments.first ?? ""
        let name = segments.count == 2 ? segments[1] : nil
        switch (r.method, resource, segments.count) {
        case (.POST, "", 0): return sql(r, w)
        case (.GET, "download", 1): return download(w)
        case (.POST, "snapshot", 1): return takeSnapshot(w)
        case (.GET, "snapshot", 1): return newestSnapshot(w)
        case (.GET, "replications", 1), (.GET, "replications", 2): return replications(w, name: name)
        case (.DELETE, "replications", 2): return deleteReplication(w, name: name ?? "")
        case (.GET, "health", 1), (.GET, "metrics", 1), (.HEAD, "health", 1), (.HEAD, "metrics", 1):
            // HEAD too: load balancers' health checks often send HEAD /health. Its answer has the GET's headers only.
            let answer = node.respond(path)
            w.send(status: answer.status, contentType: answer.contentType, json: Array(answer.body.utf8))
            return answer.status
        case (_, "", 0), (_, "download", 1), (_, "snapshot", 1), (_, "replications", 1), (_, "replications", 2),
             (_, "health", 1), (_, "metrics", 1):
            let allowed = switch (resource, segments.count) {
            case ("", _): "POST"
            case ("snapshot", _): "GET, POST"
            case ("replications", 2): "GET, DELETE"
            case ("health", _), ("metrics", _): "GET, HEAD"
            default: "GET"
            }
            return fail(w, APIError(status: 405, "\(r.method) is not allowed on \(path) (allowed: \(allowed))"), headers: [("Allow", allowed)])
        default:
            return fail(w, APIError(status: 404, "no such endpoint \(path); see POST /, GET /download, POST|GET /snapshot, GET|DELETE /replications, GET /health, GET /metrics"))
        }
    }

    private func authorized(_ r: APIRequest, _ token: [UInt8]) -> Bool {
        guard let header = r.headers.first(name: "authorization"), header.count > 7,
              header.prefix(7).lowercased() == "bearer " else { return false }
        return constantTimeEquals(Array(header.dropFirst(7).utf8), token)
    }

    @discardableResult
    private func fail(_ w: ResponseWriter, _ error: APIError, headers: [(String, String)] = []) -> Int {
        w.send(status: error.status, json: error.body, headers: headers)
        return error.status
    }

    private func sql(_ r: APIRequest, _ w: ResponseWriter) -> Int {
        let request: SQLRequest
        do { request = try SQLRequest.decode(r.body) } catch { return fail(w, error) }
        let (status, body) = gateway.execute(request)
        w.send(status: status, json: body)
        return status
    }

    /// A consistent copy of the database (SQLite's online backup, one read transaction) in a scratch file next
    /// to it, unlinked once open and streamed: nothing like the database's size is held in memory.
    private func download(_ w: ResponseWriter) -> Int {
        let scratch = scratchPath()
        defer { removeScratch(scratch) }
        do {
            try Database.readOnly(path: node.config.node.databasePath).backup(to: scratch)
        } catch {
            return fail(w, APIError(status: 500, "cannot copy the database: \(error)"))
        }
        let stem = ((node.config.node.databasePath as NSString).lastPathComponent as NSString).deletingPathExtension
        return stream(scratch, filename: "\(stem)-node\(node.config.node.nodeID)-\(UTCTimestamp.compactNow()).db", w)
    }

    private func takeSnapshot(_ w: ResponseWriter) -> Int {
        guard node.config.snapshot.enabled else {
            return fail(w, APIError(status: 400, "snapshots are disabled on this node ([snapshot] enabled = false)"))
        }
        do {
            guard let name = try node.saveSnapshot(timeoutSeconds: 60) else {
                return fail(w, APIError(status: 503, "no snapshot was taken (another node holds the snapshot lease, or local writes are still being published); the node's log says which; retry"))
            }
            w.send(status: 200, json: JSONWriter.encode(.object([("name", .string(name))])))
            return 200
        } catch {
            return fail(w, APIError(status: 503, "no snapshot was taken: \(error)"))
        }
    }

    private func newestSnapshot(_ w: ResponseWriter) -> Int {
        guard node.config.snapshot.enabled else {
            return fail(w, APIError(status: 400, "snapshots are disabled on this node ([snapshot] enabled = false)"))
        }
        let scratch = scratchPath()
        defer { removeScratch(scratch) }
        do {
            guard let name = try node.downloadNewestSnapshot(to: scratch) else {
                return fail(w, APIError(status: 404, "the snapshot store holds no snapshot yet; POST /snapshot takes one"))
            }
            return stream(scratch, filename: "\(name).db", w)
        } catch {
            return fail(w, APIError(status: 503, "cannot read the newest snapshot: \(error)"))
        }
    }

    private func stream(_ path: String, filename: String, _ w: ResponseWriter) -> Int {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            return fail(w, APIError(status: 500, "cannot open the copy at \(path)"))
        }
        // Unlinked while open: a crash mid-download leaves no file behind, and the disk space returns at close.
        removeScratch(path)
        let size = (try? handle.seekToEnd()) ?? 0
        try? handle.seek(toOffset: 0)
        w.sendFile(handle, size: size, filename: filename)
        return 200
    }

    /// A file next to the database for a copy on its way to a client (same disk, removed after).
    private func scratchPath() -> String { node.scratchDirectory + "/.harmonylite-download-\(UUID().uuidString).db" }

    private func removeScratch(_ path: String) {
        for suffix in ["", "-journal", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }

    private func replications(_ w: ResponseWriter, name: String?) -> Int {
        let all = node.replications(named: name)
        if let name {
            guard let one = all.first else {
                return fail(w, APIError(status: 404, "no replication named \(name) on this node; GET /replications lists them"))
            }
            w.send(status: 200, json: JSONWriter.encode(Self.json(one)))
        } else {
            w.send(status: 200, json: JSONWriter.encode(.array(all.map(Self.json))))
        }
        return 200
    }

    private func deleteReplication(_ w: ResponseWriter, name: String) -> Int {
        do {
            guard let (existed, from) = try node.deleteReplication(name: name) else {
                return fail(w, APIError(status: 404, "no replication named \(name) on this node; GET /replications lists them"))
            }
            w.send(status: 200, json: JSONWriter.encode(.object([
                ("deleted", .string(name)), ("existed", .bool(existed)),
                ("next", .string("the node makes the consumer again from its checkpoint, stream sequence \(from); nothing is skipped or applied twice")),
            ])))
            return 200
        } catch {
            return fail(w, APIError(status: 503, "cannot delete consumer \(name): \(error)"))
        }
    }

    static func json(_ s: ReplicationStatus) -> JSONValue {
        func number(_ v: UInt64?) -> JSONValue { v.map { .integer(Int64(clamping: $0)) } ?? .null }
        let consumer: JSONValue = s.consumer.map { c in
            .object([
                ("delivered_stream_sequence", number(c.deliveredStreamSequence)),
                ("ack_floor_stream_sequence", number(c.ackFloorStreamSequence)),
                ("pending", number(c.pending)),
                ("ack_pending", .integer(c.ackPending)),
                ("redelivered", .integer(c.redelivered)),
                ("waiting", .integer(c.waiting)),
            ])
        } ?? .null
        return .object([
            ("name", .string(s.name)), ("shard", .integer(Int64(s.shard))), ("stream", .string(s.stream)),
            ("subject", .string(s.subject)), ("checkpoint", number(s.checkpoint)),
            ("stream_last_sequence", number(s.streamLastSequence)), ("lag", number(s.lagMessages)),
            ("state", .string(s.state)), ("detail", s.detail.map(JSONValue.string) ?? .null),
            ("seconds_since_progress", s.secondsSinceProgress.map(JSONValue.real) ?? .null),
            ("consumer", consumer),
        ])
    }
}
