//! What cluster nodes send each other through NATS: the records of the
//! stream (a commit's writes and the pushes they cause), pushes that are not
//! stored (typing), and conversation requests forwarded to the node that
//! owns the conversation.
//!
//! A stream record is, little-endian:
//!
//! | field | bytes |
//! |---|---|
//! | format version (1) | 1 |
//! | origin node | 2 |
//! | number of pushes | 4 |
//! | each push: recipients `n`, `n` user ids, frame length, frame | 4 + 8n + 4 + len |
//! | the writes, in the commit log's record format (`storage::log`) | rest |
//!
//! A typing push on core NATS is the same without the writes; presence
//! announcements, session ends and presence unwatches (a block) have their
//! own layouts (below). Forwarded requests are protobuf ([`Forward`]);
//! their replies are the encoded `ServerFrame`, or empty for a request that
//! gets no answer.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use chat_protocol::pb;
use chat_protocol::{ConversationId, UserId};

use crate::owner::{Origin, OwnerOp, OwnerRequest};
use crate::storage::writer::Batch;
use crate::storage::{Result, StorageError};

/// Format version of stream records.
const VERSION: u8 = 1;

/// Recipients of one push, at most (a channel's live subscribers on one
/// node are pushed in several).
const MAX_RECIPIENTS: usize = 1 << 20;

/// A push: its recipients and the encoded `ServerFrame`.
pub type Push = (Arc<[u64]>, Bytes);

/// A decoded stream record.
#[derive(Debug)]
pub struct Record {
    /// The node whose write it is.
    pub origin: u16,
    /// Pushes to every session of the recipients, once the writes are in.
    pub pushes: Vec<Push>,
    /// The writes.
    pub batch: Batch,
}

fn corrupt(detail: &str) -> StorageError {
    StorageError::Corrupt {
        keyspace: "cluster stream",
        detail: detail.to_owned(),
    }
}

fn put_pushes(out: &mut BytesMut, pushes: &[Push]) {
    out.put_u32_le(pushes.len() as u32);
    for (users, frame) in pushes {
        out.put_u32_le(users.len() as u32);
        for &u in users.iter() {
            out.put_u64_le(u);
        }
        out.put_u32_le(frame.len() as u32);
        out.put_slice(frame);
    }
}

fn take_pushes(buf: &mut Bytes) -> Result<Vec<Push>> {
    let n = take_u32(buf)? as usize;
    let mut pushes = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let users = take_u32(buf)? as usize;
        if users > MAX_RECIPIENTS || buf.remaining() < users * 8 {
            return Err(corrupt("recipients past the end"));
        }
        let users: Arc<[u64]> = (0..users).map(|_| buf.get_u64_le()).collect();
        let len = take_u32(buf)? as usize;
        if buf.remaining() < len {
            return Err(corrupt("frame past the end"));
        }
        pushes.push((users, buf.split_to(len)));
    }
    Ok(pushes)
}

fn take_u32(buf: &mut Bytes) -> Result<u32> {
    if buf.remaining() < 4 {
        return Err(corrupt("truncated"));
    }
    Ok(buf.get_u32_le())
}

/// The stream record of `batch` written by node `origin`, with `pushes`.
pub fn encode_record(origin: u16, pushes: &[Push], batch: &Batch) -> Bytes {
    let writes = crate::storage::log::encode_ops(batch);
    let mut out = BytesMut::with_capacity(7 + writes.len() + 64);
    out.put_u8(VERSION);
    out.put_u16_le(origin);
    put_pushes(&mut out, pushes);
    out.put_slice(&writes);
    out.freeze()
}

/// Decodes a stream record, checking it whole.
pub fn decode_record(mut buf: Bytes) -> Result<Record> {
    if buf.remaining() < 3 {
        return Err(corrupt("truncated"));
    }
    if buf.get_u8() != VERSION {
        return Err(corrupt("unknown record version"));
    }
    let origin = buf.get_u16_le();
    let pushes = take_pushes(&mut buf)?;
    let batch = crate::storage::log::decode_ops(&buf)?;
    Ok(Record {
        origin,
        pushes,
        batch,
    })
}

