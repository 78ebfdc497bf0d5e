//! Per-conversation cursors, duplicate dropping and gap detection. Sans-IO:
//! messages go in, the messages to emit (in order) and the gaps to fetch come
//! out.
//!
//! `spec/states.md`, "What a client does": keep per conversation the highest
//! seq held with nothing missing below it. A message at or below it is a
//! duplicate (delivery is at-least-once) and is dropped; the next one is
//! emitted and advances it, together with any held messages that now follow;
//! one further ahead reveals a gap: it is held and the caller fetches
//! `GetHistory{after_seq: cursor}`.
//!
//! Two values are kept per conversation:
//!
//! - **queued**: the highest seq handed to the event queue. It drives
//!   deduplication and is what Sync and Resume send, so that messages still
//!   waiting in the queue are not fetched again.
//! - **delivered**: the highest seq the app has taken out of the queue
//!   ([`Cursors::delivered`]). It is what [`Cursors::get`] and
//!   [`Cursors::all`] report for the app to persist, so that a message the
//!   app never saw is not counted as received.
//!
//! **Conversations without a cursor.** A conversation the client has no entry
//! for starts at the first message seen: a push with seq n sets the cursor to
//! n − 1, so joining a busy group does not download its whole history. A
//! conversation reported by a Sync or Resume gap starts at the gap instead
//! ([`Cursors::begin_gap`]; the server reports conversations missing from the
//! client's cursors from seq 1), and one the client created starts at 0
//! ([`Cursors::start`]). Restore saved cursors with [`Cursors::set`] to
//! resume exactly where the app stopped.

use std::collections::{BTreeMap, HashMap};

use chat_protocol::pb;

#[derive(Debug, Default)]
struct Track {
    queued: u64,
    delivered: u64,
    /// Highest seq seen, held or not: anything between `queued` and it is
    /// missing, even when the hold limit dropped the messages that said so.
    seen: u64,
    held: BTreeMap<u64, pb::Message>,
}

impl Track {
    fn at(cursor: u64) -> Self {
        Self {
            queued: cursor,
            delivered: cursor,
            seen: cursor,
            held: BTreeMap::new(),
        }
    }
}

/// What [`Cursors::offer`] decided.
#[derive(Debug, Default, PartialEq)]
pub struct Offered {
    /// Messages to hand to the app now, in seq order.
    pub emit: Vec<pb::Message>,
    /// A gap to fetch: messages after this seq are missing.
    pub missing_after: Option<u64>,
}

/// The cursors of every conversation the client tracks.
#[derive(Debug)]
pub struct Cursors {
    tracks: HashMap<u64, Track>,
    max_held: usize,
}

impl Cursors {
    /// Tracking with at most `max_held` out-of-order messages held per
    /// conversation; further ones are dropped and must be fetched again.
    pub fn new(max_held: usize) -> Self {
        Self {
            tracks: HashMap::new(),
            max_held,
        }
    }

    /// The delivered cursor of `conversation` (0 if untracked): every
    /// message up to it has been taken by the app.
    pub fn get(&self, conversation: u64) -> u64 {
        self.tracks.get(&conversation).map_or(0, |t| t.delivered)
    }

    /// The queued cursor of `conversation` (0 if untracked).
    pub fn queued(&self, conversation: u64) -> u64 {
        self.tracks.get(&conversation).map_or(0, |t| t.queued)
    }

    /// Whether `conversation` has a cursor.
    pub fn is_tracked(&self, conversation: u64) -> bool {
        self.tracks.contains_key(&conversation)
    }

    /// Whether messages of `conversation` beyond its cursor were seen (held,
    /// or dropped over the hold limit): a gap remains to be fetched.
    pub fn has_gap(&self, conversation: u64) -> bool {
        self.tracks
            .get(&conversation)
            .is_some_and(|t| t.seen > t.queued)
    }

