import Foundation
import HarmonyProcess

/// Snapshots in a directory on an SSH server, through OpenSSH's `sftp -b -` (no SSH library to carry), with
/// HarmonyLite's URL `sftp://user:password@host:port/path`. A password reaches ssh through `SSH_ASKPASS` (a tiny
/// script that prints an environment variable, so the secret is never on disk or on a command line); a key through
/// `identityFile`. Uploads go to a hidden temporary name and are renamed, so a half-written upload is never listed.
public final class SFTPSnapshotStore: SnapshotStore {
    public let location: String
    let endpoint: SFTPEndpoint
    let identityFile: String?
    /// The host keys we trust: the configured file (strict), or our own file (accept-new), never ~/.ssh/known_hosts.
    let knownHostsFile: String
    let strictHostKeyChecking: Bool
    /// Longest one sftp run may take, transfer included, before it is killed.
    let timeoutSeconds: Double
    let sftpExecutable: String
    /// Holds the askpass script; removed in deinit.
    private let scratchDirectory: String

    /// `defaultKnownHostsFile`: where host keys are remembered (accept-new) when `settings.knownHostsFile` is nil.
    public init(settings: RuntimeConfig.SFTPStoreSettings, defaultKnownHostsFile: String, timeoutSeconds: Double = 3600) throws {
        do { endpoint = try SFTPEndpoint(settings.url) } catch { throw SnapshotStoreError("snapshot.sftp url \(error)") }
        location = "sftp \(endpoint.display)"
        identityFile = settings.identityFile.map { ($0 as NSString).expandingTildeInPath }
        if let identityFile, !FileManager.default.isReadableFile(atPath: identityFile) {
            throw SnapshotStoreError("\(location): snapshot.sftp.identity_file \(identityFile) is not readable")
        }
        knownHostsFile = ((settings.knownHostsFile ?? defaultKnownHostsFile) as NSString).expandingTildeInPath
        strictHostKeyChecking = settings.knownHostsFile != nil
        self.timeoutSeconds = timeoutSeconds
        sftpExecutable = try Self.findSFTP()
        scratchDirectory = (NSTemporaryDirectory() as NSString).appendingPathComponent("harmonylite-sftp-\(UUID().uuidString)")
        do {
            try FileManager.default.createDirectory(atPath: scratchDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let knownHostsDirectory = (knownHostsFile as NSString).deletingLastPathComponent
            if !knownHostsDirectory.isEmpty {
                try FileManager.default.createDirectory(atPath: knownHostsDirectory, withIntermediateDirectories: true)
            }
            if endpoint.password != nil {
                try Data("#!/bin/sh\nprintf '%s\\n' \"$HARMONYLITE_SFTP_PASSWORD\"\n".utf8).write(to: URL(fileURLWithPath: askpassScript))
                try FileManager.default.setAttributes([.posixPermissions: 0o700], ofItemAtPath: askpassScript)
            }
        } catch {
            try? FileManager.default.removeItem(atPath: scratchDirectory)
            throw SnapshotStoreError("\(location): preparing \(scratchDirectory): \(error.localizedDescription)")
        }
    }

    deinit { try? FileManager.default.removeItem(atPath: scratchDirectory) }

    var askpassScript: String { scratchDirectory + "/askpass" }

    public func upload(file: String, name: String) throws {
        let target = try remotePath(name)
        let temporary = try remotePath(".harmonylite-upload-\(UUID().uuidString)-\(name)")
        var commands = endpoint.directoryChain.map { "-mkdir \(Self.quote($0))" }  // '-': already there is fine
        commands += ["put \(Self.quote(file)) \(Self.quote(temporary))", "rename \(Self.quote(temporary)) \(Self.quote(target))"]
        let what = "uploading snapshot \(name) to \(location)"
        let run = try sftp(commands, what: what)
        guard run.succeeded else {
            _ = try? sftp(["-rm \(Self.quote(temporary))"], what: what)  // best effort: never listed, but it takes space
            throw failure(what, run)
        }
    }

    public func download(name: String, to file: String) throws {
        let what = "downloading snapshot \(name) from \(location)"
        let target = URL(fileURLWithPath: file)
        let partial = target.deletingLastPathComponent().appendingPathComponent(".\(target.lastPathComponent).\(UUID().uuidString).partial").path
        defer { try? FileManager.default.removeItem(atPath: partial) }
        let run = try sftp(["get \(Self.quote(try remotePath(name))) \(Self.quote(partial))"], what: what)
        guard run.succeeded else {
            if run.saysRemoteNotFound { throw SnapshotStoreError("snapshot \(name) not found in \(location): \(run.stderrSummary)") }
            throw failure(what, run)
        }
        do {
            if FileManager.default.fileExists(atPath: file) { try FileManager.default.removeItem(atPath: file) }
            try FileManager.default.moveItem(atPath: partial, toPath: file)
        } catch {
            throw SnapshotStoreError("\(what): writing \(file): \(error.localizedDescription)")
        }
    }

    public func list() throws -> [String] {
        let what = "listing \(location)"
        let run = try sftp(["ls -1 \(Self.quote(endpoint.directory))"], what: what)
        guard run.succeeded else {
            if run.saysRemoteNotFound { return [] }  // no directory yet: nothing was ever uploaded
            throw failure(what, run)
        }
        // Batch mode echoes each command as "sftp> ..."; the rest are paths, one a line.
        return run.stdout.split(whereSeparator: \.isNewline).filter { !$0.hasPrefix("sftp>") }
            .compactMap { $0.split(separator: "/").last.map(String.init) }
            .filter { $0.hasPrefix(snapshotNamePrefix) }
    }

    public func delete(name: String) throws {
        let what = "deleting snapshot \(name) from \(location)"
        let run = try sftp(["rm \(Self.quote(try remotePath(name)))"], what: what)
        guard run.succeeded || run.saysRemoteNotFound || run.stderr.contains("No such file") else { throw failure(what, run) }
    }

    /// The remote path of a snapshot; names are plain file names, so one can never reach outside the directory.
    func remotePath(_ name: String) throws -> String {
        guard !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
            throw SnapshotStoreError("snapshot name \"\(name)\" is not a plain file name")
        }
        return endpoint.directory == "/" ? "/" + name : endpoint.directory + "/" + name
    }

