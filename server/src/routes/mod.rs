//! Request routing: which code carries out each request of a session, by
//! concern, one file each, like mini-redis's one file per command:
//!
//! - [`session`]: Hello, Ping, Register, Login, Resume, Logout;
//! - [`conversations`]: creating, reading and listing conversations, their
//!   members and roles, channel subscriptions;
//! - [`messages`]: sends, deletes, edits, reactions, history, sync, receipts, typing;
//! - [`presence`]: SetPresence and presence subscriptions;
//! - [`account`]: profiles, passwords and push tokens;
//! - [`blocks`]: blocking and unblocking users;
//! - [`media`]: upload tickets.
//!
//! A request of an authenticated session holds one of its
//! `session_inflight_requests` permits from the moment it is routed until
//! it is answered: a [`Request`] owns that permit and gives it back exactly
//! once, when it is answered, when it is handed to the conversation's owner
//! (whose reply returns it, on whatever shard the session is), or when it
//! is dropped unanswered.
//!
//! Routes are where the wire's integers become the server's typed ids
//! ([`UserId`], [`ConversationId`]): what a route hands the owner, the
//! placement and the homes is typed.
//!
//! Operations on a conversation go to its owner as an [`OwnerRequest`]
//! wherever the owner runs ([`Shard::to_owner`]); a route never needs to
//! know where that is.

pub mod account;
pub mod blocks;
pub mod conversations;
pub mod media;
pub mod messages;
pub mod presence;
pub mod session;

use std::rc::Rc;

use bytes::Bytes;
use chat_protocol::pb::client_frame::Body as C;
use chat_protocol::{ConversationId, ErrorCode, UserId};

use std::time::Instant;

use tokio::sync::oneshot;

use crate::accounts::{self, Accounts};
use crate::connection::Conn;
use crate::home::{Job, Key, LoginOp};
use crate::limits::LoginKey;
use crate::owner::{Origin, OwnerOp, OwnerRequest};
use crate::reply::{self, Handled, Refusal};
use crate::shard::Shard;
use crate::shard_msg::ShardMsg;

/// A request being carried out, holding one in-flight permit of its
/// session until it is answered; see the module docs.
#[derive(Debug)]
pub struct Request {
    shard: Rc<Shard>,
    origin: Origin,
    /// The permit is still held here (not answered, not handed off).
    holding: bool,
}

impl Request {
    /// Takes a permit of `conn`'s session for request `request_id`, waiting
    /// while all are in use; `None` if the session is closing.
    async fn take(conn: &Conn, request_id: u64) -> Option<Self> {
        conn.handle.inflight.acquire().await.ok()?.forget();
        Some(Self::holding(conn, request_id))
    }

    /// [`Request::take`] when a permit is free at once; `None` otherwise.
    fn try_take(conn: &Conn, request_id: u64) -> Option<Self> {
        conn.handle.inflight.try_acquire().ok()?.forget();
        Some(Self::holding(conn, request_id))
    }

    /// The request, once its permit was taken.
    fn holding(conn: &Conn, request_id: u64) -> Self {
        Self {
            shard: conn.shard.clone(),
            origin: Origin {
                shard: conn.shard.id,
                session: conn.id,
                request_id,
            },
            holding: true,
        }
    }

    /// The request's id, echoed in its answer.
    pub fn id(&self) -> u64 {
        self.origin.request_id
    }

    /// Answers with `result` and returns the permit.
    pub fn answer(self, result: Handled) {
        let frame = reply::answer(self.id(), result);
        self.reply(frame);
    }

    /// Answers with an encoded frame and returns the permit.
    pub fn reply(mut self, frame: Bytes) {
        self.holding = false;
        self.shard
            .sessions
            .borrow()
            .reply(self.origin.session, frame);
    }

    /// Hands the request to its conversation's owner, whose reply (or
    /// release) returns the permit.
    pub fn to_owner(
        mut self,
        user: UserId,
        conversation: ConversationId,
        op: OwnerOp,
    ) -> OwnerRequest {
        self.holding = false;
        OwnerRequest::new(self.origin, user, conversation, op)
    }
}

impl Drop for Request {
    /// A request dropped unanswered (its session closing) gives its permit
    /// back without a frame.
    fn drop(&mut self) {
        if self.holding {
            self.shard.sessions.borrow().release(self.origin.session);
        }
    }
}

