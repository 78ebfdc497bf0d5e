//! Where things live among the shards: each conversation's owner, each
//! user's presence keeper, each key's home. Pure functions of an id and the
//! number of shards, the same on every shard.

use chat_protocol::{ConversationId, UserId};

use crate::home::Key;
use crate::mesh::ShardId;

/// The placement of conversations, users and keys over `nr_shards`.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    nr_shards: usize,
    /// Cluster mode: conversation partitions, each owned by one node and
    /// on it by one shard (so that one shard alone writes a partition).
    partitions: Option<u32>,
}

impl Placement {
    /// Placement over `nr_shards` (at least one).
    pub fn new(nr_shards: usize) -> Self {
        Self {
            nr_shards: nr_shards.max(1),
            partitions: None,
        }
    }

    /// Placement over `nr_shards` in a cluster of `partitions`: a
    /// conversation's owner shard is its partition's.
    pub fn clustered(nr_shards: usize, partitions: u32) -> Self {
        Self {
            nr_shards: nr_shards.max(1),
            partitions: Some(partitions.max(1)),
        }
    }

    /// Number of shards.
    pub fn nr_shards(&self) -> usize {
        self.nr_shards
    }

    /// The shard that owns `conversation` and alone sequences it.
    pub fn owner_of(&self, conversation: ConversationId) -> ShardId {
        if let Some(partitions) = self.partitions {
            let p = crate::cluster::partition_of(conversation, partitions);
            return p as usize % self.nr_shards;
        }
        // Fibonacci hashing spreads consecutive ids evenly.
        let h = conversation.get().wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        (h % self.nr_shards as u64) as ShardId
    }

    /// The shard that keeps `user`'s presence and counts their sessions.
    pub fn presence_of(&self, user: UserId) -> ShardId {
        // A different multiplier from `owner_of`, so that a user's presence
        // and the conversation with the same id are not tied together.
        let h = user.get().wrapping_mul(0xC2B2_AE3D_27D4_EB4F) >> 32;
        (h % self.nr_shards as u64) as ShardId
    }

    /// The home shard of `key` ([`crate::home`]).
    pub fn home_of(&self, key: &Key) -> ShardId {
        crate::home::home_of(key, self.nr_shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ids_spread_over_every_shard() {
        let p = Placement::new(4);
        let owners: std::collections::HashSet<_> =
            (1..=64).map(|c| p.owner_of(ConversationId(c))).collect();
        let keepers: std::collections::HashSet<_> =
            (1..=64).map(|u| p.presence_of(UserId(u))).collect();
        assert_eq!(owners.len(), 4);
        assert_eq!(keepers.len(), 4);
        assert_eq!(Placement::new(0).owner_of(ConversationId(7)), 0);
    }
}
