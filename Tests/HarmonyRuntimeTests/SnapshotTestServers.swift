import Foundation
import HarmonyProcess
import HarmonyTestSupport
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
@testable import HarmonyRuntime

/// Why a snapshot-store test could not even start its server: a missing tool (with what to install) or a server
/// that did not come up (with its log).
struct TestServerError: Error, CustomStringConvertible {
    let description: String
}

/// Where the snapshot-store tests find their servers: the venv `scripts/install-deps` fills first, then PATH.
enum TestTools {
    /// `${HARMONYLITE_TOOLS:-$HOME/.cache/harmonylite-tools}/venv/bin`, as in scripts/install-deps.
    static var venvBin: String {
        let environment = ProcessInfo.processInfo.environment
        let tools = environment["HARMONYLITE_TOOLS"] ?? ((environment["HOME"] ?? NSHomeDirectory()) + "/.cache/harmonylite-tools")
        return tools + "/venv/bin"
    }

    /// The executable `name`, or an error saying what to install; `extraDirectories` are searched after PATH.
    static func find(_ name: String, install: String, extraDirectories: [String] = []) throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let directories = [venvBin] + path.split(separator: ":").map(String.init) + extraDirectories
        for directory in directories where FileManager.default.isExecutableFile(atPath: directory + "/" + name) {
            return directory + "/" + name
        }
        throw TestServerError(description: "\(name) not found in \(venvBin) or on PATH: \(install)")
    }

    /// Runs a short helper command (ssh-keygen) and fails with its output unless it exits 0 within `timeoutSeconds`.
    static func run(_ executable: String, _ arguments: [String], timeoutSeconds: Double = 20) throws {
        let outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("harmony-run-\(UUID().uuidString).out").path
        defer { try? FileManager.default.removeItem(atPath: outputPath) }
        let child = try ChildProcess.spawn(executable, arguments, environment: ProcessInfo.processInfo.environment,
                                           stdin: nil, stdout: outputPath, stderr: outputPath)
        let status = child.wait(timeoutSeconds: timeoutSeconds) ?? child.terminate(graceSeconds: 2)
        guard status == 0, !child.timedOut else {
            let output = (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
            throw TestServerError(description: "\(executable) \(arguments.joined(separator: " ")) "
                + (child.timedOut ? "did not finish within \(Int(timeoutSeconds)) s" : "exited \(status)") + ": \(output)")
        }
    }

    /// A fresh directory under the system's temporary directory.
    static func temporaryDirectory(_ label: String) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("harmony-\(label)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}

/// One server process for one test, on 127.0.0.1 and a free port, its output in `directory/server.log`.
/// `stop()` (idempotent, also in deinit) ends it; a watchdog kills it if the test process dies first.
/// Started with `ChildProcess`, not Foundation's `Process`, whose manager thread sshd would block.
final class LocalTestServer: @unchecked Sendable {
    let name: String
    let port: Int
    let directory: URL
    private let child: ChildProcess
    private let watchdog: ChildProcess?
    private let lock = NSLock()
    private var stopped = false

    var logPath: String { directory.appendingPathComponent("server.log").path }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    private init(name: String, port: Int, directory: URL, child: ChildProcess, watchdog: ChildProcess?) {
        self.name = name
        self.port = port
        self.directory = directory
        self.child = child
        self.watchdog = watchdog
    }

    /// Starts `executable` with `arguments(port)` and waits at most `readySeconds` for it to accept TCP connections;
    /// a port taken by someone else in between is retried with another.
    static func start(name: String, executable: String, environment: [String: String] = [:], directory: URL,
                      readySeconds: Double = 30, arguments: (Int) throws -> [String]) throws -> LocalTestServer {
        var lastError = TestServerError(description: "\(name) did not start")
        for _ in 0..<3 {
            let port = EmbeddedNATSServer.freePort()
            let logPath = directory.appendingPathComponent("server.log").path
            let child = try ChildProcess.spawn(executable, try arguments(port),
                                               environment: ProcessInfo.processInfo.environment.merging(environment) { $1 },
                                               stdin: nil, stdout: logPath, stderr: logPath)
            let server = LocalTestServer(name: name, port: port, directory: directory, child: child, watchdog: startWatchdog(serverPID: child.pid))
            let deadline = Date().addingTimeInterval(readySeconds)
            while Date() < deadline && child.isRunning {
                if Loopback.accepts(port: port) { return server }
                Thread.sleep(forTimeInterval: 0.05)
            }
            server.stop()
            lastError = TestServerError(description: "\(name) on 127.0.0.1:\(port) not ready within \(Int(readySeconds)) s; log:\n\(server.log)")
        }
        throw lastError
    }

    /// SIGTERM, then SIGKILL after 5 s; then the watchdog, which ends on its own once the server is gone.
    func stop() {
        let already = lock.withLock { () -> Bool in defer { stopped = true }; return stopped }
        guard !already else { return }
        child.terminate(graceSeconds: 5)
        if let watchdog, watchdog.wait(timeoutSeconds: 3) == nil { watchdog.terminate(graceSeconds: 1) }
    }

    deinit { stop() }

    /// If the test process dies without running stop(), a tiny shell loop kills the server (its whole process
    /// group); it exits on its own once either process is gone.
    private static func startWatchdog(serverPID: Int32) -> ChildProcess? {
        let me = ProcessInfo.processInfo.processIdentifier
        let script = "while kill -0 \(me) 2>/dev/null && kill -0 \(serverPID) 2>/dev/null; do sleep 0.5; done; "
            + "kill -0 \(me) 2>/dev/null || kill -KILL -\(serverPID) 2>/dev/null; exit 0"
        return try? ChildProcess.spawn("/bin/sh", ["-c", script], environment: ProcessInfo.processInfo.environment,
                                       stdin: nil, stdout: nil, stderr: nil)
    }
}

/// moto_server with IAM authentication on: every S3 request must carry a valid SigV4 signature from a real
/// access key, so a broken signer or wrong secret fails as it would on AWS.
struct MotoS3Server {
    let server: LocalTestServer
    let accessKey: String
    let secret: String

    /// IAM calls moto lets through unsigned before it starts checking: CreateUser, CreateAccessKey, PutUserPolicy.
    static let unauthenticatedRequests = 3

    static func start(directory: URL) throws -> MotoS3Server {
        let executable = try TestTools.find("moto_server", install: "run scripts/install-deps (pip packages moto[s3], flask, flask-cors)")
        let server = try LocalTestServer.start(name: "moto_server", executable: executable,
                                               environment: ["INITIAL_NO_AUTH_ACTION_COUNT": String(unauthenticatedRequests)],
                                               directory: directory) { ["-H", "127.0.0.1", "-p", String($0)] }
        do {
            let http = BlockingHTTPClient(idleTimeoutSeconds: 20, transferTimeoutSeconds: 60)
            _ = try iam(http, server.port, ["Action": "CreateUser", "UserName": "harmonylite"])
            let key = try iam(http, server.port, ["Action": "CreateAccessKey", "UserName": "harmonylite"])
            let policy = #"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#
            _ = try iam(http, server.port, ["Action": "PutUserPolicy", "UserName": "harmonylite", "PolicyName": "snapshots", "PolicyDocument": policy])
            guard let accessKey = key.texts(endingWith: ["AccessKey", "AccessKeyId"]).first,
                  let secret = key.texts(endingWith: ["AccessKey", "SecretAccessKey"]).first else {
                throw TestServerError(description: "moto's CreateAccessKey reply has no key")
            }
            return MotoS3Server(server: server, accessKey: accessKey, secret: secret)
        } catch {
            server.stop()
            throw error
        }
    }

    func settings(bucket: String, path: String) -> RuntimeConfig.S3StoreSettings {
        var s = RuntimeConfig.S3StoreSettings()
        s.endpoint = "127.0.0.1:\(server.port)"
        s.useSSL = false
        s.bucket = bucket
        s.path = path
        s.accessKey = accessKey
        s.secret = secret
        return s
    }

    /// One IAM Query API call; moto routes it to IAM by the credential scope, so it is signed for "iam".
    private static func iam(_ http: BlockingHTTPClient, _ port: Int, _ parameters: [String: String]) throws -> XMLElementTexts {
        let body = Array(AWSSignatureV4.canonicalQuery(parameters.map { ($0.key, $0.value) } + [("Version", "2010-05-08")]).utf8)
        let signer = AWSSignatureV4(accessKey: "AKIAHARMONYBOOTSTRAP", secret: "unused", sessionToken: nil, region: "us-east-1", service: "iam")
        var request = URLRequest(url: URL(string: "http://127.0.0.1:\(port)/")!)
        request.httpMethod = "POST"
        let headers = signer.signedHeaders(method: "POST", host: "127.0.0.1:\(port)", path: "/", canonicalQuery: "",
                                           headers: ["content-type": "application/x-www-form-urlencoded"],
                                           payloadSHA256: AWSSignatureV4.payloadSHA256(body), date: Date())
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        let reply = try http.send(request, body: .bytes(body), what: "IAM \(parameters["Action"]!)")
        guard reply.status == 200, let xml = XMLElementTexts(reply.body) else {
            throw TestServerError(description: "IAM \(parameters["Action"]!) answered HTTP \(reply.status): \(reply.text)")
        }
        return xml
    }
}

/// wsgidav serving `directory/root` under `/dav`, Basic auth only, one user.
struct WsgiDAVServer {
    let server: LocalTestServer
    static let user = "alice"
    /// With characters that must survive the URL's query encoding.
    static let password = "s3cret&=?"

    static func start(directory: URL) throws -> WsgiDAVServer {
        let executable = try TestTools.find("wsgidav", install: "run scripts/install-deps (pip packages wsgidav, cheroot)")
        let root = directory.appendingPathComponent("root")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        let configPath = directory.appendingPathComponent("wsgidav.json").path
        let server = try LocalTestServer.start(name: "wsgidav", executable: executable, directory: directory) { port in
            let config: [String: Any] = [
                "host": "127.0.0.1", "port": port, "verbose": 1,
                "provider_mapping": ["/dav": root.path],
                "http_authenticator": ["accept_basic": true, "accept_digest": false, "default_to_digest": false],
                "simple_dc": ["user_mapping": ["*": [user: ["password": password]]]],
                "dir_browser": ["enable": false],
            ]
            try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: configPath))
            return ["--config", configPath]
        }
        return WsgiDAVServer(server: server)
    }

    /// HarmonyLite's URL form, every parameter query-encoded.
    func url(dir: String, login: String = user, secret: String = password) -> String {
        func q(_ text: String) -> String { text.addingPercentEncoding(withAllowedCharacters: .alphanumerics)! }
        return "http://127.0.0.1:\(server.port)/dav?dir=\(q(dir))&login=\(q(login))&secret=\(q(secret))"
    }
}

