import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonySQLite

/// The simulated object store beside the NATS server: named snapshots, newest `keep` kept, and the lease that
/// lets one node take a snapshot at a time. Only the server side; nodes reach it through `SimSnapshotPort`.
struct SimSnapshotStore {
    /// Newest first, by name (the taker's clock), as a live store lists them.
    var snapshots: [(name: String, bytes: [UInt8])] = []
    var leaseHolder: Int?
    var leaseUntilMs: Int64 = 0

    var newest: (name: String, bytes: [UInt8])? { snapshots.first }

    mutating func acquireLease(node: Int, nowMs: Int64, forMs: Int64) -> Bool {
        if let holder = leaseHolder, holder != node, leaseUntilMs > nowMs { return false }
        leaseHolder = node
        leaseUntilMs = nowMs + forMs
        return true
    }

    mutating func releaseLease(node: Int) {
        if leaseHolder == node { leaseHolder = nil }
    }

    mutating func put(name: String, bytes: [UInt8]) {
        snapshots.removeAll { $0.name == name }
        snapshots.append((name, bytes))
        snapshots.sort { $0.name > $1.name }
    }

    mutating func prune(keep: Int) {
        if snapshots.count > keep { snapshots.removeLast(snapshots.count - keep) }
    }
}

/// A node's request to the store, as it travels to the server.
enum SimStoreRequest {
    case newest
    case lease(durationMs: Int64)
    case release
    case upload(name: String, bytes: [UInt8])
    case prune(keep: Int)
}

/// The server's answer, as it travels back.
enum SimStoreAnswer {
    case newest(String?, error: String?)
    case lease(granted: Bool, error: String?)
    case uploaded(name: String, error: String?)
    case pruned(error: String?)
    /// `release` has no answer.
    case none
}

/// The node's way to the simulated snapshot store: every request crosses the simulated network and is
/// answered there (or by a timeout), never inside the call.
final class SimSnapshotPort: SimNodePort, SnapshotStorePort {
    func scratchPath() -> String { sim.scratchPath(simNode, "snapshot") }
    func discard(path: String) { sim.removeScratch(simNode, path) }
    func requestNewestName() { sim.sendStoreRequest(node: node, .newest) }
    func acquireLease(durationMs: Int64) { sim.sendStoreRequest(node: node, .lease(durationMs: durationMs)) }
    func releaseLease() { sim.sendStoreRequest(node: node, .release) }
    func upload(path: String, name: String) {
        sim.checkSnapshotHoldsOnlyLanded(path: path, name: name, node: simNode)
        let bytes = FileManager.default.contents(atPath: path).map { [UInt8]($0) } ?? []
        sim.removeScratch(simNode, path)  // the store deletes the file once the upload is under way
        sim.sendStoreRequest(node: node, .upload(name: name, bytes: bytes))
    }
    func prune(keep: Int) { sim.sendStoreRequest(node: node, .prune(keep: keep)) }
    func requestNewestSnapshot() { sim.requestSnapshot(node: node) }
}

extension Simulation {
    func scratchPath(_ node: SimNode, _ what: String) -> String {
        scratchCounter += 1
        return node.databasePath + ".\(what)-\(scratchCounter)"
    }

