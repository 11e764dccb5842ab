import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonySQLite

/// A fetched batch waiting for its node's sidecar (`Simulation.deliveryLine`), or other work in line with the batches.
struct WaitingDelivery {
    /// What waits: live, every block on a node's serial queue waits for those queued before it.
    enum Work: Equatable {
        case batch
        /// A look at the database: the change monitor's block, which takes every commit made until its turn.
        case look
        /// The publish acks that came meanwhile, marked published in one transaction (`acksWaiting`).
        case acks
    }
    var shard: Int
    var messages: [IncomingMessage]
    var incarnation: Int
    /// When it joined the line.
    var joinedMs: Int64
    var work = Work.batch

    /// A look or the acks, in line behind the batches before it (`shard` and `messages` unused).
    static func other(_ work: Work, incarnation: Int, joinedMs: Int64) -> WaitingDelivery {
        WaitingDelivery(shard: 0, messages: [], incarnation: incarnation, joinedMs: joinedMs, work: work)
    }
}

/// A hint waiting for its node's busy sidecar (`Simulation.hintsWaiting`).
struct WaitingHint {
    var shard: Int
    var message: IncomingMessage
    var incarnation: Int
}

/// The cost model (`Scenario.costs`): each node's sidecar is one serial worker whose reading, encoding and applying
/// take the profile's time, and the server stores one message at a time. Without a cost model every function here
/// leaves time as it is, so the correctness scenarios replay exactly as before.
extension Simulation {
    /// Simulated milliseconds, rounded up, for a time in microseconds.
    static func ms(_ us: Double) -> Int64 { Int64((us / 1_000).rounded(.up)) }

    /// The millisecond a time in microseconds falls in: an event that must see the world as it was at that moment
    /// runs then, before the work that starts later in the millisecond.
    static func floorMs(_ us: Double) -> Int64 { Int64((us / 1_000).rounded(.down)) }

    var nowUs: Double { Double(nowMs) * 1_000 }

    /// When node `id`'s sidecar is free again (nil without costs).
    /// A sidecar asleep in SQLite's busy handler (`SimWriteLock`) is not free either.
    func sidecarFreeAtMs(_ id: Int) -> Int64? {
        guard scenario.costs != nil else { return nil }
        let busy = busyUntilUs[.sidecar(id)], sleep = writeLock.sleepUntilUs[id]
        guard busy != nil || sleep != nil else { return nil }
        return Self.ms(max(busy ?? 0, sleep ?? 0))
    }

    /// Changes a stored payload carries (a part of a split message counts as one), and the node that sent them.
    static func changes(_ payload: [UInt8]) -> (count: Int, origin: Int64?) {
        guard let records = records(payload) else { return (1, nil) }
        return (records.count, records.first?.originNode)
    }

    /// The changes a stored payload carries; nil for a part of a split message (or one that does not decode).
    static func records(_ payload: [UInt8]) -> [ChangeRecord]? {
        guard !EnvelopeCodec.isPart(payload) else { return nil }
        return try? EnvelopeCodec.decodeAll(payload)
    }

