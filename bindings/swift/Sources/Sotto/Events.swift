// The event queue as an AsyncSequence (hand-written beside the generated
// Sotto.swift), with an explicit ack per event: mirrors Flows.kt's
// `pendingEvents()`. At-least-once: an event leaves the durable queue only
// when acked, so one the app did not finish with comes back (on the next
// iteration, and after a restart); one it acked never does.
import Foundation

/// An event from `SottoClient.pendingEvents()`, waiting for `ack()`.
public final class PendingEvent: @unchecked Sendable {
    public let event: Event
    private let client: SottoClient
    private let lock = NSLock()
    private var acked = false
    private var waiter: CheckedContinuation<Void, Never>?

    init(client: SottoClient, event: Event) {
        self.client = client
        self.event = event
    }

    /// Removes the event from the queue (after the app stored what it needs). Idempotent.
    public func ack() throws {
        lock.lock()
        if acked { lock.unlock(); return }
        lock.unlock()
        try client.ackEvent(seq: event.seq)
        lock.lock()
        acked = true
        let w = waiter
        waiter = nil
        lock.unlock()
        w?.resume()
    }

    /// Whether `ack()` was called.
    public var isAcked: Bool {
        lock.lock(); defer { lock.unlock() }
        return acked
    }

    func awaitAck() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            lock.lock()
            if acked {
                lock.unlock()
                c.resume()
            } else {
                waiter = c
                lock.unlock()
            }
        }
    }
}

/// The queue, one event in hand at a time: the next is fetched once the
/// previous one is acked (now or later, from any task). Breaking out of the
/// loop, `prefix(n)`, a cancelled task or a crash leave every event not acked
/// in the queue. One consumer at a time: a second iteration while one runs
/// throws `SottoError.Busy`.
public struct PendingEvents: AsyncSequence {
    public typealias Element = PendingEvent
    let client: SottoClient

    public struct AsyncIterator: AsyncIteratorProtocol {
        let client: SottoClient
        var previous: PendingEvent?

        public mutating func next() async throws -> PendingEvent? {
            if let p = previous { await p.awaitAck() }
            try Task.checkCancellation()
            let p = PendingEvent(client: client, event: try await client.nextEvent())
            previous = p
            return p
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(client: client, previous: nil)
    }
}

extension SottoClient {
    /// The event queue with an explicit ack per event (see `PendingEvents`).
    public func pendingEvents() -> PendingEvents { PendingEvents(client: self) }
}