    /// What one sftp run left behind.
    struct Run {
        var status: Int32
        var stdout: String
        var stderr: String
        var succeeded: Bool { status == 0 }
        /// sftp's words when a remote path matches nothing (`File "..." not found.`, `Can't ls: "..." not found`);
        /// local file errors say "No such file or directory" instead.
        var saysRemoteNotFound: Bool { stderr.contains("\" not found") }
        /// stderr without ssh's chatter, for messages.
        var stderrSummary: String {
            // ssh ends lines with "\r\n", a single Character in Swift: split on any newline.
            stderr.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
                .filter { !$0.isEmpty && !$0.hasPrefix("Warning: Permanently added") }.joined(separator: "; ")
        }
    }

    /// The ssh options, password environment and command line for one batch; options come before `-b` so that
    /// BatchMode=no (needed for the askpass password) wins over the BatchMode=yes sftp adds for `-b`.
    func invocation() -> (arguments: [String], environment: [String: String]) {
        var options = [
            "ConnectTimeout=20", "ServerAliveInterval=15", "ServerAliveCountMax=4",
            "UserKnownHostsFile=\(Self.optionValue(knownHostsFile))", "StrictHostKeyChecking=\(strictHostKeyChecking ? "yes" : "accept-new")",
            "NumberOfPasswordPrompts=1",
        ]
        var environment = ProcessInfo.processInfo.environment
        if let password = endpoint.password {
            options += ["BatchMode=no", "KbdInteractiveAuthentication=yes", "PasswordAuthentication=yes"]
            if identityFile == nil { options += ["PubkeyAuthentication=no", "PreferredAuthentications=password,keyboard-interactive"] }
            environment["SSH_ASKPASS"] = askpassScript
            environment["SSH_ASKPASS_REQUIRE"] = "force"  // OpenSSH >= 8.4: use askpass even without DISPLAY or with a tty
            environment["HARMONYLITE_SFTP_PASSWORD"] = password
        }
        if let identityFile { options += ["IdentitiesOnly=yes", "IdentityFile=\(Self.optionValue(identityFile))"] }
        var arguments = options.flatMap { ["-o", $0] }
        if let port = endpoint.port { arguments += ["-P", String(port)] }
        arguments += ["-b", "-", endpoint.destination]
        return (arguments, environment)
    }

