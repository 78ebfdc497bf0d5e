//! Events for the app: a listener interface it implements, and the handle
//! that stops the delivery.

use std::sync::Arc;

use chat_client::{Event, Events};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::types::{
    ConversationEvent, GoAway, Message, PresenceEvent, ReactionEvent, ReceiptEvent, TypingEvent,
};

/// Something the server told the app, or a change of the connection; the
/// meaning of each variant is that of `chat_client::Event`.
#[derive(Debug, Clone, uniffi::Enum)]
// Messages are by far the most frequent event; boxing them would add an
// allocation to every one to shrink the rare others (as in chat_client::Event).
#[allow(clippy::large_enum_variant)]
pub enum ChatEvent {
    /// A message, once per (conversation, seq), in seq order per
    /// conversation, live or caught up after a reconnect; the user's own
    /// messages too.
    Message {
        /// The message.
        message: Message,
    },
    /// A message was edited: the message as stored now, same seq, with its
    /// latest text and `edited_at_ms`. Replace the copy held for it.
    MessageEdited {
        /// The message.
        message: Message,
    },
    /// A member added or removed a reaction.
    Reaction {
        /// The change, with the message's reactions after it.
        reaction: ReactionEvent,
    },
    /// A member's delivered or read cursor moved.
    Receipt {
        /// The receipt.
        receipt: ReceiptEvent,
    },
    /// Someone is typing or stopped (may be dropped under load).
    Typing {
        /// The indicator.
        typing: TypingEvent,
    },
    /// A watched user's presence changed (may be dropped under load).
    Presence {
        /// The new presence.
        presence: PresenceEvent,
    },
    /// A conversation's metadata changed.
    ConversationChanged {
        /// The change.
        change: ConversationEvent,
    },
    /// The user is no longer a member; drop the conversation.
    ConversationRemoved {
        /// The conversation.
        conversation_id: u64,
    },
    /// The server is going away; `Disconnected` follows.
    GoAway {
        /// The announcement.
        go_away: GoAway,
    },
    /// The connection dropped; `Reconnected` follows unless the client
    /// stops (then `Ended` follows).
    Disconnected {
        /// Why, for logs.
        reason: String,
    },
    /// The connection is back and the session resumed; missed messages were
    /// delivered before this event.
    Reconnected,
    /// The client was closed or gave up: no more events.
    Ended,
}

impl ChatEvent {
    /// The foreign form of an event; `None` for kinds this library does not
    /// know yet.
    fn from_event(event: Event) -> Option<Self> {
        Some(match event {
            Event::Message(m) => ChatEvent::Message { message: m.into() },
            Event::MessageEdited(m) => ChatEvent::MessageEdited { message: m.into() },
            Event::Reaction(r) => ChatEvent::Reaction { reaction: r.into() },
            Event::Receipt(r) => ChatEvent::Receipt { receipt: r.into() },
            Event::Typing(t) => ChatEvent::Typing { typing: t.into() },
            Event::Presence(p) => ChatEvent::Presence { presence: p.into() },
            Event::ConversationChanged(c) => ChatEvent::ConversationChanged { change: c.into() },
            Event::ConversationRemoved(c) => ChatEvent::ConversationRemoved {
                conversation_id: c.0,
            },
            Event::GoAway(g) => ChatEvent::GoAway { go_away: g.into() },
            Event::Disconnected { reason } => ChatEvent::Disconnected { reason },
            Event::Reconnected => ChatEvent::Reconnected,
            _ => return None,
        })
    }
}

/// Implemented by the app to receive events.
///
/// Called on a thread of the library's runtime, one event at a time, in
/// order. Return quickly: while the callback runs, no further event is
/// taken, and a queue that stays full stalls the connection (the client
/// then replaces it; nothing is lost). Hand the event to the app's own
/// thread or queue (Android: a `Handler` or coroutine `Channel`; iOS: the
/// main actor) and return.
#[uniffi::export(callback_interface)]
pub trait EventListener: Send + Sync {
    /// One event.
    fn on_event(&self, event: ChatEvent);
}

/// Delivery of events to one listener. Cancelling (or dropping) the handle
/// stops the delivery; events that arrive meanwhile stay queued (within the
/// event buffer) for the next listener.
#[derive(uniffi::Object)]
pub struct ListenerHandle {
    task: JoinHandle<()>,
}

#[uniffi::export]
impl ListenerHandle {
    /// Stops calling the listener. Idempotent.
    pub fn cancel(&self) {
        self.task.abort();
    }

    /// Whether delivery has stopped: cancelled, or the stream ended.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts delivering `events` to `listener`. The stream is behind an async
/// lock: a second listener waits until the first one's handle is cancelled,
/// so each event goes to exactly one listener.
pub(crate) fn start(
    events: Arc<Mutex<Events>>,
    listener: Box<dyn EventListener>,
) -> crate::error::Result<ListenerHandle> {
    let task = crate::runtime::spawn(async move {
        let mut events = events.lock().await;
        while let Some(event) = events.next().await {
            if let Some(event) = ChatEvent::from_event(event) {
                listener.on_event(event);
            }
        }
        listener.on_event(ChatEvent::Ended);
    })?;
    Ok(ListenerHandle { task })
}
