// Mirrors bindings/kotlin/src/test/kotlin/dev/sotto/GroupTest.kt: three
// users, a group created by Alice and accepted by the others, messages from
// two members, a removal after which Carol reads nothing and cannot send,
// typed errors. Not run on this repository's machines (no Swift toolchain).
import Foundation
import XCTest
@testable import Sotto

extension SottoClient {
    /// The next group change as (group id, effect, changes).
    func nextGroupChange() async throws -> (Data, GroupEffect, [GroupChange]) {
        while true {
            let e = try await nextEvent()
            try ackEvent(seq: e.seq)
            if case let .groupChanged(_, changes, effect) = e.kind { return (e.groupId!, effect, changes) }
        }
    }

    /// The next group message as (group id, sender, text).
    func nextGroupText() async throws -> (Data, String, String) {
        while true {
            let e = try await nextEvent()
            try ackEvent(seq: e.seq)
            if case let .message(m) = e.kind, let g = e.groupId { return (g, e.peer!, m.text) }
        }
    }
}

final class GroupTests: XCTestCase {
    var relay: RelayProcess!
    var dir: URL!

    override func setUpWithError() throws {
        relay = try RelayProcess()
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("sotto-group-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: dir)
        relay = nil
    }

    func newUser(_ name: String) async throws -> SottoClient {
        try await SottoClient.create(dbPath: dir.appendingPathComponent("\(name).db").path,
                                     storageKey: randomKey(), relay: relay.address)
    }

    func testThreeUsersChatInAGroupAndARemovedMemberReadsNothingAfter() async throws {
        let alice = try await newUser("alice")
        let bob = try await newUser("bob")
        let carol = try await newUser("carol")
        let id = try alice.createGroup(name: "hiking", members: [bob.address(), carol.address()])
        XCTAssertEqual(id.count, 32)
        for u in [bob, carol] {
            let (gid, effect, changes) = try await u.nextGroupChange()
            XCTAssertEqual(gid, id)
            XCTAssertEqual(effect, .invitation)
            XCTAssertTrue(changes.contains(.renamed(name: "hiking")))
            try u.acceptGroup(groupId: id)
        }
        XCTAssertEqual(try alice.group(groupId: id)?.members.count, 3)

        _ = try alice.sendGroupText(groupId: id, text: "summit at noon")
        for u in [bob, carol] {
            let (gid, from, text) = try await u.nextGroupText()
            XCTAssertEqual(gid, id)
            XCTAssertEqual(from, alice.address())
            XCTAssertEqual(text, "summit at noon")
        }

        XCTAssertThrowsError(try bob.renameGroup(groupId: id, name: "mine")) { error in
            guard case SottoError.NotGroupAdmin = error else { return XCTFail("\(error)") }
        }

        try alice.removeGroupMember(groupId: id, member: carol.address())
        let (_, bobEffect, _) = try await bob.nextGroupChange()
        XCTAssertEqual(bobEffect, .applied)
        let (_, carolEffect, _) = try await carol.nextGroupChange()
        XCTAssertEqual(carolEffect, .removedYou)
        XCTAssertThrowsError(try carol.sendGroupText(groupId: id, text: "still here?"))

        _ = try alice.sendGroupText(groupId: id, text: "after carol left")
        let (_, _, text) = try await bob.nextGroupText()
        XCTAssertEqual(text, "after carol left")
        try await alice.shutdown()
        try await bob.shutdown()
        try await carol.shutdown()
    }
}