    /// Runs `cost` microseconds of work on a serial worker (a sidecar, the server, the loader) and returns when it
    /// is done. The machine's cores are shared equally among the workers running (`coreShare`), as Linux's scheduler
    /// shares them among runnable threads: a worker that starts takes its share from those already running, whose
    /// work ends later by as much as they lose over the overlap. A receiver woken by a batch gets no precedence for
    /// having used little CPU: measured live (`/proc/PID/task/TID/schedstat`, 4 shards), node 2's applying thread
    /// waited on the run queue 1.3-1.4 ms for each ms it ran, node 1's publishing thread 0.8.
    /// `at`: the job runs from then, ahead of work already queued on the worker, which moves back by as long.
    /// `waitUs`: wall time on top that uses no core (a commit waiting for the disk).
    /// `notBeforeUs`: the job's work arrived then, to the microsecond (now, at the whole millisecond, by default).
    func runJob(_ worker: CostWorker, _ cost: Double, waitUs: Double = 0, at preemptUs: Double? = nil, notBeforeUs: Double? = nil) -> Double {
        var earliest = notBeforeUs ?? nowUs
        if case .sidecar(let id) = worker, let resume = resumeAtUs[id] { earliest = min(earliest, resume) }
        var start = preemptUs ?? max(earliest, busyUntilUs[worker, default: 0])
        if preemptUs == nil, case .sidecar(let id) = worker { start = max(start, writeLock.sleepUntilUs[id, default: 0]) }
        var duration = cost
        if let cores = scenario.costs?.cores, cores > 0 {
            let running = busyUntilUs.filter { $0.key != worker && $0.value > start }.keys
            duration = cost / coreShare(worker, among: running, cores: cores)
            // Each worker already running now shares the cores with one more: over the overlap it gets the smaller
            // share, and its work ends later by as much as it lost.
            for other in running {
                let before = shareOf[other] ?? 1
                let after = min(before, coreShare(other, among: running.filter { $0 != other } + [worker], cores: cores))
                guard after < before else { continue }
                let overlap = min(duration, busyUntilUs[other]! - start)
                busyUntilUs[other]! += overlap * (before - after) / after
                shareOf[other] = after
            }
            shareOf[worker] = cost / duration
        }
        duration += waitUs
        cpuUsedUs[worker, default: 0] += cost
        jobStartUs[worker] = start
        busyUntilUs[worker] = preemptUs == nil ? start + duration : max(start, busyUntilUs[worker, default: 0]) + duration
        if case .sidecar(let id) = worker, let ends = coreCallWorkEndsUs[id] { coreCallWorkEndsUs[id] = max(ends, start + duration) }
        return start + duration
    }

    /// The part of a core `worker` gets while `running` run too: an equal share, as Linux's scheduler gives
    /// runnable tasks. nats-server's streams are goroutines of one process, which the kernel sees as at most a thread
    /// per core: running streams count as that many threads, and they share those threads' part among them. (Each
    /// stream had taken a whole thread's part: at 8 shards the server's streams together could run on more cores
    /// than the machine has, and its stores came back sooner than live.)
    func coreShare<Workers: Sequence>(_ worker: CostWorker, among running: Workers, cores: Int) -> Double where Workers.Element == CostWorker {
        var others = 0, servers = 0
        for w in running {
            if w.isServer { servers += 1 } else { others += 1 }
        }
        guard worker.isServer else { return min(1, Double(cores) / Double(1 + others + min(servers, cores))) }
        let streams = servers + 1, threads = min(streams, cores)
        let serverPart = min(Double(threads), Double(cores) * Double(threads) / Double(others + threads))
        return min(1, serverPart / Double(streams))
    }

    /// One way between a node and the server with a cost model: half the calibrated publish round trip, in µs.
    var hopUs: Double? { scenario.costs.map { $0.publishRttUs / 2 } }

    /// The sidecar reads and encodes the message's changes before it leaves; publishes queue behind each other and
    /// behind applies on the node's one worker. Returns when the message leaves the node, to the microsecond.
    /// The runtime's share of a publish (handing it to libnats, the ack and the message coming back) takes the core's
    /// time too: live, node 1's serial queue ran 91% of its CPU during an 8-shard bulk load and libnats's threads 9%
    /// (`/proc/PID/task/*/stat`). Charged on a worker beside the core, it let the modelled sender through its pages
    /// faster than live, and its receivers fell further behind per shard.
    /// A small commit offered as a hint (the priority lane's) was found between two pages of a backlog being read:
    /// it leaves at the end of the page being read now, ahead of the pages after it, as the live core's lane does.
    func publishDepartureUs(node: Int, _ message: OutgoingMessage) -> Double {
        guard let costs = scenario.costs else { return nowUs }
        let changes = Self.changes(message.payload).count
        var cost = costs.publishMessageUs + costs.scanChangeUs * Double(changes)
            + costs.runtimePublishMessageUs + costs.runtimePublishChangeUs * Double(changes)
        var waitUs = 0.0
        // The first message of a look carries the look's own cost (its stamp transaction, which holds the write lock).
        let stamps = lookPublishing.remove(node) != nil
        if stamps {
            cost += costs.lookUs
            waitUs = costs.lookWaitUs
        }
        if message.hint, let handoff = nextHandoffUs(node) {
            let done = runAhead(node, cost, at: handoff)
            if stamps { lookStampUs[node] = (jobStartUs[.sidecar(node)] ?? handoff, done) }
            return done
        }
        let done = runJob(.sidecar(node), cost, waitUs: waitUs)
        if stamps { lookStampUs[node] = (jobStartUs[.sidecar(node)] ?? nowUs, done) }
        // A page of the scan ends every `scan_max_changes` changes (messages of 128 make 4 to a page of 512).
        if !message.hint {
            pageChanges[node, default: 0] += changes
            if pageChanges[node]! >= scenario.scanMaxChanges {
                handoffsUs[node, default: []].append(done)
                pageChanges[node] = 0
            }
        }
        return done
    }

