//! The error every fallible call throws.

use chat_client::Error;
use chat_client::pb;

/// Why a call failed. `Server` is a refusal by chatd and carries the wire
/// code (`spec/errors.md`); the other variants are local failures.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server refused the request.
    #[error("server refused: {code:?}: {detail}")]
    Server {
        /// The wire error code.
        code: ErrorCode,
        /// The numeric wire code (`spec/errors.md`), also for codes newer
        /// than this library (then `code` is `Unknown`).
        wire_code: i32,
        /// The server's detail text, for logs only.
        detail: String,
        /// Suggested wait before retrying in milliseconds (RATE_LIMITED,
        /// SERVER_BUSY, TOO_MANY_LOGIN_ATTEMPTS), 0 otherwise.
        retry_after_ms: u32,
        /// Whether the same request may succeed when sent again later.
        retryable: bool,
    },
    /// The URL is not `scheme://host:port` with a known scheme.
    #[error("invalid server URL: {detail}")]
    InvalidUrl {
        /// What was wrong.
        detail: String,
    },
    /// The TLS handshake failed, most often an untrusted certificate (see
    /// `ClientOptions.trusted_certs_pem`).
    #[error("TLS: {detail}")]
    Tls {
        /// The TLS library's reason.
        detail: String,
    },
    /// The transport could not be set up (WebSocket upgrade refused, QUIC
    /// could not connect).
    #[error("transport: {detail}")]
    Transport {
        /// Why.
        detail: String,
    },
    /// Connecting or reading a file failed.
    #[error("i/o: {detail}")]
    Io {
        /// The OS error.
        detail: String,
    },
    /// A frame could not be encoded within the size limit, or the server
    /// sent an undecodable one.
    #[error("frame: {detail}")]
    Frame {
        /// Why.
        detail: String,
    },
    /// The server answered with a reply of an unexpected kind.
    #[error("unexpected reply: {detail}")]
    UnexpectedReply {
        /// The start of the reply.
        detail: String,
    },
    /// No reply within the request timeout. Transient.
    #[error("request timed out")]
    Timeout,
    /// The connection dropped while a request that is not safe to repeat was
    /// in flight, or none came back in time, or the client stopped
    /// reconnecting. Transient.
    #[error("disconnected: {reason}")]
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The client was closed by the app.
    #[error("client closed")]
    Closed,
    /// A failure inside this library (its runtime could not run the call).
    #[error("internal: {detail}")]
    Internal {
        /// Why.
        detail: String,
    },
}

