//! The chat/1 wire protocol, without I/O.
//!
//! This crate is to `chatd` and `chat-client` what `quinn-proto` is to `quinn`:
//! it knows the bytes and nothing else. It has no sockets, no runtime and no
//! clock; callers hand it bytes and get frames back, or hand it frames and get
//! bytes.
//!
//! - [`pb`]: the message types, generated at build time from `spec/chat.proto`.
//! - [`codec`]: varint-length-delimited framing (`spec/framing.md`) with the
//!   size limit enforced before anything is allocated.
//! - [`ids`]: typed identifiers and the layout of time-ordered message ids.
//! - [`error_code`]: helpers around [`ErrorCode`], mirrored in `spec/errors.md`.

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod codec;
pub mod error_code;
pub mod ids;

/// Generated protobuf types of package `chat.v1` (see `spec/chat.proto`).
#[allow(clippy::all, clippy::pedantic, missing_docs, rust_2018_idioms)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/chat.v1.rs"));
}

pub use codec::{DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameError, FrameHeader};
pub use ids::{ConversationId, MessageId, Seq, UserId};
pub use pb::ErrorCode;

/// The protocol version this crate implements (`Hello.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;

/// ALPN identifier for QUIC and TLS connections.
pub const ALPN: &[u8] = b"chat/1";
