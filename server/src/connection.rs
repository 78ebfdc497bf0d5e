//! One client session, whatever its transport: the only place where a
//! session's frames meet the code. It reads frames in order, holds the
//! session to the protocol's states (`session_state`), and hands each
//! admitted request to [`crate::routes`].
//!
//! A transport (`crate::transport`) hands [`serve`] a frame source and a
//! frame sink. The reader (this module) takes frames in order; a writer task
//! ([`crate::transport::write_loop`]) drains the session's bounded queue
//! into the sink. Requests that need the store or another shard are handed
//! off without blocking the reader, up to `session_inflight_requests` at
//! once; past that the reader stops reading, and the transport's flow
//! control pushes back on the client.

use std::cell::RefCell;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C};

use crate::limits::TokenBucket;
use crate::reply;
use crate::session_state::{SessionState, Verdict};
use crate::session_table::{Close, CloseReason, Outbound, SessionHandle};
use crate::shard::Shard;
use crate::transport::{Capabilities, FrameSink, FrameSource, Incoming};

/// The capability string for QUIC datagrams (`spec/README.md`).
pub const CAPABILITY_DATAGRAMS: &str = "datagrams";

/// Store-backed replies (history, sync, lists) one session builds at once.
/// Each is at most a frame (`max_frame_bytes`), so this bounds the memory a
/// connection that asks and never reads can pin to a few frames, whatever
/// `session_inflight_requests` admits.
const STORE_READS_PER_SESSION: usize = 4;

/// A session being served: what [`crate::routes`] works with.
pub(crate) struct Conn {
    pub(crate) shard: Rc<Shard>,
    pub(crate) id: u64,
    pub(crate) handle: Rc<SessionHandle>,
    pub(crate) state: RefCell<SessionState>,
    /// The token this session authenticated with, for Logout.
    pub(crate) token: RefCell<Option<String>>,
    /// The client's address, for login attempt limits.
    pub(crate) peer: Option<IpAddr>,
    /// Send rate of this connection.
    pub(crate) bucket: RefCell<TokenBucket>,
    /// What the transport offers beyond frames (QUIC datagrams).
    pub(crate) caps: Capabilities,
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
    let config = &shard.shared.config;
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
        Box::pin(crate::routes::session::signed_off(&conn)).await;
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
    /// Queues a frame that answers no permit-holding request (pre-login
    /// answers, admission refusals).
    pub(crate) fn push(&self, frame: Bytes) {
        self.shard.sessions.borrow().push(self.id, frame);
    }

    /// Closes the session after what is queued, with `frame` last.
    pub(crate) fn close(&self, frame: Option<Bytes>, reason: CloseReason) {
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
        let config = &self.shard.shared.config;
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
                    use crate::routes::messages::{SentNow, send_now};
                    // What must wait is boxed, and only the box is held
                    // across the await: the request handlers' states, the
                    // frame and the owner's message are large, and inline
                    // they would sit in every idle session's task.
                    let wait: Option<Pin<Box<dyn Future<Output = ()> + '_>>> =
                        match send_now(self, frame) {
                            Ok(SentNow::Done) => None,
                            Ok(SentNow::Full(owner, msg)) => {
                                Some(Box::pin(self.shard.send_to(owner, msg)))
                            }
                            Err(frame) => Some(Box::pin(self.handle(frame))),
                        };
                    if let Some(wait) = wait {
                        wait.await;
                    }
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
        let verdict = self.state.borrow().admit(rid, frame.body.as_ref());
        match verdict {
            Verdict::Accept => {}
            Verdict::Ignore => return,
            Verdict::Refuse(code, message) => {
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
        use crate::routes::session;
        match body {
            C::Ping(p) => session::ping(self, rid, p),
            C::Pong(_) => {}
            C::Hello(hello) => session::hello(self, rid, hello),
            C::Register(r) => session::register(self, rid, r).await,
            C::Login(l) => session::login(self, rid, l).await,
            C::Resume(r) => session::resume(self, rid, r).await,
            C::Logout(l) => session::logout(self, rid, l).await,
            other => {
                let Some(user) = self.state.borrow().user() else {
                    return;
                };
                crate::routes::dispatch(self, user, rid, other).await;
            }
        }
    }
}