/// Routes a request of an authenticated session (`user`).
pub(crate) async fn dispatch(conn: &Rc<Conn>, user: u64, rid: u64, body: C) {
    let Some(req) = Request::take(conn, rid).await else {
        return;
    };
    match body {
        C::SendMessage(m) => messages::send(conn, req, user, m).await,
        C::DeleteMessage(d) => messages::delete(conn, req, user, d),
        C::EditMessage(e) => messages::edit(conn, req, user, e),
        C::React(r) => messages::react(conn, req, user, r),
        C::SetNotificationLevel(n) => messages::set_notify(conn, req, user, n).await,
        C::GetHistory(h) => messages::history(conn, req, user, h),
        C::Sync(s) => messages::sync(conn, req, user, s),
        C::MarkRead(m) => messages::mark_read(conn, req, user, m).await,
        C::MarkDelivered(m) => messages::mark_delivered(conn, req, user, m).await,
        C::GetReceipts(g) => messages::receipts(conn, req, user, g).await,
        C::Typing(t) => messages::typing(conn, req, user, t).await,
        C::CreateConversation(c) => conversations::create(conn, req, user, c),
        C::GetConversation(g) => conversations::get(conn, req, user, g),
        C::ListConversations(l) => conversations::list(conn, req, user, l),
        C::AddMembers(a) => conversations::add_members(conn, req, user, a),
        C::RemoveMember(r) => conversations::remove_member(conn, req, user, r).await,
        C::LeaveConversation(l) => conversations::leave(conn, req, user, l).await,
        C::SetRole(r) => conversations::set_role(conn, req, user, r).await,
        C::UpdateConversation(u) => conversations::update(conn, req, user, u).await,
        C::TransferOwnership(t) => conversations::transfer(conn, req, user, t).await,
        C::SubscribeChannel(c) => conversations::subscribe(conn, req, user, c).await,
        C::UnsubscribeChannel(c) => conversations::unsubscribe(conn, req, user, c).await,
        C::SetPresence(p) => presence::set(conn, req, user, p).await,
        C::SubscribePresence(s) => presence::subscribe(conn, req, user, s).await,
        C::UnsubscribePresence(s) => presence::unsubscribe(conn, req, s).await,
        C::GetProfile(p) => account::profile(conn, req, p),
        C::UpdateProfile(p) => account::update_profile(conn, req, user, p),
        C::ChangePassword(p) => account::change_password(conn, req, user, p),
        C::RegisterPushToken(p) => account::register_push_token(conn, req, user, p),
        C::RequestUpload(r) => media::request_upload(conn, req, user, r),
        C::DeleteAccount(d) => account::delete_account(conn, req, user, d),
        C::BlockUser(b) => blocks::block(conn, req, user, b),
        C::UnblockUser(u) => blocks::unblock(conn, req, user, u),
        C::ListBlocked(_) => blocks::list(conn, req, user),
        C::BanMember(b) => conversations::ban(conn, req, user, b),
        C::UnbanMember(u) => conversations::unban(conn, req, user, u).await,
        _ => req.answer(Err(Refusal::new(
            ErrorCode::UnknownMessage,
            "not supported by this server version",
        ))),
    }
}

/// Runs `f` with `handle` (a narrow handle: the catalog, the accounts,
/// the store) on the shard's blocking pool (store reads and writes,
/// password hashing): never on the shard thread itself.
pub(crate) async fn blocking<H, T>(
    handle: &H,
    f: impl FnOnce(&H) -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal>
where
    H: Clone + Send + 'static,
    T: Send + 'static,
{
    let handle = handle.clone();
    tokio::task::spawn_blocking(move || f(&handle))
        .await
        .unwrap_or_else(|e| {
            Err(Refusal::new(
                ErrorCode::Internal,
                format!("handler failed: {e}"),
            ))
        })
}

/// Answers `req` with `read`, run with `handle` on the blocking pool, at
/// most `STORE_READS_PER_SESSION` per session at once (each answer is up
/// to a frame; this bounds what a client that asks and never reads can
/// pin).
pub(crate) fn spawn_read<H: Clone + Send + 'static>(
    conn: &Conn,
    req: Request,
    handle: &H,
    read: impl FnOnce(&H) -> Handled + Send + 'static,
) {
    spawn_blocking_request(conn, req, None, handle, read, answer);
}

/// Like [`spawn_read`], for a check-then-write at the home of `key`, in
/// its lane ([`at_home`]).
pub(crate) fn spawn_at_home<H: Clone + Send + 'static>(
    conn: &Conn,
    req: Request,
    key: Key,
    handle: &H,
    write: impl FnOnce(&H) -> Handled + Send + 'static,
) {
    spawn_blocking_request(conn, req, Some(key), handle, write, answer);
}

/// Runs `read` with `handle` on the blocking pool (a store read the owner
/// shard must not do), then hands the conversation's owner the operation
/// `op` builds from its result; a refused read is the answer.
pub(crate) fn read_then_owner<H, T>(
    conn: &Conn,
    req: Request,
    (user, conversation): (u64, u64),
    handle: &H,
    read: impl FnOnce(&H) -> Result<T, Refusal> + Send + 'static,
    op: impl FnOnce(T) -> OwnerOp + 'static,
) where
    H: Clone + Send + 'static,
    T: Send + 'static,
{
    let then = move |req: Request, read: Result<T, Refusal>| match read {
        Ok(value) => Some(req.to_owner(UserId(user), ConversationId(conversation), op(value))),
        Err(r) => {
            req.answer(Err(r));
            None
        }
    };
    spawn_blocking_request(conn, req, None, handle, read, then);
}

