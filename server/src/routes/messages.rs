//! Messages: sending (with the connection's and the user's send rates),
//! deleting, editing, reactions, history and sync, receipts and typing. Everything that
//! changes a conversation goes to its owner.

use std::rc::Rc;
use std::time::Duration;

use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use chat_protocol::{ConversationId, ErrorCode, UserId};

use super::{Request, read_then_owner, spawn_read, to_owner};
use crate::connection::Conn;
use crate::limits::TokenBucket;
use crate::owner::{OwnerOp, OwnerRequest, Reacting};
use crate::session_state::Verdict;
use crate::shard_msg::ShardMsg;

use crate::reply::Refusal;
use crate::storage::Store;

/// SendMessage: refused with RATE_LIMITED past the connection's or the
/// user's send rate, otherwise sequenced by the conversation's owner.
pub(crate) async fn send(conn: &Rc<Conn>, req: Request, user: u64, m: pb::SendMessage) {
    if let Some(owned) = admit_send(conn, req, user, m) {
        conn.shard.to_owner(owned).await;
    }
}

/// The part of [`send`] before the owner: the send rates. Answers a send
/// past them; otherwise returns the request for the owner.
fn admit_send(conn: &Conn, req: Request, user: u64, m: pb::SendMessage) -> Option<OwnerRequest> {
    conn.shard.counters.messages_in.increment(1);
    if let Err(wait) = take_send_token(conn, user) {
        let ms = wait.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
        let r = Refusal::new(ErrorCode::RateLimited, "sending too fast").retry_after(ms);
        req.answer(Err(r));
        return None;
    }
    let conversation = ConversationId(m.conversation_id);
    Some(req.to_owner(UserId(user), conversation, OwnerOp::Send(m)))
}

/// What [`send_now`] did with a frame.
pub(crate) enum SentNow {
    /// Handed to its owner (or answered).
    Done,
    /// For the owner on another shard, whose ring is full: the caller waits
    /// for room ([`crate::shard::Shard::send_to`]) before it reads on, so
    /// that the connection's requests stay in order.
    Full(crate::mesh::ShardId, ShardMsg),
}

/// The send path without a future, for the common case of a SendMessage
/// of a logged-in session with a request permit free and room in its
/// owner's queue: the frame is handed on within the read loop's poll,
/// without allocating and moving the whole request handler's state. Any
/// other frame, or a send that would have to wait for a permit, comes back
/// for [`crate::connection::Conn::handle`].
// The frame comes back by move, as it went in; boxing it would add an
// allocation to the path this exists to keep free of them.
#[allow(clippy::result_large_err)]
pub(crate) fn send_now(
    conn: &Rc<Conn>,
    frame: pb::ClientFrame,
) -> Result<SentNow, pb::ClientFrame> {
    let rid = frame.request_id;
    let admitted = matches!(frame.body, Some(C::SendMessage(_)))
        && matches!(
            conn.state.borrow().admit(rid, frame.body.as_ref()),
            Verdict::Accept
        );
    let user = conn.state.borrow().user();
    let (Some(user), true) = (user, admitted) else {
        return Err(frame);
    };
    let Some(req) = Request::try_take(conn, rid) else {
        return Err(frame);
    };
    let Some(C::SendMessage(m)) = frame.body else {
        // Checked above; the permit goes back with the request.
        return Ok(SentNow::Done);
    };
    match admit_send(conn, req, user, m) {
        Some(owned) => Ok(match conn.shard.try_to_owner(owned) {
            Ok(()) => SentNow::Done,
            Err((owner, msg)) => SentNow::Full(owner, msg),
        }),
        None => Ok(SentNow::Done),
    }
}

/// One send from this connection: within its own and its user's rate?
fn take_send_token(conn: &Conn, user: u64) -> Result<(), Duration> {
    let config = &conn.shard.shared.config;
    let now = config.clock.now();
    conn.bucket.borrow_mut().take(now)?;
    conn.shard
        .user_buckets
        .borrow_mut()
        .entry(user)
        .or_insert_with(|| TokenBucket::new(config.rate_user_per_sec, config.rate_user_burst, now))
        .take(now)
}

