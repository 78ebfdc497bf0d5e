//! Per-conversation sequencing (`spec/states.md`, "Sequencing"). Sans-IO.
//!
//! The owner shard of a conversation holds its [`Sequencer`] and is the only
//! writer of its seqs, so no lock or atomic is involved. A seq is assigned
//! once, densely from 1, in the order requests reach the owner. The
//! sequencer also remembers recent idempotency keys so that a retried send
//! is answered with the original ack; keys it has forgotten are looked up in
//! the store by the owner before [`Sequencer::assign`] is called.

use std::collections::VecDeque;
use std::hash::BuildHasher;
use std::sync::OnceLock;

use hashbrown::HashMap;

use chat_protocol::MessageId;

use crate::idgen::MessageIdGenerator;

/// The ack fields of an assigned message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assigned {
    /// Position in the conversation.
    pub seq: u64,
    /// Globally unique id.
    pub message_id: MessageId,
    /// Server time of assignment, Unix milliseconds.
    pub sent_at_ms: u64,
}

/// What [`Sequencer::assign`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A new message: store it, then ack.
    New(Assigned),
    /// A retry of an earlier send: ack with the original, store nothing.
    /// `durable` tells whether the original is already committed; if not,
    /// the retry's ack must wait for the original's commit.
    Duplicate {
        /// The original ack.
        original: Assigned,
        /// Whether the original's batch has committed.
        durable: bool,
    },
}

/// A remembered idempotency key: a 128-bit fingerprint of
/// `(sender, client_msg_id)` from two independently seeded hashes.
///
/// Remembering a key costs no allocation and forgetting it no rehash of the
/// id. Two different keys of one conversation share a fingerprint with
/// probability 2⁻¹²⁸ per pair, far below the rate of undetected memory or
/// disk errors; the seeds are chosen at random per process, so no client
/// can aim for a collision, and a key the memory has forgotten is looked up
/// in the store by its full bytes.
type Key = u128;

/// The fingerprint of `(sender, client_msg_id)`.
fn fingerprint(sender: u64, client_msg_id: &str) -> Key {
    static SEEDS: OnceLock<(
        foldhash::quality::RandomState,
        foldhash::quality::RandomState,
    )> = OnceLock::new();
    let (a, b) = SEEDS.get_or_init(Default::default);
    let key = (sender, client_msg_id);
    (u128::from(a.hash_one(key)) << 64) | u128::from(b.hash_one(key))
}

/// Sequence state of one conversation.
#[derive(Debug)]
pub struct Sequencer {
    last_seq: u64,
    durable_seq: u64,
    keys: HashMap<Key, Assigned>,
    /// Keys oldest first, with their seqs.
    order: VecDeque<(u64, Key)>,
    capacity: usize,
}

