//! The session itself: Hello, Ping, registration, login, resume and
//! logout, and what logging in and out changes (session limits, presence,
//! the session table's user index). These come before a session has a
//! user, so they hold no in-flight permit and are answered in order.

use std::rc::Rc;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, server_frame::Body as S};

use super::{at_home, blocking, password_attempt, stopped};
use crate::accounts;
use crate::connection::{CAPABILITY_DATAGRAMS, Conn};
use crate::home::Key;
use crate::presence::PresenceOp;
use crate::reply::{self, Handled, Refusal};
use crate::session_table::CloseReason;
use crate::shard::Shard;

/// Ping: Pong with the same nonce.
pub(crate) fn ping(conn: &Conn, rid: u64, p: pb::Ping) {
    conn.push(reply::answer(rid, Ok(S::Pong(pb::Pong { nonce: p.nonce }))));
}

/// Hello: Welcome with the server's limits and the capabilities both
/// sides support.
pub(crate) fn hello(conn: &Conn, rid: u64, hello: pb::Hello) {
    conn.state.borrow_mut().greeted();
    let mut capabilities = Vec::new();
    if conn.caps.datagrams {
        capabilities.push(CAPABILITY_DATAGRAMS.to_owned());
        let wanted = hello.capabilities.iter().any(|c| c == CAPABILITY_DATAGRAMS);
        conn.caps.datagrams_on.set(wanted);
    }
    let c = &conn.shard.shared.config;
    let welcome = pb::Welcome {
        protocol_version: chat_protocol::PROTOCOL_VERSION,
        server_name: "chatd".into(),
        max_frame_bytes: c.max_frame_bytes as u32,
        max_message_bytes: c.max_message_bytes as u32,
        heartbeat_interval_ms: c.heartbeat_interval_ms,
        capabilities,
    };
    conn.push(reply::answer(rid, Ok(S::Welcome(welcome))));
}

/// Register: the password is hashed here, under this shard's hashing
/// permit; the name is taken at its home, in its lane.
pub(crate) async fn register(conn: &Rc<Conn>, rid: u64, r: pb::Register) {
    let res = authenticated(conn, new_account(&conn.shard, r).await).await;
    answer_auth(conn, rid, res.map(S::AuthOk));
}

async fn new_account(shard: &Rc<Shard>, r: pb::Register) -> Result<pb::AuthOk, Refusal> {
    let device = accounts::device_of(r.device.as_ref());
    let key = Key::Username(r.username.clone());
    let hashing = shard.home.hashing.acquire().await.map_err(|_| stopped())?;
    let record = blocking(&shard.shared.accounts, move |a| a.new_account(&r)).await?;
    drop(hashing);
    at_home(shard, &key, true, &shard.shared.accounts, move |a| {
        a.create_account(record, &device)
    })
    .await
}

/// Login: a password attempt counted by the failed-login limits of the
/// username and the address.
pub(crate) async fn login(conn: &Rc<Conn>, rid: u64, l: pb::Login) {
    let keys = accounts::login_keys(&l.username, conn.peer);
    let checked = password_attempt(&conn.shard, keys, move |a| a.login(&l)).await;
    let res = authenticated(conn, checked).await;
    answer_auth(conn, rid, res.map(S::AuthOk));
}

/// Resume: login by token, with what the session missed in `ResumeOk.sync`.
pub(crate) async fn resume(conn: &Rc<Conn>, rid: u64, r: pb::Resume) {
    let shard = &conn.shard;
    let token = r.session_token.clone();
    let res = blocking(&shard.shared.accounts, move |a| a.resume(&token)).await;
    let res = authenticated(conn, res).await;
    let res = match res {
        Ok(auth) => {
            // Registered for pushes before the sync read, so nothing
            // committed in between is missed.
            metrics::counter!("chatd_resumes_total").increment(1);
            let user = auth.user_id;
            let cursors = r.cursors;
            blocking(&shard.shared.catalog, move |c| c.sync(user, &cursors, 0))
                .await
                .map(|sync| {
                    S::ResumeOk(pb::ResumeOk {
                        auth: Some(auth),
                        sync: Some(sync),
                    })
                })
        }
        Err(e) => Err(e),
    };
    answer_auth(conn, rid, res);
}