    /// Sets a cursor, e.g. restored from the app's storage. Never moves it
    /// backwards (that would re-deliver messages the app has).
    pub fn set(&mut self, conversation: u64, seq: u64) {
        let t = self.tracks.entry(conversation).or_default();
        t.queued = t.queued.max(seq);
        t.delivered = t.delivered.max(seq);
        t.seen = t.seen.max(seq);
        t.held.retain(|&s, _| s > seq);
    }

    /// Starts tracking `conversation` at `cursor` unless it is tracked.
    pub fn start(&mut self, conversation: u64, cursor: u64) {
        self.tracks
            .entry(conversation)
            .or_insert_with(|| Track::at(cursor));
    }

    /// A Sync or Resume gap begins at `from_seq`: track the conversation
    /// from there if it is new, and skip ahead if the server says nothing is
    /// missing below `from_seq` (it only reports what it still has).
    pub fn begin_gap(&mut self, conversation: u64, from_seq: u64) {
        let base = from_seq.saturating_sub(1);
        match self.tracks.get_mut(&conversation) {
            None => {
                self.tracks.insert(conversation, Track::at(base));
            }
            Some(t) if t.queued < base => {
                t.queued = base;
                t.delivered = t.delivered.max(base);
                t.seen = t.seen.max(base);
                t.held.retain(|&s, _| s > base);
            }
            Some(_) => {}
        }
    }

    /// Forgets a conversation (the user is no longer a member).
    pub fn remove(&mut self, conversation: u64) {
        self.tracks.remove(&conversation);
    }

    /// The app took message `seq` of `conversation` from the queue. Messages
    /// leave the queue in seq order, so this is the new delivered cursor.
    pub fn delivered(&mut self, conversation: u64, seq: u64) {
        if let Some(t) = self.tracks.get_mut(&conversation) {
            t.delivered = t.delivered.max(seq);
        }
    }

    /// Every delivered cursor, ordered by conversation, for the app to save.
    pub fn all(&self) -> Vec<pb::Cursor> {
        self.collect(|t| t.delivered)
    }

    /// Every queued cursor, ordered by conversation, for Sync and Resume.
    pub fn all_queued(&self) -> Vec<pb::Cursor> {
        self.collect(|t| t.queued)
    }

    fn collect(&self, seq: impl Fn(&Track) -> u64) -> Vec<pb::Cursor> {
        let mut v: Vec<pb::Cursor> = self
            .tracks
            .iter()
            .map(|(&conversation_id, t)| pb::Cursor {
                conversation_id,
                seq: seq(t),
            })
            .collect();
        v.sort_by_key(|c| c.conversation_id);
        v
    }

