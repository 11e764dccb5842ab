import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
#if canImport(FoundationXML)
import FoundationXML
#endif

/// What the S3 and WebDAV stores need from HTTP, blocking: snapshot store calls run off the node's queue and
/// may wait. Uploads stream from the file and downloads stream to disk, so a snapshot is never held in memory.
final class BlockingHTTPClient: Sendable {
    /// A reply; `body` is the whole body for small requests, or at most `errorBodyBytesMax` of an error reply
    /// to a download.
    struct Reply: Sendable {
        var status: Int
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// What goes out after the headers.
    enum Body {
        case none
        case bytes([UInt8])
        /// Streamed from the file; the caller sets Content-Length.
        case file(String)
    }

    /// Error replies read from a download are cut here: they are only for messages.
    static let errorBodyBytesMax = 64 * 1024

    private let session: URLSession
    private let challenges = ChallengeRefuser()
    /// Longest wait for the next bytes; also bounds requests without a snapshot body.
    let idleTimeoutSeconds: Double
    /// Longest a whole request may take, snapshot transfer included, before it is cancelled.
    let transferTimeoutSeconds: Double

    /// `idleTimeoutSeconds`: longest wait for the next bytes; `transferTimeoutSeconds`: longest whole request.
    init(idleTimeoutSeconds: Double = 60, transferTimeoutSeconds: Double = 6 * 3600) {
        let configuration = URLSessionConfiguration.ephemeral
        configuration.urlCache = nil  // never keep snapshot bodies or listings in a cache
        configuration.requestCachePolicy = .reloadIgnoringLocalCacheData
        configuration.httpShouldSetCookies = false
        configuration.timeoutIntervalForRequest = idleTimeoutSeconds
        configuration.timeoutIntervalForResource = transferTimeoutSeconds
        session = URLSession(configuration: configuration, delegate: challenges, delegateQueue: nil)
        self.idleTimeoutSeconds = idleTimeoutSeconds
        self.transferTimeoutSeconds = transferTimeoutSeconds
    }

    deinit { session.finishTasksAndInvalidate() }

    /// Sends `request` and returns the reply, whatever its status; throws only when no reply came (transport errors,
    /// timeouts), with `what` (method and URL, never credentials) in the message.
    func send(_ request: URLRequest, body: Body = .none, what: String) throws -> Reply {
        let outcome = Outcome()
        let handler: @Sendable (Data?, URLResponse?, Error?) -> Void = { data, response, error in
            outcome.finish(Self.reply(response, error, body: data.map { [UInt8]($0) } ?? []))
        }
        let task: URLSessionTask
        var timeoutSeconds = idleTimeoutSeconds
        switch body {
        case .none: task = session.dataTask(with: request, completionHandler: handler)
        case .bytes(let bytes): task = session.uploadTask(with: request, from: Data(bytes), completionHandler: handler)
        case .file(let path):
            task = session.uploadTask(with: request, fromFile: URL(fileURLWithPath: path), completionHandler: handler)
            timeoutSeconds = transferTimeoutSeconds
        }
        return try run(task, outcome, what: what, timeoutSeconds: timeoutSeconds)
    }

    /// GETs `request` into `file` (replaced only once the whole body arrived and its length matches the reply's
    /// Content-Length); on an error status the file is left alone and the reply carries the start of the body.
    func download(_ request: URLRequest, to file: String, what: String) throws -> Reply {
        let outcome = Outcome()
        let task = session.downloadTask(with: request) { temporary, response, error in
            var result = Self.reply(response, error, body: [])
            if case .success(var reply) = result, let temporary {
                if (200..<300).contains(reply.status) {
                    result = Result { try Self.install(temporary, at: file, expectedBytes: response?.expectedContentLength ?? -1); return reply }
                } else {
                    let handle = try? FileHandle(forReadingFrom: temporary)
                    reply.body = [UInt8]((try? handle?.read(upToCount: Self.errorBodyBytesMax)) ?? Data())
                    try? handle?.close()
                    result = .success(reply)
                }
            }
            if let temporary { try? FileManager.default.removeItem(at: temporary) }
            outcome.finish(result)
        }
        return try run(task, outcome, what: what, timeoutSeconds: transferTimeoutSeconds)
    }

    private func run(_ task: URLSessionTask, _ outcome: Outcome, what: String, timeoutSeconds: Double) throws -> Reply {
        task.resume()
        // The session enforces its own timeouts; this bound also covers a completion that never comes.
        if outcome.done.wait(timeout: .now() + timeoutSeconds + 30) == .timedOut {
            task.cancel()
            _ = outcome.done.wait(timeout: .now() + 5)
            throw SnapshotStoreError("\(what): no reply within \(Int(timeoutSeconds + 30)) s")
        }
        if let status = challenges.refusal(of: task) { return Reply(status: status, body: []) }
        switch outcome.result {
        case .success(let reply): return reply
        case .failure(let error as SnapshotStoreError): throw SnapshotStoreError("\(what): \(error.description)")
        case .failure(let error): throw SnapshotStoreError("\(what): \(error.localizedDescription)")
        case nil: throw SnapshotStoreError("\(what): the request ended without a result")
        }
    }