/// DeleteMessage: the message is read here; its owner decides who may
/// delete it.
pub(crate) fn delete(conn: &Rc<Conn>, req: Request, user: u64, d: pb::DeleteMessage) {
    let (conversation, seq) = (d.conversation_id, d.seq);
    let read = move |store: &Store| Ok(store.message(conversation, seq)?);
    let op = move |target: Option<pb::Message>| OwnerOp::DeleteMessage {
        seq,
        target: target.map(Box::new),
    };
    let store = &conn.shard.shared.store;
    read_then_owner(conn, req, (user, conversation), store, read, op);
}

/// EditMessage: like [`delete`], the message is read here and its owner
/// decides whether the caller may edit it.
pub(crate) fn edit(conn: &Rc<Conn>, req: Request, user: u64, e: pb::EditMessage) {
    let (conversation, seq) = (e.conversation_id, e.seq);
    let read = move |store: &Store| Ok(store.message(conversation, seq)?);
    let text = e.text;
    let op = move |target: Option<pb::Message>| OwnerOp::EditMessage {
        seq,
        text,
        target: target.map(Box::new),
    };
    let store = &conn.shard.shared.store;
    read_then_owner(conn, req, (user, conversation), store, read, op);
}

/// React: the message and its reaction records are read here; its owner
/// applies the change.
pub(crate) fn react(conn: &Rc<Conn>, req: Request, user: u64, r: pb::React) {
    let (conversation, seq) = (r.conversation_id, r.seq);
    let read = move |store: &Store| {
        let target = store.message(conversation, seq)?;
        let (counts, mine) = match &target {
            Some(_) => (
                store.reaction_counts(conversation, seq)?,
                store.user_reactions(conversation, seq, user)?,
            ),
            None => Default::default(),
        };
        Ok((target, counts, mine))
    };
    let op = move |(target, counts, mine): (Option<pb::Message>, _, _)| {
        OwnerOp::React(Box::new(Reacting {
            seq,
            emoji: r.emoji,
            remove: r.remove,
            target: target.map(Box::new),
            counts,
            mine,
        }))
    };
    let store = &conn.shard.shared.store;
    read_then_owner(conn, req, (user, conversation), store, read, op);
}

/// SetNotificationLevel.
pub(crate) async fn set_notify(
    conn: &Rc<Conn>,
    req: Request,
    user: u64,
    n: pb::SetNotificationLevel,
) {
    let op = OwnerOp::SetNotify(n.level, n.muted_until_ms);
    to_owner(conn, req, user, n.conversation_id, op).await;
}

/// GetHistory.
pub(crate) fn history(conn: &Rc<Conn>, req: Request, user: u64, h: pb::GetHistory) {
    spawn_read(conn, req, &conn.shard.shared.catalog, move |catalog| {
        catalog.history(user, &h).map(S::MessagePage)
    });
}

/// Sync.
pub(crate) fn sync(conn: &Rc<Conn>, req: Request, user: u64, s: pb::Sync) {
    metrics::counter!("chatd_syncs_total").increment(1);
    spawn_read(conn, req, &conn.shard.shared.catalog, move |catalog| {
        catalog
            .sync(user, &s.cursors, s.limit_per_conversation)
            .map(S::SyncResult)
    });
}

/// MarkRead.
pub(crate) async fn mark_read(conn: &Rc<Conn>, req: Request, user: u64, m: pb::MarkRead) {
    to_owner(conn, req, user, m.conversation_id, OwnerOp::MarkRead(m.seq)).await;
}

/// MarkDelivered.
pub(crate) async fn mark_delivered(conn: &Rc<Conn>, req: Request, user: u64, m: pb::MarkDelivered) {
    let op = OwnerOp::MarkDelivered(m.seq);
    to_owner(conn, req, user, m.conversation_id, op).await;
}

/// GetReceipts.
pub(crate) async fn receipts(conn: &Rc<Conn>, req: Request, user: u64, g: pb::GetReceipts) {
    to_owner(
        conn,
        req,
        user,
        g.conversation_id,
        OwnerOp::GetReceipts(g.seq),
    )
    .await;
}

/// Typing: never answered; the owner forwards it to the other members.
pub(crate) async fn typing(conn: &Rc<Conn>, req: Request, user: u64, t: pb::Typing) {
    to_owner(
        conn,
        req,
        user,
        t.conversation_id,
        OwnerOp::Typing(t.active),
    )
    .await;
}
