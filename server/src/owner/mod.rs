//! The owner side of conversations: sequencing sends and membership changes.
//!
//! Each conversation is owned by one shard (`Placement::owner_of`), and on it
//! by one [`Owner`]. The owner is sans-IO, like the protocol crate: the
//! shell (`crate::shard`) hands it inputs (`handle_request`, the store's
//! answers in `handle_loaded` and `handle_keys`, `handle_durable`,
//! `handle_tick`), each with the time, and takes its outputs from
//! `poll_output` in order: store reads to run ([`Output::Load`],
//! [`Output::LookUp`]) and entries to commit ([`Output::Commit`]).
//!
//! Requests for a conversation are queued and applied strictly in arrival
//! order: a conversation is loaded from the store on first use, idempotency
//! keys the sequencer has forgotten are looked up in the store (in one batch
//! for everything queued), and only then does the sequencer assign seqs.
//! Every outcome becomes a [`Pending`] entry for the shard's commit loop, so
//! acks, refusals and pushes leave in the order the requests arrived and
//! only after the writes they depend on are durable.
//!
//! `sim` (tests) drives an owner with virtual time and an in-memory store,
//! so the rules (roles, idempotency, receipts, the delete race) are
//! deterministic unit tests.

mod edit;
mod effect;
mod membership;
mod moderation;
mod reaction;
mod receipts;
#[cfg(test)]
mod sim;

pub use effect::{Effect, Origin, Pending};
pub use reaction::{REACTION_MAX_BYTES, REACTIONS_PER_MESSAGE_MAX, Reacting, check_emoji};

pub use receipts::{
    CURSOR_FLUSH_INTERVAL, RECEIPT_EVENTS_MAX_MEMBERS, TYPING_DEBOUNCE_MS, TYPING_TTL_MS,
};

use std::collections::VecDeque;

use hashbrown::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use chat_protocol::pb::{
    self, ConversationKind, MessageKind, ReceiptKind, Role, server_frame::Body,
};
use chat_protocol::{ConversationId, ErrorCode, MessageId, Seq, UserId};
use prost::Message;

use crate::catalog;
use crate::idgen::MessageIdGenerator;
use crate::records::{ConversationRecord, IdempotencyRecord, MemberRecord};
use crate::reply::{self, Refusal};
use crate::sequencer::{Admission, Assigned, Sequencer};
use crate::storage::writer::Batch;

/// Users one group or channel may have banned at most; a ban past it is
/// refused with INVALID_ARGUMENT.
pub const BANS_MAX: usize = 10_000;

/// Users one message may mention at most (besides @everyone).
pub const MENTIONS_MAX: usize = 50;

/// Longest `client_msg_id`, in bytes.
pub const CLIENT_MSG_ID_MAX: usize = 64;

/// A conversation operation, sent to the owner shard.
#[derive(Debug)]
pub struct OwnerRequest {
    /// Where to send the reply.
    pub origin: Origin,
    /// Authenticated user making the request.
    pub user: UserId,
    /// Conversation it concerns.
    pub conversation: ConversationId,
    /// What to do.
    pub op: OwnerOp,
    /// The idempotency key was already looked up in the store, or needs no
    /// lookup (`SendMessage.first_attempt`).
    checked: bool,
}

impl OwnerRequest {
    /// A request from `user` at `origin`.
    pub fn new(origin: Origin, user: UserId, conversation: ConversationId, op: OwnerOp) -> Self {
        // The first transmission of a key cannot have an earlier copy in
        // the store; memory is still checked (`Sequencer::assign`).
        let checked = matches!(&op, OwnerOp::Send(m) if m.first_attempt);
        Self {
            origin,
            user,
            conversation,
            op,
            checked,
        }
    }

    /// The conversation this request is for.
    pub fn conversation(&self) -> ConversationId {
        self.conversation
    }

    fn idempotency_key(&self) -> Option<(u64, &str)> {
        match &self.op {
            OwnerOp::Send(m) => Some((self.user.get(), m.client_msg_id.as_str())),
            _ => None,
        }
    }
}

