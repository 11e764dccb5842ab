import HarmonySim
import Testing

/// The calibration's split of the runtime's CPU into a cost per change and a cost per message.
@Suite struct CostFitTests {
    func squaredError(_ points: [(x: Double, y: Double)], _ l: (intercept: Double, slope: Double)) -> Double {
        points.reduce(0) { $0 + ($1.y - l.intercept - l.slope * $1.x) * ($1.y - l.intercept - l.slope * $1.x) }
    }

    @Test func aLineWithNonNegativeFiguresIsTheOrdinaryOne() {
        let points: [(x: Double, y: Double)] = [(0.001, 5.2), (0.008, 6.3), (0.0012, 5.0), (0.009, 6.6)]
        let fit = CostFit.nonNegativeLine(points)
        #expect(fit == CostFit.line(points))
        #expect(fit.intercept > 0 && fit.slope > 0)
    }

    /// The twenty-fourth sitting's shape: the free line has a negative intercept. The fit goes through the origin
    /// with the slope that fits best there; the free slope with its intercept clamped to 0 (what calibrate did)
    /// overstates every point.
    @Test func aNegativeInterceptRefitsThroughTheOrigin() {
        let points: [(x: Double, y: Double)] = [(0.010, 1.0), (0.012, 1.5), (0.040, 6.0), (0.045, 7.1)]
        let free = CostFit.line(points)
        #expect(free.intercept < 0)
        let fit = CostFit.nonNegativeLine(points)
        #expect(fit.intercept == 0 && fit.slope > 0)
        let sxy = points.reduce(0) { $0 + $1.x * $1.y }, sxx = points.reduce(0) { $0 + $1.x * $1.x }
        #expect(abs(fit.slope - sxy / sxx) < 1e-9)
        #expect(squaredError(points, fit) < squaredError(points, (0, free.slope)))
        // No other non-negative line does better: a grid around it.
        for intercept in stride(from: 0.0, through: 1.0, by: 0.05) {
            for slope in stride(from: fit.slope * 0.8, through: fit.slope * 1.2, by: fit.slope * 0.01) {
                #expect(squaredError(points, fit) <= squaredError(points, (intercept, slope)) + 1e-9)
            }
        }
    }

    /// A falling line (more messages, less CPU: noise) is flat at the mean, never a negative cost per message.
    @Test func aNegativeSlopeFitsAFlatLine() {
        let points: [(x: Double, y: Double)] = [(0.01, 6.0), (0.02, 5.5), (0.03, 5.2)]
        let fit = CostFit.nonNegativeLine(points)
        #expect(fit.slope == 0 && abs(fit.intercept - (6.0 + 5.5 + 5.2) / 3) < 1e-9)
    }
}
