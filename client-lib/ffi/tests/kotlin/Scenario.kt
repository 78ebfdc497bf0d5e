// Two users on a real chatd through the generated Kotlin bindings: the
// scenario of tests/python/scenario.py. Run by tests/kotlin.rs with the
// library on jna.library.path and CHATD_URL the server's tcp:// address.

import chatd.client.*
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import kotlinx.coroutines.runBlocking

const val WAIT_SECONDS = 10L

/** Hands events from the library's thread to the scenario. */
class Inbox : EventListener {
    val queue = LinkedBlockingQueue<ChatEvent>()

    override fun onEvent(event: ChatEvent) {
        queue.put(event)
    }

    /** The next event for which [wanted] holds; others are skipped. */
    fun nextWhere(wanted: (ChatEvent) -> Boolean): ChatEvent {
        while (true) {
            val event = queue.poll(WAIT_SECONDS, TimeUnit.SECONDS) ?: error("no event in time")
            if (wanted(event)) return event
        }
    }

    fun message(): Message = (nextWhere { it is ChatEvent.Message } as ChatEvent.Message).message
}

class User(val client: ChatClient, val inbox: Inbox, val handle: ListenerHandle)

suspend fun connected(url: String, device: String): User {
    val options = defaultClientOptions()
    options.deviceId = device
    options.platform = "jvm"
    options.requestTimeoutMs = 5000uL
    val client = connect(url, options)
    val inbox = Inbox()
    return User(client, inbox, client.setListener(inbox))
}

fun check(condition: Boolean, what: () -> String) {
    if (!condition) throw AssertionError(what())
}

fun main() = runBlocking {
    val url = System.getenv("CHATD_URL") ?: error("CHATD_URL is not set")
    val alice = connected(url, "alice-phone")
    var bob = connected(url, "bob-phone")
    val a = alice.client.register("alice", "alice password", "Alice")
    val b = bob.client.register("bob", "bob password", "Bob")
    check(a.userId != b.userId) { "same user ids" }
    val token = bob.client.sessionToken() ?: error("no session token")

    // A direct chat: the message reaches bob once, and the sender too.
    val found = alice.client.findUser("bob")
    check(found.userId == b.userId) { "found $found" }
    val direct = alice.client.createDirect(found.userId)
    check(direct.kind == ConversationKind.DIRECT) { "kind ${direct.kind}" }
    val conv = direct.conversationId
    val first = alice.client.sendText(conv, "hello bob")
    var got = bob.inbox.message()
    check(got.conversationId == conv && got.seq == first.seq && got.text == "hello bob") { "got $got" }
    check(got.senderId == a.userId && got.kind == MessageKind.USER) { "got $got" }
    check(alice.inbox.message().seq == first.seq) { "the sender's copy" }

    // History.
    val page = bob.client.historyLatest(conv, 10u)
    val texts = page.messages.filter { it.kind == MessageKind.USER }.map { it.text }
    check(texts == listOf("hello bob")) { "history $texts" }

    // Bob goes away and comes back on a new connection with his cursor and
    // session token; he gets exactly what he missed, in order.
    val cursor = bob.client.cursor(conv)
    check(cursor == first.seq) { "cursor $cursor" }
    bob.handle.cancel()
    bob.client.shutdown()
    val away = listOf("while away 1", "while away 2")
    val missed = away.map { alice.client.sendText(conv, it) }
    bob = connected(url, "bob-phone")
    bob.client.setCursor(conv, cursor)
    val resumed = bob.client.resume(token)
    check(resumed.session?.userId == b.userId) { "resumed $resumed" }
    val caughtUp = missed.map { bob.inbox.message() }
    check(caughtUp.map { it.seq to it.text } == missed.map { it.seq }.zip(away)) { "caught up $caughtUp" }
    bob.client.sync()
    val live = alice.client.sendText(conv, "welcome back")
    got = bob.inbox.message()
    check(got.seq == live.seq && got.text == "welcome back") { "live $got" }
    bob.client.sync()
    check(bob.client.cursor(conv) == live.seq) { "cursor after sync" }
    check(bob.inbox.queue.none { it is ChatEvent.Message }) { "a message was delivered twice" }

    // Receipts.
    bob.client.markRead(conv, live.seq)
    val receipt = (alice.inbox.nextWhere {
        it is ChatEvent.Receipt && it.receipt.kind == ReceiptKind.READ
    } as ChatEvent.Receipt).receipt
    check(receipt.userId == b.userId && receipt.seq == live.seq) { "receipt $receipt" }
    val counts = alice.client.receipts(conv, live.seq)
    check(counts.readCount == 1u) { "counts $counts" }

    // A non-member's send is refused with the typed error.
    val carol = connected(url, "carol-phone")
    carol.client.register("carol", "carol password", "Carol")
    try {
        carol.client.sendText(conv, "let me in")
        throw AssertionError("a non-member's send was accepted")
    } catch (e: ClientException.Server) {
        check(e.code == ErrorCode.NOT_A_MEMBER && e.wireCode == 300 && !e.retryable) { "error $e" }
    }

    // Closing ends each event stream.
    for (user in listOf(alice, bob)) {
        user.client.shutdown()
        user.inbox.nextWhere { it is ChatEvent.Ended }
        user.handle.cancel()
    }
    carol.handle.cancel()
    carol.client.shutdown()
    println("kotlin scenario passed")
}
