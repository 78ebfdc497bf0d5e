//! The event stream: what the server told the app, in a bounded queue.

use std::sync::{Arc, Mutex};

use chat_protocol::{ConversationId, pb};
use tokio::sync::{mpsc, watch};

use crate::cursors::Cursors;

/// Something the server told the app, or a change of the connection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
// Messages are by far the most frequent event; boxing them would add an
// allocation to every one to shrink the rare others.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// A message (user or SYSTEM), at most once per (conversation, seq) and
    /// in seq order per conversation, whether it came live, from Sync or
    /// Resume, or from a gap fetch. The sender's own messages arrive here
    /// too, like on its other devices.
    Message(pb::Message),
    /// A message was edited: the message as stored now, with its latest
    /// text and `edited_at_ms`. It keeps its seq, so it is not a new
    /// `Message`; replace the copy held for (conversation, seq) if this
    /// one's `edited_at_ms` is larger.
    MessageEdited(pb::Message),
    /// A member added or removed a reaction; the event carries the
    /// message's reactions after the change (`mine` false in each).
    Reaction(pb::ReactionEvent),
    /// A member's delivered or read cursor moved.
    Receipt(pb::ReceiptEvent),
    /// Someone is typing or stopped. Ephemeral: dropped if the queue is full.
    Typing(pb::TypingEvent),
    /// A watched user's presence changed. Ephemeral: dropped if the queue is
    /// full.
    Presence(pb::PresenceEvent),
    /// A conversation's metadata changed. Servers of protocol version 1 do
    /// not send this (changes arrive as SYSTEM messages); it is passed on if
    /// one does.
    ConversationChanged(pb::ConversationEvent),
    /// A Sync or Resume reported that the user is no longer a member; the
    /// client stopped tracking it and the app should drop it.
    ConversationRemoved(ConversationId),
    /// The server announced it is going away; `Disconnected` follows and the
    /// client reconnects after the requested delay.
    GoAway(pb::GoAway),
    /// The connection dropped. If the client reconnects, `Reconnected`
    /// follows once the session is back; otherwise (reconnect disabled, or
    /// the session token was refused) this is the last event and the stream
    /// ends.
    Disconnected {
        /// Why, for logs.
        reason: String,
    },
    /// The connection is back and, if the client was logged in, the session
    /// resumed. Messages missed meanwhile were queued before this event
    /// (long gaps may still be being fetched); interrupted requests are
    /// being re-sent.
    Reconnected,
}

/// The app's side of the event stream, returned by
/// [`Client::connect`](crate::Client::connect).
///
/// The queue is bounded ([`ClientOptions::event_buffer`](crate::ClientOptions::event_buffer)).
/// Read it continuously, from a task of its own: while it is full the
/// client stops processing server pushes, and calls that deliver messages
/// ([`Client::sync`](crate::Client::sync), [`Client::resume`](crate::Client::resume))
/// wait for room. A connection whose pushes stay stuck behind a full queue
/// for two heartbeat intervals stops answering the heartbeat and is
/// replaced (reconnect and resume); nothing is lost, since messages are
/// fetched again from the cursors.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
    /// Taking a message out of the queue advances the delivered cursor.
    cursors: Arc<Mutex<Cursors>>,
}

impl Events {
    pub(crate) fn new(rx: mpsc::Receiver<Event>, cursors: Arc<Mutex<Cursors>>) -> Self {
        Self { rx, cursors }
    }

    /// The next event; `None` once the client is closed or finished and
    /// every queued event was taken. Cancel-safe.
    pub async fn next(&mut self) -> Option<Event> {
        let event = self.rx.recv().await;
        self.taken(event.as_ref());
        event
    }

    /// An event if one is ready, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        let event = self.rx.try_recv().ok();
        self.taken(event.as_ref());
        event
    }

    fn taken(&self, event: Option<&Event>) {
        if let Some(Event::Message(m)) = event {
            crate::lock(&self.cursors).delivered(m.conversation_id, m.seq);
        }
    }
}

/// The client's side of the event queue. Closing it ends the app's stream
/// once drained, even while `Client` handles are alive.
#[derive(Debug)]
pub(crate) struct EventSink {
    tx: Mutex<Option<mpsc::Sender<Event>>>,
    /// Set by `close`; wakes sends waiting for room, so that a client closed
    /// while its app stopped reading does not leave tasks behind.
    closed: watch::Sender<bool>,
}

impl EventSink {
    pub(crate) fn new(tx: mpsc::Sender<Event>) -> Self {
        Self {
            tx: Mutex::new(Some(tx)),
            closed: watch::Sender::new(false),
        }
    }

    fn sender(&self) -> Option<mpsc::Sender<Event>> {
        crate::lock(&self.tx).clone()
    }

    /// Queues an event, waiting for room. Returns false if nobody listens.
    pub(crate) async fn send(&self, event: Event) -> bool {
        let Some(tx) = self.sender() else {
            return false;
        };
        let mut closed = self.closed.subscribe();
        tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => false,
            sent = tx.send(event) => sent.is_ok(),
        }
    }

    /// Queues an event if there is room; ephemeral events are shed instead
    /// of waiting.
    pub(crate) fn try_send(&self, event: Event) {
        if let Some(tx) = self.sender() {
            if tx.try_send(event).is_err() {
                tracing::debug!("event queue full; ephemeral event dropped");
            }
        }
    }

    /// No more events: the stream ends after what is queued.
    pub(crate) fn close(&self) {
        crate::lock(&self.tx).take();
        self.closed.send_replace(true);
    }
}