    /// A stamp transaction of `changes` queued writes on node `node`: its sidecar's time, holding the write lock, ahead of
    /// whatever the same core call sends after it (those pages read what it stamped).
    /// `tables`: how many tables the stamped writes name.
    func chargeStamp(node: Int, changes: Int, tables: Int) {
        guard let costs = scenario.costs, changes > 0 else { return }
        let cost = costs.stampChangeUs * Double(changes) + costs.stampTableUs * Double(max(0, tables - 1))
        guard cost > 0 else { return }
        let done = runJob(.sidecar(node), cost)
        sidecarHoldsWriteLock(node, fromUs: jobStartUs[.sidecar(node)], untilUs: done)
    }

    /// With a cost model, while node `id`'s core is part way through a backlog's pages (`publishContinuing`): when to
    /// try again, just after the next page's turn (nil: run now).
    func waitsForPublishLoop(_ id: Int) -> Int64? {
        guard let incarnation = publishContinuing[id] else { return nil }
        guard incarnation == nodes[id - 1].incarnation, nodes[id - 1].sidecarUp else {
            publishContinuing[id] = nil
            return nil
        }
        return max(nowMs, sidecarFreeAtMs(id) ?? nowMs) + 1
    }

    /// When each version was first seen as a hint by a subscriber (sent once the log has stored its message and the
    /// ack is back, as the live node sends it): the sender's share of a write's lag, as `harmonybench live` splits it
    /// (a plain subscriber on the hint subjects).
    func noteHintSent(_ payload: [UInt8], atMs: Int64) {
        guard scenario.costs != nil, let records = try? EnvelopeCodec.decodeAll(payload) else { return }
        for r in records where hintSentAtMs[r.version] == nil { hintSentAtMs[r.version] = atMs }
    }

    /// With a cost model, when node `id`'s look at its database must wait: its sidecar is busy past now with no page
    /// or chunk ending before (where the live core looks between pages). Returns when the work of the look before
    /// ends (the live core then goes back to its queue), or when the sidecar is free.
    func lookWaitsForSidecar(_ id: Int) -> Int64? {
        guard scenario.costs != nil, let freeMs = sidecarFreeAtMs(id), freeMs > nowMs, nextHandoffUs(id) == nil else { return nil }
        return lookEndsUs[id, default: []].first { $0 > nowUs }.map { Self.ms($0) } ?? freeMs
    }

    /// The next moment (after now) node `id`'s busy sidecar could take other work, if it is busy past one.
    func nextHandoffUs(_ id: Int) -> Double? {
        let busy = busyUntilUs[.sidecar(id), default: 0]
        handoffsUs[id] = handoffsUs[id, default: []].filter { $0 > nowUs && $0 < busy }
        return handoffsUs[id]!.first
    }

    /// Runs a job on node `id`'s sidecar from `at` (a hand-off point), ahead of the work queued after it, which, with
    /// its hand-off points, moves back by as long.
    func runAhead(_ id: Int, _ cost: Double, at: Double) -> Double {
        let done = runJob(.sidecar(id), cost, at: at)
        handoffsUs[id] = handoffsUs[id, default: []].map { $0 >= at ? $0 + (done - at) : $0 }
        return done
    }

