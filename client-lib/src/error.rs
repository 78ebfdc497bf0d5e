//! The client's error type.

use chat_protocol::{ErrorCode, FrameError};

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server refused the request with an `Error` reply
    /// (`spec/errors.md`).
    #[error("server refused: {code:?}: {message}")]
    Server {
        /// Wire error code.
        code: ErrorCode,
        /// The server's detail text, for logs only.
        message: String,
        /// Suggested wait before retrying in milliseconds (RATE_LIMITED,
        /// SERVER_BUSY, TOO_MANY_LOGIN_ATTEMPTS), 0 otherwise.
        retry_after_ms: u32,
    },
    /// The URL is not `scheme://host:port` with a known scheme.
    #[error("invalid server URL {0:?}")]
    InvalidUrl(String),
    /// The TLS handshake failed: most often the server's certificate is
    /// not trusted (see `ClientOptions::trusted_certs_pem`) or does not
    /// name the host.
    #[error("TLS: {0}")]
    Tls(String),
    /// The transport could not be set up: the WebSocket upgrade was
    /// refused (a foreign origin, a wrong path), QUIC could not connect.
    #[error("transport: {0}")]
    Transport(String),
    /// Connecting to the server failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame could not be encoded within the size limit (the request is
    /// too large) or the server sent an undecodable one.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The server answered with a message of an unexpected kind.
    #[error("unexpected reply: {0}")]
    UnexpectedReply(String),
    /// No reply within the request timeout.
    #[error("request timed out")]
    Timeout,
    /// The connection dropped while the request was in flight and the
    /// request is not safe to repeat; or no connection came back within the
    /// timeout; or the client stopped reconnecting (the reason is given).
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// The client was closed by the app.
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

    /// Whether the same request may succeed if sent again later: retryable
    /// server codes, timeouts and lost connections.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Server { code, .. } => code.is_retryable(),
            Error::Timeout | Error::Disconnected(_) => true,
            _ => false,
        }
    }

    pub(crate) fn unexpected(reply: &chat_protocol::pb::server_frame::Body) -> Self {
        // A page of messages can be large; its start says what it was.
        let mut text = format!("{reply:?}");
        if let Some((cut, _)) = text.char_indices().nth(200) {
            text.truncate(cut);
            text.push('…');
        }
        Error::UnexpectedReply(text)
    }
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