/// The end of a request that is answered with what its blocking part
/// returned.
fn answer(req: Request, result: Handled) -> Option<OwnerRequest> {
    req.answer(result);
    None
}

/// Runs `f` with `handle` on the blocking pool (at the home of `home`, in
/// its lane, if given) holding one of the session's store-read permits,
/// then `then` on the shard with its result, which answers `req` or turns
/// it into an operation for the conversation's owner.
fn spawn_blocking_request<H, T>(
    conn: &Conn,
    req: Request,
    home: Option<Key>,
    handle: &H,
    f: impl FnOnce(&H) -> Result<T, Refusal> + Send + 'static,
    then: impl FnOnce(Request, Result<T, Refusal>) -> Option<OwnerRequest> + 'static,
) where
    H: Clone + Send + 'static,
    T: Send + 'static,
{
    let shard = conn.shard.clone();
    let session = conn.handle.clone();
    let handle = handle.clone();
    tokio::task::spawn_local(async move {
        let permit = session.reads.acquire().await;
        if session.signal.get().is_some() {
            // Closing: nobody will read the answer; `req` returns its
            // permit as it drops.
            return;
        }
        let result = match home {
            Some(key) => at_home(&shard, &key, true, &handle, f).await,
            None => blocking(&handle, f).await,
        };
        drop(permit);
        if let Some(owned) = then(req, result) {
            shard.to_owner(owned).await;
        }
    });
}

/// Hands `op` on `conversation` to its owner.
pub(crate) async fn to_owner(conn: &Conn, req: Request, user: u64, conversation: u64, op: OwnerOp) {
    let owned = req.to_owner(UserId(user), ConversationId(conversation), op);
    conn.shard.to_owner(owned).await;
}

/// Runs blocking `f` on the home shard of `key`, holding that shard's lane
/// when `serial` ([`crate::home`]): how check-then-write of a username, a
/// direct pair or a user record is serialised without a shared lock.
pub(crate) async fn at_home<H, T>(
    shard: &Rc<Shard>,
    key: &Key,
    serial: bool,
    handle: &H,
    f: impl FnOnce(&H) -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal>
where
    H: Clone + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let handle = handle.clone();
    let work = Box::new(move || {
        let _ = tx.send(f(&handle));
    });
    shard
        .to_home(key, ShardMsg::Home(Job { serial, work }))
        .await;
    rx.await.unwrap_or_else(|_| Err(stopped()))
}

/// A password check counted by the failed-login limits of `keys`: refused
/// with TOO_MANY_LOGIN_ATTEMPTS while a limit holds; otherwise `check` runs
/// with the accounts under this shard's hashing permit, and an
/// INVALID_CREDENTIALS result counts against every key, at its home.
pub(crate) async fn password_attempt<T: Send + 'static>(
    shard: &Rc<Shard>,
    keys: Vec<LoginKey>,
    check: impl FnOnce(&Accounts) -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    let now = shard.shared.config.clock.now();
    login_allowed(shard, &keys, now).await?;
    let hashing = shard.home.hashing.acquire().await.map_err(|_| stopped())?;
    let result = blocking(&shard.shared.accounts, check).await;
    drop(hashing);
    if matches!(&result, Err(r) if r.code == ErrorCode::InvalidCredentials) {
        login_failed(shard, keys, now).await;
    }
    result
}

/// Whether a login attempt counted against each of `keys` may proceed,
/// asked of each key's home shard.
async fn login_allowed(shard: &Rc<Shard>, keys: &[LoginKey], now: Instant) -> Result<(), Refusal> {
    for key in keys {
        let (answer, rx) = oneshot::channel();
        let op = LoginOp::Check {
            key: key.clone(),
            now,
            answer,
        };
        shard
            .to_home(&Key::Login(key.clone()), ShardMsg::Login(op))
            .await;
        if let Err(wait) = rx.await.map_err(|_| stopped())? {
            return Err(accounts::too_many(wait));
        }
    }
    Ok(())
}

/// Counts a failed login against each of `keys`, at their homes.
async fn login_failed(shard: &Rc<Shard>, keys: Vec<LoginKey>, now: Instant) {
    for key in keys {
        let home = Key::Login(key.clone());
        let op = LoginOp::Failed { key, now };
        shard.to_home(&home, ShardMsg::Login(op)).await;
    }
}

/// The answer when a home shard stopped before answering (shutdown).
pub(super) fn stopped() -> Refusal {
    Refusal::new(ErrorCode::ShuttingDown, "the server is stopping")
}
