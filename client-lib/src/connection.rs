//! One connection to the server: the transport, a reader task and a writer
//! task (and, on QUIC, a datagram task).
//!
//! With `crate::transport` this is the only place where bytes meet the
//! socket. The reader decodes frames, hands each reply to the request waiting for its `request_id`,
//! answers the server's Pings itself (so that a slow app never makes the
//! connection look dead), and queues every other push for the client. The
//! writer coalesces queued frames into few writes. Whichever task ends first
//! closes the connection: the other stops, and every waiting request fails
//! with [`Error::Disconnected`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use chat_protocol::{DEFAULT_MAX_FRAME_BYTES, ErrorCode, codec};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout, timeout_at};

use crate::error::{Error, Result};
use crate::lock;
use crate::options::ClientOptions;
use crate::transport::{self, Quic, Read, Reader, Writer};
use crate::url::Endpoint;

/// Encoded frames queued for the socket. When full, requests wait for room
/// (within their timeout): a server that stops reading slows the callers
/// down instead of growing memory. Memory: up to this many frames.
pub(crate) const OUTBOUND_FRAMES: usize = 1024;

/// Server pushes decoded but not yet processed by the client. When full the
/// reader stops reading; TCP backpressure then reaches the server, which
/// disconnects a client that stays slow (`SLOW_CONSUMER`), and the client
/// recovers by resuming. Memory: up to this many frames.
pub(crate) const INBOUND_PUSHES: usize = 1024;

/// Bytes coalesced into one socket write.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// The capability string for QUIC datagrams (`spec/README.md`).
const CAPABILITY_DATAGRAMS: &str = "datagrams";

/// Heartbeat interval if the server announces none (`spec/states.md`).
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

/// How long closing waits for the writer to shut the socket down.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

type Waiter = oneshot::Sender<Result<S>>;

/// State shared by the handle and both tasks.
#[derive(Debug)]
struct Shared {
    /// Requests waiting for their reply, by `request_id`. Entries are
    /// removed by the reader (reply), by `Pending`'s drop (timeout or
    /// cancellation) and all at once on close.
    waiters: Mutex<HashMap<u64, Waiter>>,
    /// Becomes true once; both tasks watch it.
    closed: watch::Sender<bool>,
    /// Why the connection ended; the first reason recorded wins.
    reason: Mutex<Option<String>>,
    /// Set by GoAway: the delay the server asked for before reconnecting.
    going_away: Mutex<Option<Duration>>,
    /// No new requests after GoAway (`spec/states.md`, DRAINING).
    draining: AtomicBool,
    /// Largest frame accepted from the server.
    max_in: AtomicUsize,
}

impl Shared {
    fn note_reason(&self, reason: impl Into<String>) {
        lock(&self.reason).get_or_insert_with(|| reason.into());
    }

    fn close(&self, reason: impl Into<String>) {
        self.note_reason(reason);
        self.closed.send_replace(true);
        // Dropping the senders wakes every waiting request.
        lock(&self.waiters).clear();
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    async fn wait_closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await.map(drop);
    }

    fn reason(&self) -> String {
        lock(&self.reason)
            .clone()
            .unwrap_or_else(|| "connection closed".into())
    }
}

/// A live connection. Dropping the last handle closes it.
#[derive(Debug)]
pub(crate) struct Conn {
    shared: Arc<Shared>,
    out: mpsc::Sender<Vec<u8>>,
    next_id: AtomicU64,
    /// The server's limit for frames we send.
    max_out: usize,
    welcome: pb::Welcome,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Set on QUIC when both sides announced `datagrams`: `Typing` goes
    /// out as a datagram (`spec/framing.md`).
    datagrams: Option<quinn::Connection>,
}

/// A request that was handed to the writer and waits for its reply.
#[derive(Debug)]
pub(crate) struct Pending {
    id: u64,
    rx: oneshot::Receiver<Result<S>>,
    shared: Arc<Shared>,
}

