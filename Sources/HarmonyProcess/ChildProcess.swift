import Foundation

public struct ChildProcessError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// The one way harmonylite, its benchmark and its tests start programs (sftp for the SFTP store, the embedded
/// nats-server, the benchmark's nodes, the tests' sqlite3 shells and clients): posix_spawn, reaped with waitpid.
/// Foundation's `Process` is not used because its one manager thread blocks in waitpid for any child that closes the
/// descriptors it inherited (sshd does), which would stall every other Process in the program until that child
/// exits, and because it closes inherited descriptors from a list taken before the spawn.
public final class ChildProcess: @unchecked Sendable {
    public let pid: pid_t
    private let lock = NSLock()
    private var exitStatus: Int32?
    private var killedForTimeout = false

    private init(pid: pid_t) { self.pid = pid }

    /// True once `terminate` had to stop a child that was still running.
    public var timedOut: Bool { lock.withLock { killedForTimeout } }

    /// Starts `executable` in its own process group with stdin, stdout and stderr opened on the given files
    /// (nil: /dev/null; truncated first unless `appendOutput`) and every other descriptor closed, so it holds
    /// nothing of ours open.
    /// - throws: `ChildProcessError` when the program cannot be started.
    public static func spawn(_ executable: String, _ arguments: [String], environment: [String: String],
                             stdin: String?, stdout: String?, stderr: String?, appendOutput: Bool = false) throws -> ChildProcess {
        let outputFlags = O_WRONLY | O_CREAT | O_APPEND | (appendOutput ? 0 : O_TRUNC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        #if !canImport(Darwin)
        if let closeFrom = closeFromAction {
            _ = closeFrom(&actions, 3)
        } else {
            for fd in openDescriptors() where fd > 2 { posix_spawn_file_actions_addclose(&actions, fd) }
        }
        #endif
        posix_spawn_file_actions_addopen(&actions, 0, stdin ?? "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, stdout ?? "/dev/null", outputFlags, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, stderr ?? "/dev/null", outputFlags, 0o600)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var flags = Int32(POSIX_SPAWN_SETPGROUP) | Int32(POSIX_SPAWN_SETSIGMASK) | Int32(POSIX_SPAWN_SETSIGDEF)
        #if canImport(Darwin)
        flags |= Int32(POSIX_SPAWN_CLOEXEC_DEFAULT)
        #endif
        posix_spawnattr_setflags(&attributes, Int16(flags))
        posix_spawnattr_setpgroup(&attributes, 0)
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in argv + envp { free(p) } }
        var pid = pid_t()
        let result = posix_spawn(&pid, executable, &actions, &attributes, argv, envp)
        guard result == 0 else { throw ChildProcessError(description: "cannot start \(executable): \(String(cString: strerror(result)))") }
        return ChildProcess(pid: pid)
    }

    /// The exit status (128 + signal number when killed by a signal), or nil if still running after `timeoutSeconds`.
    public func wait(timeoutSeconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        var pauseSeconds = 0.002
        while true {
            if let status = reap() { return status }
            if Date() >= deadline { return nil }
            Thread.sleep(forTimeInterval: pauseSeconds)
            pauseSeconds = min(pauseSeconds * 2, 0.05)
        }
    }

    /// SIGTERM to the child's process group, SIGKILL after `graceSeconds`; returns the exit status once reaped.
    @discardableResult
    public func terminate(graceSeconds: Double) -> Int32 {
        if let status = reap() { return status }
        lock.withLock { killedForTimeout = true }
        kill(-pid, SIGTERM)
        if let status = wait(timeoutSeconds: graceSeconds) { return status }
        kill(-pid, SIGKILL)
        return wait(timeoutSeconds: 30) ?? -1  // SIGKILL cannot be ignored: this only waits for the kernel
    }

    public var isRunning: Bool { reap() == nil }

    /// Blocks until the child exits (polling, so a thread can supervise it without holding anyone else up).
    public func waitForExit() -> Int32 {
        while true {
            if let status = reap() { return status }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }

    /// waitpid without blocking; remembers the status, since a child can be reaped only once.
    private func reap() -> Int32? {
        lock.withLock {
            if let exitStatus { return exitStatus }
            var status: Int32 = 0
            let result = waitpid(pid, &status, WNOHANG)
            if result == -1 && errno == ECHILD { exitStatus = -1 }  // reaped elsewhere: nothing left to wait for
            guard result == pid else { return exitStatus }
            let signal = status & 0x7f
            exitStatus = signal == 0 ? (status >> 8) & 0xff : 128 + signal
            return exitStatus
        }
    }

    #if !canImport(Darwin)
    /// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later), looked up at run time because the Glibc
    /// module leaves out GNU extensions. It closes in the child whatever is open when the child starts, including
    /// descriptors another thread opened after we looked, which a list taken beforehand would let the child inherit:
    /// a pipe's write end held by a long-lived child keeps that pipe's reader from ever seeing its end.
    private typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    private static let closeFromAction: CloseFrom? = {
        let defaultScope = UnsafeMutableRawPointer(bitPattern: 0)  // RTLD_DEFAULT
        guard let symbol = dlsym(defaultScope, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
        return unsafeBitCast(symbol, to: CloseFrom.self)
    }()
    #endif

    /// This process's open descriptors, to close in the child where glibc cannot (Linux: /proc/self/fd).
    private static func openDescriptors() -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { Int32($0) }
    }
}