    private static func reply(_ response: URLResponse?, _ error: Error?, body: [UInt8]) -> Result<Reply, Error> {
        if let error { return .failure(error) }
        guard let http = response as? HTTPURLResponse else { return .failure(SnapshotStoreError("the reply is not HTTP")) }
        return .success(Reply(status: http.statusCode, body: body))
    }

    /// Moves a finished download into place, after checking nothing was cut short.
    private static func install(_ temporary: URL, at file: String, expectedBytes: Int64) throws {
        let size = (try FileManager.default.attributesOfItem(atPath: temporary.path)[.size] as? NSNumber)?.int64Value ?? -1
        guard expectedBytes < 0 || size == expectedBytes else {
            throw SnapshotStoreError("the body was cut short: \(size) of \(expectedBytes) bytes")
        }
        let target = URL(fileURLWithPath: file)
        // Stage next to the target first: the download directory may be on another file system than `file`.
        let staged = target.deletingLastPathComponent().appendingPathComponent(".\(target.lastPathComponent).\(UUID().uuidString).partial")
        do {
            try FileManager.default.moveItem(at: temporary, to: staged)
            if FileManager.default.fileExists(atPath: file) { try FileManager.default.removeItem(at: target) }
            try FileManager.default.moveItem(at: staged, to: target)
        } catch {
            try? FileManager.default.removeItem(at: staged)
            throw SnapshotStoreError("writing \(file): \(error.localizedDescription)")
        }
    }

    /// Refuses authentication challenges (401, 407) and remembers the status: credentials go in the request
    /// itself, and swift-corelibs-foundation never completes a task whose challenge it handles by default.
    private final class ChallengeRefuser: NSObject, URLSessionTaskDelegate, @unchecked Sendable {
        private let lock = NSLock()
        private var refused: [Int: Int] = [:]

        func urlSession(_ session: URLSession, task: URLSessionTask, didReceive challenge: URLAuthenticationChallenge,
                        completionHandler: @escaping @Sendable (URLSession.AuthChallengeDisposition, URLCredential?) -> Void) {
            let status = (challenge.failureResponse as? HTTPURLResponse)?.statusCode ?? 401
            lock.withLock { refused[task.taskIdentifier] = status }
            completionHandler(.cancelAuthenticationChallenge, nil)
        }

        /// The status of the challenge refused for `task`, once; nil if there was none.
        func refusal(of task: URLSessionTask) -> Int? {
            lock.withLock { refused.removeValue(forKey: task.taskIdentifier) }
        }
    }

    /// Hands a task's result from URLSession's queue to the waiting caller.
    private final class Outcome: @unchecked Sendable {
        let done = DispatchSemaphore(value: 0)
        private let lock = NSLock()
        private var stored: Result<Reply, Error>?
        var result: Result<Reply, Error>? { lock.withLock { stored } }
        func finish(_ result: Result<Reply, Error>) {
            lock.withLock { stored = result }
            done.signal()
        }
    }
}

/// The text of every XML element with the local names leading to it, e.g. (["ListBucketResult", "Contents", "Key"], "x"):
/// enough to read S3 listings and errors and WebDAV multistatus replies whatever namespace prefixes they use.
struct XMLElementTexts {
    struct Element: Sendable {
        var path: [String]
        var text: String
    }

    let elements: [Element]

    /// Nil when `bytes` is not well-formed XML.
    init?(_ bytes: [UInt8]) {
        let collector = Collector()
        let parser = XMLParser(data: Data(bytes))
        parser.shouldProcessNamespaces = true
        parser.shouldResolveExternalEntities = false
        parser.delegate = collector
        guard parser.parse() else { return nil }
        elements = collector.elements
    }

    /// Texts of the elements whose path ends with `suffix`, in document order.
    func texts(endingWith suffix: [String]) -> [String] {
        elements.filter { $0.path.count >= suffix.count && Array($0.path.suffix(suffix.count)) == suffix }.map(\.text)
    }

    private final class Collector: NSObject, XMLParserDelegate {
        var elements: [Element] = []
        private var path: [String] = []
        private var text = ""

        func parser(_ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?,
                    qualifiedName qName: String?, attributes attributeDict: [String: String] = [:]) {
            path.append(elementName)
            text = ""
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) { text += string }

        func parser(_ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName qName: String?) {
            elements.append(Element(path: path, text: text))
            path.removeLast()
            text = ""
        }
    }
}
