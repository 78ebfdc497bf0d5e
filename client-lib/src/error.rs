//! The client's error type.

use chat_protocol::{ErrorCode, FrameError};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused the request (`spec/errors.md`).
    #[error("server refused: {code:?}: {message}")]
    Server {
        /// Wire error code.
        code: ErrorCode,
        /// The server's detail text.
        message: String,
        /// Suggested wait before retrying, if the server gave one.
        retry_after_ms: u32,
    },
    /// The URL is not `scheme://host:port` with a known scheme.
    #[error("invalid server URL {0:?}")]
    InvalidUrl(String),
    /// The scheme is valid but this build cannot connect with it yet.
    #[error("transport {0} is not supported by this client yet")]
    UnsupportedTransport(String),
    /// Connecting or writing failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server sent bytes that are not a valid frame.
    #[error("protocol: {0}")]
    Frame(#[from] FrameError),
    /// The server answered with a message of an unexpected kind.
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
    /// No reply within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// The connection is gone and the request cannot be retried safely, or
    /// reconnecting is disabled or gave up.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// The client was closed.
    #[error("client closed")]
    Closed,
}

impl Error {
    /// The wire code, for server refusals.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;
