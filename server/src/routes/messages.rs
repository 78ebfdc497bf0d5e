//! Messages: sending (with the connection's and the user's send rates),
//! deleting, history and sync, receipts and typing. Everything that
//! changes a conversation goes to its owner.

use std::rc::Rc;
use std::time::Duration;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, server_frame::Body as S};

use super::{Request, read_then_owner, spawn_read, to_owner};
use crate::connection::Conn;
use crate::limits::TokenBucket;
use crate::owner::OwnerOp;
use crate::reply::Refusal;
use crate::storage::Store;

/// SendMessage: refused with RATE_LIMITED past the connection's or the
/// user's send rate, otherwise sequenced by the conversation's owner.
pub(crate) async fn send(conn: &Rc<Conn>, req: Request, user: u64, m: pb::SendMessage) {
    conn.shard.counters.messages_in.increment(1);
    if let Err(wait) = take_send_token(conn, user) {
        let ms = wait.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
        let r = Refusal::new(ErrorCode::RateLimited, "sending too fast").retry_after(ms);
        req.answer(Err(r));
        return;
    }
    to_owner(conn, req, user, m.conversation_id, OwnerOp::Send(m)).await;
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
