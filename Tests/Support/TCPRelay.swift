import Foundation
import Synchronization

/// A TCP relay on 127.0.0.1 between a client (a node, a test's connection) and nats-server that can be cut and healed: cutting closes every
/// relayed connection and turns new ones away at once, as a partition between that node and the log would.
public final class TCPRelay: @unchecked Sendable {
    /// Where the node connects (127.0.0.1).
    public let port: Int
    private let listener: Int32
    private let upstreamPort: Int
    /// Whether connections are cut, and the sockets of every live relayed connection.
    private let state = Mutex<(cut: Bool, stopped: Bool, sockets: Set<Int32>)>((false, false, []))

    public init(upstreamPort: Int) throws {
        self.upstreamPort = upstreamPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RelayError("socket: \(String(cString: strerror(errno)))") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var addr = Self.loopback(port: 0)
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0, listen(fd, 16) == 0 else {
            close(fd)
            throw RelayError("bind/listen on 127.0.0.1: \(String(cString: strerror(errno)))")
        }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        listener = fd
        port = Int(UInt16(bigEndian: addr.sin_port))
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "relay-accept"
        thread.start()
    }

    public struct RelayError: Error, CustomStringConvertible {
        public var description: String
        init(_ d: String) { description = d }
    }

    static func loopback(port: Int) -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr)
        return addr
    }

    /// Cuts (every relayed connection closed, new ones closed on arrival) or heals.
    public func setCut(_ cut: Bool) {
        state.withLock { s in
            s.cut = cut
            if cut { for fd in s.sockets { shutdown(fd, Int32(SHUT_RDWR)) } }
        }
    }

    public func stop() {
        state.withLock { s in
            s.stopped = true
            for fd in s.sockets { shutdown(fd, Int32(SHUT_RDWR)) }
        }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if state.withLock({ $0.stopped }) { return }
                continue
            }
            if state.withLock({ $0.cut || $0.stopped }) {
                close(client)
                continue
            }
            let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var addr = Self.loopback(port: upstreamPort)
            let connected = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard upstream >= 0, connected == 0 else {
                close(client)
                if upstream >= 0 { close(upstream) }
                continue
            }
            state.withLock { _ = $0.sockets.insert(client); _ = $0.sockets.insert(upstream) }
            // Two pumps; whichever ends first shuts both sockets down, the second closes them.
            let pumpsLeft = PumpCount()
            for (from, to) in [(client, upstream), (upstream, client)] {
                let thread = Thread { [self] in
                    pump(from: from, to: to)
                    shutdown(from, Int32(SHUT_RDWR))
                    shutdown(to, Int32(SHUT_RDWR))
                    if pumpsLeft.finished() {
                        state.withLock { _ = $0.sockets.remove(client); _ = $0.sockets.remove(upstream) }
                        close(client)
                        close(upstream)
                    }
                }
                thread.name = "relay-pump"
                thread.start()
            }
        }
    }

    private func pump(from: Int32, to: Int32) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress, $0.count) }
            guard n > 0 else { return }
            var sent = 0
            while sent < n {
                // send, not write: a peer cut a moment ago must not raise SIGPIPE and kill the whole process.
                let w = buffer.withUnsafeBytes { send(to, $0.baseAddress! + sent, n - sent, Int32(MSG_NOSIGNAL)) }
                guard w > 0 else { return }
                sent += w
            }
        }
    }
}

/// The pumps of one relayed connection still running; the last one to finish closes its sockets.
private final class PumpCount: Sendable {
    private let left = Mutex(2)
    /// Counts one pump finished; true for the last.
    func finished() -> Bool { left.withLock { n in n -= 1; return n == 0 } }
}
