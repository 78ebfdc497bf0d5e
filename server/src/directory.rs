//! Which shards may hold a user's sessions, so that a fan-out goes only to
//! the shards that can deliver it.
//!
//! A shared table of [`SLOTS`] bit sets, one bit per shard; a user maps to
//! one slot by hash. Shard `s` alone writes bit `s` of every slot: it keeps
//! its own count of users with sessions per slot ([`Local`]), sets the bit
//! when the slot's count leaves zero and clears it when it returns there.
//! No lock is shared between shards; a reader ORs the slots of a fan-out's
//! users with atomic loads.
//!
//! A set bit can be a false positive (another user of the slot has a
//! session on that shard): the shard then gets a delivery it has no
//! session for, as every shard did before. A clear bit is never wrong for
//! a session that could already receive pushes: a shard sets the bit before
//! the session is indexed for delivery, so a fan-out that misses the
//! session read the table before the session logged in, and the message it
//! carries was durable by then; the session's Sync after login returns it.
//!
//! Memory: `SLOTS × ⌈shards / 64⌉ × 8` bytes shared (2 MiB up to 64 shards)
//! and, per shard, one map entry per slot with users online there. With
//! more than [`MAX_SHARDS`] shards the directory is off and every fan-out
//! goes to every shard.
//!
//! The table is the one piece of state written by every shard, and each
//! shard writes only its own bits, with one atomic operation when a user's
//! first session on it logs in or its last one ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::mesh::ShardId;

/// Slots in the table (2^18): with 100,000 users online, 1 in 2.6 slots is
/// taken on some shard.
pub const SLOTS: usize = 1 << 18;

/// The most shards the directory tracks.
pub const MAX_SHARDS: usize = 256;

const WORDS: usize = MAX_SHARDS / 64;

/// A set of shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardSet([u64; WORDS]);

impl ShardSet {
    /// Every shard of `nr_shards`.
    pub fn all(nr_shards: usize) -> Self {
        let mut set = Self::default();
        for s in 0..nr_shards.min(MAX_SHARDS) {
            set.insert(s);
        }
        set
    }

    /// Adds `shard`.
    pub fn insert(&mut self, shard: ShardId) {
        if let Some(w) = self.0.get_mut(shard / 64) {
            *w |= 1 << (shard % 64);
        }
    }

    /// Whether `shard` is in the set.
    pub fn contains(&self, shard: ShardId) -> bool {
        self.0
            .get(shard / 64)
            .is_some_and(|w| w & (1 << (shard % 64)) != 0)
    }

    /// The shards in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = ShardId> + '_ {
        (0..MAX_SHARDS).filter(|&s| self.contains(s))
    }

    /// Number of shards in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|&w| w == 0)
    }
}

/// The shared table.
#[derive(Debug)]
pub struct Directory {
    /// Words per slot (`⌈nr_shards / 64⌉`); empty when the directory is off.
    words: usize,
    /// Every shard: a fan-out whose slots cover it stops reading.
    full: ShardSet,
    bits: Box<[AtomicU64]>,
}

impl Directory {
    /// A table for `nr_shards` shards, with no user online.
    pub fn new(nr_shards: usize) -> Self {
        let words = if nr_shards <= MAX_SHARDS {
            nr_shards.div_ceil(64)
        } else {
            0
        };
        let bits = (0..SLOTS * words).map(|_| AtomicU64::new(0)).collect();
        Self {
            words,
            full: ShardSet::all(nr_shards),
            bits,
        }
    }

    /// The shards that may hold a session of any of `users`, or `None`
    /// when the directory is off (every shard may).
    pub fn shards_of(&self, users: &[u64]) -> Option<ShardSet> {
        if self.words == 0 {
            return None;
        }
        let mut set = ShardSet::default();
        for &user in users {
            let base = slot(user) * self.words;
            for (w, out) in set.0.iter_mut().enumerate().take(self.words) {
                if let Some(bits) = self.bits.get(base + w) {
                    *out |= bits.load(Ordering::Acquire);
                }
            }
            if set == self.full {
                break;
            }
        }
        Some(set)
    }

