//! Per-conversation sequencing (`spec/states.md`, "Sequencing"). Sans-IO.
//!
//! The owner shard of a conversation holds its [`Sequencer`] and is the only
//! writer of its seqs, so no lock or atomic is involved. A seq is assigned
//! once, densely from 1, in the order requests reach the owner. The
//! sequencer also remembers recent idempotency keys so that a retried send
//! is answered with the original ack; keys it has forgotten are looked up in
//! the store by the owner before [`Sequencer::assign`] is called.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::rc::Rc;

use hashbrown::{Equivalent, HashMap};

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

/// `(sender, client_msg_id)`. The id is shared with the eviction order, so
/// a remembered key costs one allocation.
type Key = (u64, Rc<str>);

/// A borrowed [`Key`] for lookups that allocate nothing. Hashes exactly as a
/// `Key` does (a tuple hashes its fields in order).
#[derive(Clone, Copy)]
struct KeyRef<'a>(u64, &'a str);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
        self.1.hash(state);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.0 == key.0 && self.1 == &*key.1
    }
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
    /// `(seq, commit)`: the storage commit that made everything up to
    /// `seq` durable, ascending, for the seqs of remembered keys.
    commits: VecDeque<(u64, u64)>,
    /// The storage commit that holds the newest key forgotten.
    forgotten_commit: u64,
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
            commits: VecDeque::new(),
            forgotten_commit: 0,
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
        self.keys.contains_key(&KeyRef(sender, client_msg_id))
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
            if let Some(original) = self.keys.get(&KeyRef(sender, cmid)) {
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

    /// Everything up to `seq` has been committed, by storage commit
    /// `commit` (commit numbers grow with seqs).
    pub fn mark_durable(&mut self, seq: u64, commit: u64) {
        self.durable_seq = self.durable_seq.max(seq);
        match self.commits.back_mut() {
            Some((s, c)) if *c == commit => *s = (*s).max(seq),
            _ => self.commits.push_back((seq, commit)),
        }
        self.evict();
        // Marks below the oldest remembered key are never asked for again
        // (keys remembered later get higher seqs): this keeps `commits` no
        // longer than `order`.
        let oldest = self.order.front().map_or(u64::MAX, |(s, _)| *s);
        self.drop_marks_below(oldest);
        if self.order.is_empty() {
            self.commits.clear();
        }
        // Dropping more is safe: a key's lookup then waits for a later
        // commit than its own.
        while self.commits.len() > self.capacity {
            self.commits.pop_front();
        }
    }

    /// The storage commit a lookup of a key this sequencer does not know
    /// must wait for: the one holding the newest key it has forgotten. Keys
    /// it never knew were stored before the conversation was loaded.
    pub fn forgotten_commit(&self) -> u64 {
        self.forgotten_commit
    }

    fn insert(&mut self, sender: u64, cmid: &str, value: Assigned) {
        if let Some(known) = self.keys.get_mut(&KeyRef(sender, cmid)) {
            *known = value;
            return;
        }
        let key: Key = (sender, Rc::from(cmid));
        self.order.push_back((value.seq, key.clone()));
        self.keys.insert(key, value);
        self.evict();
    }

    /// Drops the durability marks below `seq`, keeping the newest.
    fn drop_marks_below(&mut self, seq: u64) {
        while self.commits.len() > 1 && self.commits.front().is_some_and(|(s, _)| *s < seq) {
            self.commits.pop_front();
        }
    }

    /// Forgets the oldest keys beyond the capacity whose messages are
    /// durable.
    fn evict(&mut self) {
        while self.order.len() > self.capacity {
            match self.order.front() {
                Some((seq, _)) if *seq <= self.durable_seq => {}
                _ => return,
            }
            if let Some((seq, old)) = self.order.pop_front() {
                self.keys.remove(&old);
                self.drop_marks_below(seq);
                // The first mark at or above `seq` made it durable (a key
                // found in the store has none; any later mark is then a
                // conservative bound).
                if let Some((s, commit)) = self.commits.front() {
                    if *s >= seq {
                        self.forgotten_commit = self.forgotten_commit.max(*commit);
                    }
                }
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
        s.mark_durable(1, 1);
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
        s.mark_durable(3, 2);
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

    #[test]
    fn a_lookup_waits_for_the_commit_of_the_newest_forgotten_key() {
        let mut ids = MessageIdGenerator::new(0);
        let mut s = Sequencer::new(0, 2);
        assert_eq!(s.forgotten_commit(), 0, "nothing forgotten yet");
        // Seqs 1 and 2 durable in commit 10, seq 3 in commit 11, 4 and 5
        // in commit 12.
        for (k, seq, commit) in [
            ("a", 1, 0),
            ("b", 2, 10),
            ("c", 3, 11),
            ("d", 4, 0),
            ("e", 5, 12),
        ] {
            s.assign(1, Some(k), 1, &mut ids);
            if commit > 0 {
                s.mark_durable(seq, commit);
            }
        }
        // Capacity 2: a, b and c are forgotten; c was stored by commit 11.
        assert!(!s.knows(1, "c") && s.knows(1, "d"));
        assert_eq!(s.forgotten_commit(), 11);
        // Another key and commit: d (commit 12) goes.
        s.assign(1, Some("f"), 1, &mut ids);
        s.mark_durable(6, 13);
        assert_eq!(s.forgotten_commit(), 12);
        assert!(s.commits.len() <= 2, "marks are pruned with their keys");
        // Messages without keys leave no marks behind once no key is left.
        let mut quiet = Sequencer::new(0, 2);
        for seq in 1..100 {
            quiet.assign(1, None, 1, &mut ids);
            quiet.mark_durable(seq, seq);
        }
        assert!(quiet.commits.is_empty());
    }
}
