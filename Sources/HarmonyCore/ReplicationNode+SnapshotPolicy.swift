import HarmonyCodec

/// Where this node's current snapshot attempt stands. One at a time; every step waits for the store's answer.
enum SnapshotAttempt: Equatable {
    case idle
    /// Asked for the newest stored name, to skip when another node stored one recently.
    case checkingNewest
    /// Asked for the cluster-wide lease (one taker at a time).
    case awaitingLease
    /// Holds the lease; waits for its own changes to be acknowledged (a snapshot never holds a write the log
    /// might not have), trying again when the last acknowledgement arrives or after a short delay.
    case waitingForAcknowledgements(triesLeft: Int)
    /// Taken and handed to the store.
    case uploading(name: String)
}

extension ReplicationNode {
    /// The snapshot policy, the same in the live sidecar and the simulator: every `snapshotIntervalMs` each node
    /// tries; it skips when the store holds one younger than two thirds of the interval, when another node holds
    /// the lease, or when `takeSnapshot` declines (behind, unacknowledged local changes); otherwise it takes the
    /// snapshot, uploads it, prunes the store to `snapshotKeep` and gives the lease back.
    /// `forced` (an operator's request) skips only the "recent enough" check.
    func beginSnapshot(forced: Bool) {
        guard isRunning, let store = env.snapshots else { return }
        if snapshotAttempt != .idle {
            // An attempt whose answers never came (a store that hung) is given up after a lease's time.
            guard env.clock.nowMs - snapshotAttemptStartedMs > config.snapshotLeaseMs else {
                if forced { env.events?.record(.snapshotSkipped(reason: "a snapshot is already being taken")) }
                return
            }
            endSnapshotAttempt(.snapshotFailed(reason: "the snapshot store did not answer within \(config.snapshotLeaseMs) ms"))
        }
        if let reason = snapshotBlocker() {
            env.events?.record(.snapshotSkipped(reason: reason))
            return
        }
        snapshotAttemptStartedMs = env.clock.nowMs
        if forced {
            snapshotAttempt = .awaitingLease
            store.acquireLease(durationMs: config.snapshotLeaseMs)
        } else {
            snapshotAttempt = .checkingNewest
            store.requestNewestName()
        }
        precondition(snapshotAttempt != .idle, "a snapshot attempt began without a request")
    }

    /// Reasons not to ask the store at all; `takeSnapshot` checks the rest on the copy itself.
    func snapshotBlocker() -> String? {
        if !config.replicate { return "replicate = false: this node does not hold the others' changes" }
        if !config.publish { return "publish = false: this node's own writes are not in the log, so its copy must not be restored elsewhere" }
        if restoreNeeded { return "node is behind the log's start and waits for a snapshot itself" }
        return nil
    }

    /// An operator asked for a snapshot now (SIGUSR1, `-save-snapshot`): the outcome arrives as an event
    /// (`snapshotTaken`, `snapshotSkipped` or `snapshotFailed`).
    public func snapshotNow() {
        beginSnapshot(forced: true)
    }

    /// The store's newest snapshot name (nil: none), or why it could not say.
    public func snapshotNewestNameArrived(_ name: String?, error: String?) {
        guard isRunning, snapshotAttempt == .checkingNewest, let store = env.snapshots else { return }
        if let error {
            endSnapshotAttempt(.snapshotFailed(reason: "cannot list the snapshot store: \(error)"))
            return
        }
        if let name, let takenMs = SnapshotInfo.takenAtMs(name), env.clock.nowMs - takenMs < config.snapshotIntervalMs * 2 / 3 {
            endSnapshotAttempt(.snapshotSkipped(reason: "the store's newest snapshot \(name) is recent enough"))
            return
        }
        snapshotAttempt = .awaitingLease
        store.acquireLease(durationMs: config.snapshotLeaseMs)
    }

