import NIOCore
import NIOPosix
import NIOSSL

/// How both front ends listen: a backlog for bursts of clients, address reuse for quick restarts, no Nagle delay
/// on replies. Errors name the front end and the address.
public enum FrontEndListener {
    public static func bind(group: EventLoopGroup, host: String, port: Int, for frontEnd: String,
                            childInitializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>) throws -> Channel {
        do {
            return try ServerBootstrap(group: group)
                .serverChannelOption(ChannelOptions.backlog, value: 256)
                .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
                .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
                .childChannelInitializer(childInitializer)
                .bind(host: host, port: port).wait()
        } catch {
            throw FrontEndError("cannot listen on \(host):\(port) for the \(frontEnd): \(error)")
        }
    }
}

/// The front ends' TLS: a server context from PEM files, with an error that names the files and the front end.
public enum ServerTLS {
    public static func context(certFile: String, keyFile: String, for frontEnd: String) throws -> NIOSSLContext {
        do {
            let chain = try NIOSSLCertificate.fromPEMFile(certFile).map { NIOSSLCertificateSource.certificate($0) }
            let key = try NIOSSLPrivateKey(file: keyFile, format: .pem)
            return try NIOSSLContext(configuration: .makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key)))
        } catch {
            throw FrontEndError("cannot load the \(frontEnd)'s TLS certificate \(certFile) and key \(keyFile): \(error)")
        }
    }
}

/// A front end that cannot start: the address, the certificate, or what was wrong with either.
public struct FrontEndError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
