//! EditMessage: the sender replaces the text of their own USER message.
//!
//! An edit is not a new message (`spec/messages.md`, "EditMessage"): the
//! stored message is written again at its seq with the new text and
//! `edited_at_ms`, and no seq is taken. Unread counts (`last_seq −
//! read_seq`) therefore do not move, and no push notification is sent;
//! members' sessions get a `MessageEdited` push.

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, MessageKind, Role, server_frame::Body};
use prost::Message;

use super::{Conv, Effect, Env, Pending};
use crate::reply::{self, Refusal};
use crate::storage::writer::Batch;

impl Env {
    /// Replaces the text of `target` (message `seq` as the route read it)
    /// with `text`, for its sender. Refused for another user's message, a
    /// SYSTEM message, a deleted one (also one deleted by this owner after
    /// the route read it), or a text that is empty or too large.
    pub(super) fn edit_message(
        &mut self,
        conv: &mut Conv,
        user: u64,
        seq: u64,
        text: String,
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
                "only user messages can be edited",
            ));
        }
        if target.sender_id != user {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only the sender edits a message",
            ));
        }
        // A channel's former admin no longer posts there, so no longer edits.
        if conv.is_channel() && !matches!(role, Role::Owner | Role::Admin) {
            return Err(Refusal::new(
                ErrorCode::Forbidden,
                "only channel admins post",
            ));
        }
        conv.check_not_blocked()?;
        if target.deleted || conv.recent_deletions.contains(&seq) {
            return Err(Refusal::new(
                ErrorCode::Conflict,
                "a deleted message cannot be edited",
            ));
        }
        if text.is_empty() {
            return Err(Refusal::new(ErrorCode::InvalidArgument, "empty text"));
        }
        let media_len = target.media.as_ref().map_or(0, Message::encoded_len);
        if text.len() + target.ciphertext.len() + media_len > self.rules.max_message_bytes {
            return Err(Refusal::new(
                ErrorCode::MessageTooLarge,
                "message exceeds max_message_bytes",
            ));
        }
        target.text = text;
        // Strictly later than an earlier edit, so that clients keeping the
        // version with the larger edited_at_ms keep the latest.
        target.edited_at_ms = self.now_ms.max(target.edited_at_ms.saturating_add(1));
        let mut batch = Batch::new();
        batch.put_message(&target);
        let mut pushed = *target;
        self.rules.media.sign_message(&mut pushed, self.now_ms);
        let frame = reply::push(Body::MessageEdited(pb::MessageEdited {
            message: Some(pushed),
        }));
        Ok(Pending {
            batch,
            effects: vec![Effect::Fanout(conv.recipients(), frame)],
        })
    }
}
