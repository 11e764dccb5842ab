import CZstd

public enum ZstdError: Error, CustomStringConvertible {
    case compressFailed(String)
    case decompressFailed(String)
    case sizeUnknown
    case tooLarge(UInt64, limit: Int)

    public var description: String {
        switch self {
        case .compressFailed(let m): return "zstd compression failed: \(m)"
        case .decompressFailed(let m): return "zstd decompression failed: \(m)"
        case .sizeUnknown: return "zstd frame does not declare its size"
        case .tooLarge(let n, let limit): return "zstd frame would decompress to \(n) bytes, over the \(limit)-byte limit"
        }
    }
}

/// One-shot zstd via libzstd; decompression refuses frames that would exceed a size limit.
public enum Zstd {
    public static func compress(_ input: [UInt8], level: Int32 = 3) throws -> [UInt8] {
        let bound = ZSTD_compressBound(input.count)
        var out = [UInt8](repeating: 0, count: bound)
        let n = input.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                ZSTD_compress(dst.baseAddress, bound, src.baseAddress, input.count, level)
            }
        }
        if ZSTD_isError(n) != 0 { throw ZstdError.compressFailed(String(cString: ZSTD_getErrorName(n))) }
        out.removeSubrange(n...)
        return out
    }

    public static func decompress(_ input: [UInt8], limit: Int) throws -> [UInt8] {
        let size = input.withUnsafeBytes { ZSTD_getFrameContentSize($0.baseAddress, input.count) }
        // ZSTD_CONTENTSIZE_UNKNOWN and ZSTD_CONTENTSIZE_ERROR are the two top values.
        if size == UInt64.max { throw ZstdError.decompressFailed("not a zstd frame") }
        if size == UInt64.max - 1 { throw ZstdError.sizeUnknown }
        guard size <= UInt64(limit) else { throw ZstdError.tooLarge(size, limit: limit) }
        var out = [UInt8](repeating: 0, count: Int(size))
        let n = input.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                ZSTD_decompress(dst.baseAddress, Int(size), src.baseAddress, input.count)
            }
        }
        if ZSTD_isError(n) != 0 { throw ZstdError.decompressFailed(String(cString: ZSTD_getErrorName(n))) }
        guard n == Int(size) else { throw ZstdError.decompressFailed("frame decompressed to \(n) of \(size) declared bytes") }
        return out
    }
}
