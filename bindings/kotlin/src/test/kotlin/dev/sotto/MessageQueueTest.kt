// Tests of the Kotlin bindings against the real native library built by
// cargo: suspend functions, typed exceptions, listener callbacks from Rust
// threads, subscription cancellation and object lifecycle with `use {}`.
package dev.sotto

import kotlinx.coroutines.async
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

/** Collects events on the Rust thread and hands them to the test thread. */
class CollectingListener : EventListener {
    val events = LinkedBlockingQueue<Event>()
    val threads = LinkedBlockingQueue<String>()

    override fun onEvent(event: Event) {
        threads.add(Thread.currentThread().name)
        events.add(event)
    }

    fun take(): Event = events.poll(10, TimeUnit.SECONDS) ?: error("no event within 10 s")
}

/** The delivery task finishes just after its last callback returns. */
fun awaitInactive(sub: Subscription) {
    val deadline = System.nanoTime() + 10_000_000_000
    while (sub.isActive() && System.nanoTime() < deadline) Thread.sleep(5)
    assertFalse(sub.isActive(), "subscription still active after Closed")
}

class MessageQueueTest {
    @Test
    fun `library loads and reports its version`() {
        assertTrue(version().matches(Regex("""\d+\.\d+\.\d+.*""")), version())
    }

    @Test
    fun `suspend send and next round-trip bytes in order`() = runBlocking {
        MessageQueue(16u).use { queue ->
            val bodies = (0 until 10).map { i -> ByteArray(i * 100) { (it + i).toByte() } }
            for ((i, body) in bodies.withIndex()) {
                assertEquals(i.toULong(), queue.send(body))
            }
            for ((i, body) in bodies.withIndex()) {
                val msg = queue.next() ?: error("stream ended early")
                assertEquals(i.toULong(), msg.sequence)
                assertArrayEquals(body, msg.body)
            }
            queue.end()
            assertNull(queue.next(), "an ended, drained queue yields null")
        }
    }

    @Test
    fun `next suspends until a message is sent from another coroutine`() = runBlocking {
        MessageQueue(4u).use { queue ->
            val reader = async { queue.next() }
            delay(50)
            assertFalse(reader.isCompleted, "next() must suspend on an empty queue")
            queue.trySend(byteArrayOf(7))
            assertArrayEquals(byteArrayOf(7), withTimeout(10_000) { reader.await() }!!.body)
        }
    }

    @Test
    fun `send suspends while the queue is full`() = runBlocking {
        MessageQueue(1u).use { queue ->
            queue.send(byteArrayOf(1))
            val blocked = withTimeoutOrNull(100) { queue.send(byteArrayOf(2)) }
            assertNull(blocked, "send on a full queue must suspend")
            // The cancelled send enqueued nothing: the next one gets sequence 1.
            assertEquals(0uL, queue.next()!!.sequence)
            assertEquals(1uL, queue.send(byteArrayOf(3)))
            assertArrayEquals(byteArrayOf(3), queue.next()!!.body)
        }
    }

    @Test
    fun `cancelled next loses no message`() = runBlocking {
        MessageQueue(4u).use { queue ->
            assertNull(withTimeoutOrNull(50) { queue.next() })
            // The cancelled reader released the stream: a new reader is allowed
            // and receives the message sent afterwards.
            queue.trySend(byteArrayOf(42))
            assertArrayEquals(byteArrayOf(42), withTimeout(10_000) { queue.next() }!!.body)
        }
    }

    @Test
    fun `next_batch returns buffered messages in one call`() = runBlocking {
        MessageQueue(64u).use { queue ->
            repeat(20) { queue.trySend(byteArrayOf(it.toByte())) }
            val batch = queue.nextBatch(8u)
            assertEquals((0uL until 8uL).toList(), batch.map { it.sequence })
            queue.end()
            assertEquals(12, queue.nextBatch(100u).size)
            assertTrue(queue.nextBatch(100u).isEmpty(), "empty batch means the stream ended")
        }
    }

    @Test
    fun `bad input raises typed exceptions, not crashes`() = runBlocking {
        val invalid = assertThrows<SottoException.InvalidInput> { MessageQueue(0u) }
        assertTrue(invalid.reason.contains("capacity"), invalid.reason)
        MessageQueue(2u).use { queue ->
            val tooLarge = assertThrows<SottoException.TooLarge> { queue.trySend(ByteArray(96 * 1024 + 1)) }
            assertEquals(96uL * 1024uL + 1uL, tooLarge.size)
            assertEquals(96uL * 1024uL, tooLarge.limit)
            // The same check guards the suspend path.
            assertThrows<SottoException.TooLarge> { runBlocking { queue.send(ByteArray(200_000)) } }
            assertThrows<SottoException.InvalidInput> { runBlocking { queue.nextBatch(0u) } }
            queue.trySend(byteArrayOf(1))
            queue.trySend(byteArrayOf(2))
            assertThrows<SottoException.Busy> { queue.trySend(byteArrayOf(3)) }
            queue.end()
            assertThrows<SottoException.Closed> { queue.trySend(byteArrayOf(4)) }
            assertThrows<SottoException.Closed> { runBlocking { queue.send(byteArrayOf(5)) } }
            // The queue is still usable after all those failures.
            assertArrayEquals(byteArrayOf(1), queue.next()!!.body)
        }
    }

