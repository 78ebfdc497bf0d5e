//! Length-prefixed frames over a byte stream (`spec/framing.md`, "Frames
//! on byte streams"): plain TCP, TLS over TCP and the QUIC session stream.
//!
//! An idle session holds no buffer of its own. Reads land in one scratch
//! buffer per shard thread and frames are decoded from it; only the bytes
//! of a frame not complete yet (and of frames after it in the same read)
//! are copied into the session, and that copy is freed as soon as it is
//! consumed. Writes of one frame go to the socket straight from the shared
//! frame; a batch of several is gathered in a per-thread buffer, and only
//! what the socket does not take at once is copied into the session until
//! it is written.

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, BytesMut};
use chat_protocol::{FrameError, codec, pb};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{FrameSink, FrameSource, Incoming, WRITE_COALESCE};
use crate::session_table::{CloseReason, Outbound};

/// Bytes requested from the socket per read (the size of each shard
/// thread's read scratch buffer).
const READ_CHUNK: usize = 16 * 1024;

/// A thread's write gather buffer is kept between batches up to this
/// capacity; a larger one (a batch ending in a large frame) is freed.
const WRITE_SCRATCH_KEEP: usize = 2 * WRITE_COALESCE;

/// A partial frame left in a session buffer larger than this is moved to a
/// buffer of its own size, so that a large frame's buffer is not kept for
/// the small remainder after it.
const PENDING_KEEP: usize = 2 * READ_CHUNK;

thread_local! {
    /// Where the sessions of this thread read into.
    static READ_SCRATCH: RefCell<Box<[u8]>> =
        RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
    /// Where batches of several frames are gathered into one write.
    static WRITE_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

fn invalid(e: FrameError) -> Incoming {
    Incoming::Invalid {
        code: e.code(),
        message: e.to_string(),
        reason: super::CloseReason::Error(e.code()),
    }
}

/// Decodes frames from a byte stream. Between frames it holds no memory
/// beyond the reader itself; while a frame is incomplete it holds at most
/// that partial frame (at most `max_frame_bytes`) plus one read.
#[derive(Debug)]
pub struct StreamSource<R> {
    rd: R,
    /// Received bytes not yet decoded: empty (unallocated) unless a read
    /// ended inside a frame or carried several frames.
    pending: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> StreamSource<R> {
    /// A source refusing frames over `max_frame_bytes`.
    pub fn new(rd: R, max_frame_bytes: usize) -> Self {
        Self {
            rd,
            pending: BytesMut::new(),
            max: max_frame_bytes,
        }
    }

    /// The next frame from `pending`, if it holds a complete one.
    fn decode_pending(&mut self) -> Option<Incoming> {
        match codec::decode::<pb::ClientFrame>(&self.pending, self.max) {
            Ok(Some((frame, used))) => {
                self.pending.advance(used);
                if self.pending.is_empty() {
                    self.pending = BytesMut::new();
                } else if self.pending.capacity() > PENDING_KEEP
                    && self.pending.len() * 4 < self.pending.capacity()
                {
                    self.pending = BytesMut::from(&self.pending[..]);
                }
                Some(Incoming::Frame(frame))
            }
            Ok(None) => None,
            Err(e) => Some(invalid(e)),
        }
    }

    /// One read from the socket through the thread's scratch buffer.
    /// Returns a frame if the read completed one and nothing was pending;
    /// otherwise what was read is appended to `pending`. Cancel-safe: the
    /// bytes of a read are handled within the poll that returned them.
    async fn read_some(&mut self) -> Option<Incoming> {
        let rd = &mut self.rd;
        let pending = &mut self.pending;
        let max = self.max;
        poll_fn(|cx| {
            READ_SCRATCH.with_borrow_mut(|scratch| {
                let mut rb = ReadBuf::new(scratch);
                match Pin::new(&mut *rd).poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(_)) => Poll::Ready(Some(Incoming::Closed)),
                    Poll::Ready(Ok(())) => {
                        let data = rb.filled();
                        if data.is_empty() {
                            return Poll::Ready(Some(Incoming::Closed));
                        }
                        if !pending.is_empty() {
                            pending.extend_from_slice(data);
                            return Poll::Ready(None);
                        }
                        // The usual case: the read starts with a whole
                        // frame. Decode it in place; keep only the rest.
                        Poll::Ready(match codec::decode::<pb::ClientFrame>(data, max) {
                            Ok(Some((frame, used))) => {
                                pending.extend_from_slice(data.get(used..).unwrap_or_default());
                                Some(Incoming::Frame(frame))
                            }
                            Ok(None) => {
                                pending.extend_from_slice(data);
                                None
                            }
                            Err(e) => Some(invalid(e)),
                        })
                    }
                }
            })
        })
        .await
    }
}

impl<R: AsyncRead + Unpin> FrameSource for StreamSource<R> {
    async fn next(&mut self) -> Incoming {
        loop {
            if !self.pending.is_empty() {
                if let Some(incoming) = self.decode_pending() {
                    return incoming;
                }
            }
            if let Some(incoming) = self.read_some().await {
                return incoming;
            }
        }
    }
}

/// Writes batches of frames to a byte stream, one write per batch.
#[derive(Debug)]
pub struct StreamSink<W> {
    wr: W,
    /// The part of a gathered batch the socket did not take at once;
    /// empty (unallocated) otherwise.
    unsent: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> StreamSink<W> {
    /// A sink over `wr`.
    pub fn new(wr: W) -> Self {
        Self {
            wr,
            unsent: Vec::new(),
        }
    }

    /// The writer, for transports that finish differently (QUIC).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.wr
    }

    /// Gathers `batch` in the thread's buffer and offers it to the writer
    /// once; what it does not take is copied to `unsent`.
    async fn write_gathered(&mut self, batch: &[Outbound]) -> std::io::Result<()> {
        let wr = &mut self.wr;
        let unsent = &mut self.unsent;
        poll_fn(|cx| {
            WRITE_SCRATCH.with_borrow_mut(|buf| {
                buf.clear();
                for f in batch {
                    buf.extend_from_slice(&f.frame);
                }
                let taken = match Pin::new(&mut *wr).poll_write(cx, buf) {
                    Poll::Pending => Ok(0),
                    Poll::Ready(Ok(0)) if !buf.is_empty() => {
                        Err(std::io::ErrorKind::WriteZero.into())
                    }
                    Poll::Ready(r) => r,
                };
                if let Ok(n) = taken {
                    unsent.extend_from_slice(buf.get(n..).unwrap_or_default());
                }
                if buf.capacity() > WRITE_SCRATCH_KEEP {
                    *buf = Vec::new();
                } else {
                    buf.clear();
                }
                Poll::Ready(taken.map(drop))
            })
        })
        .await?;
        if !self.unsent.is_empty() {
            let r = self.wr.write_all(&self.unsent).await;
            self.unsent = Vec::new();
            r?;
        }
        Ok(())
    }
}

impl<W: AsyncWrite + Unpin> FrameSink for StreamSink<W> {
    async fn send(&mut self, batch: &[Outbound]) -> std::io::Result<()> {
        // Left over only if an earlier send was abandoned midway, after
        // which the stream is not written to again.
        self.unsent = Vec::new();
        match batch {
            [] => {}
            [one] => self.wr.write_all(&one.frame).await?,
            _ => self.write_gathered(batch).await?,
        }
        self.wr.flush().await
    }

    async fn finish(&mut self, _reason: CloseReason) {
        let _ = self.wr.shutdown().await;
    }
}
