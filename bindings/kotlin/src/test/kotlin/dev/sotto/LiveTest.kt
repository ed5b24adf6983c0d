// Presence and typing through the bindings against a real sotto-relay
// process: Alice watches Bob and sees him online, typing and stopping,
// then offline at once when his client shuts down; a pending
// nextLiveEvent() ends with Closed when her own client shuts down.
package dev.sotto

import kotlinx.coroutines.async
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path

class LiveTest : RelayTest() {

    private suspend fun SottoClient.nextLive(): LiveEvent = withTimeout(WAIT_MS) { nextLiveEvent() }

    @Test
    fun `a watched contact shows online, typing, then offline, and live events end with Closed`(@TempDir dir: Path) = runBlocking {
        newUser(dir, "alice").use { alice ->
            newUser(dir, "bob").use { bob ->
                // Sessions and delivery tokens both ways.
                alice.sendText(bob.address(), "hi")
                bob.nextMessage()
                bob.sendText(alice.address(), "hello")
                alice.nextMessage()
                alice.waitSynced(WAIT)
                bob.waitSynced(WAIT)

                // A stranger's address cannot be watched.
                assertThrows<SottoException.NotAccepted> {
                    alice.watchPresence(newUser(dir, "carol").use { it.address() })
                }

                alice.watchPresence(bob.address())
                assertEquals(LiveEvent.Presence(bob.address(), Presence.Online), alice.nextLive())
                assertEquals(Presence.Online, alice.presence(bob.address()))

                bob.setTyping(alice.address(), true)
                assertEquals(LiveEvent.Typing(bob.address(), true), alice.nextLive())
                assertTrue(alice.isTyping(bob.address()))
                bob.setTyping(alice.address(), false)
                assertEquals(LiveEvent.Typing(bob.address(), false), alice.nextLive())

                val before = System.currentTimeMillis()
                bob.shutdown()
                val offline = alice.nextLive()
                assertTrue(offline is LiveEvent.Presence, "$offline")
                val p = (offline as LiveEvent.Presence).presence
                assertTrue(p is Presence.Offline, "$p")
                assertTrue((p as Presence.Offline).lastSeenMs + 5_000uL >= before.toULong(), "$p")

                val pending = async { runCatching { alice.nextLiveEvent() } }
                alice.shutdown()
                val ended = withTimeout(WAIT_MS) { pending.await() }
                assertTrue(ended.exceptionOrNull() is SottoException.Closed, "$ended")
            }
        }
    }
}
