//! What the owner hands its shell: writes, and what to do once they are
//! durable. A leaf of the server's modules: values only, no I/O.

use chat_protocol::{ConversationId, Seq};
use std::sync::Arc;

use bytes::Bytes;

use crate::mesh::ShardId;
use crate::storage::writer::Batch;

/// Where a request came from, so the owner can route its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Shard holding the session.
    pub shard: ShardId,
    /// Session id on that shard.
    pub session: u64,
    /// The request's id, echoed in the reply.
    pub request_id: u64,
}

/// What happens once a pipeline entry's writes are durable.
#[derive(Debug)]
pub enum Effect {
    /// Everything up to `seq` of `conversation` is durable.
    Durable {
        /// Conversation.
        conversation: ConversationId,
        /// Highest seq in the batch.
        seq: Seq,
    },
    /// Answer the request from `Origin` with this frame and return its
    /// in-flight permit.
    Reply(Origin, Bytes),
    /// Return the in-flight permit of a request that gets no answer
    /// (Typing, and receipts sent with request id 0).
    Release(Origin),
    /// Push to every session of these users, on every shard.
    Fanout(Arc<[u64]>, Bytes),
    /// Like `Fanout`, but shed first under pressure (typing, presence).
    Ephemeral(Arc<[u64]>, Bytes),
    /// Push notifications for the recipients with no connected session.
    Notify(Arc<[u64]>, Arc<crate::push::Notice>),
}

/// Writes and their consequences, committed in order.
#[derive(Debug, Default)]
pub struct Pending {
    /// Writes of this entry.
    pub batch: Batch,
    /// Applied after the writes are durable, in order.
    pub effects: Vec<Effect>,
}

impl Pending {
    /// Effects that need no write.
    pub fn effects(effects: Vec<Effect>) -> Self {
        Self {
            batch: Batch::new(),
            effects,
        }
    }
}
