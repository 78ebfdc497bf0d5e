//! One client session, whatever its transport: the protocol state and the
//! requests it carries out.
//!
//! A transport (`crate::transport`) hands [`serve`] a frame source and a
//! frame sink. The reader (this module) takes frames in order; a writer task
//! ([`crate::transport::write_loop`]) drains the session's bounded queue
//! into the sink. Requests that need the store or another shard are handed
//! off without blocking the reader, up to `session_inflight_requests` at
//! once; past that the reader stops reading, and the transport's flow
//! control pushes back on the client.

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};

use crate::context::Context;
use crate::limits::TokenBucket;
use crate::owner::Origin;
use crate::owner::{OwnerOp, OwnerRequest};
use crate::presence::{MAX_PRESENCE_SUBSCRIPTIONS, PresenceOp};
use crate::reply::{self, Handled, Refusal};
use crate::session_state::{SessionState, Verdict};
use crate::session_table::{Close, CloseReason, Outbound, SessionHandle};
use crate::shard::Shard;
use crate::transport::{Capabilities, FrameSink, FrameSource, Incoming};
use crate::{accounts, catalog};

/// The capability string for QUIC datagrams (`spec/README.md`).
pub const CAPABILITY_DATAGRAMS: &str = "datagrams";

/// Store-backed replies (history, sync, lists) one session builds at once.
/// Each is at most a frame (`max_frame_bytes`), so this bounds the memory a
/// connection that asks and never reads can pin to a few frames, whatever
/// `session_inflight_requests` admits.
const STORE_READS_PER_SESSION: usize = 4;

/// Runs a blocking closure on the runtime's blocking pool.
async fn blocking<T: Send + 'static>(
    ctx: &Arc<Context>,
    f: impl FnOnce(&Context) -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    let ctx = ctx.clone();
    tokio::task::spawn_blocking(move || f(&ctx))
        .await
        .unwrap_or_else(|e| {
            Err(Refusal::new(
                ErrorCode::Internal,
                format!("handler failed: {e}"),
            ))
        })
}

struct Conn {
    shard: Rc<Shard>,
    id: u64,
    handle: Rc<SessionHandle>,
    state: RefCell<SessionState>,
    /// The token this session authenticated with, for Logout.
    token: RefCell<Option<String>>,
    /// The client's address, for login attempt limits.
    peer: Option<IpAddr>,
    /// Send rate of this connection.
    bucket: RefCell<TokenBucket>,
    /// What the transport offers beyond frames (QUIC datagrams).
    caps: Capabilities,
}

/// The frame that refuses a connection over the shard's limit.
pub fn busy_frame() -> Bytes {
    reply::error(
        0,
        ErrorCode::ServerBusy,
        "too many connections; retry later",
    )
}

/// Answers a connection over the shard's limit with SERVER_BUSY and closes.
pub async fn refuse(mut sink: impl FrameSink) {
    let frame = Outbound {
        frame: busy_frame(),
        ephemeral: false,
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = sink.send(&[frame]).await;
        sink.finish(CloseReason::Error(ErrorCode::ServerBusy)).await;
    })
    .await;
}

/// Serves one connection until it closes. `transport` names it in metrics
/// (`tcp`, `tls`, `quic`, `ws`, `wss`).
///
/// The session is registered when this is called; the future returned
/// holds only what an idle session needs while it waits (the session, its
/// frame source and the writer's handle): every connection's task is this
/// large for as long as the connection lives.
pub fn serve(
    shard: Rc<Shard>,
    source: impl FrameSource,
    sink: impl FrameSink + 'static,
    peer: Option<IpAddr>,
    caps: Capabilities,
    transport: &'static str,
) -> impl Future<Output = ()> {
    metrics::counter!("chatd_connections_accepted_total", "transport" => transport).increment(1);
    let config = &shard.ctx.config;
    let (id, handle, rx) = shard.sessions.borrow_mut().insert(
        config.session_queue_frames,
        config.session_queue_bytes.max(config.max_frame_bytes),
        config.session_inflight_requests.max(1),
        STORE_READS_PER_SESSION,
    );
    set_sessions_gauge(&shard);
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let writer = tokio::task::spawn_local(crate::transport::write_loop(sink, rx, grace));
    let conn = Rc::new(Conn {
        shard: shard.clone(),
        id,
        handle,
        state: RefCell::new(SessionState::default()),
        token: RefCell::new(None),
        peer,
        bucket: RefCell::new(TokenBucket::new(
            config.rate_connection_per_sec,
            config.rate_connection_burst,
            config.clock.now(),
        )),
        caps,
    });
    async move {
        conn.read_loop(source).await;
        let _ = writer.await;
        // Boxed, like the request handlers: run once, at the end.
        Box::pin(conn.signed_off()).await;
        conn.shard.sessions.borrow_mut().remove(conn.id);
        set_sessions_gauge(&conn.shard);
        tracing::debug!("session closed");
    }
}

