//! State shared by every shard: configuration, the store, the writer queue,
//! the mesh and id allocators. None of it is a lock: the store and writer
//! are thread-safe handles, the allocators are atomics touched only when
//! users or conversations are created. Writes that must be serialised per
//! key (usernames, direct pairs, user records) and failed-login counts are
//! kept by each key's home shard ([`crate::home`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;

use crate::config::Config;
use crate::mesh::{Mesh, ShardId};
use crate::storage::Store;
use crate::storage::writer::Writer;

/// Shared by all shards through an `Arc`.
#[derive(Debug)]
pub struct Context {
    /// Settings.
    pub config: Config,
    /// Read handle to the store (reads run on blocking threads).
    pub store: Store,
    /// Queue to the storage writer.
    pub writer: Writer,
    /// Shard-to-shard rings.
    pub mesh: Mesh<crate::shard_msg::ShardMsg>,
    /// Which shards may hold each user's sessions (fan-out targets).
    pub directory: Arc<crate::directory::Directory>,
    /// Highest user id handed out.
    pub last_user_id: AtomicU64,
    /// Highest conversation id handed out.
    pub last_conversation_id: AtomicU64,
    /// Flips to `true` when the server starts shutting down.
    pub shutdown: watch::Sender<bool>,
    /// Set after a storage failure: the server stops taking writes.
    pub failed: AtomicBool,
    /// Media URL signing and files.
    pub media: Arc<crate::media::Media>,
    /// Queue to the push thread.
    pub push: crate::push::Push,
}

impl Context {
    /// Number of shards.
    pub fn nr_shards(&self) -> usize {
        self.mesh.nr_shards()
    }

    /// The shard that owns `conversation` and alone sequences it.
    pub fn shard_for(&self, conversation: u64) -> ShardId {
        // Fibonacci hashing spreads consecutive ids evenly.
        let h = conversation.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        (h % self.nr_shards() as u64) as ShardId
    }

    /// The shard that keeps `user`'s presence.
    pub fn shard_for_user(&self, user: u64) -> ShardId {
        // A different multiplier from `shard_for`, so that a user's presence
        // and the conversation with the same id are not tied together.
        let h = user.wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> 32;
        (h % self.nr_shards() as u64) as ShardId
    }

    /// A fresh user id.
    pub fn next_user_id(&self) -> u64 {
        self.last_user_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A fresh conversation id.
    pub fn next_conversation_id(&self) -> u64 {
        self.last_conversation_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Wall-clock Unix milliseconds, from the configured clock.
    pub fn now_ms(&self) -> u64 {
        self.config.clock.now_ms()
    }

    /// Whether shutdown has begun.
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Stops the server after a storage failure: acknowledged data is safe,
    /// but nothing new can be made durable.
    pub fn fail(&self) {
        if !self.failed.swap(true, Ordering::SeqCst) {
            tracing::error!("storage failed; shutting down");
            self.shutdown.send_replace(true);
        }
    }
}
