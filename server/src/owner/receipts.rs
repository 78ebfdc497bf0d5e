//! Receipt cursors, aggregated receipt counts and typing indicators.
//!
//! Cursors (`delivered_seq`, `read_seq`) live in the members' records and in
//! the owner's memory. They only move forward. A read is written before it
//! is answered, so the user's other devices see the new unread count at
//! once. Deliveries, which every device reports for every message, are
//! written by the periodic cursor flush (`CURSOR_FLUSH_INTERVAL`): one write
//! per changed member per interval rather than one per receipt; a crash can
//! move a delivered cursor back by at most that interval, which re-reports a
//! delivery, never loses a message. Counts for a message are computed from
//! the cursors, so a group needs no write per member per message
//! (`spec/messages.md`, "GetReceipts").
//!
//! Typing is never stored. Events are debounced per member and go to the
//! other members' sessions as shed-first ephemeral frames.

use hashbrown::HashMap;
use std::time::Duration;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, ReceiptKind, server_frame::Body};

use super::{Conv, Effect, Env, Origin, Output, Owner, Pending, Slot, refusal_entry};
use crate::reply::{self, Refusal};
use crate::storage::writer::Batch;

/// Cursor changes are written at most this often per conversation.
pub const CURSOR_FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// Conversations with at most this many members push a ReceiptEvent to the
/// other members on every cursor move; larger groups and channels do not
/// (members ask with GetReceipts), which keeps receipts from turning into
/// members² pushes.
pub const RECEIPT_EVENTS_MAX_MEMBERS: usize = 32;

/// How long a typing indicator lives without a refresh (announced in
/// `TypingEvent.expires_in_ms`).
pub const TYPING_TTL_MS: u64 = 5_000;

/// A refresh of an unchanged typing state is forwarded at most this often.
pub const TYPING_DEBOUNCE_MS: u64 = 1_000;

/// Typing indicators of one conversation. Sans-IO: times are arguments.
///
/// A member is typing from a `Typing{active: true}` until `active: false`,
/// or until [`TYPING_TTL_MS`] pass without a refresh, when the server itself
/// tells the others that it stopped. Refreshes are forwarded at most every
/// [`TYPING_DEBOUNCE_MS`], so that receivers extend their own timers.
#[derive(Debug, Default)]
pub struct Typing {
    /// Typing members: (last forwarded, last refreshed), Unix ms.
    users: HashMap<u64, (u64, u64)>,
}

impl Typing {
    /// A member reported typing (`active`) or stopping. Returns the state to
    /// forward to the others, if any.
    pub fn update(&mut self, user: u64, active: bool, now_ms: u64) -> Option<bool> {
        match (self.users.get_mut(&user), active) {
            (None, true) => {
                self.users.insert(user, (now_ms, now_ms));
                Some(true)
            }
            (Some((forwarded, refreshed)), true) => {
                *refreshed = now_ms;
                if now_ms >= *forwarded + TYPING_DEBOUNCE_MS {
                    *forwarded = now_ms;
                    Some(true)
                } else {
                    None
                }
            }
            (Some(_), false) => {
                self.users.remove(&user);
                Some(false)
            }
            (None, false) => None,
        }
    }

    /// Members whose indicator ran out without a refresh; they are no
    /// longer typing.
    pub fn expire(&mut self, now_ms: u64) -> Vec<u64> {
        let expired: Vec<u64> = self
            .users
            .iter()
            .filter(|(_, (_, refreshed))| now_ms >= refreshed + TYPING_TTL_MS)
            .map(|(&u, _)| u)
            .collect();
        for u in &expired {
            self.users.remove(u);
        }
        expired
    }

    /// Forgets a member (who left the conversation).
    pub fn remove(&mut self, user: u64) {
        self.users.remove(&user);
    }

    /// Whether nobody is typing.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// A TypingEvent for every member but the typist.
fn typing_event(id: u64, conv: &Conv, user: u64, active: bool) -> Effect {
    let others: std::sync::Arc<[u64]> = conv
        .members
        .keys()
        .copied()
        .filter(|&u| u != user)
        .collect();
    let event = reply::push(Body::TypingEvent(pb::TypingEvent {
        conversation_id: id,
        user_id: user,
        active,
        expires_in_ms: TYPING_TTL_MS as u32,
    }));
    Effect::Ephemeral(others, event)
}

fn done(origin: Origin) -> Effect {
    if origin.request_id == 0 {
        Effect::Release(origin)
    } else {
        Effect::Reply(
            origin,
            reply::answer(origin.request_id, Ok(Body::Done(pb::Done {}))),
        )
    }
}

/// Aggregated counts for one message.
pub(super) fn counts(
    id: u64,
    conv: &Conv,
    user: u64,
    seq: u64,
) -> Result<pb::ReceiptCounts, Refusal> {
    if !conv.members.contains_key(&user) {
        return Err(Refusal::new(
            ErrorCode::NotAMember,
            "not a member of this conversation",
        ));
    }
    if seq == 0 || seq > conv.seq.last_seq() {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            "no message with this seq",
        ));
    }
    let (mut delivered, mut read) = (0u32, 0u32);
    for m in conv.members.values() {
        delivered += u32::from(m.delivered_seq >= seq);
        read += u32::from(m.read_seq >= seq);
    }
    Ok(pb::ReceiptCounts {
        conversation_id: id,
        seq,
        member_count: conv.members.len() as u32,
        delivered_count: delivered,
        read_count: read,
    })
}

