//! Building encoded server frames. Frames are encoded once into [`Bytes`]
//! and then shared by every session that sends them (a fan-out to 500
//! members encodes the push once).

use bytes::Bytes;
use chat_protocol::pb::{self, server_frame::Body};
use chat_protocol::{ErrorCode, codec};

/// A request that could not be carried out: the wire code and a detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct Refusal {
    /// Wire error code (`spec/errors.md`).
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// Suggested wait before a retry, for RATE_LIMITED and the like.
    pub retry_after_ms: u32,
}

impl Refusal {
    /// A refusal with a detail message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: 0,
        }
    }

    /// The same refusal with a retry hint.
    pub fn retry_after(mut self, ms: u32) -> Self {
        self.retry_after_ms = ms;
        self
    }
}

impl From<crate::storage::StorageError> for Refusal {
    fn from(e: crate::storage::StorageError) -> Self {
        tracing::error!(cause = %e, "storage failure while serving a request");
        Self::new(ErrorCode::StorageFailure, "storage failure")
    }
}

/// Result of a request handler.
pub type Handled = Result<Body, Refusal>;

/// Encodes a frame. Server frames are built from bounded inputs; one that
/// would still exceed the frame limit (a page of maximal messages) is
/// replaced by an error so that the client never receives an oversized frame.
pub fn encode(frame: &pb::ServerFrame) -> Bytes {
    match codec::encode_to_vec(frame, chat_protocol::DEFAULT_MAX_FRAME_BYTES) {
        Ok(v) => Bytes::from(v),
        Err(_) => error(
            frame.request_id,
            ErrorCode::Internal,
            "reply exceeds the frame limit; request fewer items",
        ),
    }
}

/// The frame answering `request_id` with `result`.
pub fn answer(request_id: u64, result: Handled) -> Bytes {
    match result {
        Ok(body) => encode(&pb::ServerFrame {
            request_id,
            body: Some(body),
        }),
        Err(r) => error_with_retry(request_id, r.code, &r.message, r.retry_after_ms),
    }
}

/// An Error frame.
pub fn error(request_id: u64, code: ErrorCode, message: &str) -> Bytes {
    error_with_retry(request_id, code, message, 0)
}

/// An Error frame with a retry hint.
pub fn error_with_retry(
    request_id: u64,
    code: ErrorCode,
    message: &str,
    retry_after_ms: u32,
) -> Bytes {
    let frame = pb::ServerFrame {
        request_id,
        body: Some(Body::Error(pb::Error {
            code: code as i32,
            message: message.to_owned(),
            retry_after_ms,
        })),
    };
    codec::encode_to_vec(&frame, chat_protocol::DEFAULT_MAX_FRAME_BYTES)
        .map(Bytes::from)
        .unwrap_or_default()
}

/// A push (request_id 0).
pub fn push(body: Body) -> Bytes {
    encode(&pb::ServerFrame {
        request_id: 0,
        body: Some(body),
    })
}
