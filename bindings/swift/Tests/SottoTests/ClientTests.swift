// Mirrors bindings/kotlin/src/test/kotlin/dev/sotto/ClientTest.kt: SottoClient
// against a real sotto-relay process (path in the SOTTO_RELAY_BIN environment
// variable): text both ways with receipts, an attachment, a listener acked
// only after it returns, cancellation, linking, typed errors. Not run on this
// repository's machines (no Swift toolchain); see README.md.
import Foundation
import XCTest
@testable import Sotto

let waitMs: UInt64 = 30_000

func randomKey() -> Data { Data((0..<32).map { _ in UInt8.random(in: 0...255) }) }

/// A relay on ephemeral loopback ports; its address comes from <dir>/relay.addr.
final class RelayProcess {
    let process = Process()
    let dir: URL
    private(set) var address = ""

    init() throws {
        guard let bin = ProcessInfo.processInfo.environment["SOTTO_RELAY_BIN"] else {
            throw XCTSkip("set SOTTO_RELAY_BIN to the sotto-relay binary")
        }
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("sotto-relay-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        process.executableURL = URL(fileURLWithPath: bin)
        process.arguments = ["--data-dir", dir.path, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if let text = try? String(contentsOf: dir.appendingPathComponent("relay.addr"), encoding: .utf8) {
                var fields: [String: String] = [:]
                for line in text.split(separator: "\n") {
                    let kv = line.split(separator: "=", maxSplits: 1).map(String.init)
                    if kv.count == 2 { fields[kv[0]] = kv[1] }
                }
                if let quic = fields["quic"], let fp = fields["fingerprint"] {
                    address = "\(quic)/\(fp)"
                    return
                }
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
        process.terminate()
        throw XCTSkip("relay did not start")
    }

    deinit {
        process.terminate()
        try? FileManager.default.removeItem(at: dir)
    }
}

extension SottoClient {
    /// The next chat message, acknowledging every event on the way.
    func nextMessage() async throws -> (String, ReceivedMessage) {
        while true {
            let e = try await nextEvent()
            try ackEvent(seq: e.seq)
            if case let .message(m) = e.kind { return (e.peer!, m) }
        }
    }

    func awaitState(_ id: Data, _ want: DeliveryState) async throws {
        let deadline = Date().addingTimeInterval(Double(waitMs) / 1000)
        while Date() < deadline {
            let states = try delivery(messageId: id)
            if !states.isEmpty && states.allSatisfy({ rank($0.state) >= rank(want) }) { return }
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        XCTFail("\(want) not reached")
    }
}

func rank(_ s: DeliveryState) -> Int {
    switch s {
    case .sent: return 1
    case .delivered: return 2
    case .read: return 3
    }
}

/// Collects events; throws on the first `throwFirst` calls.
final class Collecting: EventListener, @unchecked Sendable {
    private let lock = NSLock()
    private var events: [Event] = []
    private var calls = 0
    let throwFirst: Int
    init(throwFirst: Int = 0) { self.throwFirst = throwFirst }

    func onEvent(event: Event) throws {
        lock.lock(); defer { lock.unlock() }
        events.append(event)
        calls += 1
        if calls <= throwFirst { throw SottoError.Listener(reason: "not ready yet") }
    }

    func messages() -> [(UInt64, ReceivedMessage)] {
        lock.lock(); defer { lock.unlock() }
        return events.compactMap { e in
            if case let .message(m) = e.kind { return (e.seq, m) } else { return nil }
        }
    }
}

final class ClientTests: XCTestCase {
    var relay: RelayProcess!
    var dir: URL!

    override func setUpWithError() throws {
        relay = try RelayProcess()
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("sotto-client-\(UUID())")
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

    func testTwoUsersTalkBothWaysWithReceipts() async throws {
        let alice = try await newUser("alice")
        let bob = try await newUser("bob")
        let id = try alice.sendText(to: bob.address(), text: "hello Bob")
        XCTAssertEqual(id.count, 16)
        let (from, m) = try await bob.nextMessage()
        XCTAssertEqual(from, alice.address())
        XCTAssertEqual(m.text, "hello Bob")
        try await alice.awaitState(id, .delivered)
        try bob.markRead(peer: alice.address(), messageIds: [m.id])
        try await alice.awaitState(id, .read)
        _ = try bob.sendText(to: alice.address(), text: "hi Alice")
        let (_, reply) = try await alice.nextMessage()
        XCTAssertEqual(reply.text, "hi Alice")
        XCTAssertEqual(try alice.safetyNumber(peer: bob.address()).digits(),
                       try bob.safetyNumber(peer: alice.address()).digits())
        try alice.markVerified(peer: bob.address())
        XCTAssertTrue(try alice.isVerified(peer: bob.address()))
        try await alice.shutdown()
        try await bob.shutdown()
    }

    func testAttachmentArrivesIntact() async throws {
        let alice = try await newUser("alice")
        let bob = try await newUser("bob")
        let content = Data((0..<(3 * 1024 * 1024 + 12345)).map { _ in UInt8.random(in: 0...255) })
        let src = dir.appendingPathComponent("holiday.bin")
        try content.write(to: src)
        let id = try await alice.sendFile(to: bob.address(), text: "see attached", path: src.path)
        let (from, m) = try await bob.nextMessage()
        XCTAssertEqual(m.id, id)
        XCTAssertEqual(m.attachments.count, 1)
        XCTAssertEqual(m.attachments[0].fileName(), "holiday.bin")
        XCTAssertEqual(m.attachments[0].size(), UInt64(content.count))
        let dest = dir.appendingPathComponent("downloaded.bin")
        _ = try await bob.downloadAttachment(from: from, attachment: m.attachments[0], dest: dest.path)
        XCTAssertEqual(try Data(contentsOf: dest), content)
    }

    func testListenerEventsAreAckedOnlyAfterItReturns() async throws {
        let alice = try await newUser("alice")
        let bob = try await newUser("bob")
        let listener = Collecting(throwFirst: 1)
        let sub = try bob.subscribe(listener: listener)
        do {
            _ = try await bob.nextEvent()
            XCTFail("a second consumer must be refused")
        } catch SottoError.Busy {}
        _ = try alice.sendText(to: bob.address(), text: "first")
        let deadline = Date().addingTimeInterval(Double(waitMs) / 1000)
        while listener.messages().count < 2 && Date() < deadline {
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        let got = listener.messages()
        XCTAssertEqual(got.count, 2)
        XCTAssertEqual(got[0].0, got[1].0) // the same event again after the throw
        XCTAssertEqual(sub.listenerFailures(), 1)
        sub.cancel()
        XCTAssertFalse(sub.isActive())
    }

    func testCancelledNextEventFreesTheQueue() async throws {
        let alice = try await newUser("alice")
        let bob = try await newUser("bob")
        let waiting = Task { try await bob.nextEvent() }
        try await Task.sleep(nanoseconds: 300_000_000)
        waiting.cancel()
        _ = try? await waiting.value
        _ = try alice.sendText(to: bob.address(), text: "after cancel")
        let (_, m) = try await bob.nextMessage()
        XCTAssertEqual(m.text, "after cancel")
    }

    func testTypedErrorsForBadAddressesAndKeys() async throws {
        let key = randomKey()
        let db = dir.appendingPathComponent("carol.db").path
        let carol = try await SottoClient.create(dbPath: db, storageKey: key, relay: relay.address)
        XCTAssertThrowsError(try carol.sendText(to: "not an address", text: "x")) { e in
            guard case SottoError.InvalidAddress = e else { return XCTFail("\(e)") }
        }
        let address = carol.address()
        try await carol.shutdown()
        XCTAssertThrowsError(try carol.sendText(to: address, text: "x")) { e in
            guard case SottoError.Closed = e else { return XCTFail("\(e)") }
        }
        let again = try await SottoClient.open(dbPath: db, storageKey: key)
        XCTAssertEqual(again.address(), address)
        try await again.shutdown()
        do {
            _ = try await SottoClient.open(dbPath: db, storageKey: randomKey())
            XCTFail("a wrong storage key must fail")
        } catch SottoError.CorruptRecord {}
        do {
            _ = try await SottoClient.create(dbPath: dir.appendingPathComponent("d.db").path,
                                             storageKey: randomKey(), relay: "localhost")
            XCTFail("a bad relay address must fail")
        } catch SottoError.InvalidAddress {}
    }

    func testSecondDeviceIsLinked() async throws {
        let alice = try await newUser("alice")
        let bob = try await newUser("bob")
        let linking = try await Linking.start(dbPath: dir.appendingPathComponent("alice2.db").path,
                                              storageKey: randomKey(), relay: relay.address)
        let pending = try await alice.linkDevice(code: linking.code())
        let digits = try await linking.waitOffer(timeout: Double(waitMs) / 1000)
        XCTAssertEqual(digits, pending.digits())
        let deviceId = try await alice.confirmLink(pending: pending)
        XCTAssertEqual(deviceId, 2)
        let alice2 = try await linking.finish(timeout: Double(waitMs) / 1000)
        XCTAssertEqual(alice2.address(), alice.address())
        _ = try bob.sendText(to: alice.address(), text: "to both of you")
        let (_, m1) = try await alice.nextMessage()
        let (_, m2) = try await alice2.nextMessage()
        XCTAssertEqual(m1.text, "to both of you")
        XCTAssertEqual(m2.text, "to both of you")
    }
}