/// The Debian sshd in the foreground as the current user, with its own host key, config and authorized key,
/// serving sftp from its internal server; nothing outside `directory` is touched except creating /run/sshd
/// (sshd's privilege-separation directory, normally made at boot) when running as root.
struct PrivateSSHServer {
    let server: LocalTestServer
    let user: String
    /// The key sshd accepts.
    let clientKey: String
    /// A key sshd does not accept.
    let strangerKey: String

    static func start(directory: URL) throws -> PrivateSSHServer {
        let sshd = "/usr/sbin/sshd"
        guard FileManager.default.isExecutableFile(atPath: sshd) else {
            throw TestServerError(description: "\(sshd) not found: install the Debian package openssh-server (scripts/install-deps)")
        }
        _ = try TestTools.find("sftp", install: "install the Debian package openssh-client", extraDirectories: ["/usr/bin"])
        let keygen = try TestTools.find("ssh-keygen", install: "install the Debian package openssh-client", extraDirectories: ["/usr/bin"])
        let d = directory.path
        for key in ["host_key", "client_key", "stranger_key"] {
            try TestTools.run(keygen, ["-q", "-t", "ed25519", "-N", "", "-C", "harmonylite-test", "-f", "\(d)/\(key)"])
        }
        try FileManager.default.copyItem(atPath: "\(d)/client_key.pub", toPath: "\(d)/authorized_keys")
        if geteuid() == 0 && !FileManager.default.fileExists(atPath: "/run/sshd") {
            try FileManager.default.createDirectory(atPath: "/run/sshd", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        }
        let server = try LocalTestServer.start(name: "sshd", executable: sshd, directory: directory) { port in
            let config = """
                ListenAddress 127.0.0.1
                HostKey \(d)/host_key
                PidFile \(d)/sshd.pid
                AuthorizedKeysFile \(d)/authorized_keys
                StrictModes no
                UsePAM no
                PasswordAuthentication yes
                KbdInteractiveAuthentication no
                Subsystem sftp internal-sftp
                LogLevel VERBOSE

                """
            try config.write(toFile: "\(d)/sshd_config", atomically: true, encoding: .utf8)
            return ["-D", "-e", "-f", "\(d)/sshd_config", "-p", String(port)]
        }
        let user = getpwuid(geteuid()).flatMap { String(validatingCString: $0.pointee.pw_name) } ?? "root"
        return PrivateSSHServer(server: server, user: user, clientKey: "\(d)/client_key", strangerKey: "\(d)/stranger_key")
    }
}
