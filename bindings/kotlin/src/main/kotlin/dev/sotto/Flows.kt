// The event queue as Kotlin Flows (hand-written beside the generated
// sotto.kt). Two ways to consume it, both at-least-once: an event leaves
// the durable queue only when acknowledged, so one the app did not finish
// with comes back (on the next collection, and after a restart), and one
// it acknowledged never does.
package dev.sotto

import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.flow

/** An event from [SottoClient.pendingEvents], waiting for [ack]. */
class PendingEvent internal constructor(private val client: SottoClient, val event: Event) {
    private val done = CompletableDeferred<Unit>()

    /** Removes the event from the queue (after the app stored what it needs). Idempotent. */
    fun ack() {
        if (done.isCompleted) return
        client.ackEvent(event.seq)
        done.complete(Unit)
    }

    /** Whether [ack] was called. */
    val isAcked: Boolean get() = done.isCompleted

    internal suspend fun awaitAck() = done.await()
}

/**
 * The queue with an explicit ack per event: each [PendingEvent] must be acked
 * ([PendingEvent.ack]), now or later from any coroutine, and the next one is
 * fetched only once it is (one event in hand at a time, as the queue is in
 * order). Early ends keep the guarantee: `first()`, `take(n)`, a cancelled
 * collector or a crash leave every event not acked in the queue, to come
 * back; acked ones never do. Ack the events a filter drops too, or the flow
 * waits for them. The queue has one consumer: a second collection while one
 * runs fails with [SottoException.Busy].
 */
fun SottoClient.pendingEvents(): Flow<PendingEvent> = flow {
    while (true) {
        val pending = PendingEvent(this@pendingEvents, nextEvent())
        emit(pending)
        pending.awaitAck()
    }
}

/**
 * The queue with the callback listener's contract: each event is acked when
 * the collector's block for it returns normally. If the block throws, or the
 * collection ends inside it (`first()`, `take(n)` end the flow from within
 * the last value's emit; a cancelled coroutine), the event is not acked and
 * comes back. So `take(n)` delivers its n-th event again next time: use
 * [pendingEvents] to ack exactly what was handled.
 */
fun SottoClient.events(): Flow<Event> = flow {
    while (true) {
        val e = nextEvent()
        emit(e)
        ackEvent(e.seq)
    }
}