    fn word(&self, shard: ShardId, slot: usize) -> Option<(&AtomicU64, u64)> {
        let w = self.bits.get(slot * self.words + shard / 64)?;
        Some((w, 1 << (shard % 64)))
    }
}

/// A user's slot: Fibonacci hashing of the id.
fn slot(user: u64) -> usize {
    (user.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SLOTS.trailing_zeros())) as usize
}

/// One shard's side of the directory: counts of its users online per slot.
/// Owned by the shard's session table, touched only on its thread.
#[derive(Debug)]
pub struct Local {
    shard: ShardId,
    counts: HashMap<usize, u32>,
}

impl Local {
    /// The side of `shard`.
    pub fn new(shard: ShardId) -> Self {
        Self {
            shard,
            counts: HashMap::new(),
        }
    }

    /// `user` has its first session on this shard. Call before the session
    /// is indexed for delivery.
    pub fn online(&mut self, directory: &Directory, user: u64) {
        let slot = slot(user);
        let count = self.counts.entry(slot).or_insert(0);
        *count += 1;
        if *count == 1 {
            if let Some((word, bit)) = directory.word(self.shard, slot) {
                word.fetch_or(bit, Ordering::Release);
            }
        }
    }

    /// `user`'s last session on this shard is gone.
    pub fn offline(&mut self, directory: &Directory, user: u64) {
        let slot = slot(user);
        let Some(count) = self.counts.get_mut(&slot) else {
            return;
        };
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.counts.remove(&slot);
            if let Some((word, bit)) = directory.word(self.shard, slot) {
                word.fetch_and(!bit, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(set: Option<ShardSet>) -> Vec<ShardId> {
        set.map(|s| s.iter().collect()).unwrap_or_default()
    }

    #[test]
    fn a_fanout_reaches_only_the_shards_where_its_users_are_online() {
        let dir = Directory::new(4);
        let mut s1 = Local::new(1);
        let mut s3 = Local::new(3);
        assert!(dir.shards_of(&[7, 8]).is_some_and(|s| s.is_empty()));
        s1.online(&dir, 7);
        s3.online(&dir, 8);
        assert_eq!(shards(dir.shards_of(&[7])), vec![1]);
        assert_eq!(shards(dir.shards_of(&[7, 8])), vec![1, 3]);
        s1.offline(&dir, 7);
        assert_eq!(shards(dir.shards_of(&[7, 8])), vec![3]);
    }

    #[test]
    fn a_slot_stays_set_while_any_of_its_users_is_online() {
        let dir = Directory::new(2);
        let mut local = Local::new(0);
        // Two users in the same slot.
        let a = 1;
        let b = (2..u64::MAX)
            .find(|&u| slot(u) == slot(a))
            .unwrap_or_default();
        local.online(&dir, a);
        local.online(&dir, b);
        local.offline(&dir, a);
        assert_eq!(shards(dir.shards_of(&[a])), vec![0]);
        local.offline(&dir, b);
        assert!(dir.shards_of(&[a, b]).is_some_and(|s| s.is_empty()));
        // Going offline more often than online never underflows.
        local.offline(&dir, b);
        assert!(dir.shards_of(&[b]).is_some_and(|s| s.is_empty()));
    }

    #[test]
    fn shards_past_the_first_word_are_tracked() {
        let dir = Directory::new(130);
        let mut local = Local::new(129);
        local.online(&dir, 42);
        assert_eq!(shards(dir.shards_of(&[42])), vec![129]);
    }

    #[test]
    fn more_shards_than_tracked_means_every_shard() {
        let dir = Directory::new(MAX_SHARDS + 1);
        assert_eq!(dir.shards_of(&[1]), None);
        let mut local = Local::new(3);
        local.online(&dir, 1);
        local.offline(&dir, 1);
    }
}
