import Foundation
@testable import HarmonyRuntime
import HarmonyTOML
import Testing

/// Parses `[snapshot]` text (with `store` already applied, as `RuntimeConfig.parse` does) through the store tables.
private func parseStores(_ text: String) throws -> RuntimeConfig.SnapshotSettings {
    let snapshot = try #require(try TOMLReader(parsing: text).table("snapshot"))
    var settings = RuntimeConfig.SnapshotSettings()
    settings.store = try snapshot.string("store") ?? settings.store
    try RuntimeConfig.parseSnapshotStoreTables(snapshot, into: &settings)
    return settings
}

/// The TOML error `text` gives, or nil if it parses.
private func storeError(_ text: String) -> TOMLError? {
    #expect(throws: TOMLError.self) { _ = try parseStores(text) }
}

@Suite("config.toml: [snapshot.s3], [snapshot.webdav], [snapshot.sftp]")
struct SnapshotStoreConfigTests {
    @Test func readsEveryS3Key() throws {
        let s = try parseStores("""
            [snapshot]
            store = "s3"
            [snapshot.s3]
            endpoint = "127.0.0.1:9000"
            bucket = "backups"
            path = "harmonylite/snapshots"
            use_ssl = false
            access_key = "AKIAEXAMPLE"
            secret = "shh"
            session_token = "token"
            region = "eu-west-3"
            """)
        #expect(s.s3 == RuntimeConfig.S3StoreSettings(endpoint: "127.0.0.1:9000", bucket: "backups", path: "harmonylite/snapshots",
                                                       useSSL: false, accessKey: "AKIAEXAMPLE", secret: "shh", sessionToken: "token",
                                                       region: "eu-west-3"))
    }

    @Test func absentTablesKeepTheDefaults() throws {
        let s = try parseStores("[snapshot]\nenabled = true\n")
        #expect(s.s3 == RuntimeConfig.S3StoreSettings() && s.webdav == RuntimeConfig.WebDAVStoreSettings() && s.sftp == RuntimeConfig.SFTPStoreSettings())
    }

    @Test func unknownKeyIsRejectedWithItsLineAndANearMatch() {
        let error = storeError("[snapshot]\n[snapshot.s3]\nbucket = \"b\"\nacess_key = \"k\"\n")
        #expect(error?.line == 4)
        #expect(error?.message == "unknown key 'snapshot.s3.acess_key' (did you mean 'access_key'?)")
        #expect(storeError("[snapshot.webdav]\nurl = \"https://h/\"\nlogin = \"x\"\n")?.message.contains("'snapshot.webdav.login'") == true)
        #expect(storeError("[snapshot.sftp]\nidentityfile = \"k\"\n")?.message.contains("did you mean 'identity_file'") == true)
    }

    @Test func wrongTypesNameTheKey() {
        #expect(storeError("[snapshot.s3]\nuse_ssl = \"no\"\n")?.message == "key 'snapshot.s3.use_ssl' must be a boolean, got string")
        #expect(storeError("[snapshot.sftp]\nurl = 22\n")?.message == "key 'snapshot.sftp.url' must be a string, got integer")
    }

    @Test func s3AccessKeyAndSecretGoTogether() {
        let error = storeError("[snapshot.s3]\nbucket = \"b\"\naccess_key = \"AKIA\"\n")
        #expect(error?.message == "keys 'snapshot.s3.access_key' and 'snapshot.s3.secret' go together; 'snapshot.s3.secret' is missing")
        #expect(error?.line == 3)
    }

    @Test func s3EndpointIsHostAndPortOrAnHTTPURL() throws {
        #expect(try parseStores("[snapshot.s3]\nendpoint = \"http://minio.local:9000\"\n").s3.endpoint == "http://minio.local:9000")
        let withBucket = storeError("[snapshot.s3]\nendpoint = \"s3.amazonaws.com/backups\"\n")
        #expect(withBucket?.message.hasPrefix("key 'snapshot.s3.endpoint' must be host[:port] (the bucket goes in snapshot.s3.bucket)") == true)
        #expect(storeError("[snapshot.s3]\nendpoint = \"ftp://host\"\n")?.message == "key 'snapshot.s3.endpoint' must be host[:port] or an http(s) URL, got scheme 'ftp'")
    }

    @Test func webdavURLIsHarmonyLitesForm() throws {
        let url = "https://cloud.example.com/remote.php/dav?dir=/snapshots/node-1&login=alice&secret=p%26ss"
        #expect(try parseStores("[snapshot.webdav]\nurl = \"\(url)\"\n").webdav.url == url)
        let endpoint = try WebDAVEndpoint(url)
        #expect(endpoint.collectionURL == "https://cloud.example.com/remote.php/dav/snapshots/node-1/")
        #expect(endpoint.collectionChain == ["https://cloud.example.com/remote.php/dav/snapshots/", "https://cloud.example.com/remote.php/dav/snapshots/node-1/"])
        #expect(endpoint.authorization == "Basic " + [UInt8]("alice:p&ss".utf8).base64)
    }

    @Test func webdavURLErrorsNameTheKeyButNotTheSecret() {
        let scheme = storeError("[snapshot]\n[snapshot.webdav]\nurl = \"ftp://h/x?login=a&secret=hunter2\"\n")
        #expect(scheme?.message == "key 'snapshot.webdav.url' must start with http:// or https://, got 'ftp://'")
        #expect(scheme?.line == 3)
        let parameter = storeError("[snapshot.webdav]\nurl = \"https://h/?dir=/s&user=a&secret=hunter2\"\n")
        #expect(parameter?.message == "key 'snapshot.webdav.url' has unknown parameter 'user' (expected dir, login, secret)")
        #expect(storeError("[snapshot.webdav]\nurl = \"https://h/?dir=/s/../etc\"\n")?.message.contains("'.' or '..'") == true)
        for error in [scheme, parameter] { #expect(error?.description.contains("hunter2") == false) }
    }

    @Test func sftpURLAndKeyFilesAreRead() throws {
        let s = try parseStores("""
            [snapshot]
            store = "sftp"
            [snapshot.sftp]
            url = "sftp://backup:pa%40ss@files.example.com:2222/srv/snapshots"
            identity_file = "/etc/harmonylite/id_ed25519"
            known_hosts_file = "/etc/harmonylite/known_hosts"
            """)
        #expect(s.sftp == RuntimeConfig.SFTPStoreSettings(url: "sftp://backup:pa%40ss@files.example.com:2222/srv/snapshots",
                                                           identityFile: "/etc/harmonylite/id_ed25519", knownHostsFile: "/etc/harmonylite/known_hosts"))
        let endpoint = try SFTPEndpoint(s.sftp.url)
        #expect(endpoint.user == "backup" && endpoint.password == "pa@ss" && endpoint.port == 2222 && endpoint.directory == "/srv/snapshots")
        #expect(endpoint.display == "backup@files.example.com:2222/srv/snapshots")
        #expect(endpoint.directoryChain == ["/srv", "/srv/snapshots"])
        #expect(try SFTPEndpoint("sftp://u@h/~/snapshots/a").directory == "snapshots/a")
    }

    @Test func sftpURLErrorsNameTheKeyButNotThePassword() {
        let scheme = storeError("[snapshot.sftp]\nurl = \"ssh://u:hunter2@h/x\"\n")
        #expect(scheme?.message == "key 'snapshot.sftp.url' must start with sftp://, got 'ssh://'")
        #expect(scheme?.description.contains("hunter2") == false)
        #expect(storeError("[snapshot.sftp]\nurl = \"sftp:///x\"\n")?.message == "key 'snapshot.sftp.url' has no host")
        #expect(storeError("[snapshot.sftp]\nurl = \"sftp://h/x\"\nidentity_file = \"\"\n")?.message
            == "key 'snapshot.sftp.identity_file' must not be empty (leave it out instead)")
    }

    @Test func chosenStoreMustSayWhereSnapshotsGo() throws {
        let noBucket = storeError("[snapshot]\nstore = \"s3\"\n[snapshot.s3]\nendpoint = \"h\"\n")
        #expect(noBucket?.message == "key 'snapshot.s3.bucket' is required when snapshot.store = \"s3\"")
        let noTable = storeError("[snapshot]\nstore = \"webdav\"\n")
        #expect(noTable?.message == "key 'snapshot.webdav.url' is required when snapshot.store = \"webdav\"")
        #expect(noTable?.line == 2)
        #expect(storeError("[snapshot]\nstore = \"sftp\"\n[snapshot.sftp]\nidentity_file = \"k\"\n")?.message
            == "key 'snapshot.sftp.url' is required when snapshot.store = \"sftp\"")
        // A table for a store not in use is checked but need not be complete.
        #expect(try parseStores("[snapshot]\nstore = \"nats\"\n[snapshot.s3]\nregion = \"eu-west-1\"\n").s3.region == "eu-west-1")
    }

    /// RuntimeConfig.parse reaches these tables: an S3 typo fails the whole config with the key and line.
    @Test func fullConfigParseChecksTheStoreTables() {
        let error = #expect(throws: TOMLError.self) {
            _ = try RuntimeConfig.parse("db_path = \"a.db\"\n[snapshot]\nstore = \"s3\"\n[snapshot.s3]\nbuckett = \"b\"\n")
        }
        #expect(error?.description == "line 5, column 1: unknown key 'snapshot.s3.buckett' (did you mean 'bucket'?)")
    }
}

private extension Array where Element == UInt8 {
    var base64: String { Data(self).base64EncodedString() }
}
