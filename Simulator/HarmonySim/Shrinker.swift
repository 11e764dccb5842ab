/// Reduces a failing run to a smaller fault schedule that still fails the same way with the same seed.
public enum Shrinker {
    public enum FailureClass: Equatable { case correctness, liveness }

    public static func classify(_ r: SimulationResult) -> FailureClass? {
        if r.livenessFailure != nil { return .liveness }
        return r.correctnessFailures.isEmpty ? nil : .correctness
    }

    /// Greedy: materialise the schedule, drop faults one at a time, then shorten the run, keeping each step that still fails.
    public static func shrink(_ scenario: Scenario, seed: UInt64, attemptsMax: Int = 200,
                              progress: (String) -> Void = { _ in }) throws -> (Scenario, SimulationResult)? {
        let first = try Simulation(scenario: scenario, seed: seed)
        let original = first.run()
        guard let target = classify(original) else { return nil }
        var best = first.scenario  // swarm draws (faults, retention) made concrete
        best.faults = first.faults
        best.swarm = false
        best.seed = seed
        var bestResult = original
        var attempts = 0
        func stillFails(_ candidate: Scenario) throws -> SimulationResult? {
            attempts += 1
            let r = try Simulation(scenario: candidate, seed: seed).run()
            return classify(r) == target ? r : nil
        }
        var i = 0
        while i < best.faults.count && attempts < attemptsMax {
            var candidate = best
            candidate.faults.remove(at: i)
            if let r = try stillFails(candidate) {
                best = candidate
                bestResult = r
                progress("dropped a fault: \(best.faults.count) left")
            } else {
                i += 1
            }
        }
        while best.durationMs > 1_000 && attempts < attemptsMax {
            var candidate = best
            candidate.durationMs = best.durationMs / 2
            candidate.healAtMs = best.healAtMs.map { min($0, candidate.durationMs) }
            candidate.faults = best.faults.filter { $0.atMs < candidate.durationMs }
            guard let r = try stillFails(candidate) else { break }
            best = candidate
            bestResult = r
            progress("halved the run: \(best.durationMs) ms")
        }
        return (best, bestResult)
    }
}
