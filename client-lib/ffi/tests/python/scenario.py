"""Two users on a real chatd through the generated Python module.

Run by tests/python.rs with PYTHONPATH holding chat_client_ffi.py and the
library, and CHATD_URL the server's tcp:// address.
"""

import asyncio
import os

import chat_client_ffi as chat

URL = os.environ["CHATD_URL"]
WAIT = 10.0


class Inbox(chat.EventListener):
    """Hands events from the library's thread to the asyncio loop."""

    def __init__(self, loop):
        self.loop = loop
        self.queue = asyncio.Queue()

    def on_event(self, event):
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)

    async def next_where(self, wanted):
        """The next event for which wanted(event) holds; others are skipped."""
        while True:
            event = await asyncio.wait_for(self.queue.get(), WAIT)
            if wanted(event):
                return event

    async def message(self):
        event = await self.next_where(lambda e: e.is_message())
        return event.message


def options(device):
    o = chat.default_client_options()
    o.device_id = device
    o.platform = "python"
    o.request_timeout_ms = 5000
    return o


async def connected(device):
    client = await chat.connect(URL, options(device))
    inbox = Inbox(asyncio.get_running_loop())
    handle = client.set_listener(inbox)
    return client, inbox, handle


async def main():
    alice, alice_inbox, alice_handle = await connected("alice-phone")
    bob, bob_inbox, bob_handle = await connected("bob-phone")
    a = await alice.register("alice", "alice password", "Alice")
    b = await bob.register("bob", "bob password", "Bob")
    assert a.user_id != b.user_id
    assert alice.user_id() == a.user_id
    token = bob.session_token()
    assert token == b.session_token

    # A direct chat: the message reaches bob once, and the sender too.
    found = await alice.find_user("bob")
    assert found.user_id == b.user_id, found
    direct = await alice.create_direct(found.user_id)
    assert direct.kind == chat.ConversationKind.DIRECT
    conv = direct.conversation_id
    first = await alice.send_text(conv, "hello bob")
    assert first.seq >= 1 and not first.duplicate
    got = await bob_inbox.message()
    assert (got.conversation_id, got.seq, got.text) == (conv, first.seq, "hello bob"), got
    assert got.sender_id == a.user_id and got.kind == chat.MessageKind.USER
    own = await alice_inbox.message()
    assert own.seq == first.seq

    # History.
    page = await bob.history_latest(conv, 10)
    assert [m.text for m in page.messages if m.kind == chat.MessageKind.USER] == ["hello bob"]
    assert page.last_seq == first.seq

    # Bob goes away; alice writes twice; bob comes back on a new connection,
    # restores his cursor, resumes his session and gets exactly what he
    # missed, in order.
    cursor = await bob.cursor(conv)
    assert cursor == first.seq, cursor
    bob_handle.cancel()
    await bob.shutdown()
    missed = [await alice.send_text(conv, text) for text in ("while away 1", "while away 2")]
    bob, bob_inbox, bob_handle = await connected("bob-phone")
    await bob.set_cursor(conv, cursor)
    resumed = await bob.resume(token)
    assert resumed.session is not None and resumed.session.user_id == b.user_id
    caught_up = [await bob_inbox.message() for _ in missed]
    assert [(m.seq, m.text) for m in caught_up] == [(s.seq, t) for s, t in
                                                     zip(missed, ("while away 1", "while away 2"))]
    # Sync after resume has nothing new; a later message arrives live, once.
    await bob.sync()
    live = await alice.send_text(conv, "welcome back")
    got = await bob_inbox.message()
    assert (got.seq, got.text) == (live.seq, "welcome back"), got
    await bob.sync()
    assert await bob.cursor(conv) == live.seq
    assert all(not e.is_message() for e in drain(bob_inbox)), "a message was delivered twice"

    # Receipts: bob reads up to the newest; alice sees the event and counts.
    await bob.mark_read(conv, live.seq)
    receipt = (await alice_inbox.next_where(
        lambda e: e.is_receipt() and e.receipt.kind == chat.ReceiptKind.READ)).receipt
    assert (receipt.user_id, receipt.seq) == (b.user_id, live.seq), receipt
    counts = await alice.receipts(conv, live.seq)
    assert counts.read_count == 1, counts

    # A non-member's send is refused with the typed error.
    carol, _carol_inbox, carol_handle = await connected("carol-phone")
    await carol.register("carol", "carol password", "Carol")
    try:
        await carol.send_text(conv, "let me in")
    except chat.ClientError.Server as e:
        assert e.code == chat.ErrorCode.NOT_A_MEMBER, e
        assert e.wire_code == 300 and not e.retryable, e
    else:
        raise AssertionError("a non-member's send was accepted")

    # Closing ends each event stream.
    for client, inbox in ((alice, alice_inbox), (bob, bob_inbox)):
        await client.shutdown()
        await inbox.next_where(lambda e: e.is_ended())
    carol_handle.cancel()
    await carol.shutdown()
    alice_handle.cancel()
    # Before the interpreter exits: no library thread may still be inside a
    # Python callback when finalization starts.
    chat.shutdown_runtime(2000)
    print("python scenario passed")


def drain(inbox):
    events = []
    while not inbox.queue.empty():
        events.append(inbox.queue.get_nowait())
    return events


asyncio.run(main())