    /// The lease's answer. Granted: take the snapshot now (a consistent copy of this node's database) and upload it.
    /// - throws: what `takeSnapshot` throws (the error contract: the core restarts); the lease is given back first.
    public func snapshotLeaseAnswered(granted: Bool, error: String?) throws {
        guard let store = env.snapshots else { return }
        guard isRunning, snapshotAttempt == .awaitingLease else {
            if granted { store.releaseLease() }  // the answer to an attempt that is over
            return
        }
        guard granted else {
            endSnapshotAttempt(error.map { .snapshotFailed(reason: "cannot take the snapshot lease: \($0)") }
                               ?? .snapshotSkipped(reason: "another node holds the snapshot lease"))
            return
        }
        try tryTakingSnapshot(triesLeft: Self.snapshotAcknowledgementTries)
    }

    /// Under a steady write load some local change is nearly always in flight; the lease holder tries again this
    /// many times (on each last acknowledgement, or every `retryDelayMs`) before giving up for this interval.
    static let snapshotAcknowledgementTries = 20

    /// With the lease held: a consistent copy, uploaded; or wait for acknowledgements; or give up and say why.
    func tryTakingSnapshot(triesLeft: Int) throws {
        precondition(triesLeft >= 0 && triesLeft <= Self.snapshotAcknowledgementTries, "snapshot tries \(triesLeft)")
        guard let store = env.snapshots else { return }
        let path = store.scratchPath()
        let outcome: SnapshotOutcome
        do {
            outcome = try takeSnapshot(to: path)
        } catch {
            store.discard(path: path)
            store.releaseLease()
            snapshotAttempt = .idle
            throw error
        }
        switch outcome {
        case .waitingForAcknowledgements where triesLeft > 0:
            store.discard(path: path)
            snapshotAttempt = .waitingForAcknowledgements(triesLeft: triesLeft - 1)
            env.clock.schedule(.snapshotRetry, afterMs: config.retryDelayMs)
        case .waitingForAcknowledgements(let pending):
            store.discard(path: path)
            store.releaseLease()
            endSnapshotAttempt(.snapshotSkipped(reason: "\(pending) local change(s) still not acknowledged by the log after \(Self.snapshotAcknowledgementTries) tries"))
        case .skipped(let reason):
            store.discard(path: path)
            store.releaseLease()
            endSnapshotAttempt(.snapshotSkipped(reason: reason))
        case .taken(let info):
            snapshotAttempt = .uploading(name: info.name)
            store.upload(path: path, name: info.name)
        }
    }

    /// The retry timer, or the last outstanding acknowledgement: try the copy again if waiting for one.
    func retrySnapshotIfWaiting() throws {
        guard case .waitingForAcknowledgements(let triesLeft) = snapshotAttempt else { return }
        try tryTakingSnapshot(triesLeft: triesLeft)
    }

    /// The upload's answer. Only now is the snapshot taken: it is in the store for other nodes to restore.
    public func snapshotUploaded(name: String, error: String?) {
        guard isRunning, snapshotAttempt == .uploading(name: name), let store = env.snapshots else { return }
        defer { store.releaseLease() }
        if let error {
            endSnapshotAttempt(.snapshotFailed(reason: "uploading \(name) failed: \(error)"))
            return
        }
        endSnapshotAttempt(.snapshotTaken(name: name))
        store.prune(keep: config.snapshotKeep)
    }

    /// Pruning's answer: old snapshots left behind only cost space, so a failure is reported, not retried.
    public func snapshotsPruned(error: String?) {
        guard isRunning, let error else { return }
        env.events?.record(.snapshotFailed(reason: "pruning old snapshots failed: \(error)"))
    }

    func endSnapshotAttempt(_ outcome: ReplicationEvent) {
        precondition(snapshotAttempt != .idle, "ending a snapshot attempt that was not under way")
        snapshotAttempt = .idle
        env.events?.record(outcome)
    }
}

extension SnapshotInfo {
    /// The taker's physical clock, from the name (`harmonylite-snapshot-<hlc hex>-<node>`); nil for other names.
    public static func takenAtMs(_ name: String) -> Int64? {
        let prefix = "harmonylite-snapshot-"
        guard name.hasPrefix(prefix) else { return nil }
        guard let hex = name.dropFirst(prefix.count).split(separator: "-").first, let hlc = UInt64(hex, radix: 16) else { return nil }
        return RowVersion(hlc: Int64(bitPattern: hlc), node: 0).physicalMs
    }
}