/// Operations only the owner may carry out.
#[derive(Debug)]
// Sends are by far the most frequent operation and the largest; boxing them
// would add an allocation to the send path (`routes::messages::send_now`
// keeps it free of them) to shrink the rare others.
#[allow(clippy::large_enum_variant)]
pub enum OwnerOp {
    /// SendMessage.
    Send(pb::SendMessage),
    /// AddMembers (users already checked to exist).
    AddMembers(Vec<u64>),
    /// RemoveMember.
    RemoveMember(u64),
    /// LeaveConversation.
    Leave,
    /// SetRole.
    SetRole(u64, i32),
    /// UpdateConversation.
    UpdateTitle(String),
    /// TransferOwnership.
    TransferOwnership(u64),
    /// MarkRead up to a seq.
    MarkRead(u64),
    /// MarkDelivered up to a seq.
    MarkDelivered(u64),
    /// GetReceipts for a seq.
    GetReceipts(u64),
    /// Typing started (true) or stopped.
    Typing(bool),
    /// SubscribeChannel.
    SubscribeChannel,
    /// UnsubscribeChannel.
    UnsubscribeChannel,
    /// DeleteMessage, with the message as the store held it when the
    /// request was read (none: no such seq).
    DeleteMessage {
        /// The message's seq.
        seq: u64,
        /// The stored message.
        target: Option<Box<pb::Message>>,
    },
    /// EditMessage, with the message as the store held it when the request
    /// was read (none: no such seq).
    EditMessage {
        /// The message's seq.
        seq: u64,
        /// The new text.
        text: String,
        /// The stored message.
        target: Option<Box<pb::Message>>,
    },
    /// React, with the message and its reactions as the store held them
    /// when the request was read.
    React(Box<Reacting>),
    /// The user blocked (true) or unblocked the other member of this
    /// direct conversation; the block record is written already.
    SetBlocked(bool),
    /// SetNotificationLevel: the level and the end of a mute.
    SetNotify(i32, u64),
    /// BanMember (the user checked to exist).
    Ban(u64),
    /// UnbanMember.
    Unban(u64),
}

/// A loaded conversation on its owner shard.
pub(super) struct Conv {
    pub(super) record: ConversationRecord,
    /// Role and receipt cursors of every member.
    pub(super) members: HashMap<u64, MemberRecord>,
    /// Members as a shared list for fan-out; `None` after a membership
    /// change until the next fan-out needs it (a channel gaining 10,000
    /// subscribers rebuilds it once, not 10,000 times).
    recipients: Option<Arc<[u64]>>,
    pub(super) seq: Sequencer,
    queue: VecDeque<OwnerRequest>,
    /// A store lookup of idempotency keys is under way for the first this
    /// many queued requests.
    checking: Option<usize>,
    /// Members whose cursors changed since the last cursor flush.
    pub(super) dirty_cursors: HashSet<u64>,
    /// Who is typing (`receipts.rs`).
    pub(super) typing: receipts::Typing,
    /// Senders of the most recent user messages, `(seq, sender)` oldest
    /// first, at most [`RECENT_SENDERS`]: whom to tell about receipts in
    /// groups too large to tell everyone.
    recent_senders: VecDeque<(u64, u64)>,
    /// Seqs deleted by this owner, newest last, at most
    /// [`RECENT_DELETIONS`]: a second DeleteMessage that read the message
    /// before the first one's write is answered without a second event.
    recent_deletions: VecDeque<u64>,
    /// Reaction records this owner wrote last (`reaction.rs`).
    reactions: reaction::RecentReactions,
    /// Direct conversations: the members who blocked the other one (at
    /// most both). While any did, the two exchange nothing here.
    blocked_by: Vec<u64>,
    /// Users banned from this group or channel, at most [`BANS_MAX`].
    pub(super) banned: HashSet<u64>,
}

impl Conv {
    /// Every member, for fan-out.
    pub(super) fn recipients(&mut self) -> Arc<[u64]> {
        match &self.recipients {
            Some(r) => r.clone(),
            None => {
                let r: Arc<[u64]> = self.members.keys().copied().collect();
                self.recipients = Some(r.clone());
                r
            }
        }
    }

    /// Call after changing `members`.
    pub(super) fn members_changed(&mut self) {
        self.recipients = None;
    }

    pub(super) fn view(&self, id: u64, me: u64) -> pb::Conversation {
        let mut members: Vec<(u64, i32)> = self.members.iter().map(|(&u, m)| (u, m.role)).collect();
        members.sort_unstable();
        let mut banned: Vec<u64> = self.banned.iter().copied().collect();
        banned.sort_unstable();
        catalog::view(id, &self.record, &members, &banned, self.seq.last_seq(), me)
    }

    pub(super) fn role(&self, user: u64) -> Option<Role> {
        self.members
            .get(&user)
            .map(|m| Role::try_from(m.role).unwrap_or(Role::Unspecified))
    }