    /// The server's time over one stored message, from its arrival (`arrivalUs`, to the microsecond): returns when
    /// it is stored, in µs (now without costs).
    /// Only storing is serialized per stream (what `server_message_us` and `server_byte_ns` measure, one stream with
    /// many in flight); the rest of the server's CPU per message (reading it off the connection, handing it to three
    /// consumers, their acks) runs on the server's other threads: it takes the cores from everyone, but a message
    /// does not wait for the ones before it to be relayed before it is stored.
    func chargeServer(_ message: OutgoingMessage, arrivalUs: Double?) -> Double {
        guard let costs = scenario.costs else { return nowUs }
        let records = Self.records(message.payload)
        let done = runJob(.server(message.shard), costs.serverMessageUs + costs.serverByteNs * Double(message.payload.count) / 1_000, notBeforeUs: arrivalUs)
        _ = runJob(.serverRelay(message.shard), costs.runtimeServerMessageUs + costs.serverChangeUs * Double(records?.count ?? 1), notBeforeUs: arrivalUs)
        // One pass: count the bulk rows, and note when each workload write was first stored (the probes' figure).
        var bulkRows = 0
        for r in records ?? [] {
            if bulkVersions.contains(r.version) {
                bulkRows += 1
            } else if storedAtMs[r.version] == nil {
                storedAtMs[r.version] = Self.ms(done)
            }
        }
        if bulkRows > 0 {
            bulkStoredMs = max(bulkStoredMs ?? 0, Self.ms(done))
            bulkRowsStoredByMs[Self.ms(done), default: 0] += bulkRows
        }
        storedMessages += 1
        storedBytes += message.payload.count
        return done
    }

    /// The sidecar applied a delivered batch: as the live runtime does, in chunks of at most
    /// `ApplyChunks.bytesMax` payload bytes, each its own transaction, with a hand-off point after each.
    /// `ahead`: a hint taken at a hand-off point, ahead of the chunks queued after it.
    /// Returns when the first chunk's transaction begins and the last one's ends (nil without costs). What the call
    /// applied (`applying`, from the core's events) becomes visible on the node when the transaction of its message
    /// commits, not before.
    @discardableResult
    func chargeApply(node: Int, _ messages: [IncomingMessage], ahead: Bool = false) -> (startUs: Double, endUs: Double)? {
        guard let costs = scenario.costs else { return nil }
        var firstStartUs: Double? = nil, lastEndUs: Double? = nil
        // The live runtime's own cut (`ApplyChunks.ranges`), so the model cannot drift from it.
        for chunk in ApplyChunks.ranges(messages.map(\.payload.count)) {
            var cost = 0.0
            var chunkVersions: [RowVersion] = []
            var chunkTables: Set<String> = []
            for m in messages[chunk] {
                let records = Self.records(m.payload)
                if !applying.isEmpty { chunkVersions += records?.map(\.version) ?? [] }
                let count = Double(records?.count ?? 1)
                let own = records?.first?.originNode == Int64(node)
                cost += costs.applyMessageUs + (own ? count * costs.applyOwnChangeUs
                    : costs.runtimeApplyMessageUs + count * costs.runtimeApplyChangeUs + changesApplyUs(records, costs))
                if !own, costs.applyTableUs > 0, let records { chunkTables.formUnion(records.map(\.table)) }
            }
            let total = costs.applyBatchUs + cost + costs.applyTableUs * Double(max(0, chunkTables.count - 1))
            let end: Double
            if ahead {
                end = runAhead(node, total, at: nowUs)
            } else {
                end = runJob(.sidecar(node), total)
                handoffsUs[node, default: []].append(end)
            }
            if firstStartUs == nil { firstStartUs = jobStartUs[.sidecar(node)] }
            lastEndUs = end
            commitVisible(node: node, chunkVersions, atUs: end)
        }
        return lastEndUs.map { (firstStartUs ?? $0, $0) }
    }

    /// The core's time over a message's changes: a bulk load's rows at `applyChangeUs`, the single-row writers'
    /// (their keys scattered) at `applyScatteredChangeUs`; a part of a split message as one change.
    func changesApplyUs(_ records: [ChangeRecord]?, _ costs: CostModel) -> Double {
        guard let records else { return costs.applyChangeUs }
        guard let scattered = costs.applyScatteredChangeUs else { return Double(records.count) * costs.applyChangeUs }
        return records.reduce(0.0) { $0 + (bulkVersions.contains($1.version) ? costs.applyChangeUs : scattered) }
    }

