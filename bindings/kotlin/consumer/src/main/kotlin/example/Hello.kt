// The README's Kotlin example, as an app would write it: register (or
// reopen) a user, send a friend a message, and wait for messages with a
// listener that hands each one over and returns at once.
package example

import dev.sotto.*
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.withTimeout

/** Says `text` to `friend`, then returns the first message that arrives (from anyone). */
suspend fun helloAndWait(me: SottoClient, friend: String, text: String): Pair<String, String> {
    me.sendText(friend, text) // durable now, sent when the relay is reachable
    val inbox = Channel<Pair<String, String>>(Channel.UNLIMITED)
    me.subscribe(object : EventListener {
        override fun onEvent(event: Event) { // a Rust thread: hand over, don't block
            when (val k = event.kind) {
                is EventKind.Message -> inbox.trySend(event.peer!! to k.message.text)
                is EventKind.MessageRequest -> {
                    me.acceptRequest(event.peer!!) // a stranger's first message: accept it
                    inbox.trySend(event.peer!! to k.message.text)
                }
                else -> {}
            }
        }
    }).use { return withTimeout(30_000) { inbox.receive() } }
}