    /// Distinct senders of the recent messages with `after < seq <= upto`.
    pub(super) fn senders_between(&self, after: u64, upto: u64) -> Vec<u64> {
        let mut out: Vec<u64> = self
            .recent_senders
            .iter()
            .filter(|(s, _)| *s > after && *s <= upto)
            .map(|&(_, sender)| sender)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    fn sent(&mut self, seq: u64, sender: u64) {
        if self.recent_senders.len() == RECENT_SENDERS {
            self.recent_senders.pop_front();
        }
        self.recent_senders.push_back((seq, sender));
    }

    /// Refuses what one of a blocked pair sends to a direct conversation
    /// (`spec/messages.md`, "BlockUser").
    pub(super) fn check_not_blocked(&self) -> Result<(), Refusal> {
        if self.blocked_by.is_empty() {
            Ok(())
        } else {
            Err(Refusal::new(
                ErrorCode::Blocked,
                "one of the two users of this direct conversation blocked the other",
            ))
        }
    }

    pub(super) fn is_channel(&self) -> bool {
        self.record.kind == ConversationKind::Channel as i32
    }

    fn needs_lookup(&self, req: &OwnerRequest) -> bool {
        match req.idempotency_key() {
            Some((sender, cmid)) => {
                // An invalid id is refused by `apply` without a lookup.
                !req.checked
                    && !cmid.is_empty()
                    && cmid.len() <= CLIENT_MSG_ID_MAX
                    && !self.seq.knows(sender, cmid)
            }
            None => false,
        }
    }
}

enum Slot {
    Loading(VecDeque<OwnerRequest>),
    Ready(Box<Conv>),
}

/// The conversations one shard owns, with the rules that change them.
pub struct Owner {
    slots: HashMap<u64, Slot>,
    /// Last seqs recovered from the store at start-up.
    recovered: HashMap<u64, u64>,
    key_capacity: usize,
    env: Env,
    /// Outputs not yet taken by the shell, oldest first.
    out: VecDeque<Output>,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner")
            .field("conversations", &self.slots.len())
            .finish()
    }
}

/// What the owner asks its shell to do.
#[derive(Debug)]
pub enum Output {
    /// Read the conversation from the store (its last seq too, unless
    /// `recovered_seq` has it) and answer with [`Owner::handle_loaded`].
    Load {
        /// Conversation.
        conversation: ConversationId,
        /// Its last seq as recovered at start-up.
        recovered_seq: Option<Seq>,
    },
    /// Look these `(sender, client_msg_id)` keys up in the store and answer
    /// with [`Owner::handle_keys`].
    LookUp {
        /// Conversation.
        conversation: ConversationId,
        /// The keys.
        keys: Vec<(UserId, String)>,
    },
    /// Commit the writes of the conversation (0: effects of several, with
    /// no writes), then carry out the effects, in order.
    Commit(u64, Pending),
}

/// A conversation as the store holds it, for [`Owner::handle_loaded`].
#[derive(Debug)]
pub struct Loaded {
    /// Its record.
    pub record: ConversationRecord,
    /// Its members.
    pub members: Vec<(u64, MemberRecord)>,
    /// Its last seq.
    pub last_seq: u64,
    /// A direct conversation's members who blocked the other one.
    pub blocked_by: Vec<u64>,
    /// Users banned from it.
    pub banned: Vec<u64>,
}

/// An idempotency key found in the store: sender, client_msg_id, record.
pub type FoundKey = (UserId, String, IdempotencyRecord);

/// What the owner's rules need besides the conversation: limits, handles
/// for media URLs and push notifications.
#[derive(Debug, Clone)]
pub struct Rules {
    /// `max_message_bytes`.
    pub max_message_bytes: usize,
    /// `max_group_members`.
    pub max_group_members: usize,
    /// `push_preview`.
    pub push_preview: bool,
    /// Push notifications (outbox entries staged with the message).
    pub push: crate::push::Push,
    /// Signs media download URLs in pushed messages.
    pub media: Arc<crate::media::Media>,
}

/// What the rules of every conversation share: the limits, the message id
/// generator, the time of the input being handled, and which conversations
/// have typing indicators or cursors to write.
struct Env {
    rules: Rules,
    ids: MessageIdGenerator,
    now_ms: u64,
    /// Conversations where someone is typing.
    typing_active: HashSet<u64>,
    /// Conversations with receipt cursors not yet written.
    cursor_dirty: HashSet<u64>,
}

/// Recent senders remembered per loaded conversation, for receipt events in
/// large groups; a read that moves past older messages notifies only the
/// senders still remembered (others see counts with GetReceipts).
const RECENT_SENDERS: usize = 256;

/// Deleted seqs remembered per loaded conversation (see
/// `Conv::recent_deletions`); older ones are found deleted in the store.
const RECENT_DELETIONS: usize = 64;

