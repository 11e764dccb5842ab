import Foundation
import HarmonyNATS

/// Builds the store `[snapshot] store` names from its settings.
public enum SnapshotStores {
    public static func make(_ config: RuntimeConfig, jetStream: JetStream) throws -> any SnapshotStore {
        let s = config.snapshot
        switch s.store {
        case "nats":
            return try NATSSnapshotStore(jetStream: jetStream, bucket: s.nats.bucket, replicas: s.nats.replicas ?? config.replicas)
        case "local":
            return LocalSnapshotStore(directory: s.local.path ?? (dataDirectory(config) as NSString).appendingPathComponent("snapshots"))
        case "s3":
            return try S3SnapshotStore(settings: s.s3)
        case "webdav":
            return try WebDAVSnapshotStore(settings: s.webdav)
        case "sftp":
            // Host keys we accept on first use go to a file of our own, never the user's ~/.ssh/known_hosts.
            return try SFTPSnapshotStore(settings: s.sftp, defaultKnownHostsFile: (dataDirectory(config) as NSString)
                .appendingPathComponent("harmonylite-\(config.node.nodeID)-known_hosts"))
        default:
            throw SnapshotStoreError("unknown snapshot store \"\(s.store)\" (nats, local, s3, webdav or sftp)")
        }
    }

    /// The database's directory, where node-local files live.
    static func dataDirectory(_ config: RuntimeConfig) -> String {
        let directory = (config.node.databasePath as NSString).deletingLastPathComponent
        return directory.isEmpty ? "." : directory
    }
}
