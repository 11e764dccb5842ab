import Foundation

/// SQLite's one write lock per database, between the application's commits and the sidecar. Live, a sidecar that
/// finds the lock held sleeps in SQLite's default busy handler, 1, 2, 5, 10 … up to 100 ms between tries, and under a
/// steady stream of application commits it may need several tries: meanwhile more commits pile up, and its next look
/// takes them all. That, not the sidecar's CPU, is what batches single-row commits on a busy node (`harmonybench rate`
/// shows 1 message per row at 300 writes/s and 0.01 at 6,000). Without `app_commit_us` the model has no lock.
///
/// The lock is a timeline per node, in microseconds. Each application commit holds it for `app_commit_us`, from a
/// moment drawn inside its millisecond (the writes of one millisecond spread over it), or, if the sidecar holds it
/// then, from the first of its busy handler's tries (events) that finds it free; an application that waited catches
/// up with commits back to back, as live. The sidecar holds it
/// for the work of a look, an applied chunk or an ack flush. A sidecar try at a moment some commit holds it sleeps
/// SQLite's next interval and tries again then.
struct SimWriteLock {
    /// sqliteDefaultBusyCallback's sleeps between tries, in ms; past the last, 100 ms each.
    static let busyHandlerSleepsMs: [Int64] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100]
    /// The busy handler's sleep after `tries` failed tries, in ms.
    static func busyHandlerSleepMs(afterTries tries: Int) -> Int64 { busyHandlerSleepsMs[min(tries, busyHandlerSleepsMs.count - 1)] }
    /// The sidecar's busy timeout (`Database`'s default): past it the statement fails, and the sidecar tries again.
    static let busyTimeoutMs: Int64 = 5_000

    var random = SimRandom(seed: 0)
    /// Per node: the application's commits' holds of the lock, in order (starts ascending), the recent ones only.
    var applicationHolds: [Int: [(startUs: Double, endUs: Double)]] = [:]
    /// Per node: until when the application's bulk load holds the lock. Its transactions follow each other with no
    /// gap a sleeping busy handler catches: live, node 1's sidecar stored nothing until the load was nearly
    /// committed, and a probe's INSERT on the application's other connection waited up to 430 ms.
    var loaderHoldUntilUs: [Int: Double] = [:]
    /// Per node: the sidecar's transactions' holds of the lock, the recent ones only. A job queued behind the
    /// sidecar's sleep in the busy handler holds it only from when it runs: until then the application may commit.
    var sidecarHolds: [Int: [(startUs: Double, endUs: Double)]] = [:]
    /// Nodes whose application committed since their sidecar last looked (a look with nothing new takes no lock).
    var unlooked: Set<Int> = []
    /// Per node: until when its sidecar sleeps in the busy handler (µs); it does no other work meanwhile.
    var sleepUntilUs: [Int: Double] = [:]
    /// Each job sleeping in the busy handler: the tries it has made, and the moment of its next (µs).
    var waiting: [WaitingJob: (tries: Int, nextTryUs: Double)] = [:]

    /// What on a sidecar waited for the lock.
    enum WaitingJob: Hashable {
        case look(node: Int), apply(node: Int, shard: Int), acks(node: Int)
        /// The walk through a backlog's pages, which stamps the rows it reaches (only while a bulk load holds the lock).
        case walk(node: Int)
    }

    /// Per node: the application's writes that wait for the lock while its connection sleeps in its busy handler,
    /// the tries it has made and the moment of its next. Each try is an event, as the sidecar's are: live, the
    /// application that retries into the sidecar's next transaction (the next batch in line) sleeps again, falls
    /// behind and then commits what it owes back to back, which the sidecar's next look takes at once.
    var applicationWaiting: [Int: (writes: [DrawnWrite], tries: Int, nextTryUs: Double)] = [:]

    /// A moment drawn inside millisecond `atMs` for the `slot`-th of `slots` writes made in it (µs).
    mutating func drawnMomentUs(atMs: Int64, slot: Int, of slots: Int) -> Double {
        let share = 1_000 / Double(max(1, slots))
        return Double(atMs) * 1_000 + share * (Double(slot) + Double(random.below(1_000)) / 1_000)
    }

    /// When node `node`'s application, wanting the lock at `atUs`, can take it behind its own earlier commits;
    /// nil while the sidecar or the application's bulk load holds it then (the application sleeps in its busy handler).
    func applicationMayCommit(node: Int, atUs: Double) -> Double? {
        let start = applicationTurnUs(node: node, atUs: atUs)
        return heldBySidecar(node: node, atUs: start) || loadHoldsLock(node: node, atUs: start) ? nil : start
    }

    /// When node `node`'s application, wanting the lock at `atUs`, tries for it: behind its own earlier commits.
    func applicationTurnUs(node: Int, atUs: Double) -> Double { max(atUs, applicationHolds[node]?.last?.endUs ?? 0) }

    /// Whether one of node `node`'s sidecar transactions holds its lock at `atUs`.
    func heldBySidecar(node: Int, atUs: Double) -> Bool {
        sidecarHolds[node]?.contains { $0.startUs <= atUs && atUs < $0.endUs } ?? false
    }

    /// Node `node`'s sidecar holds the lock from `startUs` until `endUs`.
    mutating func sidecarHeld(node: Int, fromUs startUs: Double, untilUs endUs: Double) {
        var holds = sidecarHolds[node, default: []]
        holds.append((startUs, endUs))
        if holds.count > 64 { holds.removeAll { $0.endUs < endUs - 1_000_000 } }
        sidecarHolds[node] = holds
    }

    /// One application commit holds node `node`'s lock for `commitUs` from `startUs`. Returns when it is done (µs).
    @discardableResult
    mutating func applicationCommitted(node: Int, startUs: Double, commitUs: Double) -> Double {
        var holds = applicationHolds[node, default: []]
        holds.append((startUs, startUs + commitUs))
        // Holds long past cannot cover a try any more (the busy handler's tries are at most 100 ms apart).
        if holds.count > 64, holds[0].endUs < startUs - 1_000_000 {
            holds.removeAll { $0.endUs < startUs - 1_000_000 }
        }
        applicationHolds[node] = holds
        unlooked.insert(node)
        return startUs + commitUs
    }

    /// Whether the application's bulk load holds node `node`'s lock at `atUs`.
    func loadHoldsLock(node: Int, atUs: Double) -> Bool { atUs < loaderHoldUntilUs[node, default: 0] }

    /// Whether one of the application's commits (or its bulk load) holds node `node`'s lock at `atUs`.
    func heldByApplication(node: Int, atUs: Double) -> Bool {
        if loadHoldsLock(node: node, atUs: atUs) { return true }
        guard let holds = applicationHolds[node] else { return false }
        for hold in holds.reversed() {
            if hold.endUs <= atUs { return false }  // the ones before it ended earlier still
            if hold.startUs <= atUs { return true }
        }
        return false
    }
}

