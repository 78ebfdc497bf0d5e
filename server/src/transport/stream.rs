//! Length-prefixed frames over a byte stream (`spec/framing.md`, "Frames
//! on byte streams"): plain TCP, TLS over TCP and the QUIC session stream.

use chat_protocol::{FrameDecoder, pb};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{FrameSink, FrameSource, Incoming};
use crate::session_table::{CloseReason, Outbound};

/// Bytes requested from the socket per read.
const READ_CHUNK: usize = 16 * 1024;

/// Decodes frames from a byte stream. Its buffer holds at most one partial
/// frame (at most `max_frame_bytes`) plus one read.
#[derive(Debug)]
pub struct StreamSource<R> {
    rd: R,
    decoder: FrameDecoder,
}

impl<R: AsyncRead + Unpin> StreamSource<R> {
    /// A source refusing frames over `max_frame_bytes`.
    pub fn new(rd: R, max_frame_bytes: usize) -> Self {
        Self {
            rd,
            decoder: FrameDecoder::new(max_frame_bytes),
        }
    }
}

impl<R: AsyncRead + Unpin> FrameSource for StreamSource<R> {
    async fn next(&mut self) -> Incoming {
        loop {
            match self.decoder.next_frame::<pb::ClientFrame>() {
                Ok(Some(frame)) => return Incoming::Frame(frame),
                Ok(None) => {}
                Err(e) => {
                    return Incoming::Invalid {
                        code: e.code(),
                        message: e.to_string(),
                        reason: super::CloseReason::Error(e.code()),
                    };
                }
            }
            let buf = self.decoder.buffer_mut();
            buf.reserve(READ_CHUNK);
            match self.rd.read_buf(buf).await {
                Ok(0) | Err(_) => return Incoming::Closed,
                Ok(_) => {}
            }
        }
    }
}

/// Writes batches of frames to a byte stream, one write per batch.
#[derive(Debug)]
pub struct StreamSink<W> {
    wr: W,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> StreamSink<W> {
    /// A sink over `wr`.
    pub fn new(wr: W) -> Self {
        Self {
            wr,
            // Grows with the first writes: an idle session should not pin
            // a 64 KiB buffer it never fills.
            buf: Vec::new(),
        }
    }

    /// The writer, for transports that finish differently (QUIC).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.wr
    }
}

impl<W: AsyncWrite + Unpin> FrameSink for StreamSink<W> {
    async fn send(&mut self, batch: &[Outbound]) -> std::io::Result<()> {
        self.buf.clear();
        for f in batch {
            self.buf.extend_from_slice(&f.frame);
        }
        self.wr.write_all(&self.buf).await?;
        self.wr.flush().await
    }

    async fn finish(&mut self, _reason: CloseReason) {
        let _ = self.wr.shutdown().await;
    }
}
