//! The owner side of conversations: sequencing sends and membership changes.
//!
//! Each conversation is owned by one shard (`Context::shard_for`). Requests
//! for it are queued per conversation and applied strictly in arrival order:
//! a conversation is loaded from the store on first use, idempotency keys the
//! sequencer has forgotten are looked up in the store (in one batch for
//! everything queued), and only then does the sequencer assign seqs. Every
//! outcome becomes a [`Pending`] entry for the shard's commit loop, so acks,
//! refusals and pushes leave in the order the requests arrived and only after
//! the writes they depend on are durable.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use chat_protocol::pb::{
    self, ConversationKind, MessageKind, Role, server_frame::Body, system_event,
};
use chat_protocol::{ErrorCode, MessageId};
use prost::Message;

use crate::catalog;
use crate::context::now_ms;
use crate::records::{ConversationRecord, IdempotencyRecord, MemberRecord, UserConversationRecord};
use crate::reply::{self, Refusal};
use crate::sequencer::{Admission, Assigned, Sequencer};
use crate::shard::{Effect, Origin, Pending, Shard};
use crate::storage::writer::Batch;
use crate::storage::{Ks, keys};

/// Longest `client_msg_id`, in bytes.
pub const CLIENT_MSG_ID_MAX: usize = 64;

/// A conversation operation, sent to the owner shard.
#[derive(Debug)]
pub struct OwnerRequest {
    /// Where to send the reply.
    pub origin: Origin,
    /// Authenticated user making the request.
    pub user: u64,
    /// Conversation it concerns.
    pub conversation: u64,
    /// What to do.
    pub op: OwnerOp,
    /// The idempotency key was already looked up in the store.
    checked: bool,
}

impl OwnerRequest {
    /// A request from `user` at `origin`.
    pub fn new(origin: Origin, user: u64, conversation: u64, op: OwnerOp) -> Self {
        Self {
            origin,
            user,
            conversation,
            op,
            checked: false,
        }
    }

    /// The conversation this request is for.
    pub fn conversation(&self) -> u64 {
        self.conversation
    }

    fn idempotency_key(&self) -> Option<(u64, &str)> {
        match &self.op {
            OwnerOp::Send(m) => Some((self.user, m.client_msg_id.as_str())),
            _ => None,
        }
    }
}

/// Operations only the owner may carry out.
#[derive(Debug)]
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
}

struct Conv {
    record: ConversationRecord,
    members: HashMap<u64, i32>,
    /// Members as a shared list for fan-out, rebuilt on membership changes.
    recipients: Arc<[u64]>,
    seq: Sequencer,
    queue: VecDeque<OwnerRequest>,
    /// A store lookup of idempotency keys is under way.
    checking: bool,
}

impl Conv {
    fn rebuild_recipients(&mut self) {
        self.recipients = self.members.keys().copied().collect();
    }

    fn view(&self, id: u64, me: u64) -> pb::Conversation {
        let mut members: Vec<(u64, i32)> = self.members.iter().map(|(&u, &r)| (u, r)).collect();
        members.sort_unstable();
        catalog::view(id, &self.record, &members, self.seq.last_seq(), me)
    }

    fn role(&self, user: u64) -> Option<Role> {
        self.members
            .get(&user)
            .map(|&r| Role::try_from(r).unwrap_or(Role::Unspecified))
    }

    fn needs_lookup(&self, req: &OwnerRequest) -> bool {
        match req.idempotency_key() {
            Some((sender, cmid)) => {
                !req.checked && !cmid.is_empty() && !self.seq.knows(sender, cmid)
            }
            None => false,
        }
    }
}

enum Slot {
    Loading(VecDeque<OwnerRequest>),
    Ready(Box<Conv>),
}

/// Conversations owned by one shard.
pub struct Owned {
    slots: HashMap<u64, Slot>,
    /// Last seqs recovered from the store at start-up.
    recovered: HashMap<u64, u64>,
    key_capacity: usize,
}

impl std::fmt::Debug for Owned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owned")
            .field("conversations", &self.slots.len())
            .finish()
    }
}

