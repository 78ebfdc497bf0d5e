//! The session state machine of `spec/states.md`. Sans-IO: it decides what a
//! frame may do in the current state; the connection carries it out.
//!
//! ```text
//! CONNECTING --Hello--> GREETED --Register/Login/Resume ok--> AUTHENTICATED
//!      |                   ^                                     |   |
//!      |                   +-------------- Logout ---------------+   |
//!      +-------- GoAway / error / close (any state) --> DRAINING --> CLOSED
//! ```

use chat_protocol::pb::client_frame::Body;
use chat_protocol::{ErrorCode, PROTOCOL_VERSION};

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connected; waiting for Hello.
    Connecting,
    /// Hello accepted; waiting for Register, Login or Resume.
    Greeted,
    /// Logged in as this user.
    Authenticated {
        /// The user.
        user: u64,
    },
    /// Closing: no new requests are taken.
    Draining,
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it.
    Accept,
    /// Answer with this error; the session stays open unless
    /// [`ErrorCode::closes_connection`] says otherwise.
    Refuse(ErrorCode),
    /// Drop it silently (fire-and-forget frames that cannot be honoured).
    Ignore,
}

/// The state machine.
#[derive(Debug)]
pub struct SessionState {
    phase: Phase,
}

impl Default for SessionState {
    fn default() -> Self {
        Self {
            phase: Phase::Connecting,
        }
    }
}

impl SessionState {
    /// Current phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The authenticated user, if any.
    pub fn user(&self) -> Option<u64> {
        match self.phase {
            Phase::Authenticated { user } => Some(user),
            _ => None,
        }
    }

    /// Decides whether `body` is allowed now. `None` is a frame without a
    /// (known) body.
    pub fn admit(&self, body: Option<&Body>) -> Verdict {
        use Verdict::*;
        let Some(body) = body else {
            return Refuse(ErrorCode::UnknownMessage);
        };
        // Ping and Pong are valid in every state (`spec/states.md`).
        if matches!(body, Body::Ping(_) | Body::Pong(_)) {
            return Accept;
        }
        match (self.phase, body) {
            (Phase::Draining, _) => Refuse(ErrorCode::ShuttingDown),
            (Phase::Connecting, Body::Hello(h)) if h.protocol_version != PROTOCOL_VERSION => {
                Refuse(ErrorCode::UnsupportedVersion)
            }
            (Phase::Connecting, Body::Hello(_)) => Accept,
            (Phase::Connecting, _) => Refuse(ErrorCode::HelloRequired),
            (_, Body::Hello(_)) => Refuse(ErrorCode::InvalidArgument),
            (Phase::Greeted, Body::Register(_) | Body::Login(_) | Body::Resume(_)) => Accept,
            (Phase::Greeted, Body::Typing(_)) => Ignore,
            (Phase::Greeted, _) => Refuse(ErrorCode::Unauthenticated),
            (Phase::Authenticated { .. }, Body::Register(_) | Body::Login(_) | Body::Resume(_)) => {
                Refuse(ErrorCode::AlreadyAuthenticated)
            }
            (Phase::Authenticated { .. }, _) => Accept,
        }
    }

    /// Hello was answered with Welcome.
    pub fn greeted(&mut self) {
        if self.phase == Phase::Connecting {
            self.phase = Phase::Greeted;
        }
    }

    /// Register, Login or Resume succeeded.
    pub fn authenticated(&mut self, user: u64) {
        if self.phase == Phase::Greeted {
            self.phase = Phase::Authenticated { user };
        }
    }

    /// Logout succeeded.
    pub fn logged_out(&mut self) {
        if matches!(self.phase, Phase::Authenticated { .. }) {
            self.phase = Phase::Greeted;
        }
    }

    /// The session is closing.
    pub fn drain(&mut self) {
        self.phase = Phase::Draining;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_protocol::pb;

    fn hello(v: u32) -> Body {
        Body::Hello(pb::Hello {
            protocol_version: v,
            ..Default::default()
        })
    }

    #[test]
    fn nothing_but_hello_and_ping_before_hello() {
        let s = SessionState::default();
        assert_eq!(s.admit(Some(&hello(1))), Verdict::Accept);
        assert_eq!(
            s.admit(Some(&Body::Ping(pb::Ping { nonce: 1 }))),
            Verdict::Accept
        );
        assert_eq!(
            s.admit(Some(&Body::Login(pb::Login::default()))),
            Verdict::Refuse(ErrorCode::HelloRequired)
        );
        assert_eq!(
            s.admit(Some(&hello(2))),
            Verdict::Refuse(ErrorCode::UnsupportedVersion)
        );
        assert!(ErrorCode::UnsupportedVersion.closes_connection());
    }

    #[test]
    fn only_authentication_before_login_and_not_after() {
        let mut s = SessionState::default();
        s.greeted();
        let send = Body::SendMessage(pb::SendMessage::default());
        assert_eq!(
            s.admit(Some(&send)),
            Verdict::Refuse(ErrorCode::Unauthenticated)
        );
        assert_eq!(
            s.admit(Some(&Body::Login(pb::Login::default()))),
            Verdict::Accept
        );
        assert_eq!(
            s.admit(Some(&Body::Register(pb::Register::default()))),
            Verdict::Accept
        );
        s.authenticated(9);
        assert_eq!(s.user(), Some(9));
        assert_eq!(s.admit(Some(&send)), Verdict::Accept);
        assert_eq!(
            s.admit(Some(&Body::Login(pb::Login::default()))),
            Verdict::Refuse(ErrorCode::AlreadyAuthenticated)
        );
        assert_eq!(
            s.admit(Some(&hello(1))),
            Verdict::Refuse(ErrorCode::InvalidArgument)
        );
        s.logged_out();
        assert_eq!(
            s.admit(Some(&send)),
            Verdict::Refuse(ErrorCode::Unauthenticated)
        );
    }

    #[test]
    fn frames_without_a_body_are_unknown_and_draining_refuses_work() {
        let mut s = SessionState::default();
        assert_eq!(s.admit(None), Verdict::Refuse(ErrorCode::UnknownMessage));
        s.greeted();
        s.authenticated(1);
        s.drain();
        assert_eq!(
            s.admit(Some(&Body::SendMessage(pb::SendMessage::default()))),
            Verdict::Refuse(ErrorCode::ShuttingDown)
        );
        assert_eq!(
            s.admit(Some(&Body::Ping(pb::Ping::default()))),
            Verdict::Accept
        );
    }
}
