// Mirrors bindings/kotlin/src/test/kotlin/dev/sotto/SessionTest.kt: two
// devices in one process exchange messages through sotto-core, typed errors
// for garbage and safety numbers (ClientTests covers SottoClient).
import Foundation
import XCTest
@testable import Sotto

let alice = PeerAddress(user: Data("alice".utf8), deviceId: 1)
let bob = PeerAddress(user: Data("bob".utf8), deviceId: 7)

func bundle(of device: Device) throws -> PrekeyBundle {
    let oneTime = try device.generateOneTimePrekeys(ec: 1, kem: 1)
    return try PrekeyBundle(signedBundle: device.signedBundle(), oneTimeEc: oneTime.ec[0].bytes, oneTimeKem: oneTime.kem[0].bytes)
}

final class SessionTests: XCTestCase {
    func testTwoDevicesTalkBothWays() throws {
        let a = try Device.createInMemory(deviceId: 1)
        let b = try Device.createInMemory(deviceId: 7)
        try a.processBundle(peer: bob, bundle: bundle(of: b))
        let hello = try a.encrypt(peer: bob, plaintext: Data("hello Bob".utf8))
        XCTAssertEqual(try b.decrypt(peer: alice, ciphertext: hello), Data("hello Bob".utf8))
        for i in 0..<20 {
            let reply = try b.encrypt(peer: alice, plaintext: Data("reply \(i)".utf8))
            XCTAssertEqual(try a.decrypt(peer: bob, ciphertext: reply), Data("reply \(i)".utf8))
        }
        let last = try a.encrypt(peer: bob, plaintext: Data("last".utf8))
        _ = try b.decrypt(peer: alice, ciphertext: last)
        XCTAssertThrowsError(try b.decrypt(peer: alice, ciphertext: last)) { error in
            guard case SottoError.DuplicateMessage = error else { return XCTFail("\(error)") }
        }
    }

    func testGarbageThrowsTypedErrors() throws {
        let a = try Device.createInMemory(deviceId: 1)
        let b = try Device.createInMemory(deviceId: 7)
        XCTAssertThrowsError(try PrekeyBundle(signedBundle: Data([1, 2, 3]), oneTimeEc: nil, oneTimeKem: nil)) { error in
            guard case SottoError.Malformed = error else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try a.encrypt(peer: bob, plaintext: Data([1]))) { error in
            XCTAssertEqual(error as? SottoError, .NoSession)
        }
        try a.processBundle(peer: bob, bundle: bundle(of: b))
        let first = try a.encrypt(peer: bob, plaintext: Data("first".utf8))
        var tampered = first
        tampered[tampered.count - 1] ^= 1
        XCTAssertThrowsError(try b.decrypt(peer: alice, ciphertext: tampered))
        XCTAssertThrowsError(try b.decrypt(peer: alice, ciphertext: Data()))
        XCTAssertEqual(try b.decrypt(peer: alice, ciphertext: first), Data("first".utf8))
    }

    func testSafetyNumbersAgree() throws {
        let a = try Device.createInMemory(deviceId: 1)
        let b = try Device.createInMemory(deviceId: 7)
        let ab = try SafetyNumber.of(identityA: a.identityKey(), identityB: b.identityKey())
        let ba = try SafetyNumber.of(identityA: b.identityKey(), identityB: a.identityKey())
        XCTAssertEqual(ab.digits().count, 60)
        XCTAssertEqual(ab.digits(), ba.digits())
        XCTAssertTrue(ab.matchesScanned(scanned: ba.scannable()))
    }
}
