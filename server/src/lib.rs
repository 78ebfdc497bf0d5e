//! `chatd`: a thread-per-core chat server.
//!
//! It speaks the chat/1 protocol (`spec/`) and stores every message in an
//! embedded LSM store before acknowledging it. It is a library so that tests
//! and tools can run a server in-process; the `chatd` binary is a thin
//! wrapper that reads the configuration and calls [`ServerHandle::start`].
//!
//! Architecture (see the README and `../shared/DESIGN.md`):
//!
//! - [`shard`]: one thread per core with a current-thread runtime, its own
//!   SO_REUSEPORT listeners and QUIC endpoint, and its own sessions;
//!   [`mesh`]: bounded rings between shards; [`directory`]: which shards
//!   hold a user's sessions, so fan-outs go only there.
//! - [`owner`]: every conversation is owned by one shard whose
//!   [`sequencer`] alone assigns its seqs.
//! - [`storage`]: fjall keyspaces and the group-committing writer thread;
//!   [`catalog`] and [`accounts`] are the store-backed request handlers.
//! - [`connection`], [`session_table`], [`session_state`]: a client's
//!   session, its bounded outbound queue and its protocol state;
//!   [`transport`]: how frames travel over TCP, TLS, QUIC and WebSocket
//!   (on the [`http`] listeners), and the certificates.
//!
//! It is not a cluster: one process serves everyone.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
#![cfg_attr(
    test,
    allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)
)]

pub mod accounts;
pub mod admin;
pub mod catalog;
pub mod clock;
pub mod config;
pub mod connection;
pub mod context;
pub mod directory;
pub mod http;
pub mod idgen;
pub mod ingress;
pub mod limits;
pub mod media;
pub mod mesh;
pub mod metrics;
pub mod owner;
pub mod presence;
pub mod push;
pub mod records;
pub mod reply;
pub mod sequencer;
pub mod server;
pub mod session_state;
pub mod session_table;
pub mod shard;
pub mod shard_msg;
pub mod storage;
pub mod transport;
pub mod web;

pub use clock::Clock;
pub use config::{Config, Durability, Secret};
pub use server::{ServerHandle, StartError};
