//! One connection to the server: a writer task, a reader task that matches
//! replies to requests by `request_id`, and a bounded channel of pushes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use chat_protocol::{ErrorCode, FrameDecoder, codec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};
use crate::options::ClientOptions;
use crate::url::{Endpoint, Transport};

/// Frames queued for the socket before `request` waits.
const OUTBOUND_FRAMES: usize = 1024;

type Waiters = Mutex<HashMap<u64, oneshot::Sender<S>>>;

/// A live connection. Dropping every handle closes it.
#[derive(Debug)]
pub(crate) struct Conn {
    out: mpsc::Sender<Vec<u8>>,
    waiters: Arc<Waiters>,
    closed: Arc<AtomicBool>,
    next_id: AtomicU64,
    max_frame: usize,
    /// What the server announced.
    pub(crate) welcome: pb::Welcome,
}

fn lock(w: &Waiters) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<S>>> {
    // A panic while holding this lock cannot leave the map inconsistent
    // (insert/remove only), so a poisoned lock is still usable.
    w.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Conn {
    /// Connects, says Hello and returns the connection with its pushes.
    pub(crate) async fn open(
        endpoint: &Endpoint,
        options: &ClientOptions,
    ) -> Result<(Arc<Conn>, mpsc::Receiver<pb::ServerFrame>)> {
        if endpoint.transport != Transport::Tcp {
            return Err(Error::UnsupportedTransport(format!(
                "{:?}",
                endpoint.transport
            )));
        }
        let stream = tokio::time::timeout(
            options.request_timeout,
            TcpStream::connect(&endpoint.authority),
        )
        .await
        .map_err(|_| Error::Timeout)??;
        stream.set_nodelay(true)?;
        let (rd, mut wr) = stream.into_split();
        let (out, mut out_rx) = mpsc::channel::<Vec<u8>>(OUTBOUND_FRAMES);
        let (push_tx, pushes) = mpsc::channel(options.event_buffer.max(1));
        let waiters: Arc<Waiters> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let (stop, mut stopped) = oneshot::channel::<()>();

        tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    f = out_rx.recv() => f,
                    _ = &mut stopped => None,
                };
                let Some(first) = first else { break };
                let mut buf = first;
                while let Ok(more) = out_rx.try_recv() {
                    buf.extend_from_slice(&more);
                }
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        tokio::spawn(read_loop(
            rd,
            waiters.clone(),
            closed.clone(),
            push_tx,
            stop,
        ));

        let mut conn = Conn {
            out,
            waiters,
            closed,
            next_id: AtomicU64::new(0),
            max_frame: chat_protocol::DEFAULT_MAX_FRAME_BYTES,
            welcome: pb::Welcome::default(),
        };
        let hello = C::Hello(pb::Hello {
            protocol_version: chat_protocol::PROTOCOL_VERSION,
            client_name: options.client_name.clone(),
            client_version: options.client_version.clone(),
            capabilities: Vec::new(),
        });
        match conn.request(hello, options.request_timeout).await? {
            S::Welcome(w) => {
                conn.max_frame = w.max_frame_bytes as usize;
                conn.welcome = w;
            }
            other => return Err(Error::UnexpectedReply(format!("{other:?}"))),
        }
        Ok((Arc::new(conn), pushes))
    }

    /// Sends a request and waits for its reply; an Error reply becomes
    /// [`Error::Server`].
    pub(crate) async fn request(&self, body: C, timeout: Duration) -> Result<S> {
        let rid = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).insert(rid, tx);
        if self.is_closed() {
            lock(&self.waiters).remove(&rid);
            return Err(Error::Disconnected("connection closed".into()));
        }
        let frame = pb::ClientFrame {
            request_id: rid,
            body: Some(body),
        };
        let sent = match codec::encode_to_vec(&frame, self.max_frame) {
            Ok(bytes) => self
                .out
                .send(bytes)
                .await
                .map_err(|_| Error::Disconnected("connection closed".into())),
            Err(e) => Err(Error::Frame(e)),
        };
        if let Err(e) = sent {
            lock(&self.waiters).remove(&rid);
            return Err(e);
        }
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(Error::Disconnected("connection closed".into())),
            Err(_) => {
                lock(&self.waiters).remove(&rid);
                return Err(Error::Timeout);
            }
        };
        match reply {
            S::Error(e) => Err(Error::Server {
                code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                message: e.message,
                retry_after_ms: e.retry_after_ms,
            }),
            other => Ok(other),
        }
    }

    /// Sends a frame that expects no reply (Pong, Ping, Typing).
    pub(crate) fn send_oneway(&self, body: C) {
        let frame = pb::ClientFrame {
            request_id: 0,
            body: Some(body),
        };
        if let Ok(bytes) = codec::encode_to_vec(&frame, self.max_frame) {
            let _ = self.out.try_send(bytes);
        }
    }

    /// Whether the connection has ended.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

async fn read_loop(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    waiters: Arc<Waiters>,
    closed: Arc<AtomicBool>,
    pushes: mpsc::Sender<pb::ServerFrame>,
    stop_writer: oneshot::Sender<()>,
) {
    let mut decoder = FrameDecoder::new(chat_protocol::DEFAULT_MAX_FRAME_BYTES);
    'read: loop {
        decoder.buffer_mut().reserve(16 * 1024);
        match rd.read_buf(decoder.buffer_mut()).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        loop {
            match decoder.next_frame::<pb::ServerFrame>() {
                Ok(Some(frame)) => {
                    let waiter = match frame.request_id {
                        0 => None,
                        rid => lock(&waiters).remove(&rid),
                    };
                    match (waiter, frame.body) {
                        (Some(w), Some(body)) => {
                            let _ = w.send(body);
                        }
                        (None, Some(body)) => {
                            let push = pb::ServerFrame {
                                request_id: frame.request_id,
                                body: Some(body),
                            };
                            if pushes.send(push).await.is_err() {
                                break 'read;
                            }
                        }
                        (_, None) => {}
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(cause = %e, "bad frame from server");
                    break 'read;
                }
            }
        }
    }
    // Dropping the waiters tells every pending request the connection ended.
    closed.store(true, Ordering::Release);
    lock(&waiters).clear();
    let _ = stop_writer.send(());
}