impl Sequencer {
    /// State of a conversation whose highest stored seq is `last_seq`,
    /// remembering `capacity` idempotency keys in memory, plus any whose
    /// message is not yet durable: the store cannot answer for those, so
    /// they are never forgotten before their commit.
    pub fn new(last_seq: u64, capacity: usize) -> Self {
        Self {
            last_seq,
            durable_seq: last_seq,
            keys: HashMap::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Highest seq assigned.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Highest seq known to be durable.
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Whether the ack for `(sender, client_msg_id)` is known without a
    /// store lookup.
    pub fn knows(&self, sender: u64, client_msg_id: &str) -> bool {
        self.keys.contains_key(&fingerprint(sender, client_msg_id))
    }

    /// Records a key found in the store (so already durable).
    pub fn remember(&mut self, sender: u64, client_msg_id: &str, original: Assigned) {
        self.insert(sender, client_msg_id, original);
    }

    /// Admits a send. `client_msg_id` is `None` for system messages, which
    /// are never deduplicated.
    pub fn assign(
        &mut self,
        sender: u64,
        client_msg_id: Option<&str>,
        now_ms: u64,
        ids: &mut MessageIdGenerator,
    ) -> Admission {
        if let Some(cmid) = client_msg_id {
            if let Some(original) = self.keys.get(&fingerprint(sender, cmid)) {
                return Admission::Duplicate {
                    original: *original,
                    durable: original.seq <= self.durable_seq,
                };
            }
        }
        self.last_seq += 1;
        let assigned = Assigned {
            seq: self.last_seq,
            message_id: ids.next(now_ms),
            sent_at_ms: now_ms,
        };
        if let Some(cmid) = client_msg_id {
            self.insert(sender, cmid, assigned);
        }
        Admission::New(assigned)
    }

    /// Everything up to `seq` has been committed. A key forgotten from
    /// here on is found in the store, which indexes it before its commit is
    /// acknowledged.
    pub fn mark_durable(&mut self, seq: u64) {
        self.durable_seq = self.durable_seq.max(seq);
        self.evict();
    }

    fn insert(&mut self, sender: u64, cmid: &str, value: Assigned) {
        let key = fingerprint(sender, cmid);
        if let Some(known) = self.keys.get_mut(&key) {
            *known = value;
            return;
        }
        self.order.push_back((value.seq, key));
        self.keys.insert(key, value);
        self.evict();
    }

    /// Forgets the oldest keys beyond the capacity whose messages are
    /// durable.
    fn evict(&mut self) {
        while self.order.len() > self.capacity {
            match self.order.front() {
                Some((seq, _)) if *seq <= self.durable_seq => {}
                _ => return,
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.keys.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_seq(a: Admission) -> u64 {
        match a {
            Admission::New(x) => x.seq,
            Admission::Duplicate { .. } => panic!("expected a new message"),
        }
    }

    #[test]
    fn seqs_are_dense_from_the_recovered_position() {
        let mut ids = MessageIdGenerator::new(0);
        let mut s = Sequencer::new(41, 16);
        let seqs: Vec<u64> = (0..5)
            .map(|i| new_seq(s.assign(1, Some(&format!("m{i}")), 10, &mut ids)))
            .collect();
        assert_eq!(seqs, vec![42, 43, 44, 45, 46]);
        assert_eq!(s.last_seq(), 46);
    }

    #[test]
    fn a_retry_gets_the_original_ack_and_no_seq() {
        let mut ids = MessageIdGenerator::new(0);
        let mut s = Sequencer::new(0, 16);
        let first = match s.assign(7, Some("x"), 10, &mut ids) {
            Admission::New(a) => a,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            s.assign(7, Some("x"), 20, &mut ids),
            Admission::Duplicate {
                original: first,
                durable: false
            }
        );
        s.mark_durable(1);
        assert_eq!(
            s.assign(7, Some("x"), 30, &mut ids),
            Admission::Duplicate {
                original: first,
                durable: true
            }
        );
        // The same key from another sender is a different message.
        assert_eq!(new_seq(s.assign(8, Some("x"), 40, &mut ids)), 2);
        // System messages are never deduplicated.
        assert_eq!(new_seq(s.assign(7, None, 50, &mut ids)), 3);
        assert_eq!(new_seq(s.assign(7, None, 50, &mut ids)), 4);
    }

    #[test]
    fn forgotten_keys_need_a_lookup_and_remembered_ones_do_not() {
        let mut ids = MessageIdGenerator::new(0);
        let mut s = Sequencer::new(0, 2);
        for k in ["a", "b", "c"] {
            s.assign(1, Some(k), 1, &mut ids);
        }
        assert!(
            s.knows(1, "a"),
            "a key is kept beyond the capacity until its message is durable"
        );
        s.mark_durable(3);
        assert!(!s.knows(1, "a"), "capacity 2 evicts the oldest durable key");
        assert!(s.knows(1, "b") && s.knows(1, "c"));
        let original = Assigned {
            seq: 1,
            message_id: MessageId(5),
            sent_at_ms: 1,
        };
        s.remember(1, "a", original);
        assert!(matches!(
            s.assign(1, Some("a"), 2, &mut ids),
            Admission::Duplicate { original: o, .. } if o == original
        ));
    }
}