    /// Puts a delivery in node `id`'s line (`first`: back where it was, at the head) and makes sure a turn comes by
    /// `turnAtMs`.
    func joinDeliveryLine(_ id: Int, _ delivery: WaitingDelivery, first: Bool = false, turnAtMs: Int64) {
        if !first, let from = delivery.messages.first?.sequence, let to = delivery.messages.last?.sequence {
            trace("node \(id) shard \(delivery.shard) seq \(from)...\(to) waits for the sidecar")
        }
        if first { deliveryLine[id, default: []].insert(delivery, at: 0) } else { deliveryLine[id, default: []].append(delivery) }
        if let due = deliveryTurnAtMs[id], due <= max(turnAtMs, nowMs) { return }
        scheduleDeliveryTurn(id, atMs: turnAtMs)
    }

    /// With a cost model, while batches wait for node `id`'s sidecar: `work` waits behind them (unless the same work
    /// of this sidecar's run waits in line already, which then covers this too; one of a crashed run's is dropped at
    /// its turn). Returns whether it did.
    func waitsInLine(_ work: WaitingDelivery.Work, node id: Int, incarnation: Int) -> Bool {
        guard scenario.costs != nil, let line = deliveryLine[id], !line.isEmpty else { return false }
        if !line.contains(where: { $0.work == work && $0.incarnation == incarnation }) {
            joinDeliveryLine(id, .other(work, incarnation: incarnation, joinedMs: nowMs), turnAtMs: deliveryTurnAtMs[id] ?? nowMs)
        }
        return true
    }

    /// A turn asked for a time already past (a retry whose time has come) is taken now.
    func scheduleDeliveryTurn(_ id: Int, atMs: Int64) {
        let at = max(atMs, nowMs)
        deliveryTurnAtMs[id] = at
        push(.deliveryTurn(node: id), at: at)
    }

    /// How many of a batch's messages (by payload size) go in its first chunk, as the live runtime splits it.
    static func firstApplyChunk(_ sizes: [Int]) -> Int { ApplyChunks.ranges(sizes).first?.count ?? 0 }

    /// A hint handed to node `node`'s core; applied, it costs what applying its message costs (`ahead`: at a
    /// hand-off point, ahead of the work queued after it).
    func takeHint(_ node: SimNode, shard: Int, _ message: IncomingMessage, ahead: Bool) {
        trace("node \(node.id) hint shard \(shard) seq \(message.sequence)")
        let appliedBefore = hintsAppliedOn[node.id, default: 0]
        applying = []
        callCore(node) { try $0.hintArrived(shard: shard, sequence: message.sequence, payload: message.payload) }
        // Ignored, a hint costs a live node next to nothing (it is dropped before it is decoded, mostly).
        if hintsAppliedOn[node.id, default: 0] > appliedBefore { chargeApply(node: node.id, [message], ahead: ahead) }
        applying = []
    }

    /// Where a node first had a version (applied, or superseded by a newer one there), for lag figures.
    func recordApplied(node: Int, _ version: RowVersion) {
        guard scenario.costs != nil, appliedAtMs[version]?[node] == nil else { return }
        appliedAtMs[version, default: [:]][node] = nowMs
        applying.insert(version)
        if bulkVersions.contains(version) {
            bulkApplied[node, default: 0] += 1
            bulkVisibleMs = max(bulkVisibleMs, nowMs)
        }
    }

    /// Of `versions` (a transaction's), those applied in this call are visible on `node` once it commits at `atUs`
    /// (a reader looking then sees them at the next whole millisecond).
    func commitVisible(node: Int, _ versions: [RowVersion], atUs: Double) {
        for v in versions where applying.remove(v) != nil {
            appliedAtMs[v]?[node] = Self.ms(atUs)
            if bulkVersions.contains(v) { bulkVisibleMs = max(bulkVisibleMs, Self.ms(atUs)) }
        }
    }