/// Idempotency keys remembered per loaded conversation, per unit of
/// `recent_messages`. Retransmissions (`first_attempt` false) of older keys
/// are found in the store; a small map stays in cache on the send path.
const KEYS_PER_CONVERSATION_FACTOR: usize = 1;

impl Owner {
    /// The owner of shard `generator`'s conversations, seeded with the last
    /// seqs recovered at start-up.
    pub fn new(
        generator: u16,
        recovered: HashMap<u64, u64>,
        recent_messages: usize,
        rules: Rules,
    ) -> Self {
        Self {
            slots: HashMap::new(),
            recovered,
            key_capacity: recent_messages.max(16) * KEYS_PER_CONVERSATION_FACTOR,
            env: Env {
                rules,
                ids: MessageIdGenerator::new(generator),
                now_ms: 0,
                typing_active: HashSet::new(),
                cursor_dirty: HashSet::new(),
            },
            out: VecDeque::new(),
        }
    }

    fn ready_mut(&mut self, id: u64) -> Option<&mut Conv> {
        match self.slots.get_mut(&id) {
            Some(Slot::Ready(c)) => Some(c),
            _ => None,
        }
    }

    /// Forgets every conversation for which `which` holds, as if it had
    /// never been loaded (cluster mode: its partition moved). Requests
    /// queued for them are refused with SERVER_BUSY, to be retried where
    /// the conversation lives now.
    pub fn forget(&mut self, mut which: impl FnMut(ConversationId) -> bool) {
        let gone: Vec<u64> = self
            .slots
            .keys()
            .copied()
            .filter(|&id| which(ConversationId(id)))
            .collect();
        for id in gone {
            let queue = match self.slots.remove(&id) {
                Some(Slot::Loading(q)) => q,
                Some(Slot::Ready(c)) => c.queue,
                None => VecDeque::new(),
            };
            for req in queue {
                let busy =
                    crate::cluster::busy(req.origin.request_id, "the conversation changed owner");
                self.out.push_back(Output::Commit(
                    id,
                    Pending::effects(vec![Effect::Reply(req.origin, busy)]),
                ));
            }
            self.recovered.remove(&id);
            self.env.typing_active.remove(&id);
            self.env.cursor_dirty.remove(&id);
        }
    }

    /// Number of conversations loaded or loading.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Records that `user` blocked (or unblocked) the other member of the
/// direct conversation `conv`.
fn set_blocked(conv: &mut Conv, user: u64, on: bool) -> Result<Pending, Refusal> {
    if !conv.members.contains_key(&user) {
        return Err(Refusal::new(
            ErrorCode::NotAMember,
            "not a member of this conversation",
        ));
    }
    if conv.record.kind != ConversationKind::Direct as i32 {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            "blocks concern direct conversations only",
        ));
    }
    conv.blocked_by.retain(|&u| u != user);
    if on {
        conv.blocked_by.push(user);
    }
    Ok(Pending::default())
}

/// Mentions of a send: at most [`MENTIONS_MAX`] ids, each a member;
/// @everyone in groups only.
fn check_mentions(conv: &Conv, msg: &pb::SendMessage) -> Result<(), Refusal> {
    if msg.mention_ids.len() > MENTIONS_MAX {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            format!("at most {MENTIONS_MAX} mentions"),
        ));
    }
    if let Some(u) = msg
        .mention_ids
        .iter()
        .find(|u| !conv.members.contains_key(*u))
    {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            format!("user {u} is not a member and cannot be mentioned"),
        ));
    }
    if msg.mention_everyone && conv.record.kind != ConversationKind::Group as i32 {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            "@everyone is for groups",
        ));
    }
    Ok(())
}

/// SetNotificationLevel for `user`.
fn set_notify(
    id: u64,
    conv: &mut Conv,
    user: u64,
    level: i32,
    muted_until_ms: u64,
) -> Result<Pending, Refusal> {
    let level = match pb::NotificationLevel::try_from(level) {
        Ok(pb::NotificationLevel::Unspecified) => pb::NotificationLevel::All,
        Ok(l) => l,
        Err(_) => {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "unknown notification level",
            ));
        }
    };
    if muted_until_ms != 0 && level != pb::NotificationLevel::Muted {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            "muted_until_ms is for MUTED",
        ));
    }
    let member = conv
        .members
        .get_mut(&user)
        .ok_or_else(|| Refusal::new(ErrorCode::NotAMember, "not a member of this conversation"))?;
    member.notification_level = level as i32;
    member.muted_until_ms = muted_until_ms;
    let mut batch = Batch::new();
    batch.put_member(id, user, member);
    Ok(Pending {
        batch,
        effects: Vec::new(),
    })
}