extension Simulation {
    /// With a lock model: when node `id`'s sidecar wakes, if it sleeps in the busy handler for another job than
    /// its look, which then waits behind that job as on the live serial queue.
    func lookWaitsForLockSleep(_ id: Int) -> Int64? {
        guard writeLock.waiting[.look(node: id)] == nil, let until = writeLock.sleepUntilUs[id] else { return nil }
        let wakeMs = Self.ms(until)
        return wakeMs > nowMs ? wakeMs : nil
    }

    /// With a lock model: whether `job`, about to run on node `id`'s sidecar now, must first sleep for the write lock.
    /// Returns when to try again (the sidecar sleeps until then), or nil to run it now.
    func waitForWriteLock(_ job: SimWriteLock.WaitingJob, node id: Int) -> Int64? {
        guard let commitUs = scenario.costs?.appCommitUs, commitUs > 0 else { return nil }
        let previous = writeLock.waiting[job]
        if previous == nil, case .look = job, !writeLock.unlooked.contains(id) { return nil }
        let tries = previous?.tries ?? 0
        let tryUs = previous?.nextTryUs ?? max(nowUs, busyUntilUs[.sidecar(id), default: 0])
        let sleeps = SimWriteLock.busyHandlerSleepsMs
        let slept = sleeps.prefix(tries).reduce(0, +) + Int64(max(0, tries - sleeps.count)) * sleeps.last!
        guard writeLock.heldByApplication(node: id, atUs: tryUs), slept < SimWriteLock.busyTimeoutMs else {
            writeLock.waiting[job] = nil
            return nil
        }
        let sleep = SimWriteLock.busyHandlerSleepMs(afterTries: tries)
        let wakeUs = tryUs + Double(sleep) * 1_000
        writeLock.waiting[job] = (tries + 1, wakeUs)
        writeLock.sleepUntilUs[id] = max(writeLock.sleepUntilUs[id, default: 0], wakeUs)
        if previous == nil { lockWaits += 1 }
        lockWaitedMs += sleep
        return Self.ms(wakeUs)
    }

    /// With a lock model: node `id`'s sidecar holds the lock from `fromUs` until `untilUs`, a transaction that took
    /// it (a look's stamp, an applied delivery, an ack flush); reading and publishing pages take no write lock.
    func sidecarHoldsWriteLock(_ id: Int, fromUs: Double?, untilUs: Double?) {
        guard let commitUs = scenario.costs?.appCommitUs, commitUs > 0, let untilUs else { return }
        writeLock.sidecarHeld(node: id, fromUs: fromUs ?? nowUs, untilUs: untilUs)
    }
}
