// A console chat over Sotto's Kotlin bindings: creates (or reopens) a user
// in a data directory, prints its address, sends what is typed on stdin and
// prints what arrives. It shows the whole app-side lifecycle: SottoClient
// create/open, a listener whose events are handled on the app's own
// coroutine (the callback only hands them over), read receipts, attachment
// download, flush and shutdown.
//
//   scripts/kotlin-chat <data-dir> <relay-address>
//
// Commands: /to <address>   choose the recipient of the next lines
//           /file <path>    send a file to the current recipient
//           /safety         print the safety number with the recipient
//           /group <name> <address>...   create a group and talk in it
//           /groups         list groups; /in <n> talks in group n
//           /join <n>       accept the invitation to group n and talk in it
//           /quit           (or end of input) flush and exit
//           anything else   a text message to the current recipient or group
package dev.sotto.chat

import dev.sotto.Event
import dev.sotto.EventKind
import dev.sotto.EventListener
import dev.sotto.SottoClient
import dev.sotto.SottoException
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.coroutineScope
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import java.nio.file.Files
import java.nio.file.Path
import java.nio.file.Paths
import java.nio.file.attribute.PosixFilePermissions
import java.security.SecureRandom
import kotlin.system.exitProcess

private fun hex(b: ByteArray) = b.joinToString("") { "%02x".format(it) }

/** `abcd1234…` for an address, enough to tell contacts apart on a console. */
private fun short(address: String?) = address?.take(8)?.plus("…") ?: "?"

/**
 * The 32-byte storage key. A real app keeps it in the platform keystore
 * (Android Keystore, iOS Keychain); this demo keeps it next to the database,
 * readable only by its owner.
 */
