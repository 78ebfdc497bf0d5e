//! The user's own account: profiles, password changes, push tokens and
//! deleting the account.

use std::net::IpAddr;
use std::rc::Rc;

use chat_protocol::pb::{self, server_frame::Body as S};
use chat_protocol::{ErrorCode, UserId};

use super::{Request, at_home, blocking, password_attempt, spawn_read};
use crate::accounts::{self, Accounts};
use crate::connection::Conn;
use crate::home::Key;
use crate::presence::PresenceOp;
use crate::reply::{self, Refusal};
use crate::shard::Shard;
use crate::shard_msg::{OperatorJob, OperatorOp};

/// GetProfile.
pub(crate) fn profile(conn: &Rc<Conn>, req: Request, p: pb::GetProfile) {
    spawn_read(conn, req, &conn.shard.shared.accounts, move |accounts| {
        accounts.profile(&p).map(S::Profile)
    });
}

/// UpdateProfile, at the home of the user's record; hiding last seen also
/// changes what presence shows.
pub(crate) fn update_profile(conn: &Rc<Conn>, req: Request, user: u64, p: pb::UpdateProfile) {
    let hide = p.hide_last_seen;
    let shard = conn.shard.clone();
    tokio::task::spawn_local(async move {
        let accounts = &shard.shared.accounts;
        let result = at_home(
            &shard,
            &Key::User(UserId(user)),
            true,
            accounts,
            move |accounts| accounts.update_profile(user, &p),
        )
        .await;
        if result.is_ok() {
            shard.presence_op(PresenceOp::Hide { user, hide }).await;
        }
        req.answer(result.map(S::Profile));
    });
}

/// ChangePassword: allowed and counted by the failed-login limits like a
/// login, checked and hashed under this shard's hashing permit, stored at
/// the home of the user's record; the user's other sessions end, their
/// tokens revoked.
pub(crate) fn change_password(conn: &Rc<Conn>, req: Request, user: u64, p: pb::ChangePassword) {
    let shard = conn.shard.clone();
    let (session, peer) = (conn.id, conn.peer);
    let token = conn.token.borrow().clone();
    tokio::task::spawn_local(async move {
        let result = change(&shard, user, token, p, peer).await;
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

async fn change(
    shard: &Rc<Shard>,
    user: u64,
    token: Option<String>,
    p: pb::ChangePassword,
    peer: Option<IpAddr>,
) -> Result<(), Refusal> {
    let name = blocking(&shard.shared.accounts, move |a| a.username(user)).await?;
    let keys = accounts::login_keys(&name, peer);
    let check = move |a: &Accounts| a.check_new_password(user, &p);
    let hashes = password_attempt(shard, keys, check).await?;
    at_home(
        shard,
        &Key::User(UserId(user)),
        true,
        &shard.shared.accounts,
        move |a| a.replace_password(user, hashes, token.as_deref()),
    )
    .await
}

/// DeleteAccount: the password is checked like a login's (and counted by
/// the failed-login limits), the account erased at the home of the user's
/// record, its media files removed; then every session of the user ends,
/// this one after its `Done`.
pub(crate) fn delete_account(conn: &Rc<Conn>, req: Request, user: u64, d: pb::DeleteAccount) {
    let shard = conn.shard.clone();
    let peer = conn.peer;
    tokio::task::spawn_local(async move {
        let result = delete(&shard, user, d.password, peer).await;
        let done = result.is_ok();
        req.answer(result.map(|()| S::Done(pb::Done {})));
        if done {
            shard
                .presence_op(PresenceOp::Hide { user, hide: true })
                .await;
            let frame = reply::error(0, ErrorCode::TokenInvalid, "the account was deleted");
            shard.end_user(user, frame, None).await;
        }
    });
}

async fn delete(
    shard: &Rc<Shard>,
    user: u64,
    password: String,
    peer: Option<IpAddr>,
) -> Result<(), Refusal> {
    let name = blocking(&shard.shared.accounts, move |a| a.username(user)).await?;
    let keys = accounts::login_keys(&name, peer);
    let check = move |a: &Accounts| a.check_password(user, &password);
    let checked = password_attempt(shard, keys, check).await?;
    let media = at_home(
        shard,
        &Key::User(UserId(user)),
        true,
        &shard.shared.accounts,
        move |a| a.delete_account(user, &checked),
    )
    .await?;
    let files = shard.shared.media.clone();
    blocking(&files, move |files| {
        for id in &media {
            if let Err(e) = crate::media::remove_files(files.dir(), id) {
                tracing::warn!(media = %id, cause = %e, "a deleted account's media stays");
            }
        }
        Ok(())
    })
    .await
}

/// RegisterPushToken, for the device holding this session's token.
pub(crate) fn register_push_token(
    conn: &Rc<Conn>,
    req: Request,
    user: u64,
    p: pb::RegisterPushToken,
) {
    let token = conn.token.borrow().clone().unwrap_or_default();
    spawn_read(conn, req, &conn.shard.shared.accounts, move |accounts| {
        accounts
            .register_push_token(user, &token, &p)
            .map(|()| S::Done(pb::Done {}))
    });
}

/// Runs a control-socket command ([`crate::control`]) on this shard and
/// sends its answer back to the control thread.
pub(crate) fn operator(shard: &Rc<Shard>, job: OperatorJob) {
    let shard = shard.clone();
    tokio::task::spawn_local(async move {
        let answer = match job.op {
            OperatorOp::SetDisabled { username, disabled } => {
                set_disabled(&shard, username, disabled).await
            }
        };
        let _ = job.answer.send(answer.map_err(|r| r.message));
    });
}

/// `disable-user` / `enable-user` on a running server: the record changed
/// at its home; on disabling, every session of the account ends with
/// ACCOUNT_DISABLED, on every shard and (cluster mode) node.
async fn set_disabled(
    shard: &Rc<Shard>,
    username: String,
    disabled: bool,
) -> Result<String, Refusal> {
    let user = blocking(&shard.shared.accounts, move |a| a.user_id(&username)).await?;
    let revoked = at_home(
        shard,
        &Key::User(UserId(user)),
        true,
        &shard.shared.accounts,
        move |a| a.set_disabled(user, disabled),
    )
    .await?;
    if disabled {
        let frame = reply::error(
            0,
            ErrorCode::AccountDisabled,
            "the operator disabled this account",
        );
        shard.end_user(user, frame, None).await;
    }
    Ok(format!("user={user} tokens_revoked={revoked}"))
}