impl Env {
    /// MarkDelivered / MarkRead.
    pub(super) fn advance_cursor(
        &mut self,
        id: u64,
        conv: &mut Conv,
        origin: Origin,
        user: u64,
        kind: ReceiptKind,
        seq: u64,
    ) -> Pending {
        // A client can only have seen durable messages.
        let seq = seq.min(conv.seq.durable_seq());
        let Some(m) = conv.members.get_mut(&user) else {
            return refusal_entry(
                origin,
                ErrorCode::NotAMember,
                "not a member of this conversation",
            );
        };
        let before = match kind {
            ReceiptKind::Read => m.read_seq,
            _ => m.delivered_seq,
        };
        let moved = match kind {
            ReceiptKind::Read if seq > m.read_seq => {
                m.read_seq = seq;
                m.delivered_seq = m.delivered_seq.max(seq);
                true
            }
            ReceiptKind::Delivered if seq > m.delivered_seq => {
                m.delivered_seq = seq;
                true
            }
            _ => false,
        };
        let mut effects = Vec::new();
        let mut batch = Batch::new();
        if moved {
            if kind == ReceiptKind::Read {
                batch.put_member(id, user, m);
                conv.dirty_cursors.remove(&user);
            } else if conv.dirty_cursors.insert(user) {
                self.cursor_dirty.insert(id);
            }
            // Small conversations: every member hears. Larger groups: the
            // reader's own devices and the senders of the messages the
            // cursor moved over (those still in the recent-senders ring).
            // Channels: the reader's devices only.
            let hearing: std::sync::Arc<[u64]> = if conv.is_channel() {
                std::sync::Arc::from([user])
            } else if conv.members.len() <= RECEIPT_EVENTS_MAX_MEMBERS {
                conv.recipients()
            } else {
                let mut users = conv.senders_between(before, seq);
                users.push(user);
                users.sort_unstable();
                users.dedup();
                users.into()
            };
            {
                let event = reply::push(Body::ReceiptEvent(pb::ReceiptEvent {
                    conversation_id: id,
                    user_id: user,
                    kind: kind as i32,
                    seq,
                    at_ms: self.now_ms,
                }));
                effects.push(Effect::Fanout(hearing, event));
            }
        }
        effects.push(done(origin));
        Pending { batch, effects }
    }

    /// Typing: forwarded to the other members unless it repeats the last
    /// forwarded state within the debounce interval.
    pub(super) fn typing(
        &mut self,
        id: u64,
        conv: &mut Conv,
        origin: Origin,
        user: u64,
        active: bool,
    ) -> Pending {
        let mut effects = vec![Effect::Release(origin)];
        if conv.members.contains_key(&user) {
            if let Some(state) = conv.typing.update(user, active, self.now_ms) {
                effects.push(typing_event(id, conv, user, state));
                if state {
                    self.typing_active.insert(id);
                }
            }
        }
        Pending::effects(effects)
    }
}

impl Owner {
    /// Tells the others about typing indicators that ran out.
    pub(super) fn expire_typing(&mut self) {
        let now = self.env.now_ms;
        let mut effects = Vec::new();
        let mut idle = Vec::new();
        for &id in &self.env.typing_active {
            let Some(Slot::Ready(conv)) = self.slots.get_mut(&id) else {
                idle.push(id);
                continue;
            };
            for user in conv.typing.expire(now) {
                effects.push(typing_event(id, conv, user, false));
            }
            if conv.typing.is_empty() {
                idle.push(id);
            }
        }
        for id in idle {
            self.env.typing_active.remove(&id);
        }
        if !effects.is_empty() {
            self.out
                .push_back(Output::Commit(0, Pending::effects(effects)));
        }
    }

    /// Writes the changed cursors of every conversation that has some.
    pub fn flush_cursors(&mut self) {
        if self.env.cursor_dirty.is_empty() {
            return;
        }
        // One entry per conversation: in cluster mode each goes to its
        // conversation's partition.
        for id in std::mem::take(&mut self.env.cursor_dirty) {
            let Some(conv) = self.ready_mut(id) else {
                continue;
            };
            let mut batch = Batch::new();
            for user in conv.dirty_cursors.drain() {
                if let Some(m) = conv.members.get(&user) {
                    batch.put_member(id, user, m);
                }
            }
            if !batch.is_empty() {
                self.out.push_back(Output::Commit(
                    id,
                    Pending {
                        batch,
                        effects: Vec::new(),
                    },
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_is_debounced_and_expires_without_refresh() {
        let mut t = Typing::default();
        assert_eq!(t.update(1, true, 0), Some(true));
        assert_eq!(t.update(1, true, 300), None, "refresh within the debounce");
        assert_eq!(t.update(1, true, TYPING_DEBOUNCE_MS), Some(true));
        assert_eq!(t.update(2, false, 10), None, "stopping without starting");
        assert!(t.expire(TYPING_DEBOUNCE_MS + TYPING_TTL_MS - 1).is_empty());
        assert_eq!(t.expire(TYPING_DEBOUNCE_MS + TYPING_TTL_MS), vec![1]);
        assert!(t.is_empty());
        assert_eq!(t.update(1, true, 9_000), Some(true));
        assert_eq!(t.update(1, false, 9_001), Some(false));
    }
}
