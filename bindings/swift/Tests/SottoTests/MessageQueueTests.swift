// Mirrors bindings/kotlin/src/test/kotlin/dev/sotto/MessageQueueTest.kt:
// async functions, typed errors, listener callbacks from Rust threads,
// subscription cancellation. Run on a Mac after build-xcframework.sh with
// `swift test` in bindings/swift.
import Foundation
import XCTest
@testable import Sotto

/// Collects events on the Rust thread; the test waits on the expectation.
final class CollectingListener: EventListener, @unchecked Sendable {
    private let lock = NSLock()
    private var _events: [Event] = []
    private let onClosed: XCTestExpectation?

    init(onClosed: XCTestExpectation? = nil) { self.onClosed = onClosed }

    var events: [Event] { lock.lock(); defer { lock.unlock() }; return _events }

    func onEvent(event: Event) throws {
        lock.lock()
        _events.append(event)
        lock.unlock()
        if event == .closed { onClosed?.fulfill() }
    }
}

final class MessageQueueTests: XCTestCase {
    func testVersion() {
        XCTAssertFalse(version().isEmpty)
    }

    func testSendAndNextRoundTripInOrder() async throws {
        let queue = try MessageQueue(capacity: 16)
        let bodies = (0..<10).map { i in Data((0..<(i * 100)).map { UInt8(truncatingIfNeeded: $0 + i) }) }
        for (i, body) in bodies.enumerated() {
            let seq = try await queue.send(body: body)
            XCTAssertEqual(seq, UInt64(i))
        }
        for (i, body) in bodies.enumerated() {
            let msg = try await queue.next()
            XCTAssertEqual(msg?.sequence, UInt64(i))
            XCTAssertEqual(msg?.body, body)
        }
        queue.end()
        let last = try await queue.next()
        XCTAssertNil(last)
    }

    func testCancelledNextLosesNoMessage() async throws {
        let queue = try MessageQueue(capacity: 4)
        let reader = Task { try await queue.next() }
        try await Task.sleep(nanoseconds: 50_000_000)
        reader.cancel()
        _ = try? await reader.value
        _ = try queue.trySend(body: Data([42]))
        let msg = try await queue.next()
        XCTAssertEqual(msg?.body, Data([42]))
    }

    func testBadInputThrowsTypedErrors() async throws {
        XCTAssertThrowsError(try MessageQueue(capacity: 0)) { error in
            guard case SottoError.InvalidInput = error else { return XCTFail("\(error)") }
        }
        let queue = try MessageQueue(capacity: 2)
        XCTAssertThrowsError(try queue.trySend(body: Data(count: 96 * 1024 + 1))) { error in
            XCTAssertEqual(error as? SottoError, .TooLarge(size: 96 * 1024 + 1, limit: 96 * 1024))
        }
        _ = try queue.trySend(body: Data([1]))
        _ = try queue.trySend(body: Data([2]))
        XCTAssertThrowsError(try queue.trySend(body: Data([3]))) { error in
            guard case SottoError.Busy = error else { return XCTFail("\(error)") }
        }
        queue.end()
        XCTAssertThrowsError(try queue.trySend(body: Data([4]))) { error in
            XCTAssertEqual(error as? SottoError, .Closed)
        }
        let first = try await queue.next()
        XCTAssertEqual(first?.body, Data([1]))
    }

    func testListenerReceivesEveryMessageThenClosed() async throws {
        let queue = try MessageQueue(capacity: 8)
        let closed = expectation(description: "Closed delivered")
        let listener = CollectingListener(onClosed: closed)
        let sub = try queue.subscribe(listener: listener)
        for i in 0..<100 {
            _ = try await queue.send(body: Data("m\(i)".utf8))
        }
        queue.end()
        await fulfillment(of: [closed], timeout: 10)
        let events = listener.events
        XCTAssertEqual(events.count, 101)
        for (i, event) in events.prefix(100).enumerated() {
            guard case let .message(message) = event else { return XCTFail("\(event)") }
            XCTAssertEqual(message.sequence, UInt64(i))
            XCTAssertEqual(message.body, Data("m\(i)".utf8))
        }
        do {
            _ = try await queue.next()
            XCTFail("next() must be refused while a subscription reads")
        } catch SottoError.Busy {
        }
        sub.cancel()
    }

    func testCancelStopsDeliveryAndFreesTheStream() async throws {
        let queue = try MessageQueue(capacity: 8)
        let listener = CollectingListener()
        let sub = try queue.subscribe(listener: listener)
        sub.cancel()
        XCTAssertFalse(sub.isActive())
        _ = try queue.trySend(body: Data([2]))
        try await Task.sleep(nanoseconds: 100_000_000)
        XCTAssertTrue(listener.events.isEmpty)
        let msg = try await queue.next()
        XCTAssertEqual(msg?.body, Data([2]))
    }
}
