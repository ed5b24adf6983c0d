// Group chats through the bindings against a real sotto-relay process:
// three users in one JVM; Alice creates a group, Bob and Carol accept the
// invitation, everyone reads everyone's messages, Alice removes Carol, who
// reads nothing sent after and can no longer send; an avatar set by Alice
// downloaded by Carol; typed exceptions for a non-admin's change and a bad
// group id.
package dev.sotto

import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import kotlinx.coroutines.withTimeoutOrNull
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.assertThrows
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path

/** The next group change, acknowledging every event on the way. */
suspend fun SottoClient.nextGroupChange(): Pair<ByteArray, EventKind.GroupChanged> = withTimeout(WAIT_MS) {
    while (true) {
        val e = nextEvent()
        ackEvent(e.seq)
        when (val k = e.kind) {
            is EventKind.GroupChanged -> return@withTimeout e.groupId!! to k
            is EventKind.DecryptFailed -> error("decrypt failed: ${k.reason}")
            else -> {}
        }
    }
    @Suppress("UNREACHABLE_CODE")
    error("unreachable")
}

/** The next group message as (group id, sender, text). */
suspend fun SottoClient.nextGroupText(): Triple<ByteArray, String, String> = withTimeout(WAIT_MS) {
    while (true) {
        val e = nextEvent()
        ackEvent(e.seq)
        val k = e.kind
        if (k is EventKind.Message && e.groupId != null) return@withTimeout Triple(e.groupId!!, e.peer!!, k.message.text)
        if (k is EventKind.DecryptFailed) error("decrypt failed: ${k.reason}")
    }
    @Suppress("UNREACHABLE_CODE")
    error("unreachable")
}

class GroupTest : RelayTest() {

    @Test
    fun `three users chat in a group and a removed member reads nothing after`(@TempDir dir: Path) = runBlocking {
        newUser(dir, "alice").use { alice ->
            newUser(dir, "bob").use { bob ->
                newUser(dir, "carol").use { carol ->
                    val id = alice.createGroup("hiking", listOf(bob.address(), carol.address()))
                    assertEquals(32, id.size)
                    for (u in listOf(bob, carol)) {
                        val (gid, change) = u.nextGroupChange()
                        assertArrayEquals(id, gid)
                        assertEquals(GroupEffect.INVITATION, change.effect)
                        assertTrue(change.changes.contains(GroupChange.Renamed("hiking")))
                        assertEquals(GroupStatus.INVITATION, u.group(id)!!.status)
                        u.acceptGroup(id)
                    }
                    val info = alice.group(id)!!
                    assertEquals("hiking", info.name)
                    assertEquals(3, info.members.size)
                    assertEquals(listOf(alice.address()), info.members.filter { it.admin }.map { it.address })

                    val sent = alice.sendGroupText(id, "summit at noon")
                    for (u in listOf(bob, carol)) {
                        val (gid, from, text) = u.nextGroupText()
                        assertArrayEquals(id, gid)
                        assertEquals(alice.address(), from)
                        assertEquals("summit at noon", text)
                    }
                    // "Read by 1 of 2": per-user states from the members' receipts.
                    bob.markRead(alice.address(), listOf(sent))
                    withTimeout(WAIT_MS) {
                        while (true) {
                            val states = alice.deliveryByUser(sent).map { it.state }
                            if (states.size == 2 && states.count { it == DeliveryState.READ } == 1) break
                            kotlinx.coroutines.delay(20)
                        }
                    }
                    carol.sendGroupText(id, "bringing snacks")
                    for (u in listOf(alice, bob)) assertEquals("bringing snacks", u.nextGroupText().third)

                    // An avatar: an encrypted attachment on Alice's relay.
                    val image = ByteArray(10_000) { (it % 251).toByte() }
                    val imagePath = dir.resolve("avatar.png")
                    java.nio.file.Files.write(imagePath, image)
                    alice.setGroupAvatar(id, imagePath.toString())
                    for (u in listOf(bob, carol)) {
                        assertTrue(u.nextGroupChange().second.changes.contains(GroupChange.AvatarChanged))
                    }
                    assertEquals("avatar.png", carol.groupAvatar(id)!!.fileName())
                    val got = dir.resolve("carol-avatar.png")
                    assertEquals(image.size.toULong(), carol.downloadGroupAvatar(id, got.toString()))
                    assertArrayEquals(image, java.nio.file.Files.readAllBytes(got))

                    // Only admins change the group: a typed exception.
                    assertThrows<SottoException.NotGroupAdmin> { bob.renameGroup(id, "mine") }
                    assertThrows<SottoException.InvalidInput> { bob.sendGroupText(ByteArray(3), "x") }

                    alice.removeGroupMember(id, carol.address())
                    assertEquals(GroupEffect.APPLIED, bob.nextGroupChange().second.effect)
                    assertEquals(GroupEffect.REMOVED_YOU, carol.nextGroupChange().second.effect)
                    assertEquals(GroupStatus.LEFT, carol.group(id)!!.status)
                    assertThrows<SottoException.UnknownGroup> { carol.sendGroupText(id, "still here?") }

                    alice.sendGroupText(id, "after carol left")
                    assertEquals("after carol left", bob.nextGroupText().third)
                    val stray = withTimeoutOrNull(500) { carol.nextGroupText() }
                    assertNull(stray, "a removed member got a group message")
                    assertEquals(1, alice.groups().size)
                    alice.shutdown()
                    bob.shutdown()
                    carol.shutdown()
                }
            }
        }
    }
}
