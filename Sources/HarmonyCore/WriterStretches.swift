/// Picks the small commits out of the capture queue, which has no transaction boundaries, so that a single-row commit
/// made while a bulk load is queued can go out ahead of it.
///
/// Each queued write carries its connection's `total_changes()` at the write (`writer_changes`): on one connection it
/// grows by a few per write, and it jumps or falls where another connection's writes begin. A stretch of consecutive
/// writes that look like one connection's is called small while it holds at most `smallWritesMax` writes: an
/// application's small commit (or a few back to back) between a bulk writer's transactions. A bulk writer's stretch
/// goes on across its transactions, so it is never small once past that length. This only chooses what goes first;
/// a write wrongly taken for small (or missed) is sent in order anyway.
///
/// Fed in queue order, one write at a time (a stamp can read a whole import): it keeps only the current stretch's ids
/// while it may still be small, and the newest `keptMax` small ids.
public struct WriterStretches {
    /// The longest stretch still taken for a small commit.
    static let smallWritesMax = 32
    /// The largest step of `total_changes()` between two writes still taken for one connection's: a write counts
    /// itself and its queue row, and rows of uncaptured tables written in between count too.
    static let stepMax: Int64 = 64
    /// Small writes kept from one pass, the newest: the priority lane takes no more at a time.
    static let keptMax = 256

    /// The last write fed, and how long its stretch was: the next pass goes on from it. Callers pass a tail only to
    /// the pass that starts with the write after it in commit order (queue ids alone cannot say: they start again at 1
    /// whenever a stamp empties the queue).
    public struct Tail: Sendable, Hashable {
        public var writerChanges: Int64?
        public var length: Int
    }

    private(set) var tail: Tail?
    private var current: [Int64] = []
    private var small: [Int64] = []

    init(after tail: Tail?) {
        self.tail = tail
    }

    /// One queued write, in queue order.
    mutating func add(queueID: Int64, writerChanges: Int64?) {
        let continues = tail.map { Self.sameWriter($0.writerChanges, writerChanges) } ?? false
        if !continues { closeStretch() }
        var length = continues ? tail!.length + 1 : 1
        // Written by a trigger that did not record it (installed by an older version): never taken for small.
        if writerChanges == nil { length = Self.smallWritesMax + 1 }
        if length <= Self.smallWritesMax { current.append(queueID) } else { current.removeAll() }
        tail = Tail(writerChanges: writerChanges, length: length)
    }

    /// The writes of small stretches, oldest first. `countingOpen`: the last stretch counts as it stands (a commit on
    /// its own at the end of the queue is small until more of its connection's writes follow); without it (the pass
    /// stopped short of the queue's end) it is left to the next pass, which goes on from `tail`.
    mutating func finish(countingOpen: Bool = true) -> [Int64] {
        if countingOpen { closeStretch() } else { current.removeAll() }
        return Array(small.suffix(Self.keptMax))
    }

    private mutating func closeStretch() {
        small.append(contentsOf: current)
        current.removeAll()
        if small.count > 2 * Self.keptMax { small = Array(small.suffix(Self.keptMax)) }
    }

    /// Unknown follows unknown as one stretch, so that a queue written by older triggers has no small commits.
    static func sameWriter(_ previous: Int64?, _ next: Int64?) -> Bool {
        guard let previous, let next else { return previous == nil && next == nil }
        return next >= previous && next - previous <= stepMax
    }
}