/// Logout, of this device or of all.
pub(crate) async fn logout(conn: &Rc<Conn>, rid: u64, l: pb::Logout) {
    let Some(user) = conn.state.borrow().user() else {
        return;
    };
    let token = conn.token.borrow_mut().take();
    let everywhere = l.all_devices;
    let res = blocking(&conn.shard.shared.accounts, move |a| {
        a.logout(user, token.as_deref(), l.all_devices)
    })
    .await;
    signed_off(conn).await;
    conn.state.borrow_mut().logged_out();
    conn.shard.sessions.borrow_mut().deauthenticate(conn.id);
    if everywhere && res.is_ok() {
        // Their tokens are revoked; so are the sessions.
        let frame = reply::error(0, ErrorCode::TokenInvalid, "logged out on all devices");
        conn.shard.end_user(user, frame, None).await;
    }
    conn.push(reply::answer(rid, res.map(|()| S::Done(pb::Done {}))));
}

/// Answers Register, Login or Resume; TOO_MANY_SESSIONS closes.
fn answer_auth(conn: &Conn, rid: u64, res: Handled) {
    match res {
        Err(r) if r.code.closes_connection() => {
            let reason = CloseReason::Error(r.code);
            conn.close(Some(reply::answer(rid, Err(r))), reason);
        }
        other => conn.push(reply::answer(rid, other)),
    }
}

/// Records a successful login (register, login or resume: `checked`),
/// unless the user has too many sessions; returns the reply to send. The session is counted (towards the limit
/// and the user's presence) by the shard keeping the user's presence.
async fn authenticated(
    conn: &Rc<Conn>,
    checked: Result<pb::AuthOk, Refusal>,
) -> Result<pb::AuthOk, Refusal> {
    let ok = checked?;
    let max = conn.shard.shared.config.max_sessions_per_user;
    if !conn.shard.admit_session(ok.user_id, max).await {
        return Err(Refusal::new(
            ErrorCode::TooManySessions,
            format!("at most {max} sessions per user"),
        ));
    }
    conn.state.borrow_mut().authenticated(ok.user_id);
    conn.shard
        .sessions
        .borrow_mut()
        .authenticate(conn.id, ok.user_id);
    *conn.token.borrow_mut() = Some(ok.session_token.clone());
    recheck_token(conn, ok.user_id, ok.session_token.clone());
    Ok(ok)
}

/// Closes this session if its token turns out revoked. Logout on all
/// devices and ChangePassword revoke tokens, then close the sessions
/// registered as the user's; a session whose token was checked before the
/// revocation but that registered after that close is found here, since
/// this check reads the store after the registration.
fn recheck_token(conn: &Conn, user: u64, token: String) {
    let shard = conn.shard.clone();
    let session = conn.id;
    tokio::task::spawn_local(async move {
        let found = blocking(&shard.shared.store, move |store| {
            Ok(store.token(&accounts::token_hash(&token))?.is_some())
        })
        .await;
        if let Ok(false) = found {
            let frame = reply::error(0, ErrorCode::TokenInvalid, "the session token was revoked");
            shard
                .sessions
                .borrow()
                .close_revoked(session, &frame, Some(user));
        }
    });
}

/// The session stopped being a user's (logout or close): it no longer
/// counts towards the user's presence nor watches anyone's.
pub(crate) async fn signed_off(conn: &Conn) {
    let Some(user) = conn.state.borrow().user() else {
        return;
    };
    let shard = &conn.shard;
    if shard.sessions.borrow().sessions_of(user) <= 1 {
        shard.user_buckets.borrow_mut().remove(&user);
    }
    shard
        .presence_op(PresenceOp::Session { user, delta: -1 })
        .await;
    let ended = shard.interest.borrow_mut().remove_session(conn.id);
    for watched in ended {
        let op = PresenceOp::Subscribe {
            user: watched,
            shard: shard.id,
            on: false,
        };
        shard.presence_op(op).await;
    }
}
