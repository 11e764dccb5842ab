import HarmonyTOML

extension RuntimeConfig {
    /// Reads `[snapshot.s3]`, `[snapshot.webdav]` and `[snapshot.sftp]` from the `[snapshot]` table `s`, so a typo or a
    /// malformed URL stops the node at startup with the key and line, not at the first snapshot an hour later.
    /// Every table present is checked; the one `settings.store` names must also say where snapshots go.
    static func parseSnapshotStoreTables(_ s: TOMLReader, into settings: inout SnapshotSettings) throws {
        if let t = try s.table("s3") {
            try t.rejectUnknownKeys(allowed: ["endpoint", "bucket", "path", "use_ssl", "access_key", "secret", "session_token", "region"])
            settings.s3.endpoint = try t.string("endpoint") ?? settings.s3.endpoint
            settings.s3.bucket = try t.string("bucket") ?? settings.s3.bucket
            settings.s3.path = try t.string("path") ?? settings.s3.path
            settings.s3.useSSL = try t.bool("use_ssl") ?? settings.s3.useSSL
            settings.s3.accessKey = try t.string("access_key")
            settings.s3.secret = try t.string("secret")
            settings.s3.sessionToken = try t.string("session_token")
            settings.s3.region = try t.string("region") ?? settings.s3.region
            do { _ = try S3Endpoint(settings.s3.endpoint, useSSL: settings.s3.useSSL) } catch {
                throw t.error(at: "endpoint", "key '\(t.fullKey("endpoint"))' \(error)")
            }
            if (settings.s3.accessKey == nil) != (settings.s3.secret == nil) {
                let missing = settings.s3.accessKey == nil ? "access_key" : "secret"
                throw t.error(at: missing == "secret" ? "access_key" : "secret",
                              "keys '\(t.fullKey("access_key"))' and '\(t.fullKey("secret"))' go together; '\(t.fullKey(missing))' is missing")
            }
            guard !settings.s3.region.isEmpty else { throw t.error(at: "region", "key '\(t.fullKey("region"))' must not be empty") }
        }
        if let t = try s.table("webdav") {
            try t.rejectUnknownKeys(allowed: ["url"])
            settings.webdav.url = try t.string("url") ?? settings.webdav.url
            if t.contains("url") {
                do { _ = try WebDAVEndpoint(settings.webdav.url) } catch {
                    throw t.error(at: "url", "key '\(t.fullKey("url"))' \(error)")
                }
            }
        }
        if let t = try s.table("sftp") {
            try t.rejectUnknownKeys(allowed: ["url", "identity_file", "known_hosts_file"])
            settings.sftp.url = try t.string("url") ?? settings.sftp.url
            settings.sftp.identityFile = try t.string("identity_file")
            settings.sftp.knownHostsFile = try t.string("known_hosts_file")
            if t.contains("url") {
                do { _ = try SFTPEndpoint(settings.sftp.url) } catch {
                    throw t.error(at: "url", "key '\(t.fullKey("url"))' \(error)")
                }
            }
            for key in ["identity_file", "known_hosts_file"] {
                if try t.string(key)?.isEmpty == true {
                    throw t.error(at: key, "key '\(t.fullKey(key))' must not be empty (leave it out instead)")
                }
            }
        }
        try requireDestination(s, settings)
    }

    /// The chosen store must know where to put snapshots; the error points at its table, or at `store` when absent.
    private static func requireDestination(_ s: TOMLReader, _ settings: SnapshotSettings) throws {
        let (table, key, missing): (String, String, Bool)
        switch settings.store {
        case "s3": (table, key, missing) = ("s3", "bucket", settings.s3.bucket.isEmpty)
        case "webdav": (table, key, missing) = ("webdav", "url", settings.webdav.url.isEmpty)
        case "sftp": (table, key, missing) = ("sftp", "url", settings.sftp.url.isEmpty)
        default: return
        }
        guard missing else { return }
        let message = "key '\(s.fullKey(table)).\(key)' is required when snapshot.store = \"\(settings.store)\""
        throw try s.table(table).map { $0.error(at: key, message) } ?? s.error(at: "store", message)
    }
}