    @Test
    fun `listener receives every message then Closed on a Rust thread`() {
        MessageQueue(8u).use { queue ->
            val listener = CollectingListener()
            queue.subscribe(listener).use { sub ->
                assertTrue(sub.isActive())
                runBlocking { repeat(100) { queue.send("m$it".toByteArray()) } }
                queue.end()
                repeat(100) {
                    val event = listener.take() as Event.Message
                    assertEquals(it.toULong(), event.message.sequence)
                    assertEquals("m$it", String(event.message.body))
                }
                assertEquals(Event.Closed, listener.take())
                awaitInactive(sub)
                assertEquals(101uL, sub.delivered(), "100 messages and Closed")
                // Called on Rust's worker threads (JNA names them Thread-N), never the caller's.
                val me = Thread.currentThread().name
                assertTrue(listener.threads.none { it == me }, listener.threads.toString())
                // The stream has one consumer: reads are refused while subscribed.
                assertThrows<SottoException.Busy> { runBlocking { queue.next() } }
            }
        }
    }

    @Test
    fun `closing the subscription stops delivery and frees the stream`() = runBlocking {
        MessageQueue(8u).use { queue ->
            val listener = CollectingListener()
            val sub = queue.subscribe(listener)
            queue.trySend(byteArrayOf(1))
            assertEquals(0uL, (listener.take() as Event.Message).message.sequence)
            sub.close() // what use {} does: drops the Rust handle, which cancels
            assertTrue(sub.uniffiIsDestroyed)
            queue.trySend(byteArrayOf(2))
            assertNull(listener.events.poll(100, TimeUnit.MILLISECONDS), "no event after close()")
            // The undelivered message is still there for the next reader.
            assertArrayEquals(byteArrayOf(2), withTimeout(10_000) { queue.next() }!!.body)
        }
    }

    @Test
    fun `cancel from inside the listener is allowed`() {
        MessageQueue(8u).use { queue ->
            val seen = LinkedBlockingQueue<ULong>()
            lateinit var sub: Subscription
            val listener = object : EventListener {
                override fun onEvent(event: Event) {
                    if (event is Event.Message) {
                        seen.add(event.message.sequence)
                        sub.cancel()
                    }
                }
            }
            sub = queue.subscribe(listener)
            sub.use {
                queue.trySend(byteArrayOf(1))
                queue.trySend(byteArrayOf(2))
                assertEquals(0uL, seen.poll(10, TimeUnit.SECONDS))
                assertNull(seen.poll(100, TimeUnit.MILLISECONDS), "cancelled inside the callback")
                assertFalse(it.isActive())
            }
        }
    }

    @Test
    fun `a throwing listener is counted and delivery goes on`() {
        MessageQueue(8u).use { queue ->
            val received = LinkedBlockingQueue<ULong>()
            val listener = object : EventListener {
                override fun onEvent(event: Event) {
                    if (event is Event.Message) {
                        received.add(event.message.sequence)
                        if (event.message.sequence == 0uL) throw IllegalStateException("app bug")
                    }
                }
            }
            queue.subscribe(listener).use { sub ->
                queue.trySend(byteArrayOf(1))
                queue.trySend(byteArrayOf(2))
                assertEquals(0uL, received.poll(10, TimeUnit.SECONDS))
                assertEquals(1uL, received.poll(10, TimeUnit.SECONDS))
                assertEquals(1uL, sub.listenerFailures())
                assertTrue(sub.isActive())
            }
        }
    }

    @Test
    fun `a second subscription is refused while the first is active`() {
        MessageQueue(8u).use { queue ->
            queue.subscribe(CollectingListener()).use {
                assertThrows<SottoException.Busy> { queue.subscribe(CollectingListener()) }
            }
            // Closing the first frees the stream.
            queue.subscribe(CollectingListener()).use { assertTrue(it.isActive()) }
        }
    }

    @Test
    fun `dropping the queue ends its subscription with Closed`() {
        val listener = CollectingListener()
        val queue = MessageQueue(8u)
        queue.subscribe(listener).use { sub ->
            queue.trySend(byteArrayOf(9))
            queue.close()
            assertTrue(listener.take() is Event.Message)
            assertEquals(Event.Closed, listener.take())
            awaitInactive(sub)
        }
    }
}
