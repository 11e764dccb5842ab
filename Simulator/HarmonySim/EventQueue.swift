/// A min-heap of events ordered by (time, tie-break, insertion sequence). The tie-break is drawn from the
/// seeded PRNG, so simultaneous events run in a seed-determined but otherwise arbitrary order.
struct EventQueue<Event> {
    struct Entry {
        var timeMs: Int64
        var tieBreak: UInt64
        var sequence: UInt64
        var event: Event

        func precedes(_ other: Entry) -> Bool {
            if timeMs != other.timeMs { return timeMs < other.timeMs }
            if tieBreak != other.tieBreak { return tieBreak < other.tieBreak }
            return sequence < other.sequence
        }
    }

    private var heap: [Entry] = []
    private var nextSequence: UInt64 = 0

    var isEmpty: Bool { heap.isEmpty }
    var count: Int { heap.count }
    var nextTimeMs: Int64? { heap.first?.timeMs }

    mutating func push(_ event: Event, at timeMs: Int64, tieBreak: UInt64) {
        heap.append(Entry(timeMs: timeMs, tieBreak: tieBreak, sequence: nextSequence, event: event))
        nextSequence += 1
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard heap[i].precedes(heap[parent]) else { break }
            heap.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Entry? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var smallest = i
            if l < heap.count && heap[l].precedes(heap[smallest]) { smallest = l }
            if r < heap.count && heap[r].precedes(heap[smallest]) { smallest = r }
            if smallest == i { break }
            heap.swapAt(i, smallest)
            i = smallest
        }
        return top
    }
}