/// Idempotency keys remembered per loaded conversation.
const KEYS_PER_CONVERSATION_FACTOR: usize = 16;

impl Owned {
    /// Ownership state seeded with recovered last seqs.
    pub fn new(recovered: HashMap<u64, u64>, recent_messages: usize) -> Self {
        Self {
            slots: HashMap::new(),
            recovered,
            key_capacity: recent_messages.max(16) * KEYS_PER_CONVERSATION_FACTOR,
        }
    }

    /// The commit of everything up to `seq` finished.
    pub fn mark_durable(&mut self, conversation: u64, seq: u64) {
        if let Some(Slot::Ready(c)) = self.slots.get_mut(&conversation) {
            c.seq.mark_durable(seq);
        }
    }

    /// Number of conversations loaded.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether none is loaded.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

struct Loaded {
    record: ConversationRecord,
    members: Vec<(u64, MemberRecord)>,
    last_seq: u64,
}

fn refusal_entry(origin: Origin, code: ErrorCode, message: &str) -> Pending {
    Pending {
        batch: Batch::new(),
        effects: vec![Effect::Reply(
            origin,
            reply::error(origin.request_id, code, message),
        )],
    }
}

fn ack_frame(
    request_id: u64,
    conversation: u64,
    cmid: &str,
    a: Assigned,
    duplicate: bool,
) -> Bytes {
    reply::answer(
        request_id,
        Ok(Body::SendAck(pb::SendAck {
            conversation_id: conversation,
            seq: a.seq,
            message_id: a.message_id.0,
            sent_at_ms: a.sent_at_ms,
            client_msg_id: cmid.to_owned(),
            duplicate,
        })),
    )
}

impl Shard {
    /// Accepts a request for a conversation this shard owns.
    pub fn enqueue_owned(self: &Rc<Self>, req: OwnerRequest) {
        let id = req.conversation;
        let mut owned = self.owned.borrow_mut();
        match owned.slots.get_mut(&id) {
            Some(Slot::Loading(q)) => q.push_back(req),
            Some(Slot::Ready(c)) => {
                c.queue.push_back(req);
                drop(owned);
                self.pump(id);
            }
            None => {
                owned.slots.insert(id, Slot::Loading(VecDeque::from([req])));
                let last_seq = owned.recovered.get(&id).copied();
                drop(owned);
                self.load(id, last_seq);
            }
        }
    }

    fn load(self: &Rc<Self>, id: u64, recovered: Option<u64>) {
        let shard = self.clone();
        tokio::task::spawn_local(async move {
            let ctx = shard.ctx.clone();
            let loaded = tokio::task::spawn_blocking(move || -> Result<Option<Loaded>, Refusal> {
                let Some(record) = ctx.store.conversation(id)? else {
                    return Ok(None);
                };
                let members = ctx.store.members(id)?;
                let last_seq = match recovered {
                    Some(s) => s,
                    None => ctx.store.last_seq(id)?,
                };
                Ok(Some(Loaded {
                    record,
                    members,
                    last_seq,
                }))
            })
            .await
            .unwrap_or_else(|e| Err(Refusal::new(ErrorCode::Internal, e.to_string())));
            shard.loaded(id, loaded);
        });
    }

    fn loaded(self: &Rc<Self>, id: u64, loaded: Result<Option<Loaded>, Refusal>) {
        let mut owned = self.owned.borrow_mut();
        let Some(Slot::Loading(queue)) = owned.slots.remove(&id) else {
            return;
        };
        match loaded {
            Ok(Some(l)) => {
                let mut conv = Conv {
                    record: l.record,
                    members: l.members.into_iter().map(|(u, m)| (u, m.role)).collect(),
                    recipients: Arc::from(Vec::new()),
                    seq: Sequencer::new(l.last_seq, owned.key_capacity),
                    queue,
                    checking: false,
                };
                conv.rebuild_recipients();
                owned.slots.insert(id, Slot::Ready(Box::new(conv)));
                drop(owned);
                self.pump(id);
            }
            Ok(None) | Err(_) => {
                drop(owned);
                let (code, message) = match loaded {
                    Err(r) => (r.code, r.message),
                    _ => (ErrorCode::NotFound, "no such conversation".to_owned()),
                };
                for req in queue {
                    self.commit(refusal_entry(req.origin, code, &message));
                }
            }
        }
    }

