/// Fitting the cost model's figures to what `harmonybench calibrate` measured live.
public enum CostFit {
    /// The least-squares line `y = intercept + slope * x` through `points` with both figures at least 0 (a cost
    /// per change and a cost per message cannot be negative). When the free line has a negative figure, the best
    /// line on that boundary is fitted instead (through the origin, or flat at the mean), as non-negative least
    /// squares does for two unknowns. Clamping the free line's negative figure to 0 kept the other figure fitted
    /// to it: with a negative intercept, the line rose by that much at every point.
    public static func nonNegativeLine(_ points: [(x: Double, y: Double)]) -> (intercept: Double, slope: Double) {
        let free = line(points)
        if free.intercept >= 0, free.slope >= 0 { return free }
        func error(_ l: (intercept: Double, slope: Double)) -> Double {
            points.reduce(0) { $0 + ($1.y - l.intercept - l.slope * $1.x) * ($1.y - l.intercept - l.slope * $1.x) }
        }
        let sxx = points.reduce(0) { $0 + $1.x * $1.x }, sxy = points.reduce(0) { $0 + $1.x * $1.y }
        let meanY = points.isEmpty ? 0 : points.reduce(0) { $0 + $1.y } / Double(points.count)
        var candidates: [(intercept: Double, slope: Double)] = [(max(0, meanY), 0)]
        if sxx > 0, sxy > 0 { candidates.append((0, sxy / sxx)) }
        return candidates.min { error($0) < error($1) }!
    }

    /// The ordinary least-squares line through `points` (slope 0 if every x is the same).
    public static func line(_ points: [(x: Double, y: Double)]) -> (intercept: Double, slope: Double) {
        let n = Double(points.count)
        guard n > 0 else { return (0, 0) }
        let meanX = points.reduce(0) { $0 + $1.x } / n, meanY = points.reduce(0) { $0 + $1.y } / n
        let sxx = points.reduce(0) { $0 + ($1.x - meanX) * ($1.x - meanX) }
        let sxy = points.reduce(0) { $0 + ($1.x - meanX) * ($1.y - meanY) }
        guard sxx > 0 else { return (meanY, 0) }
        let slope = sxy / sxx
        return (meanY - slope * meanX, slope)
    }
}