/// `result` answered `Done` once its writes are durable, or refused.
fn done_or_refused(origin: Origin, result: Result<Pending, Refusal>) -> Pending {
    match result {
        Ok(mut pending) => {
            let done = reply::answer(origin.request_id, Ok(Body::Done(pb::Done {})));
            pending.effects.push(Effect::Reply(origin, done));
            pending
        }
        Err(r) => refusal_entry(origin, r.code, &r.message),
    }
}

pub(crate) fn refusal_entry(origin: Origin, code: ErrorCode, message: &str) -> Pending {
    let refusal = reply::error(origin.request_id, code, message);
    Pending::effects(vec![Effect::Reply(origin, refusal)])
}

fn ack_frame(
    request_id: u64,
    conversation: u64,
    cmid: &str,
    a: Assigned,
    duplicate: bool,
) -> Bytes {
    let ack = reply::SendAckRef {
        conversation_id: conversation,
        seq: a.seq,
        message_id: a.message_id.0,
        sent_at_ms: a.sent_at_ms,
        client_msg_id: cmid,
        duplicate,
    };
    reply::send_ack(request_id, ack)
}

impl Owner {
    /// Takes a request for a conversation this shard owns.
    pub fn handle_request(&mut self, now_ms: u64, req: OwnerRequest) {
        self.env.now_ms = now_ms;
        let id = req.conversation.get();
        match self.slots.get_mut(&id) {
            Some(Slot::Loading(q)) => q.push_back(req),
            Some(Slot::Ready(c)) => {
                c.queue.push_back(req);
                self.pump(id);
            }
            None => {
                self.slots.insert(id, Slot::Loading(VecDeque::from([req])));
                let recovered_seq = self.recovered.get(&id).copied().map(Seq);
                self.out.push_back(Output::Load {
                    conversation: ConversationId(id),
                    recovered_seq,
                });
            }
        }
    }

    /// The store's answer to [`Output::Load`]: the conversation, `None` if
    /// it does not exist.
    pub fn handle_loaded(
        &mut self,
        now_ms: u64,
        id: ConversationId,
        loaded: Result<Option<Loaded>, Refusal>,
    ) {
        self.env.now_ms = now_ms;
        let id = id.get();
        let Some(Slot::Loading(queue)) = self.slots.remove(&id) else {
            return;
        };
        match loaded {
            Ok(Some(l)) => {
                let conv = Conv {
                    record: l.record,
                    members: l.members.into_iter().collect(),
                    recipients: None,
                    seq: Sequencer::new(l.last_seq, self.key_capacity),
                    queue,
                    checking: None,
                    dirty_cursors: HashSet::new(),
                    typing: receipts::Typing::default(),
                    recent_senders: VecDeque::new(),
                    recent_deletions: VecDeque::new(),
                    reactions: reaction::RecentReactions::default(),
                    blocked_by: l.blocked_by,
                    banned: l.banned.into_iter().collect(),
                };
                self.slots.insert(id, Slot::Ready(Box::new(conv)));
                self.pump(id);
            }
            Ok(None) | Err(_) => {
                let (code, message) = match loaded {
                    Err(r) => (r.code, r.message),
                    _ => (ErrorCode::NotFound, "no such conversation".to_owned()),
                };
                for req in queue {
                    let refused = refusal_entry(req.origin, code, &message);
                    self.out.push_back(Output::Commit(id, refused));
                }
            }
        }
    }

    /// The store's answer to [`Output::LookUp`]: the records of the keys it
    /// holds (keys it does not hold are new).
    pub fn handle_keys(
        &mut self,
        now_ms: u64,
        id: ConversationId,
        found: Result<Vec<FoundKey>, Refusal>,
    ) {
        self.env.now_ms = now_ms;
        let id = id.get();
        let Some(Slot::Ready(conv)) = self.slots.get_mut(&id) else {
            return;
        };
        let Some(covered) = conv.checking.take() else {
            return;
        };
        match found {
            Ok(found) => {
                for (sender, cmid, rec) in found {
                    let original = Assigned {
                        seq: rec.seq,
                        message_id: MessageId(rec.message_id),
                        sent_at_ms: rec.sent_at_ms,
                    };
                    conv.seq.remember(sender.get(), &cmid, original);
                }
                for req in conv.queue.iter_mut().take(covered) {
                    req.checked = true;
                }
            }
            Err(failed) => {
                tracing::error!(conversation = id, ?failed, "idempotency lookup failed");
                for req in conv.queue.drain(..covered.min(conv.queue.len())) {
                    self.out.push_back(Output::Commit(
                        id,
                        refusal_entry(
                            req.origin,
                            ErrorCode::StorageFailure,
                            "storage failure; retry",
                        ),
                    ));
                }
            }
        }
        self.pump(id);
    }

