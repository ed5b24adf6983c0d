// SottoClient through the bindings against a real sotto-relay process: two
// users in one JVM register, talk both ways, exchange a multi-MiB
// attachment, see Delivered and Read receipts, receive through a listener
// (acknowledged only after it returns), link a second device, and get typed
// exceptions for bad addresses and storage keys. Suspend functions run under
// coroutines; every Rust object is closed with `use {}`.
package dev.sotto

import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Files
import java.nio.file.Path
import java.security.SecureRandom
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger

/** Generous bound for anything that goes through the relay. */
const val WAIT_MS = 30_000L
val WAIT: java.time.Duration = java.time.Duration.ofMillis(WAIT_MS)

fun randomKey(): ByteArray = ByteArray(32).also { SecureRandom().nextBytes(it) }

/** The next chat message, acknowledging it and every other event on the way. */
suspend fun SottoClient.nextMessage(): Pair<String, ReceivedMessage> = withTimeout(WAIT_MS) {
    while (true) {
        val e = nextEvent()
        ackEvent(e.seq)
        when (val k = e.kind) {
            is EventKind.Message -> return@withTimeout e.peer!! to k.message
            // A stranger's first messages are a request: accept, as a user would.
            is EventKind.MessageRequest -> {
                acceptRequest(e.peer!!)
                return@withTimeout e.peer!! to k.message
            }
            is EventKind.DecryptFailed -> error("decrypt failed: ${k.reason}")
            else -> {}
        }
    }
    @Suppress("UNREACHABLE_CODE")
    error("unreachable")
}

/** Waits until every recipient device of `id` reached at least `want`. */
suspend fun SottoClient.awaitState(id: ByteArray, want: DeliveryState) = withTimeout(WAIT_MS) {
    while (true) {
        val states = delivery(id)
        if (states.isNotEmpty() && states.all { it.state >= want }) return@withTimeout states
        delay(20)
    }
    @Suppress("UNREACHABLE_CODE")
    error("unreachable")
}

class ClientTest : RelayTest() {

    @Test
    fun `two users talk both ways with delivered and read receipts`(@TempDir dir: Path) = runBlocking {
        newUser(dir, "alice").use { alice ->
            newUser(dir, "bob").use { bob ->
                assertTrue(alice.address().endsWith("@" + relay.address), alice.address())
                assertNotEquals(alice.address(), bob.address())
                assertEquals(1u, alice.deviceId())

                val id = alice.sendText(bob.address(), "hello Bob")
                assertEquals(16, id.size)
                val (from, m) = bob.nextMessage()
                assertEquals(alice.address(), from)
                assertEquals("hello Bob", m.text)
                assertArrayEquals(id, m.id)
                alice.awaitState(id, DeliveryState.DELIVERED)
                bob.markRead(alice.address(), listOf(m.id))
                val states = alice.awaitState(id, DeliveryState.READ)
                assertEquals(listOf(1u), states.map { it.deviceId })

                // Alice also saw the progress as events, for the same message.
                val seen = mutableSetOf<DeliveryState>()
                while (true) {
                    val e = alice.tryNextEvent() ?: break
                    alice.ackEvent(e.seq)
                    val k = e.kind
                    if (k is EventKind.Delivery && k.messageId.contentEquals(id)) seen += k.state
                    if (k is EventKind.Receipt && k.messageIds.any { it.contentEquals(id) }) seen += DeliveryState.READ
                }
                assertTrue(DeliveryState.READ in seen || DeliveryState.DELIVERED in seen, "events: $seen")

                for (i in 0 until 5) {
                    bob.sendText(alice.address(), "reply $i")
                    assertEquals("reply $i", alice.nextMessage().second.text)
                    alice.sendText(bob.address(), "back $i")
                    assertEquals("back $i", bob.nextMessage().second.text)
                }
                alice.flush(WAIT)
                assertEquals(0uL, alice.pendingOutgoing())

                alice.safetyNumber(bob.address()).use { a ->
                    bob.safetyNumber(alice.address()).use { b ->
                        assertEquals(a.digits(), b.digits())
                        assertEquals(60, a.digits().length)
                    }
                }
                assertFalse(alice.isVerified(bob.address()))
                alice.markVerified(bob.address())
                assertTrue(alice.isVerified(bob.address()))
                alice.shutdown()
                bob.shutdown()
            }
        }
    }

