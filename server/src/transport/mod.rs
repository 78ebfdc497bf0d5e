//! Transports: how frames get from a socket to a session and back.
//!
//! The session logic (`connection`) sees a transport as two halves: a
//! [`FrameSource`] that yields decoded client frames, and a [`FrameSink`]
//! that writes batches of encoded server frames and finally closes the
//! connection. [`write_loop`] drains a session's bounded queue into a sink;
//! it is the same for every transport.
//!
//! - [`stream`]: length-prefixed frames over any byte stream — plain TCP,
//!   TLS over TCP, a QUIC bidirectional stream.
//! - [`websocket`]: one binary WebSocket message per frame body, on the
//!   HTTP listeners (`ws://` and `wss://`).
//! - [`quic`]: the per-shard QUIC endpoint, the session stream and QUIC
//!   datagrams for ephemeral pushes.
//! - [`tls`]: certificates (generated on first run or configured) and the
//!   rustls configurations of the TLS, WSS and QUIC listeners.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use crate::session_table::{CloseReason, FrameReceiver, Outbound};
use chat_protocol::{ErrorCode, pb};

pub mod quic;
pub mod stream;
pub mod tls;
pub mod websocket;

/// Frames coalesced into one write (one syscall on a byte stream, one
/// flush on WebSocket) until the batch holds at least this many bytes.
pub const WRITE_COALESCE: usize = 64 * 1024;

/// What a [`FrameSource`] produced.
#[derive(Debug)]
// Frames are by far the most frequent variant (a SendMessage with its
// mentions is the largest); boxing them would add an allocation to every
// frame read to shrink the rare others.
#[allow(clippy::large_enum_variant)]
pub enum Incoming {
    /// A decoded client frame.
    Frame(pb::ClientFrame),
    /// Traffic that carries no frame (a WebSocket ping, a dropped datagram):
    /// the peer is alive.
    Activity,
    /// The peer closed the connection, or it failed.
    Closed,
    /// The peer broke the framing rules (`spec/framing.md`, "Errors"):
    /// report `code`, then close.
    Invalid {
        /// Wire error code, MALFORMED_FRAME or FRAME_TOO_LARGE.
        code: ErrorCode,
        /// Detail for the Error frame.
        message: String,
        /// The transport-level close reason.
        reason: CloseReason,
    },
}

/// The receiving half of a transport.
pub trait FrameSource {
    /// The next frame or event. Cancel-safe: a caller that stops waiting
    /// loses nothing it would have read.
    fn next(&mut self) -> impl Future<Output = Incoming>;
}

/// The sending half of a transport.
pub trait FrameSink {
    /// Writes a batch of encoded, length-prefixed server frames, in order.
    fn send(&mut self, batch: &[Outbound]) -> impl Future<Output = std::io::Result<()>>;
    /// Ends the connection after the last frame, with a close code that
    /// says `reason` where the transport has one.
    fn finish(&mut self, reason: CloseReason) -> impl Future<Output = ()>;
}

/// What a transport can do beyond carrying frames.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    /// The transport can carry ephemeral pushes as unreliable datagrams
    /// (QUIC with datagrams negotiated). Welcome announces `datagrams`.
    pub datagrams: bool,
    /// Set when both sides announced `datagrams`: the sink may then send
    /// ephemeral frames as datagrams.
    pub datagrams_on: Rc<Cell<bool>>,
}

/// Drains the session queue into `sink` until the session closes, then
/// writes the closing frame and finishes the connection.
///
/// Frames are coalesced up to [`WRITE_COALESCE`] bytes per write. A
/// graceful close (`flush_first`) writes what is queued, bounded by
/// `grace`; a slow consumer's close drops what is queued at once and gives
/// the write in progress `grace` to complete, so that the SLOW_CONSUMER
/// error after it can be read.
pub async fn write_loop(mut sink: impl FrameSink, rx: FrameReceiver, grace: Duration) {
    // The task holds only what waiting for a frame needs: the states of a
    // write and of the close are boxed while they run, and the batch is
    // freed after each write, so an idle session's writer stays small.
    let mut stream_intact = true;
    let signal = rx.signal();
    loop {
        let frame = tokio::select! {
            biased;
            f = rx.recv() => f,
            _ = signal.closed() => break,
        };
        let mut batch = Vec::new();
        let mut bytes = frame.frame.len();
        batch.push(frame);
        while bytes < WRITE_COALESCE {
            match rx.try_recv() {
                Some(f) => {
                    bytes += f.frame.len();
                    batch.push(f);
                }
                None => break,
            }
        }
        rx.taken(bytes);
        let mut write = Box::pin(sink.send(&batch));
        let done = tokio::select! {
            r = &mut write => r.is_ok(),
            _ = signal.closed() => {
                if !signal.get().is_some_and(|c| c.flush_first) {
                    while rx.try_recv().is_some() {}
                }
                let rest = Box::pin(tokio::time::timeout(grace, &mut write));
                matches!(rest.await, Ok(Ok(())))
            }
        };
        if !done {
            stream_intact = false;
            break;
        }
    }
    Box::pin(close_sink(sink, rx, stream_intact, grace)).await;
}

/// Writes the closing frames (what is queued, if the close is graceful,
/// then the close frame) and finishes the connection, each step bounded by
/// `grace`.
async fn close_sink(
    mut sink: impl FrameSink,
    rx: FrameReceiver,
    stream_intact: bool,
    grace: Duration,
) {
    let close = rx.signal().get();
    if let (true, Some(close)) = (stream_intact, &close) {
        let mut batch = Vec::new();
        if close.flush_first {
            while let Some(f) = rx.try_recv() {
                batch.push(f);
            }
        }
        if let Some(f) = &close.frame {
            batch.push(Outbound {
                frame: f.clone(),
                ephemeral: false,
            });
        }
        if !batch.is_empty() {
            let _ = tokio::time::timeout(grace, sink.send(&batch)).await;
        }
    }
    drop(rx);
    let reason = close.map_or(CloseReason::Normal, |c| c.reason);
    let _ = tokio::time::timeout(grace, sink.finish(reason)).await;
}

/// The body of an encoded frame, without its length prefix (WebSocket
/// messages and QUIC datagrams carry bodies only).
pub fn frame_body(frame: &bytes::Bytes) -> bytes::Bytes {
    match chat_protocol::codec::check(frame, usize::MAX) {
        Ok(Some(h)) => frame.slice(h.prefix_len..h.total_len()),
        // Frames in the queue were encoded by the server itself.
        _ => frame.clone(),
    }
}
