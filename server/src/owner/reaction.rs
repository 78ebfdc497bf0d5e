//! Reactions: any member adds or removes an emoji reaction to a USER
//! message (`spec/messages.md`, "React").
//!
//! A message's reactions are two kinds of record: its counts per emoji
//! (`reactions`, read with every history page) and each reacting user's
//! emoji (`reactors`, for "mine" and for adding twice being a no-op). The
//! route reads both with the message; the owner, the only writer, keeps the
//! versions it wrote last for the most recent [`RECENT_REACTIONS`] messages
//! and prefers them to what a route read before its own writes were in
//! (like `Conv::recent_deletions`). A reaction takes no seq: unread counts
//! do not move and no push notification is sent.

use std::collections::VecDeque;

use hashbrown::HashMap;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, MessageKind, server_frame::Body};

use super::{Conv, Effect, Env, Pending};
use crate::records::{ReactionCount, ReactionCounts, UserReactions};
use crate::reply::{self, Refusal};
use crate::storage::writer::Batch;

/// Longest reaction, in bytes of UTF-8 (an emoji with modifiers and joiners
/// fits).
pub const REACTION_MAX_BYTES: usize = 32;

/// Distinct emoji one message's reactions may hold; a new one past this is
/// refused with REACTION_LIMIT. Also bounds one user's reactions to it.
pub const REACTIONS_PER_MESSAGE_MAX: usize = 20;

/// Messages whose reaction records an owner remembers per loaded
/// conversation; older ones are read from the store.
const RECENT_REACTIONS: usize = 64;

/// Users whose reactions are remembered per remembered message; a message
/// with more forgets them all (and is read from the store again).
const RECENT_REACTORS: usize = 256;

/// A React request: the message and its reaction records as the route read
/// them from the store.
#[derive(Debug, Clone)]
pub struct Reacting {
    /// The message's seq.
    pub seq: u64,
    /// The emoji.
    pub emoji: String,
    /// Remove rather than add.
    pub remove: bool,
    /// The stored message (none: no such seq).
    pub target: Option<Box<pb::Message>>,
    /// Its reaction counts.
    pub counts: ReactionCounts,
    /// The caller's reactions to it.
    pub mine: UserReactions,
}

/// What the owner wrote last for one message.
#[derive(Debug, Default)]
struct Remembered {
    counts: ReactionCounts,
    users: HashMap<u64, UserReactions>,
}

/// The reaction records an owner wrote for its most recent messages.
#[derive(Debug, Default)]
pub(super) struct RecentReactions {
    by_seq: HashMap<u64, Remembered>,
    /// Seqs in `by_seq`, the least recently written first.
    order: VecDeque<u64>,
}

impl RecentReactions {
    fn remember(&mut self, seq: u64, user: u64, counts: ReactionCounts, mine: UserReactions) {
        if !self.by_seq.contains_key(&seq) {
            if self.order.len() == RECENT_REACTIONS {
                if let Some(old) = self.order.pop_front() {
                    self.by_seq.remove(&old);
                }
            }
            self.order.push_back(seq);
        }
        let entry = self.by_seq.entry(seq).or_default();
        entry.counts = counts;
        if entry.users.len() >= RECENT_REACTORS && !entry.users.contains_key(&user) {
            // Forget this message's users and counts alike: a later request
            // then goes by the store, which holds them, rather than by
            // counts without the users that make them.
            self.by_seq.remove(&seq);
            self.order.retain(|&s| s != seq);
            return;
        }
        entry.users.insert(user, mine);
    }
}

/// Refuses an emoji that is empty, too long or has control characters.
pub fn check_emoji(emoji: &str) -> Result<(), Refusal> {
    if emoji.is_empty() || emoji.len() > REACTION_MAX_BYTES {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            "a reaction is 1-32 bytes",
        ));
    }
    if emoji.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            "a reaction has no control or space characters",
        ));
    }
    Ok(())
}

impl Env {
    /// Adds or removes `user`'s reaction; adding one the user has, or
    /// removing one they have not, is done with nothing written.
    pub(super) fn react(
        &mut self,
        id: u64,
        conv: &mut Conv,
        user: u64,
        r: Reacting,
    ) -> Result<Pending, Refusal> {
        conv.role(user).ok_or_else(|| {
            Refusal::new(ErrorCode::NotAMember, "not a member of this conversation")
        })?;
        check_emoji(&r.emoji)?;
        let target = r
            .target
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "no message with this seq"))?;
        if target.kind != MessageKind::User as i32 {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "only user messages take reactions",
            ));
        }
        conv.check_not_blocked()?;
        if target.deleted || conv.recent_deletions.contains(&r.seq) {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                "a deleted message takes no reactions",
            ));
        }
        let (mut counts, mut mine) = match conv.reactions.by_seq.get(&r.seq) {
            Some(known) => (
                known.counts.clone(),
                known
                    .users
                    .get(&user)
                    .cloned()
                    .unwrap_or_else(|| r.mine.clone()),
            ),
            None => (r.counts, r.mine),
        };
        let had = mine.emoji.contains(&r.emoji);
        if had != r.remove {
            return Ok(Pending::default());
        }
        let at = counts.counts.iter().position(|c| c.emoji == r.emoji);
        if r.remove {
            mine.emoji.retain(|e| *e != r.emoji);
            if let Some(i) = at {
                if let Some(c) = counts.counts.get_mut(i) {
                    c.count = c.count.saturating_sub(1);
                }
                counts.counts.retain(|c| c.count > 0);
            }
        } else {
            let distinct = counts.counts.len();
            match at.and_then(|i| counts.counts.get_mut(i)) {
                Some(c) => c.count = c.count.saturating_add(1),
                None if distinct >= REACTIONS_PER_MESSAGE_MAX => {
                    return Err(Refusal::new(
                        ErrorCode::ReactionLimit,
                        "the message has the most distinct reactions it may have",
                    ));
                }
                None => counts.counts.push(ReactionCount {
                    emoji: r.emoji.clone(),
                    count: 1,
                }),
            }
            mine.emoji.push(r.emoji.clone());
        }
        let mut batch = Batch::new();
        batch.put_reaction_counts(id, r.seq, &counts);
        batch.put_user_reactions(id, r.seq, user, &mine);
        let event = pb::ReactionEvent {
            conversation_id: id,
            seq: r.seq,
            user_id: user,
            emoji: r.emoji,
            removed: r.remove,
            reactions: counts
                .counts
                .iter()
                .map(|c| pb::Reaction {
                    emoji: c.emoji.clone(),
                    count: c.count,
                    mine: false,
                })
                .collect(),
        };
        conv.reactions.remember(r.seq, user, counts, mine);
        let frame = reply::push(Body::ReactionEvent(event));
        Ok(Pending {
            batch,
            effects: vec![Effect::Fanout(conv.recipients(), frame)],
        })
    }
}