fn set_sessions_gauge(shard: &Shard) {
    metrics::gauge!("chatd_sessions", "shard" => shard.id.to_string())
        .set(shard.sessions.borrow().len() as f64);
}

impl Conn {
    fn ctx(&self) -> &Arc<Context> {
        &self.shard.ctx
    }

    fn push(&self, frame: Bytes) {
        self.shard.sessions.borrow().push(self.id, frame);
    }

    /// Closes the session after what is queued, with `frame` last.
    fn close(&self, frame: Option<Bytes>, reason: CloseReason) {
        self.handle.signal.close(Close {
            frame,
            flush_first: true,
            reason,
        });
    }

    /// Closes the session with an error frame (`request_id` 0).
    fn close_with(&self, code: ErrorCode, message: &str) {
        self.close(
            Some(reply::error(0, code, message)),
            CloseReason::Error(code),
        );
    }

    async fn read_loop(self: &Rc<Self>, mut source: impl FrameSource) {
        let config = &self.ctx().config;
        let clock = &config.clock;
        let hello_deadline = clock.now() + Duration::from_millis(config.handshake_timeout_ms);
        let idle = config.idle_timeout();
        let signal = &self.handle.signal;
        // Deadlines are clock time; a jump of a manual clock re-measures them.
        let mut jumps = clock.jumps();
        // The idle timer runs from the last complete frame, not the last
        // byte: a frame trickled a byte at a time does not keep a
        // connection (and its partial frame buffer) alive.
        let mut last_frame = clock.now();
        loop {
            let greeted = !matches!(
                self.state.borrow().phase(),
                crate::session_state::Phase::Connecting
            );
            let deadline = clock.deadline(if greeted {
                last_frame + idle
            } else {
                hello_deadline
            });
            let incoming = tokio::select! {
                r = tokio::time::timeout_at(deadline, source.next()) => r,
                _ = signal.closed() => return,
                () = jumps.next() => continue,
            };
            match incoming {
                Err(_) => {
                    let message = if greeted {
                        "no complete frame within 3 heartbeat intervals"
                    } else {
                        "no Hello in time"
                    };
                    self.close_with(ErrorCode::IdleTimeout, message);
                    return;
                }
                Ok(Incoming::Closed) => {
                    self.close(None, CloseReason::Normal);
                    return;
                }
                Ok(Incoming::Activity) => {}
                Ok(Incoming::Frame(frame)) => {
                    // Boxed: the request handlers' states are large, and
                    // inline they would sit in every idle session's task.
                    Box::pin(self.handle(frame)).await;
                    last_frame = clock.now();
                }
                Ok(Incoming::Invalid {
                    code,
                    message,
                    reason,
                }) => {
                    // `spec/framing.md`: report, then close; the next
                    // frame boundary cannot be trusted.
                    tracing::debug!(cause = %message, "bad frame");
                    self.close(Some(reply::error(0, code, &message)), reason);
                    return;
                }
            }
            if signal.get().is_some() {
                return;
            }
        }
    }