private fun storageKey(dir: Path): ByteArray {
    val file = dir.resolve("storage.key")
    if (Files.exists(file)) return Files.readAllBytes(file)
    val key = ByteArray(32).also { SecureRandom().nextBytes(it) }
    Files.createFile(file, PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")))
    Files.write(file, key)
    return key
}

fun main(args: Array<String>) {
    if (args.size != 2) {
        System.err.println("usage: kotlin-chat <data-dir> <relay-address host:port/fingerprint>")
        exitProcess(2)
    }
    val code = try {
        runBlocking { chat(Paths.get(args[0]), args[1]) }
        0
    } catch (e: SottoException) {
        System.err.println("error: ${e.message}")
        1
    }
    // Rust worker threads are not JVM threads; nothing else keeps us alive.
    exitProcess(code)
}

private suspend fun chat(dir: Path, relay: String) {
    Files.createDirectories(dir)
    val db = dir.resolve("client.db")
    val key = storageKey(dir)
    val client = if (Files.exists(db)) {
        SottoClient.open(db.toString(), key)
    } else {
        SottoClient.create(db.toString(), key, relay)
    }
    client.use { c ->
        println("address: ${c.address()}")
        System.out.flush()
        // The callback runs on a Rust thread and must not block: it only
        // hands the event to this coroutine. (Handing over before handling
        // means an event can be lost if the process dies right then; an app
        // that must never lose one handles it inside the callback or uses
        // nextEvent()/ackEvent() itself.)
        val inbox = Channel<Event>(Channel.UNLIMITED)
        val listener = object : EventListener {
            override fun onEvent(event: Event) {
                inbox.trySend(event)
            }
        }
        c.subscribe(listener).use {
            coroutineScope {
                val printer = launch(Dispatchers.Default) { for (e in inbox) show(c, dir, e) }
                readCommands(c)
                try {
                    c.flush(java.time.Duration.ofSeconds(10))
                } catch (e: SottoException.Timeout) {
                    println("some messages are still queued; they go out next time")
                }
                inbox.close()
                printer.join()
            }
        }
        c.shutdown()
    }
}

/** Reads stdin until /quit or end of input. */
private suspend fun readCommands(c: SottoClient) {
    var to: String? = null
    var group: ByteArray? = null
    while (true) {
        val line = withContext(Dispatchers.IO) { readlnOrNull() }?.trim() ?: return
        try {
            when {
                line.isEmpty() -> {}
                line == "/quit" -> return
                line.startsWith("/to ") -> {
                    to = line.removePrefix("/to ").trim()
                    group = null
                    println("talking to ${short(to)}")
                }
                line.startsWith("/group ") -> {
                    val words = line.removePrefix("/group ").trim().split(Regex("\\s+"))
                    group = c.createGroup(words.first(), words.drop(1))
                    println("group ${words.first()} created; talking in it")
                }
                line == "/groups" -> c.groups().forEachIndexed { i, g ->
                    println("${i + 1} ${g.name} (${g.members.size} members, ${g.status.name.lowercase()})")
                }
                line.startsWith("/in ") || line.startsWith("/join ") -> {
                    val n = line.substringAfter(' ').trim().toIntOrNull()
                    val g = n?.let { c.groups().getOrNull(it - 1) }
                    if (g == null) {
                        println("no such group: /groups")
                    } else {
                        if (line.startsWith("/join ")) c.acceptGroup(g.id)
                        group = g.id
                        println("talking in ${g.name}")
                    }
                }
                group != null && !line.startsWith("/") ->
                    println("sent ${hex(c.sendGroupText(group!!, line)).take(8)} to the group")
                to == null -> println("first choose a recipient: /to <address>")
                line == "/safety" -> c.safetyNumber(to).use { println("safety number: ${it.digits().chunked(5).joinToString(" ")}") }
                line.startsWith("/file ") -> {
                    val id = c.sendFile(to, "", line.removePrefix("/file ").trim())
                    println("sent file ${hex(id).take(8)}")
                }
                line.startsWith("/") -> println("unknown command: $line")
                else -> println("sent ${hex(c.sendText(to, line)).take(8)}")
            }
        } catch (e: SottoException) {
            println("error: ${e.message}")
        }
        System.out.flush()
    }
}

/** Prints one event; marks messages read and downloads their attachments. */
private suspend fun show(c: SottoClient, dir: Path, e: Event) {
    // A group's messages and changes name the group before the sender.
    val from = e.groupId?.let { g -> (c.group(g)?.name ?: hex(g).take(8)) + "/" + short(e.peer) } ?: short(e.peer)
    when (val k = e.kind) {
        is EventKind.Message -> {
            val m = k.message
            if (m.text.isNotEmpty()) println("[$from] ${m.text}")
            for (a in m.attachments) {
                // The sender chose the name: keep only its last component.
                val name = Paths.get(a.fileName()).fileName?.toString() ?: "attachment"
                val dest = dir.resolve("downloads").also { Files.createDirectories(it) }.resolve(name)
                try {
                    val size = c.downloadAttachment(e.peer!!, a, dest.toString())
                    println("[$from] file $name ($size bytes) saved to $dest")
                } catch (x: SottoException) {
                    println("[$from] file $name could not be downloaded: ${x.message}")
                }
                a.close()
            }
            c.markRead(e.peer!!, listOf(m.id))
        }
        // A stranger's message: nothing was sent back and their relay was not
        // contacted. Writing to them (/to, then a line) accepts them.
        is EventKind.MessageRequest -> println("[request from $from] ${k.message.text}  (/to ${e.peer} then reply to accept)")
        is EventKind.Delivery -> println("(${hex(k.messageId).take(8)} ${k.state.name.lowercase()} on device ${e.peerDevice})")
        is EventKind.Receipt -> {}
        is EventKind.SentFromOtherDevice -> println("[me → ${short(k.to)}] ${k.message.text}")
        is EventKind.DecryptFailed -> println("[$from] a message could not be decrypted: ${k.reason}")
        is EventKind.IdentityChanged -> println("[$from] SAFETY NUMBER CHANGED: verify before trusting")
        is EventKind.SendFailed -> println("(${hex(k.messageId).take(8)} not sent: ${k.reason})")
        is EventKind.GroupChanged -> {
            println("[$from] group changed (version ${k.version}): ${k.changes.size} change(s)")
            if (k.effect == dev.sotto.GroupEffect.INVITATION) println("    an invitation: /groups, then /join <n>")
            if (k.effect == dev.sotto.GroupEffect.REMOVED_YOU) println("    you are no longer a member")
        }
        else -> println("[$from] $k")
    }
    System.out.flush()
}
