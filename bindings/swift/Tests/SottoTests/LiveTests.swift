// Mirrors bindings/kotlin/src/test/kotlin/dev/sotto/LiveTest.kt: presence and
// typing against a real sotto-relay process (SOTTO_RELAY_BIN). Not run on
// this repository's machines (no Swift toolchain); see README.md.
import Foundation
import XCTest
@testable import Sotto

/// On ClientTests' relay and users (its setUp and newUser).
extension ClientTests {
    func testAWatchedContactShowsOnlineTypingThenOffline() async throws {
        let alice = try await newUser("alice")
        let bob = try await newUser("bob")
        _ = try alice.sendText(to: bob.address(), text: "hi")
        while true {
            let e = try await bob.nextEvent()
            try bob.ackEvent(seq: e.seq)
            if case .messageRequest = e.kind { try bob.acceptRequest(peer: alice.address()); break }
            if case .message = e.kind { break }
        }
        _ = try bob.sendText(to: alice.address(), text: "hello")
        _ = try await alice.nextMessage()
        try await alice.waitSynced(timeout: Double(waitMs) / 1000)
        try await bob.waitSynced(timeout: Double(waitMs) / 1000)

        try alice.watchPresence(contact: bob.address())
        var e = try await alice.nextLiveEvent()
        XCTAssertEqual(e, .presence(user: bob.address(), presence: .online))
        try bob.setTyping(contact: alice.address(), typing: true)
        e = try await alice.nextLiveEvent()
        XCTAssertEqual(e, .typing(user: bob.address(), typing: true))
        XCTAssertTrue(try alice.isTyping(contact: bob.address()))

        try await bob.shutdown()
        e = try await alice.nextLiveEvent()
        if case let .presence(_, presence) = e, case .offline = presence {} else {
            XCTFail("expected offline, got \(e)")
        }
        try await alice.shutdown()
        do {
            _ = try await alice.nextLiveEvent()
            XCTFail("a live event after shutdown")
        } catch SottoError.Closed {}
    }
}

/// Mirrors FlowTest.kt: explicit acks survive an early break.
extension ClientTests {
    func testAnEventNotAckedComesBackAndAnAckedOneNever() async throws {
        let alice = try await newUser("alice")
        let bob = try await newUser("bob")
        _ = try alice.sendText(to: bob.address(), text: "m1")
        var first: PendingEvent?
        for try await p in bob.pendingEvents() { first = p; break } // not acked
        var again: PendingEvent?
        for try await p in bob.pendingEvents() { again = p; break }
        XCTAssertEqual(first?.event.seq, again?.event.seq)
        try again?.ack()
        for try await p in bob.pendingEvents() {
            XCTAssertNotEqual(p.event.seq, first?.event.seq)
            try p.ack()
            break
        }
        try await alice.shutdown()
        try await bob.shutdown()
    }
}