impl Pending {
    /// The reply; an `Error` reply becomes [`Error::Server`].
    ///
    /// [`Error::Disconnected`] means the connection ended after the request
    /// was queued: the server may or may not have processed it.
    pub(crate) async fn reply(mut self, deadline: Instant) -> Result<S> {
        match timeout_at(deadline, &mut self.rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(Error::Disconnected(self.shared.reason())),
            Err(_) => Err(Error::Timeout),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        lock(&self.shared.waiters).remove(&self.id);
    }
}

impl Conn {
    /// Connects, says Hello (`spec/README.md`, "Handshake") and returns the
    /// connection with its queue of pushes.
    pub(crate) async fn open(
        endpoint: &Endpoint,
        options: &ClientOptions,
    ) -> Result<(Arc<Conn>, mpsc::Receiver<S>)> {
        let deadline = Instant::now() + options.request_timeout;
        let dialed = timeout_at(deadline, transport::dial(endpoint, options))
            .await
            .map_err(|_| Error::Timeout)??;
        let (out, out_rx) = mpsc::channel(OUTBOUND_FRAMES);
        let (push_tx, pushes) = mpsc::channel(INBOUND_PUSHES);
        let shared = Arc::new(Shared {
            waiters: Mutex::default(),
            closed: watch::Sender::new(false),
            reason: Mutex::default(),
            going_away: Mutex::default(),
            draining: AtomicBool::new(false),
            max_in: AtomicUsize::new(DEFAULT_MAX_FRAME_BYTES),
        });
        let quic = dialed.quic;
        // Both sides must announce datagrams (`spec/framing.md`); the
        // connection negotiated them if it has a datagram size.
        let datagrams = quic
            .as_ref()
            .is_some_and(|q| q.conn.max_datagram_size().is_some());
        if let Some(q) = &quic {
            tokio::spawn(datagram_loop(
                q.conn.clone(),
                shared.clone(),
                push_tx.clone(),
                out.clone(),
            ));
        }
        let quic_conn = quic.as_ref().map(|q| q.conn.clone());
        let writer = tokio::spawn(write_loop(dialed.writer, out_rx, shared.clone(), quic));
        tokio::spawn(read_loop(
            dialed.reader,
            shared.clone(),
            push_tx,
            out.clone(),
        ));

        let mut conn = Conn {
            shared,
            out,
            next_id: AtomicU64::new(0),
            // Before Welcome a client assumes 1 MiB (`spec/framing.md`).
            max_out: DEFAULT_MAX_FRAME_BYTES,
            welcome: pb::Welcome::default(),
            writer: Mutex::new(Some(writer)),
            datagrams: None,
        };
        let hello = C::Hello(pb::Hello {
            protocol_version: chat_protocol::PROTOCOL_VERSION,
            client_name: options.client_name.clone(),
            client_version: options.client_version.clone(),
            capabilities: if datagrams {
                vec![CAPABILITY_DATAGRAMS.to_owned()]
            } else {
                Vec::new()
            },
        });
        // On failure `conn` is dropped, which closes the connection.
        let welcome = match conn.request(hello, deadline).await? {
            S::Welcome(w) => w,
            other => return Err(Error::unexpected(&other)),
        };
        if welcome.max_frame_bytes > 0 {
            conn.max_out = welcome.max_frame_bytes as usize;
            // Accept at least the default, whatever the server's own limit.
            conn.shared
                .max_in
                .store(conn.max_out.max(DEFAULT_MAX_FRAME_BYTES), Ordering::Relaxed);
        }
        if datagrams
            && welcome
                .capabilities
                .iter()
                .any(|c| c == CAPABILITY_DATAGRAMS)
        {
            conn.datagrams = quic_conn;
        }
        conn.welcome = welcome;
        Ok((Arc::new(conn), pushes))
    }

    /// What the server announced in Welcome.
    pub(crate) fn welcome(&self) -> &pb::Welcome {
        &self.welcome
    }

    /// How often to Ping (`Welcome.heartbeat_interval_ms`).
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        match self.welcome.heartbeat_interval_ms {
            0 => DEFAULT_HEARTBEAT,
            ms => Duration::from_millis(u64::from(ms)).max(Duration::from_millis(100)),
        }
    }

    fn encode(&self, request_id: u64, body: C) -> Result<Vec<u8>> {
        let frame = pb::ClientFrame {
            request_id,
            body: Some(body),
        };
        Ok(codec::encode_to_vec(&frame, self.max_out)?)
    }