    @Test
    fun `a multi-MiB attachment arrives intact`(@TempDir dir: Path) = runBlocking {
        newUser(dir, "alice").use { alice ->
            newUser(dir, "bob").use { bob ->
                val content = ByteArray(3 * 1024 * 1024 + 12345).also { SecureRandom().nextBytes(it) }
                val src = dir.resolve("holiday.bin").also { Files.write(it, content) }
                val id = alice.sendFile(bob.address(), "see attached", src.toString())
                val (from, m) = bob.nextMessage()
                assertArrayEquals(id, m.id)
                assertEquals("see attached", m.text)
                assertEquals(1, m.attachments.size)
                m.attachments[0].use { att ->
                    assertEquals("holiday.bin", att.fileName())
                    assertEquals(content.size.toULong(), att.size())
                    assertEquals(32, att.blobId().size)
                    val dest = dir.resolve("downloaded.bin")
                    assertEquals(content.size.toULong(), bob.downloadAttachment(from, att, dest.toString()))
                    assertArrayEquals(content, Files.readAllBytes(dest))
                }
                alice.shutdown()
                bob.shutdown()
            }
        }
    }

    /** Hands events to the test thread; throws on the first `throwFirst` calls. */
    class Collecting(private val throwFirst: Int = 0) : EventListener {
        val events = LinkedBlockingQueue<Event>()
        val threads = LinkedBlockingQueue<String>()
        private val calls = AtomicInteger()
        override fun onEvent(event: Event) {
            threads.add(Thread.currentThread().name)
            events.add(event)
            if (calls.incrementAndGet() <= throwFirst) throw IllegalStateException("not ready yet")
        }

        fun nextMessage(): Pair<Event, ReceivedMessage> {
            while (true) {
                val e = events.poll(WAIT_MS, TimeUnit.MILLISECONDS) ?: error("no event in time")
                val k = e.kind
                if (k is EventKind.Message) return e to k.message
                if (k is EventKind.MessageRequest) return e to k.message
            }
        }
    }

    @Test
    fun `a stranger's message is a request until accepted, and a blocked user is dropped`(@TempDir dir: Path) = runBlocking {
        newUser(dir, "alice").use { alice ->
            newUser(dir, "bob").use { bob ->
                alice.sendText(bob.address(), "hello, stranger")
                val request = withTimeout(WAIT_MS) {
                    while (true) {
                        val e = bob.nextEvent()
                        bob.ackEvent(e.seq)
                        val k = e.kind
                        if (k is EventKind.MessageRequest) return@withTimeout e to k.message
                    }
                    @Suppress("UNREACHABLE_CODE")
                    error("unreachable")
                }
                assertEquals("hello, stranger", request.second.text)
                assertEquals(alice.address(), request.first.peer)
                // Nothing was sent back until Bob accepts.
                assertTrue(alice.delivery(request.second.id).all { it.state == DeliveryState.SENT })
                bob.acceptRequest(alice.address())
                alice.awaitState(request.second.id, DeliveryState.DELIVERED)
                alice.sendText(bob.address(), "now a contact")
                assertEquals("now a contact", bob.nextMessage().second.text)
                bob.block(alice.address())
                assertThrows<SottoException.NotAccepted> { bob.sendText(alice.address(), "x") }
                alice.shutdown()
                bob.shutdown()
            }
        }
    }

    @Test
    fun `a listener gets events and they are acked only after it returns`(@TempDir dir: Path) = runBlocking {
        newUser(dir, "alice").use { alice ->
            newUser(dir, "bob").use { bob ->
                // Nothing from Alice yet: let Bob's queue settle first.
                val listener = Collecting(throwFirst = 1)
                bob.subscribe(listener).use { sub ->
                    assertTrue(sub.isActive())
                    // One consumer at a time.
                    assertThrows<SottoException.Busy> { runBlocking { bob.nextEvent() } }
                    assertThrows<SottoException.Busy> { bob.subscribe(Collecting()) }

                    alice.sendText(bob.address(), "first")
                    // The first callback threw: the same event comes again.
                    val (e1, m1) = listener.nextMessage()
                    val (e2, m2) = listener.nextMessage()
                    assertEquals("first", m1.text)
                    assertEquals(e1.seq, e2.seq)
                    assertArrayEquals(m1.id, m2.id)
                    assertEquals(1uL, sub.listenerFailures())
                    alice.sendText(bob.address(), "second")
                    assertEquals("second", listener.nextMessage().second.text)
                    // Called on Rust's threads (attached to the JVM by JNA), not the caller's.
                    val me = Thread.currentThread().name
                    assertTrue(listener.threads.none { it == me }, "${listener.threads}")
                    withTimeout(WAIT_MS) { while (sub.delivered() < 2uL) delay(10) }
                }
                // Closing the handle ended the subscription and freed the queue;
                // both messages were acknowledged.
                withTimeout(WAIT_MS) {
                    while (true) {
                        val e = bob.tryNextEvent() ?: break
                        assertFalse(
                            e.kind is EventKind.Message || e.kind is EventKind.MessageRequest,
                            "acked message came again: $e",
                        )
                        bob.ackEvent(e.seq)
                    }
                }
                alice.sendText(bob.address(), "third")
                assertEquals("third", bob.nextMessage().second.text)
                alice.shutdown()
                bob.shutdown()
            }
        }
    }