    func removeScratch(_ node: SimNode, _ path: String) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            try? FileManager.default.removeItem(atPath: path + suffix)
            node.vfs.time.durability.forget(path: path + suffix)
        }
    }

    /// A request leaves the node: it reaches the server after a network delay, or, when the node cannot send,
    /// is answered with an error after the publish timeout (as a live client's request would time out).
    func sendStoreRequest(node id: Int, _ request: SimStoreRequest) {
        let n = nodes[id - 1]
        if n.canSend && serverUp {
            let delay = if case .upload = request { networkDelay() * 4 } else { networkDelay() }
            push(.storeRequestArrives(node: id, request: request, incarnation: n.incarnation, sentMs: nowMs), at: nowMs + delay)
        } else {
            answerLater(node: id, Self.failure(request, "snapshot store unreachable"), incarnation: n.incarnation, at: nowMs + scenario.publishTimeoutMs)
        }
    }

    func storeRequestArrives(node id: Int, _ request: SimStoreRequest, incarnation: Int, sentMs: Int64) {
        guard serverUp else {
            answerLater(node: id, Self.failure(request, "snapshot store unreachable"), incarnation: incarnation, at: sentMs + scenario.publishTimeoutMs)
            return
        }
        let answer: SimStoreAnswer
        switch request {
        case .newest:
            answer = .newest(snapshotStore.newest?.name, error: nil)
        case .lease(let durationMs):
            answer = .lease(granted: snapshotStore.acquireLease(node: id, nowMs: nowMs, forMs: durationMs), error: nil)
        case .release:
            snapshotStore.releaseLease(node: id)
            answer = .none
        case .upload(let name, let bytes):
            snapshotStore.put(name: name, bytes: bytes)
            trace("snapshot stored \(name) from node \(id)")
            answer = .uploaded(name: name, error: nil)
        case .prune(let keep):
            snapshotStore.prune(keep: keep)
            answer = .pruned(error: nil)
        }
        // The answer is lost when the node cannot hear the server; the node then sees the request time out.
        let heard = nodes[id - 1].canReceive
        answerLater(node: id, heard ? answer : Self.failure(request, "no answer from the snapshot store"), incarnation: incarnation,
                    at: heard ? nowMs + networkDelay() : sentMs + scenario.publishTimeoutMs)
    }

    static func failure(_ request: SimStoreRequest, _ reason: String) -> SimStoreAnswer {
        switch request {
        case .newest: return .newest(nil, error: reason)
        case .lease: return .lease(granted: false, error: reason)
        case .release: return .none
        case .upload(let name, _): return .uploaded(name: name, error: reason)
        case .prune: return .pruned(error: reason)
        }
    }

    func answerLater(node id: Int, _ answer: SimStoreAnswer, incarnation: Int, at timeMs: Int64) {
        if case .none = answer { return }
        push(.storeAnswer(node: id, answer: answer, incarnation: incarnation), at: timeMs)
    }

    func storeAnswerArrives(node id: Int, _ answer: SimStoreAnswer, incarnation: Int) {
        let node = nodes[id - 1]
        guard node.incarnation == incarnation else { return }
        switch answer {
        case .newest(let name, let error): callCore(node) { $0.snapshotNewestNameArrived(name, error: error) }
        case .lease(let granted, let error): callCore(node) { try $0.snapshotLeaseAnswered(granted: granted, error: error) }
        case .uploaded(let name, let error): callCore(node) { $0.snapshotUploaded(name: name, error: error) }
        case .pruned(let error): callCore(node) { $0.snapshotsPruned(error: error) }
        case .none: break
        }
    }

    /// A snapshot may only hold writes the log already has: a restore elsewhere must never bring back a write
    /// its own node could still lose (to a crash, a power loss or a wiped disk) before publishing it.
    func checkSnapshotHoldsOnlyLanded(path: String, name: String, node: SimNode) {
        do {
            let snap = try node.vfs.opener.open(path: path)
            let versions = try snap.query("SELECT hlc, node FROM \(quoteIdentifier(Bookkeeping.versionTable("kv"))) ORDER BY hlc, node")
            for row in versions {
                let v = RowVersion(hlc: row[0].int64 ?? 0, node: row[1].int64 ?? 0)
                if !landedVersions.contains(v) {
                    violations.append("snapshot \(name) by node \(node.id) at \(nowMs) ms holds version \(v), which the log never received")
                    return
                }
            }
        } catch {
            violations.append("snapshot \(name) by node \(node.id) cannot be read: \(error)")
        }
    }

    /// The core asked for the newest snapshot: the answer travels the network, or times out.
    func requestSnapshot(node id: Int) {
        let node = nodes[id - 1]
        let delay = node.connected && serverUp ? networkDelay() * 2 : scenario.publishTimeoutMs
        push(.snapshotAnswer(node: id, incarnation: node.incarnation), at: nowMs + delay)
    }

    /// The answer to `requestSnapshot`: a local copy of the newest snapshot for the core to restore (it discards
    /// the copy when done), or why there is none.
    func deliverSnapshot(_ node: SimNode) {
        guard serverUp, node.connected, let newest = snapshotStore.newest else {
            callCore(node) { $0.snapshotUnavailable(reason: serverUp && node.connected ? "no snapshot in the store" : "store unreachable") }
            return
        }
        let path = scratchPath(node, "restore")
        guard FileManager.default.createFile(atPath: path, contents: Data(newest.bytes)) else {
            violations.append("node \(node.id): cannot write snapshot file \(path)")
            return
        }
        trace("node \(node.id) restores \(newest.name)")
        callCore(node) { try $0.snapshotReady(at: path) }
        if FileManager.default.fileExists(atPath: path) && node.sidecarUp {
            violations.append("node \(node.id): the core did not discard the restored snapshot file \(path)")
        }
        removeScratch(node, path)
    }
}
