//! `chatd`: a thread-per-core chat server.
//!
//! It speaks the chat/1 protocol (`spec/`) and stores every message in an
//! embedded LSM store before acknowledging it. It is a library so that tests
//! and tools can run a server in-process; the `chatd` binary is a thin
//! wrapper that reads the configuration and calls [`ServerHandle::start`].
//!
//! Module map, by layer, outside in (the README's Architecture section
//! follows one SendMessage through them):
//!
//! - ingress: [`ingress`] (listeners, connection slots, accept loops),
//!   [`transport`] (frames over TCP, TLS, QUIC and WebSocket, and the
//!   certificates), [`http`] (health, metrics, media, the WebSocket
//!   upgrade);
//! - session: [`connection`] (the only place a session's frames meet the
//!   code), [`session_state`] (the protocol's states), [`session_table`]
//!   (each shard's sessions and their bounded outbound queues);
//! - routes: [`routes`], one function per request by concern, and
//!   [`routes::Request`], the owned in-flight permit that answers once;
//! - owner: [`owner`], the sans-IO rules of conversations (inputs with the
//!   time, outputs as values), over [`sequencer`];
//! - shard: [`shard`], one thread per core that drives its owner and
//!   commits in order; [`shard_msg`] what shards send each other over the
//!   [`mesh`] (bounded rings); [`placement`] which shard owns what;
//!   [`directory`] which shards hold a user's sessions, so fan-outs go only
//!   there; [`home`] keyed check-then-writes and login counts at a key's
//!   home shard, instead of a lock shared by shards; [`presence`];
//! - handles: the narrow ones a route's blocking work is given,
//!   [`accounts::Accounts`], [`catalog::Catalog`], [`storage::Store`],
//!   [`storage::writer::Writer`] ([`shard::Handles`] is what a shard is
//!   built from);
//! - storage: [`storage`] (commit log, group-committing writer, fjall
//!   keyspaces; [`storage::write`] the typed writes, [`storage::Store`] the
//!   reads) and [`records`].
//!
//! Below the shard nothing refers back up: the owner, presence, push,
//! accounts, catalog and storage form no import cycle. The session shell
//! (ingress, transport, connection, routes, http) is the one place modules
//! still refer to each other both ways.
//!
//! Around them: [`server`] starts and stops it all from a [`Config`]
//! ([`config`]); [`lifecycle`] shutdown and storage failure; [`clock`],
//! [`limits`], [`idgen`], [`metrics`], [`media`], [`push`], [`web`] (the
//! browser page), [`admin`] (offline operator commands).
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
pub mod cluster;
pub mod config;
pub mod connection;
pub mod control;
pub mod directory;
pub mod home;
pub mod http;
pub mod idgen;
pub mod ingress;
pub mod lifecycle;
pub mod limits;
pub mod media;
pub mod mesh;
pub mod metrics;
pub mod owner;
pub mod placement;
pub mod presence;
pub mod push;
pub mod records;
pub mod reply;
pub mod routes;
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