/// A typing push for every node.
pub fn encode_ephemeral(origin: u16, push: &Push) -> Bytes {
    let mut out = BytesMut::with_capacity(7 + push.1.len() + push.0.len() * 8 + 8);
    out.put_u8(VERSION);
    out.put_u16_le(origin);
    put_pushes(&mut out, std::slice::from_ref(push));
    out.freeze()
}

/// The origin and pushes of a typing message.
pub fn decode_ephemeral(mut buf: Bytes) -> Result<(u16, Vec<Push>)> {
    if buf.remaining() < 3 || buf.get_u8() != VERSION {
        return Err(corrupt("unknown ephemeral message"));
    }
    let origin = buf.get_u16_le();
    Ok((origin, take_pushes(&mut buf)?))
}

/// A user's state on the announcing node: user, status there, last seen.
pub type NodePresence = (u64, pb::PresenceStatus, u64);

/// Bytes of one [`NodePresence`] in an announcement.
const PRESENCE_ENTRY: usize = 20;

/// A presence announcement: node, how long it holds (ms), then each
/// user, status and last seen.
pub fn encode_presence(node: u16, ttl_ms: u64, states: &[NodePresence]) -> Bytes {
    let mut out = BytesMut::with_capacity(10 + states.len() * PRESENCE_ENTRY);
    out.put_u16_le(node);
    out.put_u64_le(ttl_ms);
    for &(user, status, last_seen) in states {
        out.put_u64_le(user);
        out.put_i32_le(status as i32);
        out.put_u64_le(last_seen);
    }
    out.freeze()
}

/// The node, hold time and states of a presence announcement.
pub fn decode_presence(mut buf: Bytes) -> Option<(u16, u64, Vec<NodePresence>)> {
    if buf.remaining() < 10 {
        return None;
    }
    let node = buf.get_u16_le();
    let ttl_ms = buf.get_u64_le();
    let mut states = Vec::with_capacity(buf.remaining() / PRESENCE_ENTRY);
    while buf.remaining() >= PRESENCE_ENTRY {
        let user = buf.get_u64_le();
        let status =
            pb::PresenceStatus::try_from(buf.get_i32_le()).unwrap_or(pb::PresenceStatus::Offline);
        states.push((user, status, buf.get_u64_le()));
    }
    Some((node, ttl_ms, states))
}

/// A request to close a user's sessions on the other nodes: origin node,
/// user, then the frame to send before closing.
pub fn encode_end_user(origin: u16, user: u64, frame: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(10 + frame.len());
    out.put_u16_le(origin);
    out.put_u64_le(user);
    out.put_slice(frame);
    out.freeze()
}

/// The origin node, user and frame of a session-end request.
pub fn decode_end_user(mut buf: Bytes) -> Option<(u16, u64, Bytes)> {
    if buf.remaining() < 10 {
        return None;
    }
    let origin = buf.get_u16_le();
    let user = buf.get_u64_le();
    Some((origin, user, buf))
}

/// A request to end the presence watches between users `a` and `b`, from
/// node `origin`: origin (2), a (8), b (8), little-endian.
pub fn encode_unwatch(origin: u16, a: u64, b: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(18);
    out.put_u16_le(origin);
    out.put_u64_le(a);
    out.put_u64_le(b);
    out.freeze()
}

/// The origin node and the two users of an unwatch request.
pub fn decode_unwatch(mut buf: Bytes) -> Option<(u16, u64, u64)> {
    if buf.remaining() != 18 {
        return None;
    }
    Some((buf.get_u16_le(), buf.get_u64_le(), buf.get_u64_le()))
}

/// A conversation request forwarded to its owner node.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Forward {
    /// The request's id, echoed in the reply.
    #[prost(uint64, tag = "1")]
    pub request_id: u64,
    /// The authenticated user making it.
    #[prost(uint64, tag = "2")]
    pub user: u64,
    /// The conversation.
    #[prost(uint64, tag = "3")]
    pub conversation: u64,
    /// The stream sequence the origin node had applied when it sent the
    /// request: the owner handles it only once it has applied as much, so
    /// it sees whatever the user saw (a conversation just created).
    #[prost(uint64, tag = "4")]
    pub after: u64,
    /// What to do.
    #[prost(
        oneof = "ForwardOp",
        tags = "5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24"
    )]
    pub op: Option<ForwardOp>,
}

