// The event queue as Flows (Flows.kt) against a real relay: with explicit
// acks, early ends (first(), take(n), cancellation) lose nothing and show
// nothing acked twice; with ack-on-return, what the block finished leaves
// the queue and what it did not comes back.
package dev.sotto

import kotlinx.coroutines.async
import kotlinx.coroutines.delay
import kotlinx.coroutines.flow.filter
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.flow.map
import kotlinx.coroutines.flow.take
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path

class FlowTest : RelayTest() {

    /** Texts of the next `n` messages, acking everything on the way (explicitly). */
    private suspend fun SottoClient.texts(n: Int): List<String> = withTimeout(WAIT_MS) {
        pendingEvents()
            .filter { p ->
                val keep = p.event.kind is EventKind.Message || p.event.kind is EventKind.MessageRequest
                if (!keep) p.ack()
                keep
            }
            .take(n)
            .map { p ->
                val k = p.event.kind
                if (k is EventKind.MessageRequest) acceptRequest(p.event.peer!!)
                p.ack()
                when (k) {
                    is EventKind.Message -> k.message.text
                    is EventKind.MessageRequest -> k.message.text
                    else -> error("filtered")
                }
            }
            .toList()
    }

    @Test
    fun `explicit acks survive first, take and cancellation, and nothing acked comes back`(@TempDir dir: Path) = runBlocking {
        newUser(dir, "alice").use { alice ->
            newUser(dir, "bob").use { bob ->
                // Contacts first (a stranger's messages are requests).
                alice.sendText(bob.address(), "hi")
                assertEquals(listOf("hi"), bob.texts(1))
                for (i in 1..4) alice.sendText(bob.address(), "m$i")
                assertEquals(listOf("m1"), bob.texts(1))

                // first() without an ack: the event stays, and comes first again.
                val peeked = withTimeout(WAIT_MS) {
                    bob.pendingEvents().first { it.event.kind is EventKind.Message || run { it.ack(); false } }
                }
                assertTrue(!peeked.isAcked)
                val again = withTimeout(WAIT_MS) { bob.pendingEvents().first() }
                assertEquals(peeked.event.seq, again.event.seq, "an event not acked comes back")
                again.ack() // acked later, from outside the flow: it never comes back

                // A collector cancelled while it holds an event: that event comes back.
                val cancelled = runCatching {
                    withTimeout(2_000) {
                        bob.pendingEvents().collect { /* never acks: the flow waits */ }
                    }
                }
                assertTrue(cancelled.isFailure)
                assertEquals(listOf("m3", "m4"), bob.texts(2))

                // Ack on return: what the block finished is gone, what it threw on comes back.
                alice.sendText(bob.address(), "m5")
                val failed = runCatching {
                    withTimeout(WAIT_MS) {
                        bob.events().collect { e ->
                            if (e.kind is EventKind.Message) error("app crashed on it")
                        }
                    }
                }
                assertTrue(failed.isFailure)
                assertEquals(listOf("m5"), bob.texts(1))

                alice.shutdown()
                bob.shutdown()
            }
        }
    }

    @Test
    fun `shutdown ends a pending nextEvent with Closed`(@TempDir dir: Path) = runBlocking {
        newUser(dir, "carol").use { carol ->
            val pending = async { runCatching { carol.nextEvent() } }
            delay(200)
            val started = System.nanoTime()
            carol.shutdown()
            val ended = withTimeout(WAIT_MS) { pending.await() }
            assertTrue(ended.exceptionOrNull() is SottoException.Closed, "$ended")
            // Every exception says what happened.
            assertTrue(ended.exceptionOrNull()!!.message!!.contains("shut down"), "${ended.exceptionOrNull()?.message}")
            // Nothing held the client: shutdown did not wait out its 2 s grace.
            assertTrue(System.nanoTime() - started < 1_500_000_000L, "shutdown waited for the pending call")
        }
    }
}
