//! Presence: a user's chosen status, and which users' presence a session
//! watches. Each user's presence is kept by one shard
//! ([`Shard::presence_op`](crate::shard::Shard)); a shard asks it once for
//! all of its sessions that watch the user.

use std::rc::Rc;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, server_frame::Body as S};

use super::Request;
use crate::connection::Conn;
use crate::presence::{MAX_PRESENCE_SUBSCRIPTIONS, PresenceOp};
use crate::reply::{self, Handled, Refusal};

/// SetPresence.
pub(crate) async fn set(conn: &Rc<Conn>, req: Request, user: u64, p: pb::SetPresence) {
    let status = pb::PresenceStatus::try_from(p.status).unwrap_or(pb::PresenceStatus::Online);
    conn.shard
        .presence_op(PresenceOp::Status { user, status })
        .await;
    req.answer(Ok(S::Done(pb::Done {})));
}

/// SubscribePresence: registers interest, then the current states follow
/// as PresenceEvents (cached ones at once, others from the keeping shard).
/// Users in a block with the subscriber, either way, are left out: their
/// presence stays hidden (`spec/messages.md`, "BlockUser").
pub(crate) async fn subscribe(conn: &Rc<Conn>, req: Request, user: u64, s: pb::SubscribePresence) {
    if s.user_ids.len() > MAX_PRESENCE_SUBSCRIPTIONS {
        return req.answer(Err(too_many()));
    }
    let ids = s.user_ids;
    let visible = conn
        .shard
        .shared
        .store
        .off_thread(move |store| {
            let mut visible = Vec::with_capacity(ids.len());
            for u in ids {
                if !store.blocked_either(user, u)? {
                    visible.push(u);
                }
            }
            Ok(visible)
        })
        .await;
    match visible {
        Ok(visible) => req.answer(watch(conn, visible).await),
        Err(r) => req.answer(Err(r)),
    }
}

fn too_many() -> Refusal {
    Refusal::new(
        ErrorCode::InvalidArgument,
        format!("at most {MAX_PRESENCE_SUBSCRIPTIONS} presence subscriptions per session"),
    )
}

async fn watch(conn: &Conn, users: Vec<u64>) -> Handled {
    let shard = &conn.shard;
    let current = shard.interest.borrow().count(conn.id);
    if current + users.len() > MAX_PRESENCE_SUBSCRIPTIONS {
        return Err(too_many());
    }
    for watched in users {
        let (first, cached) = shard.interest.borrow_mut().add(conn.id, watched);
        if first {
            let op = PresenceOp::Subscribe {
                user: watched,
                shard: shard.id,
                on: true,
            };
            shard.presence_op(op).await;
        } else if let Some(event) = cached {
            let frame = reply::push(S::PresenceEvent(event));
            shard.sessions.borrow().push_ephemeral(conn.id, frame);
        }
    }
    Ok(S::Done(pb::Done {}))
}

/// UnsubscribePresence.
pub(crate) async fn unsubscribe(conn: &Rc<Conn>, req: Request, s: pb::UnsubscribePresence) {
    let shard = &conn.shard;
    for watched in s.user_ids {
        let last = shard.interest.borrow_mut().remove(conn.id, watched);
        if last {
            let op = PresenceOp::Subscribe {
                user: watched,
                shard: shard.id,
                on: false,
            };
            shard.presence_op(op).await;
        }
    }
    req.answer(Ok(S::Done(pb::Done {})));
}