    /// Runs one `sftp -b -` batch with a hard time limit (SIGTERM, then SIGKILL, to sftp and its ssh together);
    /// the batch is read from a file and the output goes to files, so nothing can block on a full pipe.
    func sftp(_ commands: [String], what: String) throws -> Run {
        let (arguments, environment) = invocation()
        let base = scratchDirectory + "/" + UUID().uuidString
        let (inPath, outPath, errPath) = (base + ".batch", base + ".out", base + ".err")
        defer { for path in [inPath, outPath, errPath] { try? FileManager.default.removeItem(atPath: path) } }
        do { try Data((commands.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: inPath)) } catch {
            throw SnapshotStoreError("\(what): writing the sftp batch in \(scratchDirectory): \(error.localizedDescription)")
        }
        let child: ChildProcess
        do {
            child = try ChildProcess.spawn(sftpExecutable, arguments, environment: environment, stdin: inPath, stdout: outPath, stderr: errPath)
        } catch {
            throw SnapshotStoreError("\(what): cannot run \(sftpExecutable): \(error)")
        }
        let status = child.wait(timeoutSeconds: timeoutSeconds) ?? child.terminate(graceSeconds: 3)
        let run = Run(status: status, stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
                      stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
        if child.timedOut { throw SnapshotStoreError("\(what): sftp did not finish within \(Int(timeoutSeconds)) s; stderr: \(run.stderrSummary)") }
        return run
    }

    private func failure(_ what: String, _ run: Run) -> SnapshotStoreError {
        var text = "\(what): sftp exited with status \(run.status)"
        let summary = run.stderrSummary
        text += summary.isEmpty ? " and said nothing" : ": \(summary)"
        if run.stderr.contains("Permission denied (") { text += " (check the user and password in snapshot.sftp url, or identity_file)" }
        if run.stderr.contains("Host key verification failed") || run.stderr.contains("HOST IDENTIFICATION HAS CHANGED") {
            text += " (the server's host key is not the one in \(knownHostsFile))"
        }
        return SnapshotStoreError(text)
    }

    /// An sftp batch argument: double-quoted, with backslashes before quotes and backslashes. Inside quotes sftp
    /// itself escapes `*`, `?` and `[` for the commands that expand globs (get, put, rm, ls), so they stay literal.
    static func quote(_ path: String) -> String {
        var out = "\""
        for c in path {
            if c == "\"" || c == "\\" { out.append("\\") }
            out.append(c)
        }
        return out + "\""
    }

    /// A file name as an ssh -o value: quoted, since ssh splits values on whitespace.
    static func optionValue(_ path: String) -> String { "\"\(path)\"" }

    static func findSFTP() throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        for dir in path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/local/bin"] {
            if FileManager.default.isExecutableFile(atPath: dir + "/sftp") { return dir + "/sftp" }
        }
        throw SnapshotStoreError("sftp not found on PATH: install OpenSSH's client (Debian: apt-get install openssh-client)")
    }
}

/// The parts of `sftp://user:password@host:port/path`; `/~/dir` means `dir` under the login's home.
struct SFTPEndpoint: Sendable, Equatable {
    let user: String?
    let password: String?
    let host: String
    let port: Int?
    /// Remote directory: absolute, or relative to the home directory.
    let directory: String

    /// Parses the URL; errors say what is wrong with "the url" (callers name the key) and never repeat the password.
    init(_ url: String) throws {
        guard let parts = URLComponents(string: url), let scheme = parts.scheme?.lowercased() else {
            throw SnapshotStoreError("is not a URL; expected sftp://user:password@host:port/path")
        }
        guard scheme == "sftp" else { throw SnapshotStoreError("must start with sftp://, got '\(scheme)://'") }
        guard let host = parts.host, !host.isEmpty else { throw SnapshotStoreError("has no host") }
        guard parts.query == nil, parts.fragment == nil else { throw SnapshotStoreError("takes no ?query or #fragment") }
        self.host = host
        user = parts.user.flatMap { $0.isEmpty ? nil : $0 }
        password = parts.password
        port = parts.port
        if password != nil && user == nil { throw SnapshotStoreError("has a password but no user") }
        let segments = parts.path.split(separator: "/").map(String.init)
        guard !segments.contains(where: { $0 == "." || $0 == ".." }) else {
            throw SnapshotStoreError("must not have '.' or '..' in its path")
        }
        guard !parts.path.contains("\n") else { throw SnapshotStoreError("must not have a newline in its path") }
        if segments.first == "~" {
            directory = segments.count == 1 ? "." : segments.dropFirst().joined(separator: "/")
        } else {
            directory = "/" + segments.joined(separator: "/")
        }
    }

    /// user@host for ssh (IPv6 literals in brackets).
    var destination: String {
        let h = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
        return (user.map { "\($0)@" } ?? "") + h
    }

    /// For logs and errors: the URL without the password.
    var display: String {
        "\(destination)\(port.map { ":\($0)" } ?? "")\(directory.hasPrefix("/") ? directory : "/~/" + directory)"
    }

    /// Each directory from the outermost down to `directory`, for `-mkdir` (one level at a time).
    var directoryChain: [String] {
        let segments = directory.split(separator: "/").map(String.init).filter { $0 != "." }
        var chain: [String] = []
        var path = directory.hasPrefix("/") ? "" : "."
        for segment in segments {
            path += "/" + segment
            chain.append(path.hasPrefix("./") ? String(path.dropFirst(2)) : path)
        }
        return chain
    }
}
