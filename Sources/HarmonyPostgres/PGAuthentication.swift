import Crypto
import Foundation

/// How a client proves it knows the password: SCRAM-SHA-256 (RFC 5802/7677; the password never crosses the
/// wire), md5 (PostgreSQL's older challenge), or the password itself, which is only allowed over TLS.
public enum PGAuthMethod: String, Sendable, CaseIterable {
    case scramSHA256 = "scram-sha-256"
    case md5
    case password
}

/// The server's side of SCRAM-SHA-256 for one configured user. The verifier (salt, StoredKey, ServerKey) is
/// derived once; the password itself is not kept.
public struct SCRAMVerifier: Sendable {
    public let salt: [UInt8]
    public let iterations: Int
    let storedKey: [UInt8]
    let serverKey: [UInt8]

    public init(password: String, salt: [UInt8]? = nil, iterations: Int = 4096) {
        let salt = salt ?? (0..<16).map { _ in UInt8.random(in: 0...255) }
        self.salt = salt
        self.iterations = iterations
        let salted = Self.pbkdf2(password: Array(password.utf8), salt: salt, iterations: iterations)
        let clientKey = Self.hmac(salted, Array("Client Key".utf8))
        storedKey = Array(SHA256.hash(data: clientKey))
        serverKey = Self.hmac(salted, Array("Server Key".utf8))
    }

    static func hmac(_ key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: data, using: SymmetricKey(data: key)))
    }

    /// PBKDF2-HMAC-SHA-256 with one 32-byte block, which is all SCRAM needs.
    static func pbkdf2(password: [UInt8], salt: [UInt8], iterations: Int) -> [UInt8] {
        let key = SymmetricKey(data: password)
        var u = Array(HMAC<SHA256>.authenticationCode(for: salt + [0, 0, 0, 1], using: key))
        var result = u
        for _ in 1..<max(1, iterations) {
            u = Array(HMAC<SHA256>.authenticationCode(for: u, using: key))
            for i in 0..<result.count { result[i] ^= u[i] }
        }
        return result
    }
}

/// One SCRAM exchange: the client's first message, the server's challenge, then the client's proof.
public struct SCRAMExchange: Sendable {
    let verifier: SCRAMVerifier
    private(set) var clientFirstBare = ""
    private(set) var serverFirst = ""
    private(set) var nonce = ""

    public init(verifier: SCRAMVerifier) { self.verifier = verifier }

    /// Reads "n,,n=user,r=cnonce" and answers "r=cnonce+snonce,s=salt,i=iterations".
    public mutating func start(clientFirst: String, serverNonce: String? = nil) throws(PGError) -> String {
        // GS2 header: no channel binding ("n,,") or client supports it but thinks the server does not ("y,,").
        guard clientFirst.hasPrefix("n,,") || clientFirst.hasPrefix("y,,") else {
            throw PGError("28000", "SCRAM channel binding is not supported; connect without channel_binding=require")
        }
        clientFirstBare = String(clientFirst.dropFirst(3))
        guard let clientNonce = Self.attribute("r", in: clientFirstBare), !clientNonce.isEmpty else {
            throw PGError("08P01", "malformed SCRAM client-first-message")
        }
        let snonce = serverNonce ?? Data((0..<18).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
        nonce = clientNonce + snonce
        serverFirst = "r=\(nonce),s=\(Data(verifier.salt).base64EncodedString()),i=\(verifier.iterations)"
        return serverFirst
    }

    /// Checks "c=...,r=nonce,p=proof"; answers "v=signature" for the client to check the server in turn.
    public func finish(clientFinal: String) throws(PGError) -> String {
        guard let proofRange = clientFinal.range(of: ",p=") else { throw PGError("08P01", "malformed SCRAM client-final-message") }
        let withoutProof = String(clientFinal[..<proofRange.lowerBound])
        guard Self.attribute("r", in: withoutProof) == nonce,
              let proof = Data(base64Encoded: String(clientFinal[proofRange.upperBound...])), proof.count == 32 else {
            throw PGError("28P01", "password authentication failed")
        }
        let authMessage = Array("\(clientFirstBare),\(serverFirst),\(withoutProof)".utf8)
        let signature = SCRAMVerifier.hmac(verifier.storedKey, authMessage)
        let clientKey = zip(proof, signature).map { $0 ^ $1 }
        let candidate = Array(SHA256.hash(data: clientKey))
        var difference: UInt8 = 0
        for (a, b) in zip(candidate, verifier.storedKey) { difference |= a ^ b }
        guard difference == 0 else { throw PGError("28P01", "password authentication failed") }
        return "v=" + Data(SCRAMVerifier.hmac(verifier.serverKey, authMessage)).base64EncodedString()
    }

    static func attribute(_ name: Character, in message: String) -> String? {
        for part in message.split(separator: ",") where part.first == name && part.dropFirst().first == "=" {
            return String(part.dropFirst(2))
        }
        return nil
    }
}

/// PostgreSQL's md5 answer: "md5" + md5hex(md5hex(password + user) + salt).
public func pgMD5Answer(user: String, password: String, salt: [UInt8]) -> String {
    func hex(_ bytes: some Sequence<UInt8>) -> String { bytes.map { String(format: "%02x", $0) }.joined() }
    let inner = hex(Insecure.MD5.hash(data: Array((password + user).utf8)))
    return "md5" + hex(Insecure.MD5.hash(data: Array(inner.utf8) + salt))
}