    async fn handle(self: &Rc<Self>, frame: pb::ClientFrame) {
        let rid = frame.request_id;
        let verdict = self.state.borrow().admit(frame.body.as_ref());
        match verdict {
            Verdict::Accept => {}
            Verdict::Ignore => return,
            Verdict::Refuse(code) => {
                let message = match code {
                    ErrorCode::UnknownMessage => "frame has no known message",
                    ErrorCode::HelloRequired => "send Hello first",
                    ErrorCode::Unauthenticated => "log in first",
                    ErrorCode::UnsupportedVersion => "this server speaks protocol version 1",
                    _ => "not allowed in this state",
                };
                let err = reply::error(rid, code, message);
                if code.closes_connection() {
                    self.close(Some(err), CloseReason::Error(code));
                } else {
                    self.push(err);
                }
                return;
            }
        }
        let Some(body) = frame.body else { return };
        match body {
            C::Ping(p) => self.push(reply::answer(rid, Ok(S::Pong(pb::Pong { nonce: p.nonce })))),
            C::Pong(_) => {}
            C::Hello(hello) => {
                self.state.borrow_mut().greeted();
                let mut capabilities = Vec::new();
                if self.caps.datagrams {
                    capabilities.push(CAPABILITY_DATAGRAMS.to_owned());
                    let wanted = hello.capabilities.iter().any(|c| c == CAPABILITY_DATAGRAMS);
                    self.caps.datagrams_on.set(wanted);
                }
                let c = &self.ctx().config;
                let welcome = pb::Welcome {
                    protocol_version: chat_protocol::PROTOCOL_VERSION,
                    server_name: "chatd".into(),
                    max_frame_bytes: c.max_frame_bytes as u32,
                    max_message_bytes: c.max_message_bytes as u32,
                    heartbeat_interval_ms: c.heartbeat_interval_ms,
                    capabilities,
                };
                self.push(reply::answer(rid, Ok(S::Welcome(welcome))));
            }
            C::Register(r) => {
                let Ok(_hashing) = self.ctx().password_hashing.acquire().await else {
                    return;
                };
                let res = blocking(self.ctx(), move |c| accounts::register(c, &r)).await;
                let res = res.and_then(|ok| self.authenticated(ok));
                self.answer_auth(rid, res.map(S::AuthOk));
            }
            C::Login(l) => {
                let peer = self.peer;
                let Ok(_hashing) = self.ctx().password_hashing.acquire().await else {
                    return;
                };
                let res = blocking(self.ctx(), move |c| accounts::login(c, &l, peer)).await;
                let res = res.and_then(|ok| self.authenticated(ok));
                self.answer_auth(rid, res.map(S::AuthOk));
            }
            C::Resume(r) => {
                let token = r.session_token.clone();
                let res = blocking(self.ctx(), move |c| accounts::resume(c, &token)).await;
                let res = match res.and_then(|ok| self.authenticated(ok)) {
                    Ok(auth) => {
                        // Registered for pushes before the sync read, so
                        // nothing committed in between is missed.
                        metrics::counter!("chatd_resumes_total").increment(1);
                        let user = auth.user_id;
                        let cursors = r.cursors;
                        blocking(self.ctx(), move |c| catalog::sync(c, user, &cursors, 0))
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
                self.answer_auth(rid, res);
            }
            C::Logout(l) => {
                let Some(user) = self.state.borrow().user() else {
                    return;
                };
                let token = self.token.borrow_mut().take();
                let everywhere = l.all_devices;
                let res = blocking(self.ctx(), move |c| {
                    accounts::logout(c, user, token.as_deref(), l.all_devices)
                })
                .await;
                self.signed_off().await;
                self.state.borrow_mut().logged_out();
                self.shard.sessions.borrow_mut().deauthenticate(self.id);
                if everywhere && res.is_ok() {
                    // Their tokens are revoked; so are the sessions.
                    let frame =
                        reply::error(0, ErrorCode::TokenInvalid, "logged out on all devices");
                    self.shard.end_user(user, frame, None).await;
                }
                self.push(reply::answer(rid, res.map(|()| S::Done(pb::Done {}))));
            }
            other => self.dispatch(rid, other).await,
        }
    }

    /// Answers Register, Login or Resume; TOO_MANY_SESSIONS closes.
    fn answer_auth(&self, rid: u64, res: Handled) {
        match res {
            Err(r) if r.code.closes_connection() => {
                let reason = CloseReason::Error(r.code);
                self.close(Some(reply::answer(rid, Err(r))), reason);
            }
            other => self.push(reply::answer(rid, other)),
        }
    }

    /// Records a successful login, unless the user has too many sessions;
    /// returns the reply to send.
    fn authenticated(&self, ok: pb::AuthOk) -> Result<pb::AuthOk, Refusal> {
        let max = self.ctx().config.max_sessions_per_user;
        if !self.ctx().user_sessions.lock().acquire(ok.user_id, max) {
            return Err(Refusal::new(
                ErrorCode::TooManySessions,
                format!("at most {max} sessions per user"),
            ));
        }
        self.state.borrow_mut().authenticated(ok.user_id);
        self.shard
            .sessions
            .borrow_mut()
            .authenticate(self.id, ok.user_id);
        *self.token.borrow_mut() = Some(ok.session_token.clone());
        let shard = self.shard.clone();
        let op = PresenceOp::Session {
            user: ok.user_id,
            delta: 1,
        };
        tokio::task::spawn_local(async move { shard.presence_op(op).await });
        self.recheck_token(ok.user_id, ok.session_token.clone());
        Ok(ok)
    }

    /// Closes this session if its token turns out revoked. Logout on all
    /// devices and ChangePassword revoke tokens, then close the sessions
    /// registered as the user's; a session whose token was checked before
    /// the revocation but that registered after that close is found here,
    /// since this check reads the store after the registration.
    fn recheck_token(&self, user: u64, token: String) {
        let shard = self.shard.clone();
        let session = self.id;
        tokio::task::spawn_local(async move {
            let found = blocking(&shard.ctx, move |ctx| {
                Ok(ctx.store.token(&accounts::token_hash(&token))?.is_some())
            })
            .await;
            if let Ok(false) = found {
                let frame =
                    reply::error(0, ErrorCode::TokenInvalid, "the session token was revoked");
                shard
                    .sessions
                    .borrow()
                    .close_revoked(session, &frame, Some(user));
            }
        });
    }

    /// The session stopped being a user's (logout or close): it no longer
    /// counts towards the user's presence nor watches anyone's.
    async fn signed_off(&self) {
        let Some(user) = self.state.borrow().user() else {
            return;
        };
        self.ctx().user_sessions.lock().release(user);
        if self.shard.sessions.borrow().sessions_of(user) <= 1 {
            self.shard.user_buckets.borrow_mut().remove(&user);
        }
        self.shard
            .presence_op(PresenceOp::Session { user, delta: -1 })
            .await;
        let ended = self.shard.interest.borrow_mut().remove_session(self.id);
        for watched in ended {
            let op = PresenceOp::Subscribe {
                user: watched,
                shard: self.shard.id,
                on: false,
            };
            self.shard.presence_op(op).await;
        }
    }

    /// Requests of an authenticated session.
    async fn dispatch(self: &Rc<Self>, rid: u64, body: C) {
        let Some(user) = self.state.borrow().user() else {
            return;
        };
        // A permit per request being processed; the reply gives it back.
        match self.handle.inflight.acquire().await {
            Ok(permit) => permit.forget(),
            Err(_) => return,
        }
        let origin = Origin {
            shard: self.shard.id,
            session: self.id,
            request_id: rid,
        };
        let owner = |conversation, op| OwnerRequest::new(origin, user, conversation, op);
        match body {
            C::SendMessage(m) => {
                self.shard.counters.messages_in.increment(1);
                if let Err(wait) = self.take_send_token(user) {
                    let ms = wait.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
                    let r =
                        Refusal::new(ErrorCode::RateLimited, "sending too fast").retry_after(ms);
                    self.shard
                        .sessions
                        .borrow()
                        .reply(self.id, reply::answer(rid, Err(r)));
                    return;
                }
                self.shard
                    .to_owner(owner(m.conversation_id, OwnerOp::Send(m)))
                    .await
            }
            C::RemoveMember(r) => {
                let req = owner(r.conversation_id, OwnerOp::RemoveMember(r.user_id));
                self.shard.to_owner(req).await;
            }
            C::LeaveConversation(l) => {
                self.shard
                    .to_owner(owner(l.conversation_id, OwnerOp::Leave))
                    .await
            }
            C::SetRole(r) => {
                let req = owner(r.conversation_id, OwnerOp::SetRole(r.user_id, r.role));
                self.shard.to_owner(req).await;
            }
            C::UpdateConversation(u) => {
                let req = owner(u.conversation_id, OwnerOp::UpdateTitle(u.title));
                self.shard.to_owner(req).await;
            }
            C::TransferOwnership(t) => {
                let req = owner(
                    t.conversation_id,
                    OwnerOp::TransferOwnership(t.new_owner_id),
                );
                self.shard.to_owner(req).await;
            }
            C::MarkRead(m) => {
                self.shard
                    .to_owner(owner(m.conversation_id, OwnerOp::MarkRead(m.seq)))
                    .await
            }
            C::MarkDelivered(m) => {
                let req = owner(m.conversation_id, OwnerOp::MarkDelivered(m.seq));
                self.shard.to_owner(req).await;
            }
            C::GetReceipts(g) => {
                let req = owner(g.conversation_id, OwnerOp::GetReceipts(g.seq));
                self.shard.to_owner(req).await;
            }
            C::Typing(t) => {
                self.shard
                    .to_owner(owner(t.conversation_id, OwnerOp::Typing(t.active)))
                    .await
            }
            C::SubscribeChannel(c) => {
                let req = owner(c.conversation_id, OwnerOp::SubscribeChannel);
                self.shard.to_owner(req).await;
            }
            C::UnsubscribeChannel(c) => {
                let req = owner(c.conversation_id, OwnerOp::UnsubscribeChannel);
                self.shard.to_owner(req).await;
            }
            C::AddMembers(a) => {
                let ids = a.user_ids.clone();
                let check = move |c: &Context| {
                    for &u in &ids {
                        if c.store.user(u)?.is_none() {
                            return Err(Refusal::new(ErrorCode::NotFound, format!("no user {u}")));
                        }
                    }
                    Ok(())
                };
                let op = |()| OwnerOp::AddMembers(a.user_ids);
                self.read_then_owner(origin, user, a.conversation_id, check, op);
            }
            C::DeleteMessage(d) => {
                // The message is read here; its owner decides who may
                // delete it.
                let (conversation, seq) = (d.conversation_id, d.seq);
                let read = move |c: &Context| Ok(c.store.message(conversation, seq)?);
                let op = move |target: Option<pb::Message>| OwnerOp::DeleteMessage {
                    seq,
                    target: target.map(Box::new),
                };
                self.read_then_owner(origin, user, conversation, read, op);
            }
            C::CreateConversation(c) => {
                self.spawn_read(rid, move |ctx| {
                    catalog::create(ctx, user, &c).map(S::Conversation)
                });
            }
            C::GetConversation(g) => {
                self.spawn_read(rid, move |ctx| {
                    catalog::get(ctx, user, g.conversation_id).map(S::Conversation)
                });
            }
            C::ListConversations(l) => {
                self.spawn_read(rid, move |ctx| {
                    catalog::list(ctx, user, &l).map(S::ConversationList)
                });
            }
            C::GetHistory(h) => {
                self.spawn_read(rid, move |ctx| {
                    catalog::history(ctx, user, &h).map(S::MessagePage)
                });
            }
            C::Sync(s) => {
                metrics::counter!("chatd_syncs_total").increment(1);
                self.spawn_read(rid, move |ctx| {
                    catalog::sync(ctx, user, &s.cursors, s.limit_per_conversation)
                        .map(S::SyncResult)
                });
            }
            C::RegisterPushToken(p) => {
                let token = self.token.borrow().clone().unwrap_or_default();
                self.spawn_read(rid, move |ctx| {
                    crate::push::register(ctx, user, &token, &p).map(|()| S::Done(pb::Done {}))
                });
            }
            C::RequestUpload(r) => {
                let ticket = self.ctx().media.ticket(&r, self.ctx().now_ms());
                let frame = reply::answer(rid, ticket.map(S::UploadTicket));
                self.shard.sessions.borrow().reply(self.id, frame);
            }
            C::GetProfile(p) => {
                self.spawn_read(rid, move |ctx| accounts::profile(ctx, &p).map(S::Profile));
            }
            C::UpdateProfile(p) => {
                let hide = p.hide_last_seen;
                let shard = self.shard.clone();
                let session = self.id;
                tokio::task::spawn_local(async move {
                    let result = blocking(&shard.ctx, move |ctx| {
                        accounts::update_profile(ctx, user, &p)
                    })
                    .await;
                    if result.is_ok() {
                        shard.presence_op(PresenceOp::Hide { user, hide }).await;
                    }
                    shard
                        .sessions
                        .borrow()
                        .reply(session, reply::answer(rid, result.map(S::Profile)));
                });
            }
            C::ChangePassword(p) => {
                let shard = self.shard.clone();
                let (session, peer) = (self.id, self.peer);
                let token = self.token.borrow().clone();
                tokio::task::spawn_local(async move {
                    let Ok(_hashing) = shard.ctx.password_hashing.acquire().await else {
                        return;
                    };
                    let result = blocking(&shard.ctx, move |ctx| {
                        accounts::change_password(ctx, user, token.as_deref(), &p, peer)
                    })
                    .await;
                    if result.is_ok() {
                        // Their tokens are revoked; so are the sessions.
                        let frame = reply::error(
                            0,
                            ErrorCode::TokenInvalid,
                            "the password was changed on another device",
                        );
                        shard.end_user(user, frame, Some(session)).await;
                    }
                    let done = result.map(|()| S::Done(pb::Done {}));
                    shard
                        .sessions
                        .borrow()
                        .reply(session, reply::answer(rid, done));
                });
            }
            C::SetPresence(p) => {
                let status =
                    pb::PresenceStatus::try_from(p.status).unwrap_or(pb::PresenceStatus::Online);
                self.shard
                    .presence_op(PresenceOp::Status { user, status })
                    .await;
                self.reply_done(rid);
            }
            C::SubscribePresence(s) => {
                let result = self.watch(s.user_ids).await;
                self.shard
                    .sessions
                    .borrow()
                    .reply(self.id, reply::answer(rid, result));
            }
            C::UnsubscribePresence(s) => {
                for watched in s.user_ids {
                    let last = self.shard.interest.borrow_mut().remove(self.id, watched);
                    if last {
                        let op = PresenceOp::Subscribe {
                            user: watched,
                            shard: self.shard.id,
                            on: false,
                        };
                        self.shard.presence_op(op).await;
                    }
                }
                self.reply_done(rid);
            }
            _ => {
                let err = Refusal::new(
                    ErrorCode::UnknownMessage,
                    "not supported by this server version",
                );
                self.shard
                    .sessions
                    .borrow()
                    .reply(self.id, reply::answer(rid, Err(err)));
            }
        }
    }

    /// One send from this connection: within its own and its user's rate?
    fn take_send_token(&self, user: u64) -> Result<(), Duration> {
        let now = self.ctx().config.clock.now();
        self.bucket.borrow_mut().take(now)?;
        let config = &self.ctx().config;
        self.shard
            .user_buckets
            .borrow_mut()
            .entry(user)
            .or_insert_with(|| {
                TokenBucket::new(config.rate_user_per_sec, config.rate_user_burst, now)
            })
            .take(now)
    }

    fn reply_done(&self, rid: u64) {
        let done = reply::answer(rid, Ok(S::Done(pb::Done {})));
        self.shard.sessions.borrow().reply(self.id, done);
    }

    /// SubscribePresence: registers interest, then the current states follow
    /// as PresenceEvents (cached ones at once, others from the owner).
    async fn watch(&self, users: Vec<u64>) -> Handled {
        let current = self.shard.interest.borrow().count(self.id);
        if current + users.len() > MAX_PRESENCE_SUBSCRIPTIONS {
            return Err(Refusal::new(
                ErrorCode::InvalidArgument,
                format!("at most {MAX_PRESENCE_SUBSCRIPTIONS} presence subscriptions per session"),
            ));
        }
        for watched in users {
            let (first, cached) = self.shard.interest.borrow_mut().add(self.id, watched);
            if first {
                let op = PresenceOp::Subscribe {
                    user: watched,
                    shard: self.shard.id,
                    on: true,
                };
                self.shard.presence_op(op).await;
            } else if let Some(event) = cached {
                let frame = reply::push(S::PresenceEvent(event));
                self.shard.sessions.borrow().push_ephemeral(self.id, frame);
            }
        }
        Ok(S::Done(pb::Done {}))
    }

    /// Runs a store-backed request on the blocking pool and replies.
    /// Runs `read` on the blocking pool (a storage read the owner shard must
    /// not do), then hands the conversation's owner the operation `op`
    /// builds from its result; a refused read is the reply.
    fn read_then_owner<T: Send + 'static>(
        &self,
        origin: Origin,
        user: u64,
        conversation: u64,
        read: impl FnOnce(&Context) -> Result<T, Refusal> + Send + 'static,
        op: impl FnOnce(T) -> OwnerOp + 'static,
    ) {
        let shard = self.shard.clone();
        tokio::task::spawn_local(async move {
            match blocking(&shard.ctx, read).await {
                Ok(value) => {
                    let req = OwnerRequest::new(origin, user, conversation, op(value));
                    shard.to_owner(req).await;
                }
                Err(r) => shard
                    .sessions
                    .borrow()
                    .reply(origin.session, reply::answer(origin.request_id, Err(r))),
            }
        });
    }

    fn spawn_read(&self, rid: u64, f: impl FnOnce(&Context) -> Handled + Send + 'static) {
        let shard = self.shard.clone();
        let session = self.id;
        let handle = self.handle.clone();
        tokio::task::spawn_local(async move {
            let _permit = handle.reads.acquire().await;
            if handle.signal.get().is_some() {
                // Closing: nobody will read the reply; only free the permit.
                shard.sessions.borrow().reply(session, Bytes::new());
                return;
            }
            let result = blocking(&shard.ctx, f).await;
            shard
                .sessions
                .borrow()
                .reply(session, reply::answer(rid, result));
        });
    }
}