    /// Applies queued requests of conversation `id` until the queue is empty
    /// or a store lookup is needed first.
    fn pump(self: &Rc<Self>, id: u64) {
        loop {
            let mut owned = self.owned.borrow_mut();
            let Some(Slot::Ready(conv)) = owned.slots.get_mut(&id) else {
                return;
            };
            if conv.checking {
                return;
            }
            let Some(front) = conv.queue.front() else {
                return;
            };
            if conv.needs_lookup(front) {
                let keys: Vec<(u64, String)> = conv
                    .queue
                    .iter()
                    .filter(|r| conv.needs_lookup(r))
                    .filter_map(|r| r.idempotency_key().map(|(s, k)| (s, k.to_owned())))
                    .collect();
                let covered = conv.queue.len();
                conv.checking = true;
                drop(owned);
                self.lookup(id, keys, covered);
                return;
            }
            let Some(req) = conv.queue.pop_front() else {
                return;
            };
            let pending = self.apply(id, conv, req);
            drop(owned);
            self.commit(pending);
        }
    }

    fn lookup(self: &Rc<Self>, id: u64, keys: Vec<(u64, String)>, covered: usize) {
        let shard = self.clone();
        tokio::task::spawn_local(async move {
            let ctx = shard.ctx.clone();
            let found = tokio::task::spawn_blocking(move || {
                let mut found = Vec::new();
                for (sender, cmid) in keys {
                    if let Some(rec) = ctx.store.idempotency(id, sender, &cmid)? {
                        found.push((sender, cmid, rec));
                    }
                }
                Ok::<_, crate::storage::StorageError>(found)
            })
            .await;
            let mut owned = shard.owned.borrow_mut();
            let Some(Slot::Ready(conv)) = owned.slots.get_mut(&id) else {
                return;
            };
            conv.checking = false;
            match found {
                Ok(Ok(found)) => {
                    for (sender, cmid, rec) in found {
                        let original = Assigned {
                            seq: rec.seq,
                            message_id: MessageId(rec.message_id),
                            sent_at_ms: rec.sent_at_ms,
                        };
                        conv.seq.remember(sender, &cmid, original);
                    }
                    for req in conv.queue.iter_mut().take(covered) {
                        req.checked = true;
                    }
                    drop(owned);
                    shard.pump(id);
                }
                failed => {
                    tracing::error!(conversation = id, ?failed, "idempotency lookup failed");
                    let refused: Vec<OwnerRequest> = conv.queue.drain(..covered).collect();
                    drop(owned);
                    for req in refused {
                        shard.commit(refusal_entry(
                            req.origin,
                            ErrorCode::StorageFailure,
                            "storage failure; retry",
                        ));
                    }
                    shard.pump(id);
                }
            }
        });
    }

