//! `chat-client`: the async Rust client for chatd, for native apps.
//!
//! It connects over TCP (`tcp://host:port`; TLS, QUIC and WebSocket URLs are
//! recognised and refused until those transports land), says Hello, and
//! then offers the chat/1 requests as methods. What it adds on top of the
//! protocol:
//!
//! - **Idempotent sends.** [`Client::send`] gives every message a random
//!   `client_msg_id` and retries it (same id) across reconnects and on
//!   retryable refusals, so each message is stored exactly once.
//! - **An ordered, duplicate-free event stream.** [`Events`] yields each
//!   message once per `(conversation, seq)`, in seq order per conversation.
//!   Gaps (a push ahead of the cursor) are filled from history before later
//!   messages are released.
//! - **Reconnect and resume.** When the connection drops, the client
//!   reconnects with jittered exponential backoff, resumes with its session
//!   token and cursors, and delivers what was missed.
//!
//! It is not a local message store: persist messages and [`Client::cursors`]
//! in the app, and restore them with [`Client::set_cursor`] before
//! [`Client::resume`].
//!
//! Modules: [`client`] (the API), [`cursors`] (sans-IO ordering and
//! deduplication), [`options`], [`error`], [`url`]; `connection` is private.
//!
//! # Example
//!
//! ```no_run
//! use chat_client::{Client, ClientOptions, Event};
//!
//! # async fn run() -> Result<(), chat_client::Error> {
//! let (client, mut events) =
//!     Client::connect("tcp://127.0.0.1:7400", ClientOptions::default()).await?;
//! client.register("alice", "correct horse battery", "Alice").await?;
//! let bob = client
//!     .request(chat_client::pb::client_frame::Body::GetProfile(chat_client::pb::GetProfile {
//!         user_id: 0,
//!         username: "bob".into(),
//!     }))
//!     .await?;
//! let chat_client::pb::server_frame::Body::Profile(bob) = bob else { return Ok(()) };
//! let chat = client.create_direct(bob.user_id.into()).await?;
//! let ack = client.send_text(chat.conversation_id.into(), "hello").await?;
//! println!("stored as #{}", ack.seq);
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Message(m) => println!("{}#{}: {}", m.conversation_id, m.seq, m.text),
//!         Event::Disconnected { reason } => eprintln!("offline: {reason}"),
//!         _ => {}
//!     }
//! }
//! # Ok(())
//! # }
//! ```

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod client;
mod connection;
pub mod cursors;
pub mod error;
pub mod options;
pub mod url;

pub use chat_protocol::pb;
pub use chat_protocol::{ConversationId, ErrorCode, MessageId, UserId};
pub use client::{Client, Event, Events};
pub use error::{Error, Result};
pub use options::ClientOptions;
