import Foundation
import HarmonyCodec
import HarmonyCore
import HarmonyCoreTesting
import HarmonySQLite

/// The network between the nodes and the simulated JetStream: publishes, subscriptions, acks and naks, and
/// stream-range questions, each delayed, lost or refused as the current faults say.
extension Simulation {
    func publish(from node: Int, _ message: OutgoingMessage) {
        let n = nodes[node - 1]
        if message.messageID.hasSuffix("-ahead"), let records = try? EnvelopeCodec.decodeAll(message.payload) {
            let tables = Set(workloadTables)
            for record in records where tables.contains(record.table) { n.sentAheadRows[record.version.hlc] = record }
        }
        if n.canSend && serverUp {
            let departsUs = publishDepartureUs(node: node, message)
            if let hop = hopUs {
                push(.publishArrives(node: node, message: message, incarnation: n.incarnation, sentMs: nowMs, arrivalUs: departsUs + hop), at: Self.ms(departsUs + hop))
            } else {
                push(.publishArrives(node: node, message: message, incarnation: n.incarnation, sentMs: nowMs), at: Self.ms(departsUs) + networkDelay())
            }
        } else if scenario.costs != nil && serverUp {
            // Cut off from the server: libnats keeps the publish and sends it once it has reconnected (the core
            // still hears of a failure if no ack comes within the timeout, and sends the changes again).
            n.reconnectBuffer.append((message, Self.ms(publishDepartureUs(node: node, message)), false))
            push(.bufferedPublishTimedOut(node: node, token: message.token, incarnation: n.incarnation), at: nowMs + scenario.publishTimeoutMs)
        } else {
            push(.publishResult(node: node, token: message.token, ok: false, incarnation: n.incarnation), at: nowMs + scenario.publishTimeoutMs)
        }
    }

    /// With a cost model, when a cut-off node gets its connection back: libnats reconnects at its next attempt (every
    /// `natsReconnectWaitMs`, at a phase drawn here), then sends what it held; those whose ack the core stopped waiting
    /// for are stored all the same (the log drops copies), but their late acks no longer reach the core.
    func reconnectDelayMs() -> Int64 { netRandom.int(0...Self.natsReconnectWaitMs) }

    /// `NATSConnection`'s default wait between reconnect attempts.
    static let natsReconnectWaitMs: Int64 = 2_000

    func flushReconnectBuffer(_ n: SimNode, atMs: Int64) {
        for held in n.reconnectBuffer {
            push(.publishArrives(node: n.id, message: held.message, incarnation: held.timedOut ? -1 : n.incarnation, sentMs: atMs),
                 at: max(held.departsMs, atMs) + networkDelay())
        }
        n.reconnectBuffer.removeAll()
    }

    func subscribe(node: Int, shard: Int, fromSequence: UInt64) {
        jetStream.subscribe(node: node, shard: shard, fromSequence: fromSequence)
        push(.pump(node: node, shard: shard), at: nowMs + networkDelay())
    }

    /// A request that cannot reach the server, or whose answer is lost, is answered with nil after the timeout.
    func requestStreamState(node: Int, shard: Int) {
        let n = nodes[node - 1]
        if n.canSend && serverUp && !netRandom.chance(permille: scenario.lostAckPermille) {
            push(.streamStateRequestArrives(node: node, shard: shard, incarnation: n.incarnation), at: nowMs + networkDelay())
        } else {
            push(.streamStateAnswer(node: node, shard: shard, state: nil, incarnation: n.incarnation), at: nowMs + scenario.publishTimeoutMs)
        }
    }

    func acknowledge(node: Int, shard: Int, sequence: UInt64, nakDelayMs: Int64?) {
        let n = nodes[node - 1]
        guard n.canSend && serverUp else { return }  // lost on the way; the ack wait will redeliver
        if nakDelayMs == nil && netRandom.chance(permille: scenario.lostAckPermille) { return }
        push(.ackArrives(node: node, shard: shard, sequence: sequence, nakDelayMs: nakDelayMs), at: nowMs + networkDelay())
    }

    /// The publisher heard the log store its message (at `atMs`; with a cost model `atUs`, to the microsecond) and
    /// offers it to every other node over plain NATS: each copy may be lost, duplicated or late, and reaches only a
    /// node connected when it arrives. With costs a copy takes two hops (to the server, on to the node), as long
    /// as it takes any subscriber, and that is when it counts as sent (`noteHintSent`).
    func sendHint(from node: Int, shard: Int, _ message: IncomingMessage, atMs: Int64, atUs: Double? = nil) {
        func delay() -> Int64 {
            if let costs = scenario.costs { return Self.ms(costs.publishRttUs / 2) }
            return hintRandom.int(scenario.delayMsMin...max(scenario.delayMsMin, scenario.delayMsMax))
        }
        let relayedMs: Int64? = if let atUs, let hop = hopUs { Self.ms(atUs + 2 * hop) } else { nil }
        noteHintSent(message.payload, atMs: relayedMs ?? atMs)
        for other in nodes where other.id != node {
            if hintRandom.chance(permille: scenario.lostAckPermille) { continue }
            let arrival = relayedMs ?? atMs + delay() + delay()
            push(.hintArrives(node: other.id, shard: shard, message: message, incarnation: other.incarnation), at: arrival)
            if hintRandom.chance(permille: scenario.duplicatePermille) {
                push(.hintArrives(node: other.id, shard: shard, message: message, incarnation: other.incarnation), at: arrival + delay())
            }
        }
    }

    func pumpAll(shard: Int, fromMs: Int64? = nil) {
        for node in nodes where node.sidecarUp { push(.pump(node: node.id, shard: shard), at: (fromMs ?? nowMs) + networkDelay()) }
    }
}

/// Joins the parts of split messages in the order the log stored them, for checkers that read what landed.
struct PartJoiner {
    private var held: [String: [Int: [UInt8]]] = [:]

    /// The changes a stored payload completes: its own, or a whole split message's once its last part is here.
    mutating func records(in payload: [UInt8]) -> [ChangeRecord] {
        guard EnvelopeCodec.isPart(payload) else { return (try? EnvelopeCodec.decodeAll(payload)) ?? [] }
        guard let part = try? EnvelopeCodec.decodePart(payload, totalBytesMax: Int.max) else { return [] }
        held[part.groupID, default: [:]][part.index] = part.bytes
        guard let pieces = held[part.groupID], pieces.count == part.count else { return [] }
        held[part.groupID] = nil
        let joined = (0..<part.count).flatMap { pieces[$0] ?? [] }
        return (try? EnvelopeCodec.decodeAll(joined, decompressedLimit: Int.max)) ?? []
    }
}