    /// Everything up to `seq` of `conversation` is durable.
    pub fn handle_durable(&mut self, conversation: ConversationId, seq: Seq) {
        if let Some(Slot::Ready(c)) = self.slots.get_mut(&conversation.get()) {
            c.seq.mark_durable(seq.get());
        }
    }

    /// Time passed: typing indicators that ran out are withdrawn, and
    /// changed receipt cursors are written. The shell calls this every
    /// [`CURSOR_FLUSH_INTERVAL`].
    pub fn handle_tick(&mut self, now_ms: u64) {
        self.env.now_ms = now_ms;
        self.flush_cursors();
        self.expire_typing();
    }

    /// The next thing for the shell to do, in the order it must be done.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Applies queued requests of conversation `id` until the queue is empty
    /// or a store lookup is needed first.
    fn pump(&mut self, id: u64) {
        let Some(Slot::Ready(conv)) = self.slots.get_mut(&id) else {
            return;
        };
        while conv.checking.is_none() {
            let Some(front) = conv.queue.front() else {
                return;
            };
            if conv.needs_lookup(front) {
                let keys: Vec<(UserId, String)> = conv
                    .queue
                    .iter()
                    .filter(|r| conv.needs_lookup(r))
                    .filter_map(|r| r.idempotency_key().map(|(s, k)| (UserId(s), k.to_owned())))
                    .collect();
                conv.checking = Some(conv.queue.len());
                self.out.push_back(Output::LookUp {
                    conversation: ConversationId(id),
                    keys,
                });
                return;
            }
            let Some(req) = conv.queue.pop_front() else {
                return;
            };
            let pending = self.env.apply(id, conv, req);
            self.out.push_back(Output::Commit(id, pending));
        }
    }
}

impl Env {
    fn apply(&mut self, id: u64, conv: &mut Conv, req: OwnerRequest) -> Pending {
        let origin = req.origin;
        let user = req.user.get();
        let result = match req.op {
            OwnerOp::Send(msg) => return self.apply_send(id, conv, origin, user, msg),
            OwnerOp::AddMembers(users) => self.add_members(id, conv, user, users),
            OwnerOp::RemoveMember(target) if target == user => self.leave(id, conv, user),
            OwnerOp::RemoveMember(target) => self.remove_member(id, conv, user, target),
            OwnerOp::Leave => self.leave(id, conv, user),
            OwnerOp::SetRole(target, role) => self.set_role(id, conv, user, target, role),
            OwnerOp::UpdateTitle(title) => self.update_title(id, conv, user, title),
            OwnerOp::TransferOwnership(target) => self.transfer(id, conv, user, target),
            OwnerOp::MarkRead(seq) => {
                return self.advance_cursor(id, conv, origin, user, ReceiptKind::Read, seq);
            }
            OwnerOp::MarkDelivered(seq) => {
                return self.advance_cursor(id, conv, origin, user, ReceiptKind::Delivered, seq);
            }
            OwnerOp::GetReceipts(seq) => {
                let result = receipts::counts(id, conv, user, seq).map(Body::ReceiptCounts);
                let answer = reply::answer(origin.request_id, result);
                return Pending::effects(vec![Effect::Reply(origin, answer)]);
            }
            OwnerOp::Typing(_) if conv.check_not_blocked().is_err() => {
                return Pending::effects(vec![Effect::Release(origin)]);
            }
            OwnerOp::Typing(active) => return self.typing(id, conv, origin, user, active),
            OwnerOp::SubscribeChannel => self.subscribe(id, conv, user),
            OwnerOp::Ban(target) => self.ban(id, conv, user, target),
            OwnerOp::Unban(target) => self.unban(id, conv, user, target),
            OwnerOp::UnsubscribeChannel => self.unsubscribe(id, conv, user),
            OwnerOp::DeleteMessage { seq, target } => {
                let result = self.delete_message(id, conv, user, seq, target);
                return done_or_refused(origin, result);
            }
            OwnerOp::EditMessage { seq, text, target } => {
                let result = self.edit_message(conv, user, seq, text, target);
                return done_or_refused(origin, result);
            }
            OwnerOp::React(r) => {
                let result = self.react(id, conv, user, *r);
                return done_or_refused(origin, result);
            }
            OwnerOp::SetNotify(level, until) => {
                let result = set_notify(id, conv, user, level, until);
                return done_or_refused(origin, result);
            }
            OwnerOp::SetBlocked(on) => {
                let result = set_blocked(conv, user, on);
                return done_or_refused(origin, result);
            }
        };
        match result {
            Ok(mut pending) => {
                let body = match conv.members.get(&user) {
                    Some(m) if m.role != Role::Subscriber as i32 => {
                        Body::Conversation(conv.view(id, user))
                    }
                    _ => Body::Done(pb::Done {}),
                };
                pending.effects.push(Effect::Reply(
                    origin,
                    reply::answer(origin.request_id, Ok(body)),
                ));
                pending
            }
            Err(r) => refusal_entry(origin, r.code, &r.message),
        }
    }

