// Mirrors bindings/kotlin/src/test/kotlin/dev/sotto/SessionTest.kt: two
// devices in one process exchange messages through sotto-core, typed errors
// for garbage, safety numbers, and a Conversation delivering to a listener.
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

    func testConversationListenerGetsPlaintextAndFailures() async throws {
        let a = try Device.createInMemory(deviceId: 1)
        let b = try Device.createInMemory(deviceId: 7)
        try a.processBundle(peer: bob, bundle: bundle(of: b))
        let fromAlice = try b.conversation(peer: alice, capacity: 64)
        let closed = expectation(description: "Closed delivered")
        let listener = CollectingListener(onClosed: closed)
        let sub = try fromAlice.subscribe(listener: listener)
        _ = try fromAlice.receive(ciphertext: a.encrypt(peer: bob, plaintext: Data("hello".utf8)))
        _ = try fromAlice.receive(ciphertext: Data([1, 2, 3]))
        _ = try fromAlice.receive(ciphertext: a.encrypt(peer: bob, plaintext: Data("again".utf8)))
        fromAlice.end()
        await fulfillment(of: [closed], timeout: 10)
        let events = listener.events
        XCTAssertEqual(events.count, 4)
        guard case let .message(first) = events[0] else { return XCTFail("\(events[0])") }
        XCTAssertEqual(first.body, Data("hello".utf8))
        guard case let .failed(sequence, _) = events[1] else { return XCTFail("\(events[1])") }
        XCTAssertEqual(sequence, 1)
        guard case let .message(third) = events[2] else { return XCTFail("\(events[2])") }
        XCTAssertEqual(third.body, Data("again".utf8))
        sub.cancel()
    }

    func testConversationNextDecryptsInOrder() async throws {
        let a = try Device.createInMemory(deviceId: 1)
        let b = try Device.createInMemory(deviceId: 7)
        try a.processBundle(peer: bob, bundle: bundle(of: b))
        let toBob = try a.conversation(peer: bob, capacity: 64)
        let fromAlice = try b.conversation(peer: alice, capacity: 64)
        for i in 0..<10 {
            _ = try await fromAlice.receiveWaiting(ciphertext: toBob.encrypt(plaintext: Data("msg \(i)".utf8)))
        }
        for i in 0..<10 {
            let msg = try await fromAlice.next()
            XCTAssertEqual(msg?.body, Data("msg \(i)".utf8))
        }
        fromAlice.end()
        let end = try await fromAlice.next()
        XCTAssertNil(end)
    }
}
