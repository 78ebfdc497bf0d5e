//! Frame codec: protobuf's standard length-delimited format.
//!
//! A frame is `varint(len) ‖ body`, where `body` is one encoded
//! `ClientFrame` or `ServerFrame` (`spec/framing.md`). [`check`] tells whether
//! a whole frame is buffered without allocating; [`decode`] parses one;
//! [`encode`] appends one to a caller's buffer. An incomplete frame is not an
//! error: [`check`] returns `Ok(None)` and the caller reads more bytes.

use bytes::{Buf, BufMut, BytesMut};
use prost::Message;

use crate::ErrorCode;

/// Default maximum size of a frame body, 1 MiB (`spec/framing.md`).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 1 << 20;

/// A varint is at most 10 bytes long (64 bits in 7-bit groups).
const MAX_VARINT_BYTES: usize = 10;

/// Why bytes could not be turned into a frame. Every variant is fatal for the
/// connection: the receiver cannot find the next frame boundary reliably
/// (`spec/framing.md`, "Errors").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announces more than the receiver's limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length (or a lower bound of it, when the prefix was cut
        /// short as soon as the limit was passed).
        len: u64,
        /// The receiver's limit.
        max: usize,
    },
    /// The length prefix is not a valid varint (more than 10 bytes, or it
    /// overflows 64 bits).
    #[error("invalid varint length prefix")]
    InvalidVarint,
    /// The body is not a valid protobuf encoding of the expected message.
    #[error("malformed frame body: {0}")]
    Malformed(String),
}

impl FrameError {
    /// The wire error code a receiver reports before closing (`spec/errors.md`).
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::InvalidVarint | FrameError::Malformed(_) => ErrorCode::MalformedFrame,
        }
    }
}

/// Where a complete frame sits in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Bytes taken by the varint length prefix.
    pub prefix_len: usize,
    /// Bytes of the protobuf body that follows.
    pub body_len: usize,
}

impl FrameHeader {
    /// Length of prefix and body together.
    pub fn total_len(&self) -> usize {
        self.prefix_len + self.body_len
    }
}

/// Is a whole frame at the start of `buf`?
///
/// Returns `Ok(None)` if more bytes are needed, `Ok(Some(header))` if
/// `buf[..header.total_len()]` is one frame, and an error as soon as the
/// prefix is known to be invalid or over `max` — before the body arrives, so
/// an oversized frame never causes an allocation.
pub fn check(buf: &[u8], max: usize) -> Result<Option<FrameHeader>, FrameError> {
    let mut len: u64 = 0;
    for (i, &byte) in buf.iter().take(MAX_VARINT_BYTES).enumerate() {
        let part = u64::from(byte & 0x7f);
        // The tenth byte may only carry the single remaining bit of a u64.
        if i == MAX_VARINT_BYTES - 1 && part > 1 {
            return Err(FrameError::InvalidVarint);
        }
        len |= part << (7 * i);
        if len > max as u64 {
            return Err(FrameError::TooLarge { len, max });
        }
        if byte & 0x80 == 0 {
            let prefix_len = i + 1;
            // `len <= max` was checked above, so it fits in usize.
            let body_len = len as usize;
            if buf.len() - prefix_len < body_len {
                return Ok(None);
            }
            return Ok(Some(FrameHeader {
                prefix_len,
                body_len,
            }));
        }
    }
    if buf.len() >= MAX_VARINT_BYTES {
        return Err(FrameError::InvalidVarint);
    }
    Ok(None)
}

/// Decodes the frame at the start of `buf`, returning it and the number of
/// bytes it took, or `Ok(None)` if it is not complete yet.
pub fn decode<M: Message + Default>(
    buf: &[u8],
    max: usize,
) -> Result<Option<(M, usize)>, FrameError> {
    let Some(header) = check(buf, max)? else {
        return Ok(None);
    };
    let body = buf
        .get(header.prefix_len..header.total_len())
        .ok_or(FrameError::InvalidVarint)?;
    let msg = M::decode(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
    Ok(Some((msg, header.total_len())))
}

/// Appends `msg` as one frame to `dst`, which must be able to grow (`Vec<u8>`,
/// `BytesMut`).
///
/// Fails with [`FrameError::TooLarge`] (and writes nothing) if the encoded
/// body exceeds `max`: a sender must not produce frames its peer will refuse.
pub fn encode<M: Message>(msg: &M, dst: &mut impl BufMut, max: usize) -> Result<(), FrameError> {
    let len = msg.encoded_len();
    if len > max {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    // Growable buffers (Vec, BytesMut) extend as needed; the length was
    // computed once above and is reused for the prefix.
    prost::encoding::encode_varint(len as u64, dst);
    msg.encode_raw(dst);
    Ok(())
}

/// Encodes `msg` as one frame into a fresh buffer of exactly the frame's
/// size, so that turning it into `Bytes` reuses the allocation instead of
/// adding a second one.
pub fn encode_to_vec<M: Message>(msg: &M, max: usize) -> Result<Vec<u8>, FrameError> {
    let len = msg.encoded_len();
    if len > max {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max,
        });
    }
    let mut out = Vec::with_capacity(prost::encoding::encoded_len_varint(len as u64) + len);
    prost::encoding::encode_varint(len as u64, &mut out);
    msg.encode_raw(&mut out);
    debug_assert_eq!(out.len(), out.capacity());
    Ok(out)
}

/// Streaming decoder over a growable buffer: push bytes in as they arrive,
/// pull frames out.
///
/// The buffer holds at most one partial frame plus what the caller pushed in
/// one go, so its size is bounded by `max + read size`.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max: usize,
}

impl FrameDecoder {
    /// A decoder refusing frames whose body is larger than `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(8 * 1024),
            max,
        }
    }

    /// The size limit this decoder enforces.
    pub fn max_frame_bytes(&self) -> usize {
        self.max
    }

    /// Appends received bytes.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The internal buffer, for reading from a socket directly into it.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet consumed as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed.
    ///
    /// After an error the stream is unusable: the caller reports the error
    /// and closes the connection.
    pub fn next_frame<M: Message + Default>(&mut self) -> Result<Option<M>, FrameError> {
        match decode::<M>(&self.buf, self.max)? {
            Some((msg, used)) => {
                self.buf.advance(used);
                Ok(Some(msg))
            }
            None => Ok(None),
        }
    }
}
