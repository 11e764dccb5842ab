import Foundation
import HarmonyProcess
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("Starting programs") struct ChildProcessTests {
    /// A child must hold nothing of ours, not even a pipe another thread opened while it was being started: a
    /// long-lived child (a node's embedded nats-server) holding a pipe's write end keeps that pipe's reader from ever
    /// seeing its end, and holding a listening socket keeps a restarted node from binding its port.
    @Test func aChildInheritsNoDescriptorEvenOneOpenedWhileItStarts() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("spawn-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // Another thread opens and closes pipes without close-on-exec for as long as the children are started.
        let stop = Atomic<Bool>(false)
        let churn = Thread {
            var fds: [Int32] = [0, 0]
            while !stop.load(ordering: .relaxed) {
                guard pipe(&fds) == 0 else { continue }
                for _ in 0..<200 { _ = getpid() }  // hold them open for a moment
                close(fds[0]); close(fds[1])
            }
        }
        churn.start()
        defer { stop.store(true, ordering: .relaxed) }
        var inherited: [String] = []
        for i in 0..<150 {
            let output = "\(directory)/fds-\(i)"
            // The shell lists its own descriptors; a pipe among them came from us (its stdio are files).
            let child = try ChildProcess.spawn("/bin/sh", ["-c", "for f in /proc/$$/fd/*; do readlink \"$f\"; done; exit 0"],
                                               environment: ["PATH": "/usr/bin:/bin"], stdin: nil, stdout: output, stderr: output)
            #expect(child.wait(timeoutSeconds: 10) == 0)
            let listed = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
            inherited += listed.split(separator: "\n").map(String.init).filter { $0.hasPrefix("pipe:") }
        }
        #expect(inherited.isEmpty, "children inherited \(inherited.count) pipes: \(inherited.prefix(5))")
    }
}