    /// One transaction of the bulk load on node 1: `bulkBatch` new keys above the workload's, then the next one
    /// after the time the application takes over it (the profile's insert cost with triggers).
    func bulkStep(offset: Int) {
        let node = nodes[0]
        guard offset < scenario.bulkRows else { return }
        guard node.machineUp else {
            push(.bulkStep(offset: offset), at: nowMs + 100)
            return
        }
        let count = min(scenario.bulkBatch, scenario.bulkRows - offset)
        let keys = (0..<count).map { Int64(scenario.keys + 1 + offset + $0) }
        runWrite(node, ops: Array(repeating: 0, count: count), keys: keys, newKeys: Array(repeating: 0, count: count))
        if node.sidecarUp { push(.databaseChanged(node: node.id, incarnation: node.incarnation), at: nowMs) }
        let done = runJob(.loader, (scenario.costs?.appInsertRowUs ?? 0) * Double(count))
        if offset + count >= scenario.bulkRows { bulkCommittedMs = Self.ms(done) }
        if let commitUs = scenario.costs?.appCommitUs, commitUs > 0 {
            // The load holds the write lock from its first transaction until its last commits.
            writeLock.loaderHoldUntilUs[node.id] = offset + count >= scenario.bulkRows ? done : .infinity
            writeLock.unlooked.insert(node.id)
        }
        push(.bulkStep(offset: offset + count), at: max(Self.ms(done), nowMs + 1))
    }

    /// The live benchmark's probes and watchers, every millisecond until every node has the bulk load: they take
    /// `observer_us_per_ms` of the cores the nodes share, as its reader looking at a node every millisecond does.
    func observerTick() {
        guard let costs = scenario.costs, costs.observerUsPerMs > 0 else { return }
        let writer = nodes[0].id
        guard nodes.contains(where: { $0.id != writer && bulkApplied[$0.id, default: 0] < scenario.bulkRows }) || nowMs < bulkVisibleMs else { return }
        _ = runJob(.observer, costs.observerUsPerMs)
        push(.observerTick, at: nowMs + 1)
    }

    /// The node whose copy of node `id`'s writes the lag figures time, as the live benchmark reads its probes on node 2.
    func nextNode(after id: Int) -> Int { id % nodes.count + 1 }

    /// What capacity planning reads from a run with a cost model.
    func capacityFigures() -> CapacityFigures? {
        guard scenario.costs != nil else { return nil }
        var bulkDone: Int64 = 0, bulkSeen = 0, unseen = 0, underLoad: [ProbeTimes] = []
        var probes: [(atMs: Int64, nextMs: Int64, hintMs: Int64?, storedMs: Int64?)] = []
        for w in history {
            let others = nodes.map(\.id).filter { $0 != w.node }
            let times = others.compactMap { appliedAtMs[w.version]?[$0] }
            guard times.count == others.count, let last = times.max() else { unseen += 1; continue }
            if w.key > Int64(scenario.keys) {
                bulkDone = max(bulkDone, last)
                bulkSeen += 1
            } else {
                // As the live benchmark measures: until the next node has it.
                let next = nextNode(after: w.node)
                probes.append((w.atMs, appliedAtMs[w.version]?[next] ?? last, hintSentAtMs[w.version], storedAtMs[w.version]))
            }
        }
        // With a bulk load, only the writes made while it replicates (the live benchmark's "under load").
        for p in probes where bulkSeen == 0 || p.atMs < bulkDone {
            underLoad.append(ProbeTimes(committedMs: p.atMs, storedAfterMs: p.storedMs.map { max(0, $0 - p.atMs) },
                                        hintedAfterMs: p.hintMs.map { max(0, $0 - p.atMs) }, seenAfterMs: max(0, p.nextMs - p.atMs)))
        }
        underLoad.sort { $0.committedMs < $1.committedMs }
        // The sender's and the next node's pace over the load, as `harmonybench live --probe-times` prints them.
        var stored: [Int] = [], applied: [Int] = []
        if bulkSeen > 0 {
            let tenths = Int(bulkDone / 100) + 1
            stored = Array(repeating: 0, count: tenths)
            applied = Array(repeating: 0, count: tenths)
            for (ms, rows) in bulkRowsStoredByMs where ms < Int64(tenths) * 100 { stored[Int(ms / 100)] += rows }
            let receiver = nextNode(after: nodes[0].id)  // the bulk loader's, as for its probes
            for v in bulkVersions { if let ms = appliedAtMs[v]?[receiver], ms < Int64(tenths) * 100 { applied[Int(ms / 100)] += 1 } }
        }
        return CapacityFigures(probes: underLoad, bulkRowsStoredPer100Ms: stored, bulkRowsAppliedPer100Ms: applied, bulkRows: bulkSeen, bulkDoneMs: bulkSeen > 0 ? bulkDone : nil, bulkCommittedMs: bulkCommittedMs,
                               bulkStoredMs: bulkStoredMs, writes: history.count, notEverywhere: unseen, messages: storedMessages, bytes: storedBytes,
                               convergedAfterHealMs: quiescedAtMs.map { max(0, $0 - scenario.healMs) },
                               hintsAppliedOnNextNode: hintsAppliedOn[nextNode(after: nodes[0].id), default: 0])
    }
}