/// Ids of users to add.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Users {
    /// The users.
    #[prost(uint64, repeated, tag = "1")]
    pub users: Vec<u64>,
}

/// A member's new role.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoleOf {
    /// The member.
    #[prost(uint64, tag = "1")]
    pub user: u64,
    /// The role.
    #[prost(int32, tag = "2")]
    pub role: i32,
}

/// A deletion, with the message as the origin read it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Deletion {
    /// The message's seq.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The message (none: no such seq).
    #[prost(message, optional, tag = "2")]
    pub target: Option<pb::Message>,
}

/// An edit, with the message as the origin read it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Edition {
    /// The message's seq.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The new text.
    #[prost(string, tag = "2")]
    pub text: String,
    /// The message (none: no such seq).
    #[prost(message, optional, tag = "3")]
    pub target: Option<pb::Message>,
}

/// A reaction, with the message and its reaction records as the origin
/// read them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Reaction {
    /// The message's seq.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The emoji.
    #[prost(string, tag = "2")]
    pub emoji: String,
    /// Remove rather than add.
    #[prost(bool, tag = "3")]
    pub remove: bool,
    /// The message (none: no such seq).
    #[prost(message, optional, tag = "4")]
    pub target: Option<pb::Message>,
    /// Its reaction counts.
    #[prost(message, optional, tag = "5")]
    pub counts: Option<crate::records::ReactionCounts>,
    /// The caller's reactions to it.
    #[prost(message, optional, tag = "6")]
    pub mine: Option<crate::records::UserReactions>,
}

/// [`OwnerOp`] on the wire.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ForwardOp {
    /// SendMessage.
    #[prost(message, tag = "5")]
    Send(pb::SendMessage),
    /// AddMembers.
    #[prost(message, tag = "6")]
    AddMembers(Users),
    /// RemoveMember.
    #[prost(uint64, tag = "7")]
    RemoveMember(u64),
    /// LeaveConversation.
    #[prost(bool, tag = "8")]
    Leave(bool),
    /// SetRole.
    #[prost(message, tag = "9")]
    SetRole(RoleOf),
    /// UpdateConversation.
    #[prost(string, tag = "10")]
    UpdateTitle(String),
    /// TransferOwnership.
    #[prost(uint64, tag = "11")]
    TransferOwnership(u64),
    /// MarkRead.
    #[prost(uint64, tag = "12")]
    MarkRead(u64),
    /// MarkDelivered.
    #[prost(uint64, tag = "13")]
    MarkDelivered(u64),
    /// GetReceipts.
    #[prost(uint64, tag = "14")]
    GetReceipts(u64),
    /// Typing started (true) or stopped.
    #[prost(bool, tag = "15")]
    Typing(bool),
    /// SubscribeChannel.
    #[prost(bool, tag = "16")]
    Subscribe(bool),
    /// UnsubscribeChannel.
    #[prost(bool, tag = "17")]
    Unsubscribe(bool),
    /// DeleteMessage.
    #[prost(message, tag = "18")]
    Delete(Deletion),
    /// EditMessage.
    #[prost(message, tag = "19")]
    Edit(Edition),
    /// React.
    #[prost(message, tag = "20")]
    React(Reaction),
    /// The user blocked (true) or unblocked the other member.
    #[prost(bool, tag = "21")]
    SetBlocked(bool),
    /// BanMember.
    #[prost(uint64, tag = "22")]
    Ban(u64),
    /// UnbanMember.
    #[prost(uint64, tag = "23")]
    Unban(u64),
    /// SetNotificationLevel.
    #[prost(message, tag = "24")]
    SetNotify(NotifyOf),
}

/// A notification level and the end of a mute.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NotifyOf {
    /// `pb::NotificationLevel`.
    #[prost(int32, tag = "1")]
    pub level: i32,
    /// Unix ms (0: none).
    #[prost(uint64, tag = "2")]
    pub muted_until_ms: u64,
}

