import Foundation
@testable import HarmonyRuntime
import Testing

/// What every snapshot store must do, whatever server is behind it.
enum SnapshotStoreContract {
    static let older = "harmonylite-snapshot-0000018c2f3a4b5c-1"
    static let newer = "harmonylite-snapshot-0000018c2f3a4b5d-2"

    /// Seeded xorshift bytes: a dropped, repeated or swapped chunk cannot compare equal.
    static func content(byteCount: Int, seed: UInt64) -> [UInt8] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<byteCount).map { _ in
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return UInt8(truncatingIfNeeded: state >> 24)
        }
    }

    /// Uploads two snapshots (1 and 3 MiB, odd sizes), then checks list, newest, both downloads, prune(keep: 1)
    /// and the error for a snapshot that is gone.
    static func exercise(_ store: any SnapshotStore, scratch: URL) throws {
        let olderBytes = content(byteCount: (1 << 20) + 17, seed: 1), newerBytes = content(byteCount: (3 << 20) + 5, seed: 2)
        let olderFile = scratch.appendingPathComponent("older.snapshot"), newerFile = scratch.appendingPathComponent("newer.snapshot")
        try Data(olderBytes).write(to: olderFile)
        try Data(newerBytes).write(to: newerFile)

        try store.upload(file: olderFile.path, name: older)
        try store.upload(file: newerFile.path, name: newer)
        #expect(try store.list().sorted() == [older, newer])  // and no temporary upload names
        #expect(try store.newest() == newer)

        let downloaded = scratch.appendingPathComponent("downloaded.snapshot")
        try store.download(name: newer, to: downloaded.path)
        let newerBack = try [UInt8](Data(contentsOf: downloaded))
        #expect(newerBack == newerBytes, "downloaded \(newerBack.count) bytes of \(newer), uploaded \(newerBytes.count)")
        try store.download(name: older, to: downloaded.path)  // replaces the file
        let olderBack = try [UInt8](Data(contentsOf: downloaded))
        #expect(olderBack == olderBytes, "downloaded \(olderBack.count) bytes of \(older), uploaded \(olderBytes.count)")

        try store.prune(keep: 1)
        #expect(try store.list() == [newer])
        let missing = scratch.appendingPathComponent("missing.snapshot")
        let error = #expect(throws: SnapshotStoreError.self) { try store.download(name: older, to: missing.path) }
        #expect(error?.description.contains(older) == true, "\(String(describing: error))")
        #expect(!FileManager.default.fileExists(atPath: missing.path))
    }
}

/// The examples of AWS's "Signature Calculations for the Authorization Header" page for S3, offline.
@Suite("AWS Signature Version 4")
struct AWSSignatureV4Tests {
    let signer = AWSSignatureV4(accessKey: "AKIAIOSFODNN7EXAMPLE", secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                                sessionToken: nil, region: "us-east-1", service: "s3")
    let may24 = Date(timeIntervalSince1970: 1_369_353_600)  // 2013-05-24T00:00:00Z

    @Test func signsAWSsGetObjectExample() {
        let headers = signer.signedHeaders(method: "GET", host: "examplebucket.s3.amazonaws.com", path: "/test.txt", canonicalQuery: "",
                                           headers: ["Range": "bytes=0-9"], payloadSHA256: AWSSignatureV4.emptyPayloadSHA256, date: may24)
        #expect(headers["authorization"] == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
            + "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
        #expect(headers["x-amz-date"] == "20130524T000000Z" && headers["range"] == "bytes=0-9" && headers["host"] == nil)
    }

    @Test func signsAWSsListObjectsExampleWithASortedQuery() {
        let query = AWSSignatureV4.canonicalQuery([("prefix", "J"), ("max-keys", "2")])
        #expect(query == "max-keys=2&prefix=J")
        let headers = signer.signedHeaders(method: "GET", host: "examplebucket.s3.amazonaws.com", path: "/", canonicalQuery: query,
                                           headers: [:], payloadSHA256: AWSSignatureV4.emptyPayloadSHA256, date: may24)
        #expect(headers["authorization"]?.hasSuffix("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7") == true)
    }

    @Test func encodesEverythingButUnreservedCharacters() {
        #expect(AWSSignatureV4.uriEncode("a b+c/d~e_f.g-h%ü") == "a%20b%2Bc%2Fd~e_f.g-h%25%C3%BC")
        #expect(AWSSignatureV4.uriEncode("cluster a/snap+shots/x", keepingSlashes: true) == "cluster%20a/snap%2Bshots/x")
    }