impl From<Error> for ClientError {
    fn from(e: Error) -> Self {
        match e {
            Error::Server {
                code,
                message,
                retry_after_ms,
            } => ClientError::Server {
                code: code.into(),
                wire_code: code as i32,
                detail: message,
                retry_after_ms,
                retryable: code.is_retryable(),
            },
            Error::InvalidUrl(detail) => ClientError::InvalidUrl { detail },
            Error::Tls(detail) => ClientError::Tls { detail },
            Error::Transport(detail) => ClientError::Transport { detail },
            Error::Io(e) => ClientError::Io {
                detail: e.to_string(),
            },
            Error::Frame(e) => ClientError::Frame {
                detail: e.to_string(),
            },
            Error::UnexpectedReply(detail) => ClientError::UnexpectedReply { detail },
            Error::Timeout => ClientError::Timeout,
            Error::Disconnected(reason) => ClientError::Disconnected { reason },
            Error::Closed => ClientError::Closed,
            other => ClientError::Internal {
                detail: other.to_string(),
            },
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// The wire error codes of `spec/errors.md`, one-to-one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum ErrorCode {
    /// A code this library does not know (see `ClientError.Server.wire_code`).
    Unknown,
    /// 100: the frame could not be decoded.
    MalformedFrame,
    /// 101: the frame exceeds the size limit.
    FrameTooLarge,
    /// 102: the request kind is unknown.
    UnknownMessage,
    /// 103: the protocol version is not supported.
    UnsupportedVersion,
    /// 104: Hello must come first.
    HelloRequired,
    /// 105: a field is invalid.
    InvalidArgument,
    /// 200: the request needs a logged-in session.
    Unauthenticated,
    /// 201: wrong username or password.
    InvalidCredentials,
    /// 202: the username is taken.
    UsernameTaken,
    /// 203: the session token is invalid or expired.
    TokenInvalid,
    /// 204: too many failed logins; wait `retry_after_ms`.
    TooManyLoginAttempts,
    /// 205: the session is already authenticated.
    AlreadyAuthenticated,
    /// 206: the operator disabled the account.
    AccountDisabled,
    /// 300: the user is not a member of the conversation.
    NotAMember,
    /// 301: the user's role does not allow this.
    Forbidden,
    /// 302: no such user, conversation or message.
    NotFound,
    /// 303: the conversation is full.
    MemberLimit,
    /// 304: the request conflicts with the current state.
    Conflict,
    /// 305: one of the two users of a direct conversation blocked the other.
    Blocked,
    /// 306: the user is banned from the group or channel.
    Banned,
    /// 400: too many requests; wait `retry_after_ms`.
    RateLimited,
    /// 401: the message is too large.
    MessageTooLarge,
    /// 402: the client reads too slowly.
    SlowConsumer,
    /// 403: too many sessions of this user.
    TooManySessions,
    /// 404: the server is overloaded; wait `retry_after_ms`.
    ServerBusy,
    /// 405: the connection was idle too long.
    IdleTimeout,
    /// 406: the message has the most distinct reactions it may have.
    ReactionLimit,
    /// 500: an internal server error.
    Internal,
    /// 501: the server is shutting down.
    ShuttingDown,
    /// 502: the server's store failed.
    StorageFailure,
}

impl From<pb::ErrorCode> for ErrorCode {
    fn from(c: pb::ErrorCode) -> Self {
        use pb::ErrorCode as W;
        match c {
            W::Unspecified => ErrorCode::Unknown,
            W::MalformedFrame => ErrorCode::MalformedFrame,
            W::FrameTooLarge => ErrorCode::FrameTooLarge,
            W::UnknownMessage => ErrorCode::UnknownMessage,
            W::UnsupportedVersion => ErrorCode::UnsupportedVersion,
            W::HelloRequired => ErrorCode::HelloRequired,
            W::InvalidArgument => ErrorCode::InvalidArgument,
            W::Unauthenticated => ErrorCode::Unauthenticated,
            W::InvalidCredentials => ErrorCode::InvalidCredentials,
            W::UsernameTaken => ErrorCode::UsernameTaken,
            W::TokenInvalid => ErrorCode::TokenInvalid,
            W::TooManyLoginAttempts => ErrorCode::TooManyLoginAttempts,
            W::AlreadyAuthenticated => ErrorCode::AlreadyAuthenticated,
            W::AccountDisabled => ErrorCode::AccountDisabled,
            W::NotAMember => ErrorCode::NotAMember,
            W::Forbidden => ErrorCode::Forbidden,
            W::NotFound => ErrorCode::NotFound,
            W::MemberLimit => ErrorCode::MemberLimit,
            W::Conflict => ErrorCode::Conflict,
            W::Blocked => ErrorCode::Blocked,
            W::Banned => ErrorCode::Banned,
            W::RateLimited => ErrorCode::RateLimited,
            W::MessageTooLarge => ErrorCode::MessageTooLarge,
            W::SlowConsumer => ErrorCode::SlowConsumer,
            W::TooManySessions => ErrorCode::TooManySessions,
            W::ServerBusy => ErrorCode::ServerBusy,
            W::IdleTimeout => ErrorCode::IdleTimeout,
            W::ReactionLimit => ErrorCode::ReactionLimit,
            W::Internal => ErrorCode::Internal,
            W::ShuttingDown => ErrorCode::ShuttingDown,
            W::StorageFailure => ErrorCode::StorageFailure,
        }
    }
}