    /// Queues a request for the socket. Any error means it was NOT sent.
    pub(crate) async fn send_request(&self, body: C, deadline: Instant) -> Result<Pending> {
        if !self.is_usable() {
            return Err(Error::Disconnected(self.shared.reason()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let bytes = self.encode(id, body)?;
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.waiters).insert(id, tx);
        let pending = Pending {
            id,
            rx,
            shared: self.shared.clone(),
        };
        // Closing clears the waiters; one registered after that would
        // never be woken.
        if self.shared.is_closed() {
            return Err(Error::Disconnected(self.shared.reason()));
        }
        match timeout_at(deadline, self.out.send(bytes)).await {
            Ok(Ok(())) => Ok(pending),
            Ok(Err(_)) => Err(Error::Disconnected(self.shared.reason())),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Sends a request and waits for its reply until `deadline`.
    pub(crate) async fn request(&self, body: C, deadline: Instant) -> Result<S> {
        self.send_request(body, deadline)
            .await?
            .reply(deadline)
            .await
    }

    /// Sends a frame with `request_id` 0, which gets no reply (Typing, or
    /// MarkRead without confirmation).
    pub(crate) async fn notify(&self, body: C, deadline: Instant) -> Result<()> {
        if !self.is_usable() {
            return Err(Error::Disconnected(self.shared.reason()));
        }
        if let (Some(quic), C::Typing(_)) = (&self.datagrams, &body) {
            // One frame body per datagram; if it cannot go (too large, the
            // datagram buffer is full), the stream carries it.
            let frame = pb::ClientFrame {
                request_id: 0,
                body: Some(body.clone()),
            };
            if quic.send_datagram(frame.encode_to_vec().into()).is_ok() {
                return Ok(());
            }
        }
        let bytes = self.encode(0, body)?;
        match timeout_at(deadline, self.out.send(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Disconnected(self.shared.reason())),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Open and not draining: new requests may use it.
    pub(crate) fn is_usable(&self) -> bool {
        !self.shared.is_closed() && !self.shared.draining.load(Ordering::Relaxed)
    }

    /// Whether the connection has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Waits until the connection has ended.
    pub(crate) async fn closed(&self) {
        self.shared.wait_closed().await;
    }

    /// Why the connection ended.
    pub(crate) fn reason(&self) -> String {
        self.shared.reason()
    }

    /// The reconnect delay requested by a GoAway, if one arrived.
    pub(crate) fn going_away(&self) -> Option<Duration> {
        *lock(&self.shared.going_away)
    }

    /// Ends the connection.
    pub(crate) fn close(&self, reason: impl Into<String>) {
        self.shared.close(reason);
    }

    /// Ends the connection and waits (briefly) for the socket to be shut
    /// down, so the server sees a clean close.
    pub(crate) async fn close_and_wait(&self, reason: &str) {
        self.close(reason);
        let writer = lock(&self.writer).take();
        if let Some(writer) = writer {
            let _ = timeout(CLOSE_GRACE, writer).await;
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.close("connection dropped");
    }
}

async fn write_loop(
    mut wr: Writer,
    mut frames: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    quic: Option<Quic>,
) {
    let mut batch: Vec<Vec<u8>> = Vec::new();
    loop {
        let next = tokio::select! {
            biased;
            _ = shared.wait_closed() => break,
            next = frames.recv() => next,
        };
        let Some(first) = next else { break };
        batch.clear();
        let mut bytes = first.len();
        batch.push(first);
        while bytes < WRITE_BATCH_BYTES {
            match frames.try_recv() {
                Ok(more) => {
                    bytes += more.len();
                    batch.push(more);
                }
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            biased;
            _ = shared.wait_closed() => break,
            written = wr.write(&batch) => written,
        };
        if let Err(e) = written {
            shared.close(format!("write failed: {e}"));
            break;
        }
    }
    shared.close("connection closed");
    let _ = timeout(CLOSE_GRACE, wr.shutdown()).await;
    if let Some(q) = quic {
        q.conn.close(quinn::VarInt::from_u32(0), b"");
    }
}

async fn read_loop(
    mut rd: Reader,
    shared: Arc<Shared>,
    pushes: mpsc::Sender<S>,
    out: mpsc::Sender<Vec<u8>>,
) {
    loop {
        let max = shared.max_in.load(Ordering::Relaxed);
        let read = tokio::select! {
            biased;
            _ = shared.wait_closed() => break,
            read = rd.next(max) => read,
        };
        match read {
            Read::Frame(frame) => {
                if !dispatch(frame, &shared, &pushes, &out).await {
                    break;
                }
            }
            Read::Closed(reason) => {
                shared.note_reason(reason);
                break;
            }
            Read::Invalid(e) => {
                // `spec/framing.md`: a client receiving a malformed frame
                // SHOULD close the connection and reconnect.
                tracing::debug!(cause = %e, "invalid frame from server");
                shared.note_reason(format!("invalid frame from server: {e}"));
                break;
            }
        }
    }
    shared.close("connection closed");
}

/// Pushes that arrive as QUIC datagrams (typing, presence): one frame body
/// per datagram. An undecodable datagram is dropped; datagrams are
/// unreliable anyway.
async fn datagram_loop(
    conn: quinn::Connection,
    shared: Arc<Shared>,
    pushes: mpsc::Sender<S>,
    out: mpsc::Sender<Vec<u8>>,
) {
    loop {
        let datagram = tokio::select! {
            biased;
            _ = shared.wait_closed() => break,
            d = conn.read_datagram() => d,
        };
        let Ok(body) = datagram else { break };
        match pb::ServerFrame::decode(body) {
            Ok(frame) if frame.request_id == 0 => {
                if !dispatch(frame, &shared, &pushes, &out).await {
                    break;
                }
            }
            _ => tracing::debug!("undecodable datagram from the server dropped"),
        }
    }
}

/// Routes one frame; false once the connection is closing.
async fn dispatch(
    frame: pb::ServerFrame,
    shared: &Shared,
    pushes: &mpsc::Sender<S>,
    out: &mpsc::Sender<Vec<u8>>,
) -> bool {
    let Some(body) = frame.body else {
        tracing::debug!(
            request_id = frame.request_id,
            "server frame without body ignored"
        );
        return true;
    };
    if frame.request_id != 0 {
        let waiter = lock(&shared.waiters).remove(&frame.request_id);
        match waiter {
            Some(waiter) => {
                let _ = waiter.send(into_reply(body));
            }
            None => tracing::debug!(
                request_id = frame.request_id,
                "reply to a request nobody waits for (timed out?)"
            ),
        }
        return true;
    }
    match body {
        S::Ping(ping) => {
            // `spec/states.md`: the receiver MUST answer Pong with the same
            // nonce; a client answers server pings with request_id 0. If the
            // outbound queue is full the server is not reading either.
            let pong = pb::ClientFrame {
                request_id: 0,
                body: Some(C::Pong(pb::Pong { nonce: ping.nonce })),
            };
            if let Ok(bytes) = codec::encode_to_vec(&pong, DEFAULT_MAX_FRAME_BYTES) {
                let _ = out.try_send(bytes);
            }
            true
        }
        S::Pong(_) => true,
        S::Error(e) => {
            // With request_id 0 an error concerns the connection
            // (`spec/errors.md`); the closing ones are followed by EOF.
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified);
            tracing::debug!(?code, message = %e.message, "connection error from server");
            if code.closes_connection() || code == ErrorCode::ServerBusy {
                shared.note_reason(format!("server error {code:?}: {}", e.message));
            }
            true
        }
        push => {
            if let S::GoAway(g) = &push {
                shared.draining.store(true, Ordering::Relaxed);
                *lock(&shared.going_away) =
                    Some(Duration::from_millis(u64::from(g.reconnect_after_ms)));
                shared.note_reason(format!("server going away: {}", g.message));
            }
            tokio::select! {
                biased;
                _ = shared.wait_closed() => false,
                sent = pushes.send(push) => sent.is_ok(),
            }
        }
    }
}

fn into_reply(body: S) -> Result<S> {
    match body {
        S::Error(e) => Err(Error::Server {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
            message: e.message,
            retry_after_ms: e.retry_after_ms,
        }),
        other => Ok(other),
    }
}
