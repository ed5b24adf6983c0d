// Two parties in one JVM exchange messages through sotto-core via the
// bindings: prekey bundles, PQXDH session setup, the Double Ratchet, safety
// numbers and typed exceptions for garbage: the low-level crypto surface
// for apps that bring their own transport (ClientTest covers SottoClient).
package dev.sotto

import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path

val ALICE = PeerAddress("alice".toByteArray(), 1u)
val BOB = PeerAddress("bob".toByteArray(), 7u)

/** Bob's bundle as a relay would serve it: signed bundle plus one-time keys. */
fun bundleOf(device: Device): PrekeyBundle {
    val oneTime = device.generateOneTimePrekeys(1u, 1u)
    return PrekeyBundle(device.signedBundle(), oneTime.ec[0].bytes, oneTime.kem[0].bytes)
}

class SessionTest {
    @Test
    fun `two devices set up a session and talk both ways`() {
        Device.createInMemory(1u).use { alice ->
            Device.createInMemory(7u).use { bob ->
                bundleOf(bob).use { bundle ->
                    assertArrayEquals(bob.identityKey(), bundle.identityKey())
                    assertEquals(7u, bundle.deviceId())
                    alice.processBundle(BOB, bundle)
                }
                assertTrue(alice.hasSession(BOB))
                assertFalse(bob.hasSession(ALICE))

                val hello = alice.encrypt(BOB, "hello Bob".toByteArray())
                assertEquals("hello Bob", String(bob.decrypt(ALICE, hello)))
                assertTrue(bob.hasSession(ALICE))
                for (i in 0 until 20) {
                    val reply = bob.encrypt(ALICE, "reply $i".toByteArray())
                    assertEquals("reply $i", String(alice.decrypt(BOB, reply)))
                    val back = alice.encrypt(BOB, "back $i".toByteArray())
                    assertEquals("back $i", String(bob.decrypt(ALICE, back)))
                }
                // A replay is a typed error, not a second delivery.
                val last = alice.encrypt(BOB, "last".toByteArray())
                assertEquals("last", String(bob.decrypt(ALICE, last)))
                val dup = assertThrows<SottoException.DuplicateMessage> { bob.decrypt(ALICE, last) }
                assertTrue(dup.message!!.contains("counter="), dup.message)
                // The session's first message replayed much later is refused too.
                assertThrows<SottoException> { bob.decrypt(ALICE, hello) }
            }
        }
    }

    @Test
    fun `garbage input raises typed exceptions and harms no session`() {
        Device.createInMemory(1u).use { alice ->
            Device.createInMemory(7u).use { bob ->
                assertThrows<SottoException.Malformed> { PrekeyBundle(byteArrayOf(1, 2, 3), null, null) }
                assertThrows<SottoException.NoSession> { alice.encrypt(BOB, byteArrayOf(1)) }
                bundleOf(bob).use { alice.processBundle(BOB, it) }
                val first = alice.encrypt(BOB, "first".toByteArray())
                // Flip one byte of the ciphertext: authentication must fail.
                val tampered = first.copyOf().also { it[it.size - 1] = (it[it.size - 1].toInt() xor 1).toByte() }
                assertThrows<SottoException> { bob.decrypt(ALICE, tampered) }
                assertThrows<SottoException> { bob.decrypt(ALICE, ByteArray(0)) }
                assertThrows<SottoException> { bob.decrypt(ALICE, ByteArray(5000) { 0x55 }) }
                assertThrows<SottoException.InvalidInput> { Device.createPersistent("/nonexistent", ByteArray(3), 1u) }
                // The genuine message still decrypts after all that.
                assertEquals("first", String(bob.decrypt(ALICE, first)))
            }
        }
    }

    @Test
    fun `safety numbers agree on both sides and detect a different key`() {
        Device.createInMemory(1u).use { alice ->
            Device.createInMemory(7u).use { bob ->
                Device.createInMemory(9u).use { mallory ->
                    val ab = SafetyNumber.of(alice.identityKey(), bob.identityKey())
                    val ba = SafetyNumber.of(bob.identityKey(), alice.identityKey())
                    val am = SafetyNumber.of(alice.identityKey(), mallory.identityKey())
                    assertEquals(60, ab.digits().length)
                    assertTrue(ab.digits().all { it.isDigit() })
                    assertEquals(ab.digits(), ba.digits())
                    assertTrue(ab.matchesScanned(ba.scannable()))
                    assertFalse(ab.matchesScanned(am.scannable()))
                    assertThrows<SottoException> { SafetyNumber.of(byteArrayOf(1), bob.identityKey()) }
                    listOf(ab, ba, am).forEach { it.close() }

                    // The device's own view after a session: trusted on first use.
                    bundleOf(bob).use { alice.processBundle(BOB, it) }
                    assertEquals(Verification.UNVERIFIED, alice.verification(BOB))
                    alice.safetyNumber(BOB).use {
                        assertEquals(SafetyNumber.of(alice.identityKey(), bob.identityKey()).digits(), it.digits())
                    }
                    alice.markVerified(BOB, bob.identityKey())
                    assertEquals(Verification.VERIFIED, alice.verification(BOB))
                    assertNull(alice.verification(PeerAddress("carol".toByteArray(), 1u)))
                    val changed = assertThrows<SottoException.IdentityChanged> {
                        alice.markVerified(BOB, mallory.identityKey())
                    }
                    assertArrayEquals(mallory.identityKey(), changed.newIdentity)
                }
            }
        }
    }

    @Test
    fun `a persistent device keeps its identity and sessions across reopen`(@TempDir dir: Path) {
        val path = dir.resolve("alice.db").toString()
        val key = ByteArray(32) { it.toByte() }
        var identity = ByteArray(0)
        Device.createInMemory(7u).use { bob ->
            Device.createPersistent(path, key, 1u).use { alice ->
                identity = alice.identityKey()
                bundleOf(bob).use { alice.processBundle(BOB, it) }
                assertEquals("one", String(bob.decrypt(ALICE, alice.encrypt(BOB, "one".toByteArray()))))
            }
            Device.openPersistent(path, key).use { alice ->
                assertArrayEquals(identity, alice.identityKey())
                assertEquals(1u, alice.deviceId())
                assertEquals("two", String(bob.decrypt(ALICE, alice.encrypt(BOB, "two".toByteArray()))))
            }
            assertThrows<SottoException> { Device.openPersistent(path, ByteArray(32) { 7 }) }
        }
    }
}
