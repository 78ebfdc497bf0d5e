//! Membership and metadata changes of groups and channels. Each change is
//! a SYSTEM message in the conversation's sequence, so every device sees it
//! in order (`spec/states.md`).

use std::collections::HashSet;
use std::sync::Arc;

use chat_protocol::pb::{self, ConversationKind, MessageKind, Role, system_event};
use chat_protocol::{ConversationId, ErrorCode, Seq};

use super::{Conv, Env};
use super::{Effect, Pending};
use crate::catalog;
use crate::records::MemberRecord;
use crate::reply::Refusal;
use crate::sequencer::Admission;
use crate::storage::writer::Batch;

impl Env {
    /// Appends a system message; `recipients` are who hear about it.
    pub(super) fn system_message(
        &mut self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        event: pb::SystemEvent,
        recipients: Arc<[u64]>,
        batch: &mut Batch,
    ) -> (u64, Vec<Effect>) {
        let a = match conv.seq.assign(actor, None, self.now_ms, &mut self.ids) {
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
        let push = self.stage_message(&m, batch);
        (
            a.seq,
            vec![
                Effect::Durable {
                    conversation: ConversationId(id),
                    seq: Seq(a.seq),
                },
                Effect::Fanout(recipients, push),
            ],
        )
    }

    pub(super) fn add_members(
        &mut self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        users: Vec<u64>,
    ) -> Result<Pending, Refusal> {
        require_group_admin(conv, actor)?;
        if conv.is_channel() {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "channel subscribers join with SubscribeChannel",
            ));
        }
        super::moderation::check_not_banned(conv, &users)?;
        let mut seen = HashSet::new();
        let new: Vec<u64> = users
            .into_iter()
            .filter(|u| !conv.members.contains_key(u) && seen.insert(*u))
            .collect();
        if new.is_empty() {
            return Ok(Pending::default());
        }
        if conv.members.len() + new.len() > self.rules.max_group_members {
            return Err(Refusal::new(
                ErrorCode::MemberLimit,
                "group member limit reached",
            ));
        }
        // New members join at the seq of the MEMBER_ADDED message.
        let joined_seq = conv.seq.last_seq() + 1;
        let member = MemberRecord {
            role: Role::Member as i32,
            joined_seq,
            ..Default::default()
        };
        for &u in &new {
            conv.members.insert(u, member);
        }
        conv.members_changed();
        let mut batch = Batch::new();
        let event = system_event(system_event::Kind::MemberAdded, actor, new.clone());
        let hearing = conv.recipients();
        let (seq, effects) = self.system_message(id, conv, actor, event, hearing, &mut batch);
        debug_assert_eq!(seq, joined_seq);
        for &u in &new {
            batch.add_member(id, u, &member);
        }
        Ok(Pending { batch, effects })
    }

    pub(super) fn remove_member(
        &mut self,
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

    pub(super) fn leave(
        &mut self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
    ) -> Result<Pending, Refusal> {
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
    pub(super) fn drop_member(
        &mut self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        target: u64,
        kind: system_event::Kind,
    ) -> Pending {
        let hearing = conv.recipients();
        conv.members.remove(&target);
        conv.members_changed();
        conv.dirty_cursors.remove(&target);
        conv.typing.remove(target);
        let mut batch = Batch::new();
        let event = system_event(kind, actor, vec![target]);
        let (_, effects) = self.system_message(id, conv, actor, event, hearing, &mut batch);
        batch.remove_member(id, target);
        Pending { batch, effects }
    }

    pub(super) fn set_role(
        &mut self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        target: u64,
        role: i32,
    ) -> Result<Pending, Refusal> {
        require_owner(conv, actor)?;
        let new_role = Role::try_from(role).unwrap_or(Role::Unspecified);
        let allowed = if conv.is_channel() {
            matches!(new_role, Role::Subscriber | Role::Admin)
        } else {
            matches!(new_role, Role::Member | Role::Admin)
        };
        if !allowed {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "role must be MEMBER (SUBSCRIBER in channels) or ADMIN",
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

    pub(super) fn transfer(
        &mut self,
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

    pub(super) fn change_roles(
        &mut self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        changes: &[(u64, Role)],
        kind: system_event::Kind,
    ) -> Pending {
        let mut batch = Batch::new();
        for &(user, role) in changes {
            if let Some(m) = conv.members.get_mut(&user) {
                m.role = role as i32;
                batch.put_member(id, user, m);
            }
        }
        let mut event = system_event(kind, actor, vec![changes.first().map_or(0, |c| c.0)]);
        event.role = changes.first().map_or(0, |c| c.1 as i32);
        let hearing = conv.recipients();
        let (_, effects) = self.system_message(id, conv, actor, event, hearing, &mut batch);
        Pending { batch, effects }
    }

    pub(super) fn update_title(
        &mut self,
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
        batch.put_conversation(id, &conv.record);
        let mut event = system_event(system_event::Kind::TitleChanged, actor, Vec::new());
        event.title = title;
        let hearing = conv.recipients();
        let (_, effects) = self.system_message(id, conv, actor, event, hearing, &mut batch);
        Ok(Pending { batch, effects })
    }
}

impl Env {
    /// SubscribeChannel: the user becomes a SUBSCRIBER and receives live
    /// pushes from now on; earlier posts are read from history. No system
    /// message is written, so a channel's sequence holds its posts only.
    pub(super) fn subscribe(
        &mut self,
        id: u64,
        conv: &mut Conv,
        user: u64,
    ) -> Result<Pending, Refusal> {
        if !conv.is_channel() {
            return Err(Refusal::new(ErrorCode::InvalidArgument, "not a channel"));
        }
        if conv.members.contains_key(&user) {
            return Ok(Pending::default());
        }
        super::moderation::check_not_banned(conv, [&user])?;
        let member = MemberRecord {
            role: Role::Subscriber as i32,
            joined_seq: conv.seq.last_seq(),
            ..Default::default()
        };
        conv.members.insert(user, member);
        conv.members_changed();
        let mut batch = Batch::new();
        batch.add_member(id, user, &member);
        Ok(Pending {
            batch,
            effects: Vec::new(),
        })
    }

    /// UnsubscribeChannel: live pushes stop; admins leave with
    /// LeaveConversation instead.
    pub(super) fn unsubscribe(
        &mut self,
        id: u64,
        conv: &mut Conv,
        user: u64,
    ) -> Result<Pending, Refusal> {
        if !conv.is_channel() {
            return Err(Refusal::new(ErrorCode::InvalidArgument, "not a channel"));
        }
        match conv.role(user) {
            None => return Ok(Pending::default()),
            Some(Role::Subscriber) => {}
            Some(_) => {
                return Err(Refusal::new(
                    ErrorCode::Conflict,
                    "admins leave with LeaveConversation",
                ));
            }
        }
        conv.members.remove(&user);
        conv.members_changed();
        conv.dirty_cursors.remove(&user);
        let mut batch = Batch::new();
        batch.remove_member(id, user);
        Ok(Pending {
            batch,
            effects: Vec::new(),
        })
    }
}

pub(super) fn system_event(
    kind: system_event::Kind,
    actor: u64,
    user_ids: Vec<u64>,
) -> pb::SystemEvent {
    pb::SystemEvent {
        kind: kind as i32,
        actor_id: actor,
        user_ids,
        role: Role::Unspecified as i32,
        title: String::new(),
        target_seq: 0,
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
