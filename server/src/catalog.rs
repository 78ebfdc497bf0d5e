//! Conversation creation and the read side: history, sync, the conversation
//! list. Reads come from the store, which holds exactly what has been
//! acknowledged; the owner shard's in-memory state is never consulted, so
//! these run on any shard's blocking pool.
//!
//! Every function here blocks; callers use the blocking pool.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use chat_protocol::pb::{self, ConversationKind, Role};
use chat_protocol::{ErrorCode, UserId};
use prost::Message;

use crate::clock::Clock;
use crate::config::Config;
use crate::media::Media;
use crate::records::{ConversationRecord, MemberRecord, UserConversationRecord};
use crate::reply::Refusal;
use crate::storage::Store;
use crate::storage::writer::{Batch, Writer};

/// Default and largest history page (`spec/README.md`, "Limits").
pub const HISTORY_PAGE_DEFAULT: u32 = 50;

/// See [`HISTORY_PAGE_DEFAULT`].
pub const HISTORY_PAGE_MAX: u32 = 200;

/// Default and largest number of messages per conversation in a sync reply.
pub const SYNC_PER_CONVERSATION_DEFAULT: u32 = 100;

/// See [`SYNC_PER_CONVERSATION_DEFAULT`].
pub const SYNC_PER_CONVERSATION_MAX: u32 = 1000;

/// Default and largest conversation list page.
pub const LIST_DEFAULT: u32 = 50;

/// See [`LIST_DEFAULT`].
pub const LIST_MAX: u32 = 500;

/// Mentions counted per conversation in the list at most
/// (`ConversationSummary.mention_count`); a client shows more as "1000+".
pub const MENTION_COUNT_MAX: u64 = 1000;

/// Longest title, in characters.
pub const TITLE_MAX_CHARS: usize = 128;

/// Bytes of messages one history or sync reply carries at most, so that it
/// fits a frame (`reply::encode` refuses larger ones) with room for the
/// rest of the reply. A page cut short says `has_more`, a gap `truncated`.
pub const REPLY_MESSAGE_BYTES: usize = chat_protocol::DEFAULT_MAX_FRAME_BYTES - 64 * 1024;

/// Room set aside per sync gap for its own fields (about 15 bytes encoded
/// without messages).
const GAP_OVERHEAD_BYTES: usize = 48;

/// Keeps the leading messages that fit in `budget` bytes (at least one if
/// `at_least_one`); returns the bytes kept and whether any were dropped.
fn fit(messages: &mut Vec<pb::Message>, budget: usize, at_least_one: bool) -> (usize, bool) {
    let mut used = 0;
    let mut keep = 0;
    for m in messages.iter() {
        // The message plus its field tag and length prefix.
        let size = m.encoded_len() + 8;
        if used + size > budget && !(at_least_one && keep == 0) {
            break;
        }
        used += size;
        keep += 1;
    }
    let cut = keep < messages.len();
    messages.truncate(keep);
    (used, cut)
}

fn clamp(requested: u32, default: u32, max: u32) -> usize {
    (if requested == 0 {
        default
    } else {
        requested.min(max)
    }) as usize
}

/// The client-facing view of a conversation.
/// `banned` (ascending) is shown to owners and admins only.
pub fn view(
    id: u64,
    record: &ConversationRecord,
    members: &[(u64, i32)],
    banned: &[u64],
    last_seq: u64,
    me: u64,
) -> pb::Conversation {
    let is_channel = record.kind == ConversationKind::Channel as i32;
    let my_role = members
        .iter()
        .find(|(u, _)| *u == me)
        .map_or(Role::Unspecified as i32, |(_, r)| *r);
    let moderator = my_role == Role::Owner as i32 || my_role == Role::Admin as i32;
    pb::Conversation {
        conversation_id: id,
        kind: record.kind,
        title: record.title.clone(),
        created_at_ms: record.created_at_ms,
        created_by: record.created_by,
        last_seq,
        my_role,
        member_count: members.len() as u32,
        members: if is_channel {
            Vec::new()
        } else {
            members
                .iter()
                .map(|&(user_id, role)| pb::Member { user_id, role })
                .collect()
        },
        banned_ids: if moderator {
            banned.to_vec()
        } else {
            Vec::new()
        },
    }
}