extension Simulation {
    /// `scenario` with its writing nodes together offering `writesPerSecond` single-row writes: each at a steady mean
    /// interval (whole milliseconds drawn evenly around it), or past one a millisecond, several every millisecond.
    public static func offering(_ scenario: Scenario, writesPerSecond: Int) -> Scenario {
        var s = scenario
        let writers = Double(scenario.writerNodes.isEmpty ? scenario.nodes : scenario.writerNodes.count)
        let perNodeMs = Double(writesPerSecond) / writers / 1_000  // writes a millisecond, each node
        if perNodeMs >= 1 {
            s.writeIntervalMsMin = 1
            s.writeIntervalMsMax = 1
            s.writesPerStep = Int(perNodeMs.rounded())
        } else {
            let halfMs = max(2, Int64((2 / perNodeMs).rounded()))  // the interval in half milliseconds, as the rate search draws it
            s.writeIntervalMsMin = halfMs / 2
            s.writeIntervalMsMax = (halfMs + 1) / 2
            s.writesPerStep = 1
        }
        return s
    }

    /// The highest write rate the cluster keeps up with under `scenario`'s costs: every writing node writes at a steady
    /// mean interval, bisected in half milliseconds (intervals of k and k + 1 ms drawn evenly); a rate counts as kept
    /// up with when the cluster settles within a tenth of the run (at least 1 s) once writes stop, since a backlog
    /// that grows without bound takes ever longer to drain. Past one write a millisecond, each node commits 2, 4, 8 ...
    /// transactions every millisecond, up to `writesPerStepMax` (8 by default: 24,000 writes/s from 3 nodes, above every live
    /// figure; the simulated runs grow with the rate, and large rows at 16 a millisecond took minutes each).
    ///
    /// The answer counts the row changes committed per second of writing at that interval, not the statements run:
    /// an UPDATE of a key no row has yet changes nothing, so with sparse keys (uniform over 100,000) about half the
    /// statements write nothing, and counting them doubled that shape's rate next to hot keys, where every one writes.
    public static func sustainableWriteRate(_ scenario: Scenario, seed: UInt64, writesPerStepMax: Int = 8) throws -> Double {
        /// Rows committed per second of writing when the cluster keeps up at this interval; nil when it does not.
        func keptUpRate(halfMs: Int64, perStep: Int = 1) throws -> Double? {
            var s = scenario
            s.writeIntervalMsMin = halfMs / 2
            s.writeIntervalMsMax = (halfMs + 1) / 2
            s.writesPerStep = perStep
            let r = try Simulation(scenario: s, seed: seed).run()
            guard r.passed, let capacity = r.capacity, let settled = capacity.convergedAfterHealMs,
                  settled <= max(1_000, s.durationMs / 10) else { return nil }
            return Double(capacity.writes) * 1_000 / Double(max(1, s.durationMs))
        }
        var fast: Int64 = 2, slow: Int64 = 2_000  // in half milliseconds; the answer lies in (fast, slow]
        guard var kept = try keptUpRate(halfMs: slow) else { return 0 }
        if let fastest = try keptUpRate(halfMs: fast) {
            kept = fastest
            // Writes per millisecond doubled until one is not kept up with, then bisected between the last two: 9,000
            // writes/s over three nodes lies between 6,000 and 12,000, where live clusters of 2 cores part ways.
            var keptPerStep = 1, failedPerStep = 2
            while failedPerStep <= writesPerStepMax, let rate = try keptUpRate(halfMs: fast, perStep: failedPerStep) {
                kept = rate
                keptPerStep = failedPerStep
                failedPerStep *= 2
            }
            guard failedPerStep <= writesPerStepMax else { return kept }
            while failedPerStep - keptPerStep > 1 {
                let mid = (keptPerStep + failedPerStep) / 2
                if let rate = try keptUpRate(halfMs: fast, perStep: mid) {
                    kept = rate
                    keptPerStep = mid
                } else {
                    failedPerStep = mid
                }
            }
            return kept
        }
        while slow - fast > 1 {
            let mid = (fast + slow) / 2
            if let rate = try keptUpRate(halfMs: mid) {
                slow = mid
                kept = rate
            } else {
                fast = mid
            }
        }
        return kept
    }
}