    fn apply(&self, id: u64, conv: &mut Conv, req: OwnerRequest) -> Pending {
        let origin = req.origin;
        let result = match req.op {
            OwnerOp::Send(msg) => return self.apply_send(id, conv, origin, req.user, msg),
            OwnerOp::AddMembers(users) => self.add_members(id, conv, req.user, users),
            OwnerOp::RemoveMember(target) if target == req.user => self.leave(id, conv, req.user),
            OwnerOp::RemoveMember(target) => self.remove_member(id, conv, req.user, target),
            OwnerOp::Leave => self.leave(id, conv, req.user),
            OwnerOp::SetRole(target, role) => self.set_role(id, conv, req.user, target, role),
            OwnerOp::UpdateTitle(title) => self.update_title(id, conv, req.user, title),
            OwnerOp::TransferOwnership(target) => self.transfer(id, conv, req.user, target),
        };
        match result {
            Ok(mut pending) => {
                let body = match conv.members.contains_key(&req.user) {
                    true => Body::Conversation(conv.view(id, req.user)),
                    false => Body::Done(pb::Done {}),
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

    fn apply_send(
        &self,
        id: u64,
        conv: &mut Conv,
        origin: Origin,
        user: u64,
        msg: pb::SendMessage,
    ) -> Pending {
        let Some(role) = conv.role(user) else {
            return refusal_entry(
                origin,
                ErrorCode::NotAMember,
                "not a member of this conversation",
            );
        };
        if conv.record.kind == ConversationKind::Channel as i32
            && !matches!(role, Role::Owner | Role::Admin)
        {
            return refusal_entry(origin, ErrorCode::Forbidden, "only channel admins post");
        }
        if msg.client_msg_id.is_empty() || msg.client_msg_id.len() > CLIENT_MSG_ID_MAX {
            return refusal_entry(
                origin,
                ErrorCode::InvalidArgument,
                "client_msg_id must be 1-64 bytes",
            );
        }
        let media_len = msg.media.as_ref().map_or(0, Message::encoded_len);
        let size = msg.text.len() + msg.ciphertext.len() + media_len;
        if size == 0 {
            return refusal_entry(origin, ErrorCode::InvalidArgument, "empty message");
        }
        if size > self.ctx.config.max_message_bytes {
            return refusal_entry(
                origin,
                ErrorCode::MessageTooLarge,
                "message exceeds max_message_bytes",
            );
        }
        let admission = conv.seq.assign(
            user,
            Some(&msg.client_msg_id),
            now_ms(),
            &mut self.ids.borrow_mut(),
        );
        match admission {
            // A retry of a send still being committed is answered after that
            // commit, because this entry goes behind it in the pipeline.
            Admission::Duplicate { original, .. } => {
                let frame = ack_frame(origin.request_id, id, &msg.client_msg_id, original, true);
                Pending {
                    batch: Batch::new(),
                    effects: vec![Effect::Reply(origin, frame)],
                }
            }
            Admission::New(a) => {
                let stored = pb::Message {
                    conversation_id: id,
                    seq: a.seq,
                    message_id: a.message_id.0,
                    sender_id: user,
                    sent_at_ms: a.sent_at_ms,
                    client_msg_id: msg.client_msg_id.clone(),
                    kind: MessageKind::User as i32,
                    text: msg.text,
                    media: msg.media,
                    ciphertext: msg.ciphertext,
                    reply_to_seq: msg.reply_to_seq,
                    system: None,
                };
                let mut batch = Batch::new();
                let idem = IdempotencyRecord {
                    seq: a.seq,
                    message_id: a.message_id.0,
                    sent_at_ms: a.sent_at_ms,
                };
                batch.put(
                    Ks::Idempotency,
                    keys::idempotency(id, user, &msg.client_msg_id),
                    idem.encode_to_vec(),
                );
                let push = self.stage_message(id, &stored, &mut batch);
                Pending {
                    batch,
                    effects: vec![
                        Effect::Durable {
                            conversation: id,
                            seq: a.seq,
                        },
                        Effect::Reply(
                            origin,
                            ack_frame(origin.request_id, id, &msg.client_msg_id, a, false),
                        ),
                        Effect::Fanout(conv.recipients.clone(), push),
                    ],
                }
            }
        }
    }

    /// Adds the message to `batch` and returns its encoded push.
    fn stage_message(&self, id: u64, m: &pb::Message, batch: &mut Batch) -> Bytes {
        batch.put(
            Ks::Messages,
            keys::message(id, m.seq).to_vec(),
            m.encode_to_vec(),
        );
        reply::push(Body::MessagePush(pb::MessagePush {
            message: Some(m.clone()),
        }))
    }

    /// Appends a system message; `recipients` are who hear about it.
    fn system_message(
        &self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        event: pb::SystemEvent,
        recipients: Arc<[u64]>,
        batch: &mut Batch,
    ) -> (u64, Vec<Effect>) {
        let a = match conv
            .seq
            .assign(actor, None, now_ms(), &mut self.ids.borrow_mut())
        {
            Admission::New(a) => a,
            // System messages carry no idempotency key and are always new.
            Admission::Duplicate { original, .. } => original,
        };
        let m = pb::Message {
            conversation_id: id,
            seq: a.seq,
            message_id: a.message_id.0,
            sender_id: actor,
            sent_at_ms: a.sent_at_ms,
            kind: MessageKind::System as i32,
            system: Some(event),
            ..Default::default()
        };
        let push = self.stage_message(id, &m, batch);
        (
            a.seq,
            vec![
                Effect::Durable {
                    conversation: id,
                    seq: a.seq,
                },
                Effect::Fanout(recipients, push),
            ],
        )
    }

    fn add_members(
        &self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        users: Vec<u64>,
    ) -> Result<Pending, Refusal> {
        require_group_admin(conv, actor)?;
        let mut seen = HashSet::new();
        let new: Vec<u64> = users
            .into_iter()
            .filter(|u| !conv.members.contains_key(u) && seen.insert(*u))
            .collect();
        if new.is_empty() {
            return Ok(Pending::default());
        }
        if conv.members.len() + new.len() > self.ctx.config.max_group_members {
            return Err(Refusal::new(
                ErrorCode::MemberLimit,
                "group member limit reached",
            ));
        }
        for &u in &new {
            conv.members.insert(u, Role::Member as i32);
        }
        conv.rebuild_recipients();
        let mut batch = Batch::new();
        let event = system_event(system_event::Kind::MemberAdded, actor, new.clone());
        let (seq, effects) =
            self.system_message(id, conv, actor, event, conv.recipients.clone(), &mut batch);
        for &u in &new {
            let m = MemberRecord {
                role: Role::Member as i32,
                joined_seq: seq,
            };
            batch.put(Ks::Members, keys::pair(id, u).to_vec(), m.encode_to_vec());
            let uc = UserConversationRecord {
                joined_seq: seq,
                ..Default::default()
            };
            batch.put(
                Ks::UserConversations,
                keys::pair(u, id).to_vec(),
                uc.encode_to_vec(),
            );
        }
        Ok(Pending { batch, effects })
    }

    fn remove_member(
        &self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        target: u64,
    ) -> Result<Pending, Refusal> {
        let actor_role = require_group_admin(conv, actor)?;
        let target_role = conv
            .role(target)
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "user is not a member"))?;
        if target_role == Role::Owner || (target_role == Role::Admin && actor_role != Role::Owner) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "cannot remove an owner or, unless owner, an admin",
            ));
        }
        Ok(self.drop_member(id, conv, actor, target, system_event::Kind::MemberRemoved))
    }

