//! Per-conversation cursors, duplicate dropping and gap detection. Sans-IO.
//!
//! For every conversation the client knows the highest seq it has handed to
//! the app with nothing missing below it (the cursor). A message at
//! `cursor + 1` is emitted and advances the cursor; one at or below the
//! cursor is a duplicate and dropped; one further ahead reveals a gap: it is
//! held, and the caller fetches the gap with `GetHistory(after_seq =
//! cursor)`. Held messages are emitted as soon as the gap is filled.
//!
//! A conversation the client has no cursor for starts at the first message
//! it sees (its cursor becomes `seq - 1`), unless a Sync reports it: Sync
//! gaps carry their start (`from_seq`).

use std::collections::{BTreeMap, HashMap};

use chat_protocol::pb;

#[derive(Debug, Default)]
struct Track {
    cursor: u64,
    held: BTreeMap<u64, pb::Message>,
}

/// What [`Cursors::offer`] decided.
#[derive(Debug, Default, PartialEq)]
pub struct Offered {
    /// Messages to hand to the app now, in seq order.
    pub emit: Vec<pb::Message>,
    /// A gap to fetch: messages after this seq are missing.
    pub missing_after: Option<u64>,
}

/// The cursors of every conversation.
#[derive(Debug)]
pub struct Cursors {
    tracks: HashMap<u64, Track>,
    max_held: usize,
}

impl Cursors {
    /// Tracking with at most `max_held` out-of-order messages held per
    /// conversation.
    pub fn new(max_held: usize) -> Self {
        Self {
            tracks: HashMap::new(),
            max_held,
        }
    }

    /// The cursor of `conversation` (0 if unknown).
    pub fn get(&self, conversation: u64) -> u64 {
        self.tracks.get(&conversation).map_or(0, |t| t.cursor)
    }

    /// Sets a cursor (e.g. restored from the app's storage); never moves
    /// it backwards.
    pub fn set(&mut self, conversation: u64, seq: u64) {
        let t = self.tracks.entry(conversation).or_default();
        t.cursor = t.cursor.max(seq);
        t.held.retain(|&s, _| s > seq);
    }

    /// Forgets a conversation (the user left it).
    pub fn remove(&mut self, conversation: u64) {
        self.tracks.remove(&conversation);
    }

    /// Every cursor, for Sync and Resume.
    pub fn all(&self) -> Vec<pb::Cursor> {
        let mut v: Vec<pb::Cursor> = self
            .tracks
            .iter()
            .map(|(&conversation_id, t)| pb::Cursor {
                conversation_id,
                seq: t.cursor,
            })
            .collect();
        v.sort_by_key(|c| c.conversation_id);
        v
    }

    /// Starts tracking `conversation` at `cursor` if it is not tracked.
    pub fn start(&mut self, conversation: u64, cursor: u64) {
        self.tracks.entry(conversation).or_insert_with(|| Track {
            cursor,
            held: BTreeMap::new(),
        });
    }

    /// A message arrived (push, sync or history).
    pub fn offer(&mut self, m: pb::Message) -> Offered {
        let max_held = self.max_held;
        let t = self
            .tracks
            .entry(m.conversation_id)
            .or_insert_with(|| Track {
                cursor: m.seq.saturating_sub(1),
                held: BTreeMap::new(),
            });
        let mut out = Offered::default();
        if m.seq <= t.cursor {
            return out;
        }
        if m.seq > t.cursor + 1 {
            if t.held.len() < max_held {
                t.held.insert(m.seq, m);
            }
            out.missing_after = Some(t.cursor);
            return out;
        }
        t.cursor = m.seq;
        out.emit.push(m);
        while let Some(next) = t.held.remove(&(t.cursor + 1)) {
            t.cursor = next.seq;
            out.emit.push(next);
        }
        t.held.retain(|&s, _| s > t.cursor);
        if !t.held.is_empty() {
            out.missing_after = Some(t.cursor);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(conversation: u64, seq: u64) -> pb::Message {
        pb::Message {
            conversation_id: conversation,
            seq,
            ..Default::default()
        }
    }

    fn seqs(o: &Offered) -> Vec<u64> {
        o.emit.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn in_order_messages_pass_and_duplicates_drop() {
        let mut c = Cursors::new(100);
        c.start(1, 0);
        assert_eq!(seqs(&c.offer(msg(1, 1))), vec![1]);
        assert_eq!(seqs(&c.offer(msg(1, 2))), vec![2]);
        assert_eq!(c.offer(msg(1, 2)), Offered::default());
        assert_eq!(c.offer(msg(1, 1)), Offered::default());
        assert_eq!(c.get(1), 2);
    }

    #[test]
    fn a_gap_holds_later_messages_until_filled() {
        let mut c = Cursors::new(100);
        c.start(1, 2);
        let o = c.offer(msg(1, 5));
        assert!(o.emit.is_empty());
        assert_eq!(o.missing_after, Some(2));
        assert_eq!(c.offer(msg(1, 6)).missing_after, Some(2));
        assert_eq!(seqs(&c.offer(msg(1, 3))), vec![3]);
        let o = c.offer(msg(1, 4));
        assert_eq!(seqs(&o), vec![4, 5, 6]);
        assert_eq!(o.missing_after, None);
        assert_eq!(c.get(1), 6);
    }

    #[test]
    fn unknown_conversations_start_at_their_first_message() {
        let mut c = Cursors::new(100);
        assert_eq!(seqs(&c.offer(msg(9, 40))), vec![40]);
        assert_eq!(c.get(9), 40);
        c.set(9, 45);
        assert_eq!(c.offer(msg(9, 44)), Offered::default());
        assert_eq!(
            c.all(),
            vec![pb::Cursor {
                conversation_id: 9,
                seq: 45
            }]
        );
    }

    #[test]
    fn held_messages_are_bounded() {
        let mut c = Cursors::new(2);
        c.start(1, 0);
        for s in 3..10 {
            c.offer(msg(1, s));
        }
        assert_eq!(seqs(&c.offer(msg(1, 1))), vec![1]);
        assert_eq!(
            seqs(&c.offer(msg(1, 2))),
            vec![2, 3, 4],
            "5.. were dropped and must be fetched"
        );
    }
}
