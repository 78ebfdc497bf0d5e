//! `chat-client-ffi`: the Kotlin, Swift and Python face of [`chat_client`],
//! generated with UniFFI.
//!
//! The crate wraps the Rust client one-to-one for apps that are not written
//! in Rust: [`connect`] opens a [`ChatClient`] over any transport the URL's
//! scheme names (`tcp://`, `tls://`, `quic://`, `ws://`, `wss://`) with the
//! app's own trusted certificates; its methods are the client's requests as
//! async functions (coroutines in Kotlin and Python, `async` in Swift);
//! events reach an [`EventListener`] the app implements, until the
//! [`ListenerHandle`] is cancelled. Reconnect, resume, send retries with a
//! stable `client_msg_id`, ordering and deduplication all stay in Rust.
//!
//! What it is not: a second client. Behaviour, limits and memory bounds are
//! those of `chat-client`; this crate only converts types.
//!
//! Threading: the library runs one tokio runtime of its own ([`runtime`]);
//! every call is executed there, whatever thread or executor the app awaits
//! it from, and listener callbacks are made on that runtime's threads.
//! [`shutdown_runtime`] stops it before the app exits (Python apps must
//! call it; see [`runtime`]).
//!
//! Modules: [`client`] (the object and its calls), [`listener`] (events and
//! the listener handle), [`error`] (the error enum), [`types`] (records and
//! enums of the protocol), [`options`], [`runtime`].

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
// The scaffolding UniFFI's macros generate is `unsafe` FFI glue; this crate
// itself writes none.
#![allow(unsafe_code)]

pub mod client;
pub mod error;
pub mod listener;
pub mod options;
pub mod runtime;
pub mod types;

pub use client::{ChatClient, connect};
pub use error::{ClientError, ErrorCode};
pub use listener::{ChatEvent, EventListener, ListenerHandle};
pub use options::{ClientOptions, default_client_options};
pub use runtime::shutdown_runtime;

uniffi::setup_scaffolding!();
