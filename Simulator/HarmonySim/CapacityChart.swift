import Foundation

/// A two-axis line chart of capacity figures against shard count, as plain SVG: the report's picture without a
/// plotting dependency.
public struct CapacityChart: Sendable {
    /// One line: its name with unit (the axis label), and one value per shard count (NaN: no point).
    public struct Series: Sendable {
        public var label: String
        public var values: [Double]
        public init(label: String, values: [Double]) {
            self.label = label
            self.values = values
        }
    }

    public var title: String
    public var shardCounts: [Int]
    /// Drawn against the left axis, and against the right one.
    public var left: Series
    public var right: Series

    public init(title: String, shardCounts: [Int], left: Series, right: Series) {
        self.title = title
        self.shardCounts = shardCounts
        self.left = left
        self.right = right
    }

    static let width = 640.0, height = 360.0
    static let plot = (x: 80.0, y: 50.0, width: 480.0, height: 240.0)
    static let colors = (left: "#1f77b4", right: "#d62728")

    public var svg: String {
        let p = Self.plot
        var out = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(Self.width))" height="\(Int(Self.height))" viewBox="0 0 \(Int(Self.width)) \(Int(Self.height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(Self.width / 2)" y="24" text-anchor="middle" font-size="15">\(Self.escape(title))</text>
            <rect x="\(p.x)" y="\(p.y)" width="\(p.width)" height="\(p.height)" fill="none" stroke="#888"/>

            """
        // Shard counts are categories, evenly spaced.
        let xs = shardCounts.indices.map { i in p.x + p.width * (Double(i) + 0.5) / Double(max(1, shardCounts.count)) }
        for (i, count) in shardCounts.enumerated() {
            out += "<text x=\"\(Self.fmt(xs[i]))\" y=\"\(Self.fmt(p.y + p.height + 18))\" text-anchor=\"middle\">\(count)</text>\n"
        }
        out += "<text x=\"\(Self.fmt(p.x + p.width / 2))\" y=\"\(Self.fmt(p.y + p.height + 40))\" text-anchor=\"middle\">shards</text>\n"
        out += axis(left, color: Self.colors.left, xs: xs, onLeft: true)
        out += axis(right, color: Self.colors.right, xs: xs, onLeft: false)
        return out + "</svg>\n"
    }

    /// One series: its axis with five ticks from zero, its label, and its line with a dot per value.
    func axis(_ series: Series, color: String, xs: [Double], onLeft: Bool) -> String {
        let p = Self.plot
        let top = Self.niceTop(series.values.filter { $0.isFinite }.max() ?? 0)
        func y(_ v: Double) -> Double { p.y + p.height * (1 - v / top) }
        let axisX = onLeft ? p.x : p.x + p.width
        var out = ""
        for step in 0...5 {
            let v = top * Double(step) / 5
            let tx = onLeft ? axisX - 6 : axisX + 6
            out += "<text x=\"\(Self.fmt(tx))\" y=\"\(Self.fmt(y(v) + 4))\" text-anchor=\"\(onLeft ? "end" : "start")\" fill=\"\(color)\">\(Self.tick(v))</text>\n"
        }
        let labelX = onLeft ? 18.0 : Self.width - 18
        out += "<text x=\"\(Self.fmt(labelX))\" y=\"\(Self.fmt(p.y + p.height / 2))\" text-anchor=\"middle\" fill=\"\(color)\" transform=\"rotate(-90 \(Self.fmt(labelX)) \(Self.fmt(p.y + p.height / 2)))\">\(Self.escape(series.label))</text>\n"
        let points = zip(xs, series.values).filter { $0.1.isFinite }
        if points.count > 1 {
            out += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(points.map { "\(Self.fmt($0.0)),\(Self.fmt(y($0.1)))" }.joined(separator: " "))\"/>\n"
        }
        for (x, v) in points {
            out += "<circle cx=\"\(Self.fmt(x))\" cy=\"\(Self.fmt(y(v)))\" r=\"4\" fill=\"\(color)\"/>\n"
        }
        return out
    }

    /// The axis top: the largest value rounded up to 1, 2 or 5 times a power of ten (1 for an empty series).
    static func niceTop(_ maximum: Double) -> Double {
        guard maximum > 0 else { return 1 }
        let magnitude = pow(10, floor(log10(maximum)))
        for m in [1.0, 2, 5, 10] where m * magnitude >= maximum { return m * magnitude }
        return 10 * magnitude
    }

    /// A tick label: whole numbers with thousands separators (12,000), others with one decimal.
    static func tick(_ v: Double) -> String {
        guard v == v.rounded() else { return String(format: "%.1f", v) }
        var digits = String(Int(v)), grouped = ""
        while digits.count > 3 {
            grouped = "," + digits.suffix(3) + grouped
            digits = String(digits.dropLast(3))
        }
        return digits + grouped
    }

    static func fmt(_ v: Double) -> String { String(format: "%.1f", v) }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
    }
}