    @Test func credentialsFallBackToTheEnvironment() throws {
        var settings = RuntimeConfig.S3StoreSettings()
        settings.bucket = "b"
        let store = try S3SnapshotStore(settings: settings, environment: ["AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "t"])
        #expect(store.signer.accessKey == "AKIAENV" && store.signer.sessionToken == "t")
        let error = #expect(throws: SnapshotStoreError.self) { try S3SnapshotStore(settings: settings, environment: [:]) }
        #expect(error?.description == "s3 bucket 'b' at https://s3.amazonaws.com: no credentials; set snapshot.s3.access_key and secret "
            + "(or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
    }
}

@Suite("S3 snapshot store against moto_server", .timeLimit(.minutes(3)))
struct S3SnapshotStoreTests {
    @Test func storesListsFetchesAndPrunesSnapshots() throws {
        let scratch = try TestTools.temporaryDirectory("s3")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let moto = try MotoS3Server.start(directory: scratch)
        defer { moto.server.stop() }
        // One key per listing page, so two snapshots already take continuation tokens; the path needs encoding.
        let store = try S3SnapshotStore(settings: moto.settings(bucket: "harmony-snapshots", path: "/cluster a/snap+shots/"), listPageKeys: 1)
        try store.createBucket()
        try SnapshotStoreContract.exercise(store, scratch: scratch)
        // Another path in the same bucket is another store.
        #expect(try S3SnapshotStore(settings: moto.settings(bucket: "harmony-snapshots", path: "cluster-b")).list() == [])
    }

    @Test func wrongCredentialsAndMissingBucketSayWhatIsWrong() throws {
        let scratch = try TestTools.temporaryDirectory("s3-errors")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let moto = try MotoS3Server.start(directory: scratch)
        defer { moto.server.stop() }
        try S3SnapshotStore(settings: moto.settings(bucket: "harmony-snapshots", path: "")).createBucket()

        var wrongSecret = moto.settings(bucket: "harmony-snapshots", path: "")
        wrongSecret.secret = "not-the-secret-\(moto.secret)"
        let signature = #expect(throws: SnapshotStoreError.self) { try S3SnapshotStore(settings: wrongSecret).list() }
        #expect(signature?.description.contains("HTTP 403 SignatureDoesNotMatch") == true, "\(String(describing: signature))")
        #expect(signature?.description.contains("access_key, secret") == true)
        #expect(signature?.description.contains(wrongSecret.secret!) == false)

        var unknownKey = moto.settings(bucket: "harmony-snapshots", path: "")
        unknownKey.accessKey = "AKIANOBODYKNOWS00000"
        let key = #expect(throws: SnapshotStoreError.self) { try S3SnapshotStore(settings: unknownKey).list() }
        #expect(key?.description.contains("InvalidAccessKeyId") == true, "\(String(describing: key))")

        let file = scratch.appendingPathComponent("s.snapshot")
        try Data([1, 2, 3]).write(to: file)
        let missingBucket = try S3SnapshotStore(settings: moto.settings(bucket: "no-such-bucket", path: ""))
        let bucket = #expect(throws: SnapshotStoreError.self) { try missingBucket.upload(file: file.path, name: SnapshotStoreContract.older) }
        #expect(bucket?.description.contains("NoSuchBucket") == true, "\(String(describing: bucket))")
        #expect(bucket?.description.contains("create bucket 'no-such-bucket'") == true)
        #expect(bucket?.description.contains("127.0.0.1:\(moto.server.port)") == true)
    }
}

@Suite("WebDAV snapshot store against wsgidav", .timeLimit(.minutes(3)))
struct WebDAVSnapshotStoreTests {
    @Test func storesListsFetchesAndPrunesSnapshots() throws {
        let scratch = try TestTools.temporaryDirectory("webdav")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let dav = try WsgiDAVServer.start(directory: scratch)
        defer { dav.server.stop() }
        // The collection chain does not exist yet: the first upload creates it (MKCOL); names need encoding.
        let store = try WebDAVSnapshotStore(settings: .init(url: dav.url(dir: "/snap shots/node-1")))
        #expect(try store.list() == [])
        try SnapshotStoreContract.exercise(store, scratch: scratch)
        // On the server's disk: the newest snapshot and no leftover temporary upload.
        let files = try FileManager.default.contentsOfDirectory(atPath: scratch.appendingPathComponent("root/snap shots/node-1").path)
        #expect(files == [SnapshotStoreContract.newer])
    }

    @Test func wrongSecretSaysWhatIsWrong() throws {
        let scratch = try TestTools.temporaryDirectory("webdav-errors")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let dav = try WsgiDAVServer.start(directory: scratch)
        defer { dav.server.stop() }
        let store = try WebDAVSnapshotStore(settings: .init(url: dav.url(dir: "/snapshots", secret: "wrong-pass-123")))
        let error = #expect(throws: SnapshotStoreError.self) { try store.list() }
        #expect(error?.description.contains("HTTP 401") == true, "\(String(describing: error))")
        #expect(error?.description.contains("check login and secret") == true)
        #expect(error?.description.contains("wrong-pass-123") == false)
    }
}

@Suite("SFTP snapshot store against a private sshd", .timeLimit(.minutes(3)))
struct SFTPSnapshotStoreTests {
    func settings(_ ssh: PrivateSSHServer, _ scratch: URL, password: String? = nil, key: String?) -> RuntimeConfig.SFTPStoreSettings {
        let login = password.map { "\(ssh.user):\($0.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)" } ?? ssh.user
        var s = RuntimeConfig.SFTPStoreSettings()
        // A space and glob characters in the path: batch commands must quote and escape them.
        s.url = "sftp://\(login)@127.0.0.1:\(ssh.server.port)\(scratch.path)/remote%20dir/snap%5B1%5D*/node-1"
        s.identityFile = key
        return s
    }

    @Test func storesListsFetchesAndPrunesSnapshotsWithKeyAuth() throws {
        let scratch = try TestTools.temporaryDirectory("sftp")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let ssh = try PrivateSSHServer.start(directory: scratch)
        defer { ssh.server.stop() }
        let knownHosts = scratch.appendingPathComponent("state dir/known_hosts").path  // ssh options must quote it
        let store = try SFTPSnapshotStore(settings: settings(ssh, scratch, key: ssh.clientKey), defaultKnownHostsFile: knownHosts, timeoutSeconds: 60)
        #expect(try store.list() == [])  // the directory does not exist yet
        let local = scratch.appendingPathComponent("local [files]")
        try FileManager.default.createDirectory(at: local, withIntermediateDirectories: true)
        try SnapshotStoreContract.exercise(store, scratch: local)
        let files = try FileManager.default.contentsOfDirectory(atPath: scratch.appendingPathComponent("remote dir/snap[1]*/node-1").path)
        #expect(files == [SnapshotStoreContract.newer])  // no leftover temporary upload
        // accept-new remembered the host key in our own file.
        #expect(try String(contentsOfFile: knownHosts, encoding: .utf8).contains("ssh-ed25519"))
    }

    @Test func keyTheServerDoesNotKnowIsRefusedClearly() throws {
        let scratch = try TestTools.temporaryDirectory("sftp-key")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let ssh = try PrivateSSHServer.start(directory: scratch)
        defer { ssh.server.stop() }
        let store = try SFTPSnapshotStore(settings: settings(ssh, scratch, key: ssh.strangerKey),
                                          defaultKnownHostsFile: scratch.appendingPathComponent("known_hosts").path, timeoutSeconds: 60)
        let error = #expect(throws: SnapshotStoreError.self) { try store.list() }
        #expect(error?.description.contains("Permission denied") == true, "\(String(describing: error))")
        #expect(error?.description.contains("sftp \(ssh.user)@127.0.0.1:\(ssh.server.port)") == true)
    }

    /// A successful password login would need a password on a system account, which tests must not set; this shows
    /// the password reaches sshd through SSH_ASKPASS (sshd logs a failed *password*), and the refusal is clear.
    @Test func passwordGoesThroughAskpassAndWrongOneIsRefused() throws {
        let scratch = try TestTools.temporaryDirectory("sftp-password")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let ssh = try PrivateSSHServer.start(directory: scratch)
        defer { ssh.server.stop() }
        let store = try SFTPSnapshotStore(settings: settings(ssh, scratch, password: "wrong pass:@/1", key: nil),
                                          defaultKnownHostsFile: scratch.appendingPathComponent("known_hosts").path, timeoutSeconds: 60)
        let error = #expect(throws: SnapshotStoreError.self) { try store.list() }
        #expect(error?.description.contains("Permission denied") == true, "\(String(describing: error))")
        #expect(error?.description.contains("wrong pass") == false)
        #expect(ssh.server.log.contains("Failed password for"), "sshd log:\n\(ssh.server.log)")
    }

    @Test func unknownHostKeyIsRefusedWithStrictKnownHosts() throws {
        let scratch = try TestTools.temporaryDirectory("sftp-hostkey")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let ssh = try PrivateSSHServer.start(directory: scratch)
        defer { ssh.server.stop() }
        var s = settings(ssh, scratch, key: ssh.clientKey)
        s.knownHostsFile = scratch.appendingPathComponent("empty_known_hosts").path
        try Data().write(to: URL(fileURLWithPath: s.knownHostsFile!))
        let store = try SFTPSnapshotStore(settings: s, defaultKnownHostsFile: "/nonexistent/unused", timeoutSeconds: 60)
        let error = #expect(throws: SnapshotStoreError.self) { try store.list() }
        #expect(error?.description.contains("Host key verification failed") == true, "\(String(describing: error))")
    }
}
