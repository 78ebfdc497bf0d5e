//! The user's own account: profiles, password changes and push tokens.

use std::rc::Rc;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, server_frame::Body as S};

use super::{Request, blocking, spawn_read};
use crate::accounts;
use crate::connection::Conn;
use crate::presence::PresenceOp;
use crate::reply;

/// GetProfile.
pub(crate) fn profile(conn: &Rc<Conn>, req: Request, p: pb::GetProfile) {
    spawn_read(conn, req, move |ctx| {
        accounts::profile(ctx, &p).map(S::Profile)
    });
}

/// UpdateProfile; hiding last seen also changes what presence shows.
pub(crate) fn update_profile(conn: &Rc<Conn>, req: Request, user: u64, p: pb::UpdateProfile) {
    let hide = p.hide_last_seen;
    let shard = conn.shard.clone();
    tokio::task::spawn_local(async move {
        let result = blocking(&shard.ctx, move |ctx| {
            accounts::update_profile(ctx, user, &p)
        })
        .await;
        if result.is_ok() {
            shard.presence_op(PresenceOp::Hide { user, hide }).await;
        }
        req.answer(result.map(S::Profile));
    });
}

/// ChangePassword: the user's other sessions end, their tokens revoked.
pub(crate) fn change_password(conn: &Rc<Conn>, req: Request, user: u64, p: pb::ChangePassword) {
    let shard = conn.shard.clone();
    let (session, peer) = (conn.id, conn.peer);
    let token = conn.token.borrow().clone();
    tokio::task::spawn_local(async move {
        let Ok(_hashing) = shard.ctx.password_hashing.acquire().await else {
            return;
        };
        let result = blocking(&shard.ctx, move |ctx| {
            accounts::change_password(ctx, user, token.as_deref(), &p, peer)
        })
        .await;
        if result.is_ok() {
            let frame = reply::error(
                0,
                ErrorCode::TokenInvalid,
                "the password was changed on another device",
            );
            shard.end_user(user, frame, Some(session)).await;
        }
        req.answer(result.map(|()| S::Done(pb::Done {})));
    });
}

/// RegisterPushToken, for the device holding this session's token.
pub(crate) fn register_push_token(
    conn: &Rc<Conn>,
    req: Request,
    user: u64,
    p: pb::RegisterPushToken,
) {
    let token = conn.token.borrow().clone().unwrap_or_default();
    spawn_read(conn, req, move |ctx| {
        crate::push::register(ctx, user, &token, &p).map(|()| S::Done(pb::Done {}))
    });
}
