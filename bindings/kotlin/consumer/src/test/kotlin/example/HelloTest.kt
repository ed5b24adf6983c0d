// The README's example run by an app that depends on Sotto by coordinate
// only: the native library is loaded from the jar (no jna.library.path),
// and two users talk through a real relay.
package example

import dev.sotto.SottoClient
import kotlinx.coroutines.async
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path
import java.security.SecureRandom

class HelloTest {
    private fun key() = ByteArray(32).also { SecureRandom().nextBytes(it) }

    @Test
    fun `two users say hello through a relay with nothing but the coordinate`(@TempDir dir: Path) = runBlocking {
        assertNull(System.getProperty("jna.library.path"), "the library must come from the jar")
        val relay = System.getProperty("sotto.relay.address")
        require(!relay.isNullOrBlank()) { "set -Dsotto.relay.address (scripts/test-bindings does)" }
        SottoClient.create(dir.resolve("alice.db").toString(), key(), relay).use { alice ->
            SottoClient.create(dir.resolve("bob.db").toString(), key(), relay).use { bob ->
                val bobGot = async { helloAndWait(bob, alice.address(), "hi Alice") }
                val aliceGot = helloAndWait(alice, bob.address(), "hi Bob")
                assertEquals(bob.address() to "hi Alice", aliceGot)
                assertEquals(alice.address() to "hi Bob", bobGot.await())
                alice.shutdown()
                bob.shutdown()
            }
        }
    }
}