/// What takes the machine's time in the cost model: a node's sidecar (one serial worker, as its core's queue is),
/// the server (one worker per stream), the application's bulk loader, and the live benchmark's probes and watchers.
enum CostWorker: Hashable {
    /// `server`: the server storing one stream's (shard's) messages: each stream is serialized, different streams
    /// run side by side. `serverRelay`: the rest of the server's work on that stream's messages, on its other threads.
    case sidecar(Int), server(Int), serverRelay(Int), loader, observer

    /// One of nats-server's threads.
    var isServer: Bool {
        switch self {
        case .server, .serverRelay: true
        default: false
        }
    }
}

/// One workload write under load, as `harmonybench live --probe-times` prints a probe (simulated ms).
public struct ProbeTimes: Sendable {
    public var committedMs: Int64
    /// Until the log stored the message carrying it: the sender's share with hints off.
    public var storedAfterMs: Int64?
    public var hintedAfterMs: Int64?
    public var seenAfterMs: Int64
}

/// Figures of one run with a cost model.
public struct CapacityFigures: Sendable {
    /// Each workload write (not the bulk load's; with a bulk load, those made while it replicates) in commit order,
    /// as `harmonybench live --probe-times` prints its probes.
    public var probes: [ProbeTimes]
    /// Commit until the next node has it, of each of those writes, in ms.
    public var lagsMs: [Double] { probes.map { Double($0.seenAfterMs) } }
    /// For the same writes, commit to being sent as a hint once the log stored it (those sent as one): the sender's share.
    public var hintLagsMs: [Double] { probes.compactMap { $0.hintedAfterMs.map(Double.init) } }
    /// Bulk rows the log stored, and node 2 had, in each 100 ms from the start: the sender's and a receiver's pace.
    public var bulkRowsStoredPer100Ms: [Int]
    public var bulkRowsAppliedPer100Ms: [Int]
    /// Bulk rows every node had, and when the last of them reached the last node.
    public var bulkRows: Int
    public var bulkDoneMs: Int64?
    /// When the application committed the bulk load's last transaction (the live benchmark reports the same).
    public var bulkCommittedMs: Int64?
    /// When the log stored the last message carrying bulk rows: the sender's end of the load (the live benchmark
    /// reports the same), against `bulkDoneMs` the receivers'.
    public var bulkStoredMs: Int64?
    public var writes: Int
    /// Writes some node never had as that version (superseded there before it arrived, or lost).
    public var notEverywhere: Int
    /// Messages and payload bytes the log stored.
    public var messages: Int
    public var bytes: Int
    /// From the heal (the end of the faults and of the writes) until every node holds the same rows and nothing is
    /// in flight, checked every 100 ms of simulated time; nil if the cluster never got there.
    public var convergedAfterHealMs: Int64?
    /// Hints the first node's next node applied over the run (`harmonybench live` reports node 2's).
    public var hintsAppliedOnNextNode: Int
}