/// `req` for its owner node; `after` as [`Forward::after`].
pub fn encode_request(req: &OwnerRequest, after: u64) -> Bytes {
    let op = match &req.op {
        OwnerOp::Send(m) => ForwardOp::Send(m.clone()),
        OwnerOp::AddMembers(users) => ForwardOp::AddMembers(Users {
            users: users.clone(),
        }),
        OwnerOp::RemoveMember(u) => ForwardOp::RemoveMember(*u),
        OwnerOp::Leave => ForwardOp::Leave(true),
        OwnerOp::SetRole(user, role) => ForwardOp::SetRole(RoleOf {
            user: *user,
            role: *role,
        }),
        OwnerOp::UpdateTitle(t) => ForwardOp::UpdateTitle(t.clone()),
        OwnerOp::TransferOwnership(u) => ForwardOp::TransferOwnership(*u),
        OwnerOp::MarkRead(s) => ForwardOp::MarkRead(*s),
        OwnerOp::MarkDelivered(s) => ForwardOp::MarkDelivered(*s),
        OwnerOp::GetReceipts(s) => ForwardOp::GetReceipts(*s),
        OwnerOp::Typing(t) => ForwardOp::Typing(*t),
        OwnerOp::SubscribeChannel => ForwardOp::Subscribe(true),
        OwnerOp::UnsubscribeChannel => ForwardOp::Unsubscribe(true),
        OwnerOp::DeleteMessage { seq, target } => ForwardOp::Delete(Deletion {
            seq: *seq,
            target: target.as_deref().cloned(),
        }),
        OwnerOp::EditMessage { seq, text, target } => ForwardOp::Edit(Edition {
            seq: *seq,
            text: text.clone(),
            target: target.as_deref().cloned(),
        }),
        OwnerOp::React(r) => ForwardOp::React(Reaction {
            seq: r.seq,
            emoji: r.emoji.clone(),
            remove: r.remove,
            target: r.target.as_deref().cloned(),
            counts: Some(r.counts.clone()),
            mine: Some(r.mine.clone()),
        }),
        OwnerOp::SetBlocked(on) => ForwardOp::SetBlocked(*on),
        OwnerOp::Ban(u) => ForwardOp::Ban(*u),
        OwnerOp::Unban(u) => ForwardOp::Unban(*u),
        OwnerOp::SetNotify(level, until) => ForwardOp::SetNotify(NotifyOf {
            level: *level,
            muted_until_ms: *until,
        }),
    };
    let forward = Forward {
        request_id: req.origin.request_id,
        user: req.user.get(),
        conversation: req.conversation.get(),
        after,
        op: Some(op),
    };
    Bytes::from(prost::Message::encode_to_vec(&forward))
}

