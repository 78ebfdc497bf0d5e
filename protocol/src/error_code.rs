//! What each wire [`ErrorCode`] means for the connection. The codes and their
//! meanings are normative in `spec/errors.md`; a test checks that the table
//! there and this enum list the same codes.

use crate::ErrorCode;

/// Whether the sender of an error closes the connection after sending it.
impl ErrorCode {
    /// `true` if the server closes the session after reporting this code
    /// (`spec/errors.md`, column "closes").
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ErrorCode::MalformedFrame
                | ErrorCode::FrameTooLarge
                | ErrorCode::UnsupportedVersion
                | ErrorCode::SlowConsumer
                | ErrorCode::IdleTimeout
                | ErrorCode::ShuttingDown
                | ErrorCode::TooManySessions
        )
    }

    /// `true` if the same request may succeed when retried later unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::ServerBusy
                | ErrorCode::ShuttingDown
                | ErrorCode::StorageFailure
                | ErrorCode::Internal
                | ErrorCode::TooManyLoginAttempts
        )
    }
}