    /// SendMessage: checked, then sequenced (or found to be a retry), then
    /// staged with its acknowledgement, fan-out and push.
    fn apply_send(
        &mut self,
        id: u64,
        conv: &mut Conv,
        origin: Origin,
        user: u64,
        msg: pb::SendMessage,
    ) -> Pending {
        if let Err(r) = self.check_send(conv, user, &msg) {
            return refusal_entry(origin, r.code, &r.message);
        }
        let admission = conv
            .seq
            .assign(user, Some(&msg.client_msg_id), self.now_ms, &mut self.ids);
        match admission {
            // A retry of a send still being committed is answered after that
            // commit, because this entry goes behind it in the pipeline.
            Admission::Duplicate { original, .. } => {
                let frame = ack_frame(origin.request_id, id, &msg.client_msg_id, original, true);
                Pending::effects(vec![Effect::Reply(origin, frame)])
            }
            Admission::New(a) => self.stage_send(id, conv, origin, user, msg, a),
        }
    }

    /// Whether `user` may send `msg` to `conv` as it is: a member (an admin
    /// in a channel), with a valid client_msg_id and media reference, and a
    /// size within the limit.
    fn check_send(&self, conv: &Conv, user: u64, msg: &pb::SendMessage) -> Result<(), Refusal> {
        let role = conv.role(user).ok_or_else(|| {
            Refusal::new(ErrorCode::NotAMember, "not a member of this conversation")
        })?;
        if conv.is_channel() && !matches!(role, Role::Owner | Role::Admin) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only channel admins post",
            ));
        }
        conv.check_not_blocked()?;
        if msg.client_msg_id.is_empty() || msg.client_msg_id.len() > CLIENT_MSG_ID_MAX {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "client_msg_id must be 1-64 bytes",
            ));
        }
        if let Some(media) = &msg.media {
            crate::media::check_ref(media)?;
        }
        check_mentions(conv, msg)?;
        let media_len = msg.media.as_ref().map_or(0, Message::encoded_len);
        let size = msg.text.len() + msg.ciphertext.len() + media_len;
        if size == 0 {
            return Err(Refusal::new(ErrorCode::InvalidArgument, "empty message"));
        }
        if size > self.rules.max_message_bytes {
            return Err(Refusal::new(
                ErrorCode::MessageTooLarge,
                "message exceeds max_message_bytes",
            ));
        }
        Ok(())
    }

    /// A new message, assigned `a`: the message and its idempotency record
    /// are written; once durable, the sender gets its ack, the members the
    /// message, and offline members a push.
    fn stage_send(
        &mut self,
        id: u64,
        conv: &mut Conv,
        origin: Origin,
        user: u64,
        msg: pb::SendMessage,
        a: Assigned,
    ) -> Pending {
        conv.sent(a.seq, user);
        let ack = ack_frame(origin.request_id, id, &msg.client_msg_id, a, false);
        // Checked to be members (`check_send`); each once, not the sender.
        let mut mentioned: Vec<u64> = msg
            .mention_ids
            .iter()
            .copied()
            .filter(|&u| u != user)
            .collect();
        mentioned.sort_unstable();
        mentioned.dedup();
        let idem = IdempotencyRecord {
            seq: a.seq,
            message_id: a.message_id.0,
            sent_at_ms: a.sent_at_ms,
        };
        let stored = pb::Message {
            conversation_id: id,
            seq: a.seq,
            message_id: a.message_id.0,
            sender_id: user,
            sent_at_ms: a.sent_at_ms,
            client_msg_id: msg.client_msg_id,
            kind: MessageKind::User as i32,
            text: msg.text,
            // Stored without a URL; one is signed in whenever the message is
            // handed out (`media.rs`).
            media: msg.media.map(|m| pb::MediaRef {
                url: String::new(),
                ..m
            }),
            ciphertext: msg.ciphertext,
            reply_to_seq: msg.reply_to_seq,
            system: None,
            deleted: false,
            edited_at_ms: 0,
            reactions: Vec::new(),
            mention_ids: mentioned.clone(),
            mention_everyone: msg.mention_everyone,
        };
        // Sized for both writes (and an outbox entry), so staging them
        // allocates once; mentions grow it.
        let mut batch = Batch::with_capacity(
            Batch::put_bytes(16 + stored.client_msg_id.len(), idem.encoded_len())
                + Batch::put_bytes(16, stored.encoded_len())
                + Batch::put_bytes(16, 0),
        );
        batch.put_idempotency(id, user, &stored.client_msg_id, &idem);
        for &u in &mentioned {
            batch.put_mention(u, id, a.seq, user);
        }
        if msg.mention_everyone {
            batch.put_mention(0, id, a.seq, user);
        }
        let push = self.stage_message(&stored, &mut batch);
        let mut effects = vec![
            Effect::Durable {
                conversation: ConversationId(id),
                seq: Seq(a.seq),
            },
            Effect::Reply(origin, ack),
            Effect::Fanout(conv.recipients(), push),
        ];
        if self.rules.push.enabled() {
            let notice = crate::push::Notice::of(
                &stored,
                conv.record.kind,
                &conv.record.title,
                self.rules.push_preview,
            );
            // Each member's notification level decides (`records.rs`).
            let now = self.now_ms;
            let notified: Arc<[u64]> = conv
                .members
                .iter()
                .filter(|&(&u, m)| {
                    let mentioned = stored.mention_everyone || mentioned.binary_search(&u).is_ok();
                    m.notified(mentioned, now)
                })
                .map(|(&u, _)| u)
                .collect();
            if let (Some(mut notice), false) = (notice, notified.is_empty()) {
                notice.outbox = self.rules.push.stage(id, a.seq, &mut batch);
                effects.push(Effect::Notify(notified, Arc::new(notice)));
            }
        }
        Pending { batch, effects }
    }

    /// Deletes a user message for everyone: its stored record loses its
    /// content and is marked deleted, and a MESSAGE_DELETED system message
    /// tells the members. The sender may delete their own messages; in a
    /// group or channel an owner or admin may delete anyone's. A message
    /// already deleted is answered as done, with nothing written.
    fn delete_message(
        &mut self,
        id: u64,
        conv: &mut Conv,
        user: u64,
        seq: u64,
        target: Option<Box<pb::Message>>,
    ) -> Result<Pending, Refusal> {
        let role = conv.role(user).ok_or_else(|| {
            Refusal::new(ErrorCode::NotAMember, "not a member of this conversation")
        })?;
        let mut target =
            target.ok_or_else(|| Refusal::new(ErrorCode::NotFound, "no message with this seq"))?;
        if target.kind != MessageKind::User as i32 {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "only user messages can be deleted",
            ));
        }
        let admin = conv.record.kind != ConversationKind::Direct as i32
            && matches!(role, Role::Owner | Role::Admin);
        if target.sender_id != user && !admin {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only the sender, or an admin of a group or channel, deletes a message",
            ));
        }
        let mut batch = Batch::new();
        if target.deleted || conv.recent_deletions.contains(&seq) {
            return Ok(Pending {
                batch,
                effects: Vec::new(),
            });
        }
        if conv.recent_deletions.len() == RECENT_DELETIONS {
            conv.recent_deletions.pop_front();
        }
        conv.recent_deletions.push_back(seq);
        for &u in &target.mention_ids {
            batch.delete_mention(u, id, seq);
        }
        if target.mention_everyone {
            batch.delete_mention(0, id, seq);
        }
        target.text.clear();
        target.media = None;
        target.ciphertext.clear();
        target.deleted = true;
        batch.put_message(&target);
        let mut event =
            membership::system_event(pb::system_event::Kind::MessageDeleted, user, Vec::new());
        event.target_seq = seq;
        let recipients = conv.recipients();
        let (_, effects) = self.system_message(id, conv, user, event, recipients, &mut batch);
        Ok(Pending { batch, effects })
    }

    /// Adds the message to `batch` and returns its encoded push.
    fn stage_message(&self, m: &pb::Message, batch: &mut Batch) -> Bytes {
        let stored = batch.put_message(m);
        // A push carries the stored message as it is, unless it has media,
        // whose download URL is signed for the moment of the push.
        if m.media.is_none() {
            reply::message_push(batch.encoded().get(stored).unwrap_or_default())
        } else {
            let mut pushed = m.clone();
            self.rules.media.sign_message(&mut pushed, self.now_ms);
            reply::push(Body::MessagePush(pb::MessagePush {
                message: Some(pushed),
            }))
        }
    }
}
