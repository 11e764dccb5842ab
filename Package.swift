// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "harmonylite",
    platforms: [.macOS(.v15)],  // UInt128 (`PlantedBugs`)
    products: [
        .executable(name: "harmonylite", targets: ["harmonylite"]),
        .executable(name: "harmonybench", targets: ["harmonybench"]),
        .executable(name: "harmonysim", targets: ["harmonysim"]),
        .library(name: "HarmonyCore", targets: ["HarmonyCore"]),
        .library(name: "HarmonyCoreTesting", targets: ["HarmonyCoreTesting"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        // SHA-256 and HMAC for snapshot digests and S3 signatures: CryptoKit's API on Linux.
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        // Metrics: swift-metrics' types in swift-prometheus's registry (text exposition, histograms).
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // The HTTP API's network stack: NIO's HTTP/1.1 codec and TLS (about 2 minutes of first build on 2 cores;
        // Hummingbird would add its router and lifecycle on top for a handful of routes we dispatch ourselves).
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
    ],
    targets: [
        // C libraries: one tiny system-library target each, wrapped once by a Swift module.
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite", pkgConfig: "sqlite3",
                       providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CZstd", path: "Sources/CZstd", pkgConfig: "libzstd",
                       providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CNats", path: "Sources/CNats", pkgConfig: "libnats",
                       providers: [.apt(["libnats-dev"])]),

        // SQLite from Swift: connections, statements, typed values, errors that name the SQL.
        .target(name: "HarmonySQLite", dependencies: ["CSQLite"]),
        // Change records and their wire form: CBOR envelope, optional zstd.
        .target(name: "HarmonyCodec", dependencies: ["HarmonySQLite", "CZstd"]),
        // The deterministic replication core: CDC install, scan/publish, LWW apply, checkpoints.
        .target(name: "HarmonyCore", dependencies: ["HarmonySQLite", "HarmonyCodec"]),
        // The core's deterministic environment, shipped once for its tests and the simulator: a manual clock
        // and an in-memory JetStream (streams, dedup window, retention, consumers with ack wait and naks).
        .target(name: "HarmonyCoreTesting", dependencies: ["HarmonyCore"]),

        // NATS and JetStream through libnats (the official C client): connection, streams, async publish, pull consumers, KV.
        .target(name: "HarmonyNATS", dependencies: ["CNats"]),

        // Starting programs without Foundation's Process: posix_spawn with every inherited descriptor closed, reaped per child.
        .target(name: "HarmonyProcess"),

        // The live runtime's pieces: config.toml, the embedded nats-server supervisor, log handlers, change detection.
        .target(name: "HarmonyRuntime", dependencies: [
            "HarmonyCore", "HarmonyCodec", "HarmonyTOML", "HarmonySQLite", "HarmonyNATS", "HarmonyProcess",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),

        // SQL from remote clients: strict JSON, the authorizer, pooled read-only and read-write connections.
        .target(name: "HarmonyAPI", dependencies: [
            "HarmonySQLite", "CSQLite", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
        ]),
        // The HTTP front end on every node (seed 004's interface): SQL, backups, snapshots, replications.
        .target(name: "HarmonyHTTP", dependencies: [
            "HarmonyAPI", "HarmonyRuntime", "HarmonySQLite", "HarmonyCore", "HarmonyNATS",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        // The PostgreSQL wire protocol on every node (seed 004's other front end): SCRAM, TLS, simple and extended queries.
        .target(name: "HarmonyPostgres", dependencies: [
            "HarmonyAPI", "HarmonySQLite", "CSQLite",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        // A small TOML reader whose errors name the key and line (config.toml, scenario files).
        .target(name: "HarmonyTOML"),

        // The deterministic simulator: the real core under a seeded event loop with injected faults.
        .target(name: "HarmonySim", dependencies: ["HarmonyCore", "HarmonyCoreTesting", "HarmonyCodec", "HarmonySQLite", "HarmonyTOML", "CSQLite"],
                path: "Simulator/HarmonySim"),
        .executableTarget(name: "harmonysim", dependencies: [
            "HarmonySim",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], path: "Simulator/harmonysim"),

        .executableTarget(name: "harmonylite", dependencies: [
            "HarmonyCore", "HarmonySQLite", "HarmonyRuntime", "HarmonyHTTP", "HarmonyPostgres",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "harmonybench", dependencies: [
            "HarmonyCore", "HarmonyCodec", "HarmonyCoreTesting", "HarmonySQLite", "HarmonyRuntime", "HarmonyAPI", "HarmonyNATS",
            "HarmonyProcess", "HarmonyTestSupport", "HarmonySim",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),

        // Helpers several test targets share (the sqlite3 shell, loopback ports, a seeded PRNG); tests only.
        .target(name: "HarmonyTestSupport", dependencies: ["HarmonyProcess"], path: "Tests/Support"),
        .testTarget(name: "HarmonySQLiteTests", dependencies: ["HarmonySQLite"]),
        .testTarget(name: "HarmonyAPITests", dependencies: ["HarmonyAPI", "HarmonySQLite", "HarmonyTestSupport"]),
        .testTarget(name: "HarmonyPostgresTests", dependencies: [
            "HarmonyPostgres", "HarmonySQLite", "HarmonyTestSupport", .product(name: "NIOCore", package: "swift-nio"),
        ]),
        .testTarget(name: "HarmonyCodecTests", dependencies: ["HarmonyCodec", "HarmonySQLite", "HarmonyTestSupport"]),
        .testTarget(name: "HarmonyTOMLTests", dependencies: ["HarmonyTOML", "HarmonyTestSupport"]),
        .testTarget(name: "HarmonyNATSTests", dependencies: ["HarmonyNATS", "HarmonyProcess", "HarmonyTestSupport"]),
        .testTarget(name: "HarmonyRuntimeTests", dependencies: [
            "HarmonyRuntime", "HarmonyCore", "HarmonyProcess", "HarmonySQLite", "HarmonyTestSupport", .product(name: "Logging", package: "swift-log"),
        ]),
        // Real nats-server, real harmonylite processes, the sqlite3 shell as the application.
        .testTarget(name: "HarmonyEndToEndTests", dependencies: ["HarmonyNATS", "HarmonyProcess", "HarmonyRuntime", "HarmonySQLite", "HarmonyTestSupport"]),
        .testTarget(name: "HarmonySimTests", dependencies: ["HarmonySim", "HarmonyCore", "HarmonyCoreTesting", "HarmonyCodec", "HarmonySQLite"]),
        .testTarget(name: "HarmonyCoreTests", dependencies: ["HarmonyCore", "HarmonyCoreTesting", "HarmonyCodec", "HarmonySQLite", "HarmonyTestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