    /// A message arrived (push, sync or history page).
    pub fn offer(&mut self, m: pb::Message) -> Offered {
        let max_held = self.max_held;
        let t = self
            .tracks
            .entry(m.conversation_id)
            .or_insert_with(|| Track::at(m.seq.saturating_sub(1)));
        let mut out = Offered::default();
        if m.seq <= t.queued {
            return out;
        }
        t.seen = t.seen.max(m.seq);
        if m.seq > t.queued + 1 {
            if t.held.len() < max_held || t.held.contains_key(&m.seq) {
                t.held.insert(m.seq, m);
            }
            out.missing_after = Some(t.queued);
            return out;
        }
        t.queued = m.seq;
        out.emit.push(m);
        while let Some(next) = t.held.remove(&(t.queued + 1)) {
            t.queued = next.seq;
            out.emit.push(next);
        }
        if t.seen > t.queued {
            out.missing_after = Some(t.queued);
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
        assert_eq!(c.queued(1), 2);
    }

    #[test]
    fn a_gap_holds_later_messages_until_filled() {
        let mut c = Cursors::new(100);
        c.start(1, 2);
        let o = c.offer(msg(1, 5));
        assert!(o.emit.is_empty());
        assert_eq!(o.missing_after, Some(2));
        assert_eq!(c.offer(msg(1, 6)).missing_after, Some(2));
        assert!(c.has_gap(1));
        // The same held message again is still a gap, not an emission.
        assert_eq!(c.offer(msg(1, 6)).missing_after, Some(2));
        let o = c.offer(msg(1, 3));
        assert_eq!(seqs(&o), vec![3]);
        assert_eq!(o.missing_after, Some(3), "4 is still missing");
        let o = c.offer(msg(1, 4));
        assert_eq!(seqs(&o), vec![4, 5, 6]);
        assert_eq!(o.missing_after, None);
        assert_eq!(c.queued(1), 6);
        assert!(!c.has_gap(1));
        // A history page overlapping what was held emits nothing twice.
        for s in 3..=6 {
            assert_eq!(c.offer(msg(1, s)), Offered::default());
        }
    }

    #[test]
    fn conversations_are_independent() {
        let mut c = Cursors::new(100);
        c.start(1, 0);
        c.start(2, 0);
        assert_eq!(c.offer(msg(1, 3)).missing_after, Some(0));
        assert_eq!(seqs(&c.offer(msg(2, 1))), vec![1]);
        assert_eq!((c.queued(1), c.queued(2)), (0, 1));
    }

    #[test]
    fn unknown_conversations_start_at_their_first_message() {
        let mut c = Cursors::new(100);
        assert!(!c.is_tracked(9));
        assert_eq!(seqs(&c.offer(msg(9, 40))), vec![40]);
        assert_eq!(c.queued(9), 40);
        // Nothing before 40 is considered missing.
        assert_eq!(c.offer(msg(9, 12)), Offered::default());
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
    fn a_sync_gap_starts_a_new_conversation_at_the_gap() {
        let mut c = Cursors::new(100);
        c.begin_gap(7, 1);
        assert_eq!(seqs(&c.offer(msg(7, 1))), vec![1]);
        // A push far ahead is a gap, not a fresh start.
        assert_eq!(c.offer(msg(7, 5)).missing_after, Some(1));
    }

    #[test]
    fn a_sync_gap_never_moves_a_cursor_back_but_skips_what_the_server_lacks() {
        let mut c = Cursors::new(100);
        c.set(3, 10);
        c.begin_gap(3, 4);
        assert_eq!(c.queued(3), 10);
        c.offer(msg(3, 30));
        c.begin_gap(3, 20);
        assert_eq!((c.queued(3), c.get(3)), (19, 19));
        assert!(c.has_gap(3));
        assert_eq!(seqs(&c.offer(msg(3, 20))), vec![20]);
    }

    #[test]
    fn delivered_trails_queued_until_the_app_takes_messages() {
        let mut c = Cursors::new(100);
        c.start(1, 0);
        c.offer(msg(1, 1));
        c.offer(msg(1, 2));
        assert_eq!((c.queued(1), c.get(1)), (2, 0));
        c.delivered(1, 1);
        assert_eq!(c.get(1), 1);
        assert_eq!(c.all()[0].seq, 1);
        assert_eq!(c.all_queued()[0].seq, 2);
        // A first push initialises both, so an app saving cursors before it
        // read anything does not ask for the conversation's whole history.
        c.offer(msg(2, 50));
        assert_eq!(c.get(2), 49);
        // Untracked conversations are ignored.
        c.delivered(99, 5);
        assert!(!c.is_tracked(99));
    }

    #[test]
    fn removed_conversations_are_forgotten() {
        let mut c = Cursors::new(100);
        c.set(4, 8);
        c.remove(4);
        assert!(!c.is_tracked(4));
        assert!(c.all().is_empty());
    }

    #[test]
    fn held_messages_are_bounded() {
        let mut c = Cursors::new(2);
        c.start(1, 0);
        for s in 3..10 {
            c.offer(msg(1, s));
        }
        assert_eq!(seqs(&c.offer(msg(1, 1))), vec![1]);
        let o = c.offer(msg(1, 2));
        assert_eq!(seqs(&o), vec![2, 3, 4], "5.. were dropped");
        assert_eq!(o.missing_after, Some(4), "and are still known missing");
        assert!(c.has_gap(1));
        for s in 5..10 {
            c.offer(msg(1, s));
        }
        assert!(!c.has_gap(1));
    }
}