/// A forwarded request as the owner handles it, answered at `origin`.
pub fn decode_request(forward: Forward, origin: Origin) -> Option<OwnerRequest> {
    let op = match forward.op? {
        ForwardOp::Send(m) => OwnerOp::Send(m),
        ForwardOp::AddMembers(u) => OwnerOp::AddMembers(u.users),
        ForwardOp::RemoveMember(u) => OwnerOp::RemoveMember(u),
        ForwardOp::Leave(_) => OwnerOp::Leave,
        ForwardOp::SetRole(r) => OwnerOp::SetRole(r.user, r.role),
        ForwardOp::UpdateTitle(t) => OwnerOp::UpdateTitle(t),
        ForwardOp::TransferOwnership(u) => OwnerOp::TransferOwnership(u),
        ForwardOp::MarkRead(s) => OwnerOp::MarkRead(s),
        ForwardOp::MarkDelivered(s) => OwnerOp::MarkDelivered(s),
        ForwardOp::GetReceipts(s) => OwnerOp::GetReceipts(s),
        ForwardOp::Typing(t) => OwnerOp::Typing(t),
        ForwardOp::Subscribe(_) => OwnerOp::SubscribeChannel,
        ForwardOp::Unsubscribe(_) => OwnerOp::UnsubscribeChannel,
        ForwardOp::Delete(d) => OwnerOp::DeleteMessage {
            seq: d.seq,
            target: d.target.map(Box::new),
        },
        ForwardOp::Edit(e) => OwnerOp::EditMessage {
            seq: e.seq,
            text: e.text,
            target: e.target.map(Box::new),
        },
        ForwardOp::React(r) => OwnerOp::React(Box::new(crate::owner::Reacting {
            seq: r.seq,
            emoji: r.emoji,
            remove: r.remove,
            target: r.target.map(Box::new),
            counts: r.counts.unwrap_or_default(),
            mine: r.mine.unwrap_or_default(),
        })),
        ForwardOp::SetBlocked(on) => OwnerOp::SetBlocked(on),
        ForwardOp::Ban(u) => OwnerOp::Ban(u),
        ForwardOp::Unban(u) => OwnerOp::Unban(u),
        ForwardOp::SetNotify(n) => OwnerOp::SetNotify(n.level, n.muted_until_ms),
    };
    Some(OwnerRequest::new(
        origin,
        UserId(forward.user),
        ConversationId(forward.conversation),
        op,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Ks;

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let mut batch = Batch::new();
        batch.put(Ks::Users, b"k", b"v");
        batch.delete(Ks::Tokens, b"t");
        let users: Arc<[u64]> = Arc::from(vec![1u64, 2, 3]);
        let pushes = vec![(users, Bytes::from_static(b"frame"))];
        let bytes = encode_record(7, &pushes, &batch);
        let r = decode_record(bytes.clone()).expect("decodes");
        assert_eq!(r.origin, 7);
        assert_eq!(r.pushes.len(), 1);
        assert_eq!(&*r.pushes[0].0, &[1, 2, 3]);
        assert_eq!(&r.pushes[0].1[..], b"frame");
        assert_eq!(r.batch.len(), 2);
        for cut in 0..bytes.len() {
            assert!(decode_record(bytes.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut flipped = bytes.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(decode_record(Bytes::from(flipped)).is_err());
    }

    #[test]
    fn announcements_round_trip() {
        let states = [
            (7, pb::PresenceStatus::Busy, 0),
            (8, pb::PresenceStatus::Offline, 99),
        ];
        let (node, ttl, back) =
            decode_presence(encode_presence(3, 45_000, &states)).expect("decodes");
        assert_eq!((node, ttl, back.as_slice()), (3, 45_000, &states[..]));
        let (origin, user, frame) =
            decode_end_user(encode_end_user(2, 9, b"bye")).expect("decodes");
        assert_eq!((origin, user, &frame[..]), (2, 9, &b"bye"[..]));
        assert!(decode_presence(Bytes::from_static(b"short")).is_none());
        assert_eq!(decode_unwatch(encode_unwatch(3, 4, 5)), Some((3, 4, 5)));
        assert!(decode_unwatch(Bytes::from_static(b"short")).is_none());
    }

    #[test]
    fn requests_round_trip() {
        let origin = Origin {
            shard: 0,
            session: 1,
            request_id: 9,
        };
        let req = OwnerRequest::new(origin, UserId(5), ConversationId(6), OwnerOp::SetRole(7, 2));
        let bytes = encode_request(&req, 42);
        let f: Forward = prost::Message::decode(bytes).expect("decodes");
        assert_eq!(f.after, 42);
        let back = decode_request(f, origin).expect("an op");
        assert_eq!(back.user, UserId(5));
        assert!(matches!(back.op, OwnerOp::SetRole(7, 2)));

        let edit = OwnerOp::EditMessage {
            seq: 3,
            text: "new".into(),
            target: None,
        };
        let req = OwnerRequest::new(origin, UserId(5), ConversationId(6), edit);
        let f: Forward = prost::Message::decode(encode_request(&req, 1)).expect("decodes");
        let back = decode_request(f, origin).expect("an op");
        assert!(
            matches!(&back.op, OwnerOp::EditMessage { seq: 3, text, target: None } if text == "new")
        );

        let react = OwnerOp::React(Box::new(crate::owner::Reacting {
            seq: 4,
            emoji: "👍".into(),
            remove: true,
            target: None,
            counts: Default::default(),
            mine: crate::records::UserReactions {
                emoji: vec!["👍".into()],
            },
        }));
        let req = OwnerRequest::new(origin, UserId(5), ConversationId(6), react);
        let f: Forward = prost::Message::decode(encode_request(&req, 1)).expect("decodes");
        let back = decode_request(f, origin).expect("an op");
        assert!(
            matches!(&back.op, OwnerOp::React(r) if r.seq == 4 && r.remove && r.mine.emoji == ["👍"])
        );
    }
}