    @Test
    fun `a cancelled suspend call drops the Rust future and frees the queue`(@TempDir dir: Path) = runBlocking {
        newUser(dir, "alice").use { alice ->
            newUser(dir, "bob").use { bob ->
                while (true) bob.tryNextEvent()?.let { bob.ackEvent(it.seq) } ?: break
                assertNull(withTimeoutOrNull(300) { bob.nextEvent() })
                // Not Busy: the cancelled nextEvent() released the queue.
                alice.sendText(bob.address(), "after cancel")
                assertEquals("after cancel", bob.nextMessage().second.text)
                alice.shutdown()
                bob.shutdown()
            }
        }
    }

    @Test
    fun `a user reopens from disk and a wrong key or address is a typed exception`(@TempDir dir: Path) = runBlocking {
        val key = randomKey()
        val db = dir.resolve("carol.db").toString()
        val address = SottoClient.create(db, key, relay.address).use { carol ->
            assertThrows<SottoException.InvalidAddress> { carol.sendText("not an address", "x") }
            assertThrows<SottoException.InvalidAddress> { carol.sendText("ab@127.0.0.1:1/00", "x") }
            assertThrows<SottoException.InvalidInput> { carol.delivery(ByteArray(3)) }
            val addr = carol.address()
            carol.shutdown()
            assertThrows<SottoException.Closed> { carol.address().let { carol.sendText(it, "x") } }
            carol.shutdown() // idempotent
            addr
        }
        // A copy of the database as a backup would hold it.
        val backup = dir.resolve("carol-backup.db")
        java.nio.file.Files.copy(java.nio.file.Paths.get(db), backup)
        val generation = SottoClient.open(db, key).use { again ->
            assertEquals(address, again.address())
            assertTrue(again.isPrimary())
            again.shutdown()
            again.storeGeneration()
        }
        // The backup put back: refused, because the app kept the generation.
        java.nio.file.Files.copy(backup, java.nio.file.Paths.get(db), java.nio.file.StandardCopyOption.REPLACE_EXISTING)
        for (suffix in listOf("-wal", "-shm")) java.nio.file.Files.deleteIfExists(java.nio.file.Paths.get(db + suffix))
        val rolledBack = assertThrows<SottoException.StoreRolledBack> {
            runBlocking { SottoClient.openChecked(db, key, generation) }
        }
        assertEquals(generation, rolledBack.expected)
        assertThrows<SottoException.CorruptRecord> { runBlocking { SottoClient.open(db, randomKey()) } }
        assertThrows<SottoException.InvalidInput> { runBlocking { SottoClient.open(db, ByteArray(5)) } }
        assertThrows<SottoException.NoIdentity> {
            runBlocking { SottoClient.open(dir.resolve("empty.db").toString(), randomKey()) }
        }
        assertThrows<SottoException.InvalidAddress> {
            runBlocking { SottoClient.create(dir.resolve("d.db").toString(), randomKey(), "localhost") }
        }
        // The real relay's host and port with another certificate pin: refused.
        val wrongPin = relay.address.substringBefore("/") + "/" + "00".repeat(32)
        val refused = assertThrows<SottoException.Relay> {
            runBlocking { SottoClient.create(dir.resolve("e.db").toString(), randomKey(), wrongPin) }
        }
        assertNull(refused.code, "a connection failure carries no relay error code")
        Unit
    }

    @Test
    fun `a second device is linked with matching digits and receives too`(@TempDir dir: Path) = runBlocking {
        newUser(dir, "alice").use { alice ->
            newUser(dir, "bob").use { bob ->
                Linking.start(dir.resolve("alice2.db").toString(), randomKey(), relay.address).use { linking ->
                    assertTrue(linking.code().startsWith("link:"))
                    alice.linkDevice(linking.code()).use { pending ->
                        assertNull(pending.digits())
                        val digits = linking.waitOffer(WAIT)
                        assertEquals(6, digits.length)
                        assertEquals(pending.waitDigits(WAIT), digits)
                        assertEquals(digits, pending.digits())
                        assertEquals(2u, alice.confirmLink(pending))
                        assertThrows<SottoException.Closed> { runBlocking { alice.confirmLink(pending) } }
                    }
                    linking.finish(WAIT).use { alice2 ->
                        assertEquals(alice.address(), alice2.address())
                        assertEquals(2u, alice2.deviceId())
                        // Only the primary holds the account key.
                        assertFalse(alice2.isPrimary())
                        assertThrows<SottoException.NotPrimary> { runBlocking { alice2.unlinkDevice(1u) } }
                        assertEquals(listOf(1u, 2u), alice.devices().sorted())
                        bob.sendText(alice.address(), "to both of you")
                        assertEquals("to both of you", alice.nextMessage().second.text)
                        assertEquals("to both of you", alice2.nextMessage().second.text)
                        alice2.shutdown()
                    }
                }
                assertThrows<SottoException.InvalidAddress> { runBlocking { alice.linkDevice("link:zz") } }
                alice.shutdown()
                bob.shutdown()
            }
        }
    }
}
