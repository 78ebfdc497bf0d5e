//! `chat-client`: the async Rust client for chatd, for native apps.
//!
//! It connects over TCP (`tcp://host:port`), TLS (`tls://`), QUIC
//! (`quic://`) or WebSocket (`ws://host:port/ws`, `wss://`), says Hello,
//! and offers the chat/1 requests (`spec/`) as methods of a cheaply
//! cloneable [`Client`].
//! What it adds on top of the protocol:
//!
//! - **Idempotent sends.** [`Client::send`] gives every message a random
//!   `client_msg_id` and re-sends the same frame across reconnects and on
//!   retryable refusals, so each message is stored exactly once.
//! - **An ordered, duplicate-free event stream.** [`Events`] yields each
//!   message once per `(conversation, seq)`, in seq order per conversation,
//!   whether it was pushed live, came with a Sync or Resume, or was fetched
//!   to fill a gap (a push ahead of the cursor holds later messages until
//!   the gap is fetched with GetHistory).
//! - **Reconnect and resume.** When the connection drops, the client
//!   reconnects with jittered exponential backoff, resumes with its session
//!   token and cursors, queues what was missed, and re-sends the requests
//!   that were in flight and are safe to repeat.
//! - **Every transport, one API.** The URL's scheme picks TCP, TLS, QUIC
//!   or WebSocket; certificates are verified (webpki roots plus
//!   [`ClientOptions::trusted_certs_pem`]). On QUIC, typing indicators are
//!   sent and typing and presence events received as datagrams when the
//!   server supports them.
//! - **Heartbeats.** It answers the server's Pings and pings the server
//!   every `Welcome.heartbeat_interval_ms`, dropping a connection whose Pong
//!   does not come back.
//!
//! What it is not: a local message store (persist messages and
//! [`Client::cursors`] in the app, restore them with [`Client::set_cursor`]
//! before [`Client::resume`]); or a synchronous API (it needs a tokio runtime, current-thread or
//! multi-thread, and spawns its tasks with `tokio::spawn`).
//!
//! Which messages a conversation starts from: a conversation the client
//! created, or one reported by Sync or Resume (the server reports
//! conversations without a cursor from seq 1), is delivered from its
//! beginning; one the client first hears of through a push (the user was
//! added to a group) starts at that push. See [`cursors`].
//!
//! Every queue is bounded: the event queue by
//! [`ClientOptions::event_buffer`] (default 4096), frames to the server at
//! 1024, server pushes not yet processed at 1024, out-of-order messages
//! held by [`ClientOptions::max_held_per_conversation`] (default 10,000).
//!
//! Modules: [`client`] (the API), [`events`] (the event stream),
//! [`cursors`] (sans-IO ordering and deduplication), [`options`], [`error`],
//! [`url`] (server addresses). Internal: `connection` (socket and frame
//! I/O tasks), `inner` (shared state, request routing), `delivery` (ordered
//! emission, sync, gap filling), `supervisor` (heartbeat, reconnect,
//! resume), `backoff`.
//!
//! # Example
//!
//! ```no_run
//! use chat_client::pb::{self, client_frame::Body as C, server_frame::Body as S};
//! use chat_client::{Client, ClientOptions, ConversationId, Event, UserId};
//!
//! # async fn run() -> Result<(), chat_client::Error> {
//! let (client, mut events) =
//!     Client::connect("tcp://127.0.0.1:7400", ClientOptions::default()).await?;
//! client.login("alice", "correct horse battery").await?;
//! // The app stores this token and `client.cursors()` to resume later.
//! let _token = client.session_token();
//!
//! // Read events in a task of their own, continuously.
//! let reader = tokio::spawn(async move {
//!     while let Some(event) = events.next().await {
//!         match event {
//!             Event::Message(m) => println!("#{} {}: {}", m.conversation_id, m.seq, m.text),
//!             Event::Disconnected { reason } => eprintln!("offline: {reason}"),
//!             Event::Reconnected => eprintln!("back online"),
//!             _ => {}
//!         }
//!     }
//! });
//!
//! // Requests without a dedicated method go through `request`.
//! let S::Profile(bob) = client
//!     .request(C::GetProfile(pb::GetProfile { user_id: 0, username: "bob".into() }))
//!     .await?
//! else {
//!     return Ok(());
//! };
//! let chat = client.create_direct(UserId(bob.user_id)).await?;
//! let ack = client
//!     .send_text(ConversationId(chat.conversation_id), "hello")
//!     .await?;
//! println!("stored as seq {}", ack.seq);
//!
//! client.close().await;
//! let _ = reader.await;
//! # Ok(())
//! # }
//! ```

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![warn(missing_docs)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

mod backoff;
pub mod client;
mod connection;
pub mod cursors;
mod delivery;
pub mod error;
pub mod events;
mod inner;
pub mod options;
mod supervisor;
mod transport;
pub mod url;

pub use chat_protocol::pb;
pub use chat_protocol::{ConversationId, ErrorCode, MessageId, UserId};
pub use client::Client;
pub use error::{Error, Result};
pub use events::{Event, Events};
pub use options::ClientOptions;

/// Locks a mutex that is only held for plain field updates, never across an
/// await: a panic while holding it cannot leave the value inconsistent, so
/// a poisoned lock is still usable.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}

    #[test]
    fn handles_are_send_and_sync() {
        send_sync::<Client>();
        send_sync::<Events>();
        send_sync::<Error>();
    }

    /// Compile-time check that every public future can be `tokio::spawn`ed
    /// on a multi-thread runtime.
    #[allow(dead_code, unreachable_code, clippy::diverging_sub_expression)]
    fn futures_are_send(c: Client, mut e: Events) {
        let conv = ConversationId(1);
        send(&Client::connect("", ClientOptions::default()));
        send(&c.register("", "", ""));
        send(&c.login("", ""));
        send(&c.resume(""));
        send(&c.logout(false));
        send(&c.create_group("", &[]));
        send(&c.send_text(conv, ""));
        send(&c.history(conv, 0, None, 0));
        send(&c.sync());
        send(&c.request(pb::client_frame::Body::Ping(pb::Ping::default())));
        send(&c.typing(conv, true));
        send(&c.cursors());
        send(&c.close());
        send(&e.next());
    }
}
