//! Bans (`spec/messages.md`, "BanMember"): an owner or admin of a group or
//! channel bans a user, who is removed if a member and cannot rejoin or be
//! added until unbanned. The owner keeps the conversation's bans with its
//! members, so AddMembers and SubscribeChannel check them in order with
//! every other change.

use chat_protocol::ErrorCode;
use chat_protocol::pb::{ConversationKind, Role, system_event};

use super::{BANS_MAX, Conv, Env, Pending};
use crate::records::BanRecord;
use crate::reply::Refusal;
use crate::storage::writer::Batch;

impl Env {
    /// BanMember of `target` by `actor`.
    pub(super) fn ban(
        &mut self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        target: u64,
    ) -> Result<Pending, Refusal> {
        let actor_role = require_moderator(conv, actor)?;
        if target == actor {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                "a user cannot ban themselves",
            ));
        }
        match conv.role(target) {
            Some(Role::Owner) => {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "the owner is not banned",
                ));
            }
            Some(Role::Admin) if actor_role != Role::Owner => {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    "only the owner bans an admin",
                ));
            }
            _ => {}
        }
        if conv.banned.contains(&target) {
            return Ok(Pending::default());
        }
        if conv.banned.len() >= BANS_MAX {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                format!("at most {BANS_MAX} banned users"),
            ));
        }
        conv.banned.insert(target);
        let record = BanRecord {
            by: actor,
            at_ms: self.now_ms,
        };
        let mut pending = match conv.role(target) {
            // A channel's subscribers come and go without system messages
            // (its sequence holds its posts only), and so does this one.
            Some(Role::Subscriber) => {
                conv.members.remove(&target);
                conv.members_changed();
                conv.dirty_cursors.remove(&target);
                let mut batch = Batch::new();
                batch.remove_member(id, target);
                Pending {
                    batch,
                    effects: Vec::new(),
                }
            }
            Some(_) => self.drop_member(id, conv, actor, target, system_event::Kind::MemberBanned),
            None => Pending::default(),
        };
        pending.batch.put_ban(id, target, &record);
        Ok(pending)
    }

    /// UnbanMember of `target` by `actor`; a user not banned is done with
    /// nothing written.
    pub(super) fn unban(
        &mut self,
        id: u64,
        conv: &mut Conv,
        actor: u64,
        target: u64,
    ) -> Result<Pending, Refusal> {
        require_moderator(conv, actor)?;
        if !conv.banned.remove(&target) {
            return Ok(Pending::default());
        }
        let mut batch = Batch::new();
        batch.delete_ban(id, target);
        Ok(Pending {
            batch,
            effects: Vec::new(),
        })
    }
}

/// Refuses a banned user joining or being added.
pub(super) fn check_not_banned<'a>(
    conv: &Conv,
    users: impl IntoIterator<Item = &'a u64>,
) -> Result<(), Refusal> {
    match users.into_iter().find(|u| conv.banned.contains(*u)) {
        Some(u) => Err(Refusal::new(
            ErrorCode::Banned,
            format!("user {u} is banned from this conversation"),
        )),
        None => Ok(()),
    }
}

/// The actor may ban: an owner or admin of a group or channel.
fn require_moderator(conv: &Conv, actor: u64) -> Result<Role, Refusal> {
    let role = conv
        .role(actor)
        .ok_or_else(|| Refusal::new(ErrorCode::NotAMember, "not a member of this conversation"))?;
    if conv.record.kind == ConversationKind::Direct as i32 {
        return Err(Refusal::new(
            ErrorCode::InvalidArgument,
            "nobody is banned from a direct conversation (block the user instead)",
        ));
    }
    if !matches!(role, Role::Owner | Role::Admin) {
        return Err(Refusal::new(
            ErrorCode::Forbidden,
            "only owners and admins ban",
        ));
    }
    Ok(role)
}