/// The home key of a CreateConversation that would create a direct chat,
/// which is unique per pair.
pub fn direct_key(me: u64, req: &pb::CreateConversation) -> Option<crate::home::Key> {
    match req.member_ids.as_slice() {
        &[other] if req.kind == ConversationKind::Direct as i32 && other != me => {
            Some(crate::home::Key::direct(UserId(me), UserId(other)))
        }
        _ => None,
    }
}

/// The catalog handle: what creating and reading conversations needs (the
/// store, the writer, media signing, the conversation id allocator, the
/// clock and the group size limit) and nothing else; cheap to clone into a
/// blocking closure.
#[derive(Debug, Clone)]
pub struct Catalog {
    store: Store,
    writer: Writer,
    media: Arc<Media>,
    last_conversation_id: Arc<AtomicU64>,
    /// Cluster mode: this node's number, which the ids it gives out carry
    /// ([`crate::idgen::next_id`]); 0 on a single node.
    node: u16,
    clock: Clock,
    max_group_members: usize,
}

impl Catalog {
    /// The handle over `store` and `writer`, with the settings of
    /// `config`; conversation ids continue after `last_conversation_id`.
    pub fn new(
        config: &Config,
        store: Store,
        writer: Writer,
        media: Arc<Media>,
        last_conversation_id: u64,
    ) -> Self {
        Self {
            store,
            writer,
            media,
            last_conversation_id: Arc::new(AtomicU64::new(last_conversation_id)),
            node: config.node_number(),
            clock: config.clock.clone(),
            max_group_members: config.max_group_members,
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A fresh conversation id.
    fn next_conversation_id(&self) -> u64 {
        crate::idgen::next_id(&self.last_conversation_id, self.node)
    }

    /// Refuses a user who is not a member, telling apart a conversation that
    /// does not exist.
    pub fn require_member(
        &self,
        user: u64,
        conversation: u64,
    ) -> Result<UserConversationRecord, Refusal> {
        if let Some(m) = self.store.membership(user, conversation)? {
            return Ok(m);
        }
        if self.store.conversation(conversation)?.is_some() {
            Err(Refusal::new(
                ErrorCode::NotAMember,
                "not a member of this conversation",
            ))
        } else {
            Err(Refusal::new(ErrorCode::NotFound, "no such conversation"))
        }
    }

    /// Creates a direct chat, group or channel (`spec/messages.md`,
    /// "CreateConversation"). A direct chat that already exists is returned
    /// instead of created again: run a direct chat's creation only at the home
    /// of its [`direct_key`], in its lane, which makes that check-then-write
    /// safe.
    pub fn create(
        &self,
        me: u64,
        req: &pb::CreateConversation,
    ) -> Result<pb::Conversation, Refusal> {
        let kind = ConversationKind::try_from(req.kind)
            .map_err(|_| Refusal::new(ErrorCode::InvalidArgument, "unknown conversation kind"))?;
        if req.title.chars().count() > TITLE_MAX_CHARS {
            return Err(Refusal::new(ErrorCode::InvalidArgument, "title too long"));
        }
        let mut others: Vec<u64> = Vec::new();
        let mut seen = HashSet::new();
        for &u in &req.member_ids {
            if u != me && seen.insert(u) {
                others.push(u);
            }
        }
        match kind {
            ConversationKind::Direct if others.len() != 1 || req.member_ids.len() != 1 => {
                return Err(Refusal::new(
                    ErrorCode::InvalidArgument,
                    "a direct conversation has exactly one other user",
                ));
            }
            ConversationKind::Group if others.len() + 1 > self.max_group_members => {
                return Err(Refusal::new(ErrorCode::MemberLimit, "too many members"));
            }
            ConversationKind::Channel if !others.is_empty() => {
                return Err(Refusal::new(
                    ErrorCode::InvalidArgument,
                    "channel subscribers join with SubscribeChannel",
                ));
            }
            ConversationKind::Unspecified => {
                return Err(Refusal::new(
                    ErrorCode::InvalidArgument,
                    "conversation kind required",
                ));
            }
            _ => {}
        }
        for &u in &others {
            if self.store.user(u)?.is_none_or(|r| r.deleted) {
                return Err(Refusal::new(ErrorCode::NotFound, format!("no user {u}")));
            }
        }
        let record = ConversationRecord {
            kind: kind as i32,
            title: if kind == ConversationKind::Direct {
                String::new()
            } else {
                req.title.clone()
            },
            created_at_ms: self.now_ms(),
            created_by: me,
        };
        let (my_role, other_role) = match kind {
            ConversationKind::Direct => (Role::Member, Role::Member),
            _ => (Role::Owner, Role::Member),
        };
        let mut members = vec![(me, my_role as i32)];
        members.extend(others.iter().map(|&u| (u, other_role as i32)));

        // Direct chats are unique per pair: this runs in the pair's lane,
        // where blocks of the pair are written too.
        if kind == ConversationKind::Direct {
            if let Some(&other) = others.first() {
                if self.store.blocked_either(me, other)? {
                    return Err(Refusal::new(
                        ErrorCode::Blocked,
                        "one of the two users blocked the other",
                    ));
                }
                if let Some(existing) = self.store.direct(me, other)? {
                    return self.get(me, existing);
                }
            }
        }
        let id = self.next_conversation_id();
        let mut batch = Batch::new();
        batch.put_conversation(id, &record);
        for &(user, role) in &members {
            let m = MemberRecord {
                role,
                ..Default::default()
            };
            batch.add_member(id, user, &m);
        }
        if let (ConversationKind::Direct, Some(&other)) = (kind, others.first()) {
            batch.put_direct(me, other, id);
            let key = format!("direct:{}:{}", me.min(other), me.max(other));
            match self.writer.claim_blocking(&key, batch) {
                // Created at the same moment on another node: that one is
                // the pair's, and the store holds it now.
                Err(crate::storage::StorageError::Taken) => {
                    let existing = self.store.direct(me, other)?.ok_or_else(|| {
                        Refusal::new(ErrorCode::ServerBusy, "direct chat being created; retry")
                    })?;
                    return self.get(me, existing);
                }
                other => other?,
            };
            return Ok(view(id, &record, &members, &[], 0, me));
        }
        self.writer.write_blocking(batch)?;
        Ok(view(id, &record, &members, &[], 0, me))
    }

    /// A conversation as stored, for a member.
    pub fn get(&self, me: u64, conversation: u64) -> Result<pb::Conversation, Refusal> {
        self.require_member(me, conversation)?;
        let record = self
            .store
            .conversation(conversation)?
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "no such conversation"))?;
        let members: Vec<(u64, i32)> = self
            .store
            .members(conversation)?
            .into_iter()
            .map(|(u, m)| (u, m.role))
            .collect();
        let last_seq = self.store.last_seq(conversation)?;
        let banned = self.store.bans(conversation, crate::owner::BANS_MAX)?;
        Ok(view(conversation, &record, &members, &banned, last_seq, me))
    }