    fn leave(&self, id: u64, conv: &mut Conv, actor: u64) -> Result<Pending, Refusal> {
        let role = conv.role(actor).ok_or_else(|| {
            Refusal::new(ErrorCode::NotAMember, "not a member of this conversation")
        })?;
        if conv.record.kind == ConversationKind::Direct as i32 {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "direct conversations cannot be left",
            ));
        }
        if role == Role::Owner && conv.members.len() > 1 {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                "transfer ownership before leaving",
            ));
        }
        Ok(self.drop_member(id, conv, actor, actor, system_event::Kind::MemberLeft))
    }

    /// Removes `target`; the system message still reaches it, as its last
    /// message of the conversation (`spec/states.md`).
    fn drop_member(
        &self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        target: u64,
        kind: system_event::Kind,
    ) -> Pending {
        let hearing = conv.recipients.clone();
        conv.members.remove(&target);
        conv.rebuild_recipients();
        let mut batch = Batch::new();
        let event = system_event(kind, actor, vec![target]);
        let (_, effects) = self.system_message(id, conv, actor, event, hearing, &mut batch);
        batch.delete(Ks::Members, keys::pair(id, target).to_vec());
        batch.delete(Ks::UserConversations, keys::pair(target, id).to_vec());
        Pending { batch, effects }
    }

    fn set_role(
        &self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        target: u64,
        role: i32,
    ) -> Result<Pending, Refusal> {
        require_owner(conv, actor)?;
        let new_role = Role::try_from(role).unwrap_or(Role::Unspecified);
        if !matches!(new_role, Role::Member | Role::Admin) {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "role must be MEMBER or ADMIN",
            ));
        }
        let current = conv
            .role(target)
            .ok_or_else(|| Refusal::new(ErrorCode::NotFound, "user is not a member"))?;
        if current == Role::Owner {
            return Err(Refusal::new(ErrorCode::Forbidden, "use TransferOwnership"));
        }
        if current == new_role {
            return Ok(Pending::default());
        }
        Ok(self.change_roles(
            id,
            conv,
            actor,
            &[(target, new_role)],
            system_event::Kind::RoleChanged,
        ))
    }

    fn transfer(
        &self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        target: u64,
    ) -> Result<Pending, Refusal> {
        require_owner(conv, actor)?;
        if target == actor || !conv.members.contains_key(&target) {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "new owner must be another member",
            ));
        }
        Ok(self.change_roles(
            id,
            conv,
            actor,
            &[(target, Role::Owner), (actor, Role::Admin)],
            system_event::Kind::OwnershipTransferred,
        ))
    }

    fn change_roles(
        &self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        changes: &[(u64, Role)],
        kind: system_event::Kind,
    ) -> Pending {
        let mut batch = Batch::new();
        for &(user, role) in changes {
            conv.members.insert(user, role as i32);
            // `joined_seq` is informational and not kept in memory; a role
            // change resets it.
            let m = MemberRecord {
                role: role as i32,
                joined_seq: 0,
            };
            batch.put(
                Ks::Members,
                keys::pair(id, user).to_vec(),
                m.encode_to_vec(),
            );
        }
        let mut event = system_event(kind, actor, vec![changes.first().map_or(0, |c| c.0)]);
        event.role = changes.first().map_or(0, |c| c.1 as i32);
        let (_, effects) =
            self.system_message(id, conv, actor, event, conv.recipients.clone(), &mut batch);
        Pending { batch, effects }
    }

    fn update_title(
        &self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        title: String,
    ) -> Result<Pending, Refusal> {
        require_group_admin(conv, actor)?;
        if title.chars().count() > catalog::TITLE_MAX_CHARS {
            return Err(Refusal::new(ErrorCode::InvalidArgument, "title too long"));
        }
        conv.record.title = title.clone();
        let mut batch = Batch::new();
        batch.put(
            Ks::Conversations,
            keys::id(id).to_vec(),
            conv.record.encode_to_vec(),
        );
        let mut event = system_event(system_event::Kind::TitleChanged, actor, Vec::new());
        event.title = title;
        let (_, effects) =
            self.system_message(id, conv, actor, event, conv.recipients.clone(), &mut batch);
        Ok(Pending { batch, effects })
    }
}

fn system_event(kind: system_event::Kind, actor: u64, user_ids: Vec<u64>) -> pb::SystemEvent {
    pb::SystemEvent {
        kind: kind as i32,
        actor_id: actor,
        user_ids,
        role: Role::Unspecified as i32,
        title: String::new(),
    }
}

/// The actor may manage members: a group or channel, and OWNER or ADMIN.
fn require_group_admin(conv: &Conv, actor: u64) -> Result<Role, Refusal> {
    let role = conv
        .role(actor)
        .ok_or_else(|| Refusal::new(ErrorCode::NotAMember, "not a member of this conversation"))?;
    if conv.record.kind == ConversationKind::Direct as i32 {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            "direct conversations have no admins",
        ));
    }
    if !matches!(role, Role::Owner | Role::Admin) {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "only admins may do this",
        ));
    }
    Ok(role)
}

fn require_owner(conv: &Conv, actor: u64) -> Result<(), Refusal> {
    match require_group_admin(conv, actor)? {
        Role::Owner => Ok(()),
        _ => Err(Refusal::new(
            ErrorCode::Forbidden,
            "only the owner may do this",
        )),
    }
}
