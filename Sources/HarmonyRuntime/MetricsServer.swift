import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A deliberately small HTTP/1.0 server for `/metrics` (Prometheus text) and `/health`: GET only, one short
/// request per connection, answered on its own thread, so scraping needs no web framework in the sidecar.
public final class MetricsServer: @unchecked Sendable {
    public struct Response: Sendable {
        public var status: Int
        public var contentType: String
        public var body: String
        public init(status: Int, contentType: String = "text/plain; charset=utf-8", body: String) {
            self.status = status
            self.contentType = contentType
            self.body = body
        }
    }

    public let host: String
    public private(set) var port: Int
    private let handler: @Sendable (String) -> Response
    /// Takes the next connection off the listener: the descriptor (negative on failure) and errno. `accept`, except
    /// in tests, which make it fail.
    let acceptConnection: @Sendable (Int32) -> (fd: Int32, error: Int32)
    private var listener: Int32 = -1
    private var thread: Thread?
    private let lock = NSLock()
    private var stopped = false

    /// `accept(2)`, with its errno.
    static let systemAccept: @Sendable (Int32) -> (fd: Int32, error: Int32) = { fd in
        let client = accept(fd, nil, nil)
        return (client, client < 0 ? errno : 0)
    }

    /// `bind` is "host:port" (port 0 picks a free one; see `port` after `start`).
    public convenience init(bind: String, handler: @escaping @Sendable (_ path: String) -> Response) throws {
        try self.init(bind: bind, acceptConnection: Self.systemAccept, handler: handler)
    }

    init(bind: String, acceptConnection: @escaping @Sendable (Int32) -> (fd: Int32, error: Int32),
         handler: @escaping @Sendable (_ path: String) -> Response) throws {
        guard let colon = bind.lastIndex(of: ":"), let port = Int(bind[bind.index(after: colon)...]), (0...65535).contains(port) else {
            throw MetricsServerError("prometheus bind address \"\(bind)\" is not host:port")
        }
        let host = String(bind[..<colon])
        self.host = host.isEmpty ? "0.0.0.0" : host
        self.port = port
        self.handler = handler
        self.acceptConnection = acceptConnection
    }

    public func start() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw MetricsServerError("socket: \(String(cString: strerror(errno)))") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host, &address.sin_addr) == 1 else {
            close(fd)
            throw MetricsServerError("prometheus bind host \"\(host)\" is not an IPv4 address")
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            throw MetricsServerError("cannot listen on \(host):\(port) for metrics: \(why)")
        }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        port = Int(UInt16(bigEndian: actual.sin_port))
        listener = fd
        let t = Thread { [weak self] in self?.acceptLoop(fd) }
        t.name = "harmonylite-metrics"
        thread = t
        t.start()
    }

    public func stop() {
        lock.lock()
        let wasStopped = stopped
        stopped = true
        lock.unlock()
        guard !wasStopped, listener >= 0 else { return }
        shutdown(listener, Int32(SHUT_RDWR))  // wakes accept()
        close(listener)
    }

    deinit { stop() }

    private var isStopped: Bool {
        lock.lock(); defer { lock.unlock() }
        return stopped
    }

    private func acceptLoop(_ fd: Int32) {
        var failures = 0
        while !isStopped {
            let (client, error) = acceptConnection(fd)
            guard client < 0 else {
                failures = 0
                serve(client)
                close(client)
                continue
            }
            // Closed by stop(), or not a listener any more: nothing to wait for.
            if isStopped || [EBADF, EINVAL, ENOTSOCK].contains(error) { return }
            // Anything else passes: a connection reset before it was taken, or no descriptor free for it (EMFILE)
            // while the node holds many. Returning here ended /metrics and /health for good, the node still running.
            failures += 1
            if error != EINTR && error != ECONNABORTED { usleep(failures < 10 ? 10_000 : 100_000) }
        }
    }

    /// Reads the request head (bounded in size and time), answers, and leaves closing to the caller.
    private func serve(_ client: Int32) {
        var timeout = timeval(tv_sec: 2, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var request = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 2048)
        while request.count < 8192 {
            let n = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            request.append(contentsOf: buffer[0..<n])
            if String(decoding: request, as: UTF8.self).contains("\r\n\r\n") { break }
        }
        let line = String(decoding: request, as: UTF8.self).split(separator: "\r\n", maxSplits: 1).first ?? ""
        let parts = line.split(separator: " ")
        let response: Response
        // HEAD as well as GET: load balancers' health checks often send HEAD /health (HAProxy's httpchk, say).
        let isHead = parts.first == "HEAD"
        if parts.count >= 2, parts[0] == "GET" || isHead {
            let path = String(parts[1].split(separator: "?", maxSplits: 1).first ?? "")
            response = handler(path)
        } else {
            response = Response(status: 405, body: "only GET and HEAD are served here\n")
        }
        let reason = [200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"][response.status] ?? "Status"
        let body = Array(response.body.utf8)
        let allow = response.status == 405 ? "Allow: GET, HEAD\r\n" : ""
        let head = "HTTP/1.0 \(response.status) \(reason)\r\nContent-Type: \(response.contentType)\r\nContent-Length: \(body.count)\r\n\(allow)Connection: close\r\n\r\n"
        let bytes = Array(head.utf8) + (isHead ? [] : body)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { break }
            sent += n
        }
    }
}

public struct MetricsServerError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