    /// A page of history (`spec/messages.md`, "GetHistory").
    pub fn history(&self, me: u64, req: &pb::GetHistory) -> Result<pb::MessagePage, Refusal> {
        if req.before_seq != 0 && req.after_seq.is_some() {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "give before_seq or after_seq, not both",
            ));
        }
        self.require_member(me, req.conversation_id)?;
        let limit = clamp(req.limit, HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX);
        let mut messages = if let Some(after) = req.after_seq {
            self.store
                .messages_after(req.conversation_id, after, limit + 1)?
        } else {
            self.store
                .messages_before(req.conversation_id, req.before_seq, limit + 1)?
        };
        let mut has_more = messages.len() > limit;
        messages.truncate(limit);
        self.store
            .attach_reactions(req.conversation_id, me, &mut messages)?;
        self.media.sign_messages(&mut messages, self.now_ms());
        let (_, cut) = fit(&mut messages, REPLY_MESSAGE_BYTES, true);
        has_more |= cut;
        Ok(pb::MessagePage {
            conversation_id: req.conversation_id,
            messages,
            has_more,
            last_seq: self.store.last_seq(req.conversation_id)?,
        })
    }

    /// What the client missed (`spec/messages.md`, "Sync").
    pub fn sync(
        &self,
        me: u64,
        cursors: &[pb::Cursor],
        limit: u32,
    ) -> Result<pb::SyncResult, Refusal> {
        let limit = clamp(
            limit,
            SYNC_PER_CONVERSATION_DEFAULT,
            SYNC_PER_CONVERSATION_MAX,
        );
        let mut given: HashMap<u64, u64> = HashMap::with_capacity(cursors.len());
        for c in cursors {
            let e = given.entry(c.conversation_id).or_insert(0);
            *e = (*e).max(c.seq);
        }
        let mut open = Vec::new();
        for (conversation, _) in self.store.user_conversations(me)? {
            let cursor = given.remove(&conversation).unwrap_or(0);
            let last_seq = self.store.last_seq(conversation)?;
            if last_seq > cursor {
                open.push((conversation, cursor, last_seq));
            }
        }
        let mut result = pb::SyncResult::default();
        // Message bytes left for this reply once every gap's own fields are
        // set aside (users in thousands of conversations); gaps past it are
        // reported without messages (truncated) and fetched with GetHistory.
        let mut budget = REPLY_MESSAGE_BYTES.saturating_sub(open.len() * GAP_OVERHEAD_BYTES);
        for (conversation, cursor, last_seq) in open {
            let mut messages = if budget > 0 {
                self.store.messages_after(conversation, cursor, limit + 1)?
            } else {
                Vec::new()
            };
            let mut truncated = messages.len() > limit || budget == 0;
            messages.truncate(limit);
            self.store
                .attach_reactions(conversation, me, &mut messages)?;
            self.media.sign_messages(&mut messages, self.now_ms());
            let (used, cut) = fit(&mut messages, budget, false);
            budget = if cut { 0 } else { budget - used };
            truncated |= cut;
            result.gaps.push(pb::Gap {
                conversation_id: conversation,
                from_seq: cursor + 1,
                to_seq: last_seq,
                messages,
                truncated,
            });
        }
        // Cursors left over name conversations the user is no longer in.
        let mut removed: Vec<u64> = given.into_keys().collect();
        removed.sort_unstable();
        result.removed_conversation_ids = removed;
        Ok(result)
    }

    /// The user's conversations, most recently active first, with unread counts
    /// (`spec/messages.md`, "ListConversations").
    pub fn list(
        &self,
        me: u64,
        req: &pb::ListConversations,
    ) -> Result<pb::ConversationList, Refusal> {
        let limit = clamp(req.limit, LIST_DEFAULT, LIST_MAX);
        let mut all = Vec::new();
        for (conversation, _) in self.store.user_conversations(me)? {
            let Some(record) = self.store.conversation(conversation)? else {
                continue;
            };
            let mut last_message = self.store.last_message(conversation)?;
            if let Some(m) = last_message.as_mut() {
                self.store
                    .attach_reactions(conversation, me, std::slice::from_mut(m))?;
            }
            self.media
                .sign_messages(last_message.as_mut(), self.now_ms());
            let last_seq = last_message.as_ref().map_or(0, |m| m.seq);
            let last_activity_ms = last_message
                .as_ref()
                .map_or(record.created_at_ms, |m| m.sent_at_ms);
            if req.before_activity_ms != 0 && last_activity_ms >= req.before_activity_ms {
                continue;
            }
            let mine = self.store.member(conversation, me)?.unwrap_or_default();
            all.push(pb::ConversationSummary {
                conversation_id: conversation,
                kind: record.kind,
                title: record.title,
                last_seq,
                last_activity_ms,
                last_message,
                read_seq: mine.read_seq,
                delivered_seq: mine.delivered_seq,
                unread_count: last_seq.saturating_sub(mine.read_seq),
                my_role: mine.role,
                mention_count: self.store.mention_count(
                    me,
                    conversation,
                    mine.read_seq,
                    MENTION_COUNT_MAX,
                )?,
                notification_level: mine.notification_level,
                muted_until_ms: mine.muted_until_ms,
            });
        }
        all.sort_by(|a, b| {
            b.last_activity_ms
                .cmp(&a.last_activity_ms)
                .then(b.conversation_id.cmp(&a.conversation_id))
        });
        let more = all.len() > limit;
        all.truncate(limit);
        let next_before_activity_ms = if more {
            all.last().map_or(0, |c| c.last_activity_ms)
        } else {
            0
        };
        Ok(pb::ConversationList {
            conversations: all,
            next_before_activity_ms,
        })
    }
}
