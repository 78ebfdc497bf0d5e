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
    /// Answer with this error and message; the session stays open unless
    /// [`ErrorCode::closes_connection`] says otherwise.
    Refuse(ErrorCode, &'static str),
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

    /// Decides whether a frame with this `request_id` and `body` is allowed
    /// now. `None` is a frame without a (known) body.
    ///
    /// Fire-and-forget frames (`Typing`, `Pong`, and `MarkRead` or
    /// `MarkDelivered` with `request_id` 0) never get a reply: those the
    /// state does not allow are dropped. Every other message is a request
    /// and needs a non-zero `request_id`, so that its reply cannot be
    /// mistaken for a push (`spec/README.md`, "Interaction model").
    pub fn admit(&self, request_id: u64, body: Option<&Body>) -> Verdict {
        use Verdict::*;
        let Some(body) = body else {
            return Refuse(ErrorCode::UnknownMessage, "frame has no known message");
        };
        // Ping and Pong are valid in every state (`spec/states.md`); a Ping
        // is answered by its nonce, whatever its request_id.
        if matches!(body, Body::Ping(_) | Body::Pong(_)) {
            return Accept;
        }
        let fire_and_forget = match body {
            Body::Typing(_) => true,
            Body::MarkRead(_) | Body::MarkDelivered(_) => request_id == 0,
            _ => false,
        };
        if self.phase == Phase::Draining {
            return if fire_and_forget {
                Ignore
            } else {
                Refuse(ErrorCode::ShuttingDown, "the server is shutting down")
            };
        }
        if request_id == 0 && !fire_and_forget {
            return Refuse(
                ErrorCode::InvalidArgument,
                "a request needs a non-zero request_id; it was not carried out",
            );
        }
        match (self.phase, body) {
            (Phase::Connecting, Body::Hello(h)) if h.protocol_version != PROTOCOL_VERSION => {
                Refuse(
                    ErrorCode::UnsupportedVersion,
                    "this server speaks protocol version 1",
                )
            }
            (Phase::Connecting, Body::Hello(_)) => Accept,
            (Phase::Connecting | Phase::Greeted, _) if fire_and_forget => Ignore,
            (Phase::Connecting, _) => Refuse(ErrorCode::HelloRequired, "send Hello first"),
            (_, Body::Hello(_)) => Refuse(ErrorCode::InvalidArgument, "Hello was already sent"),
            (Phase::Greeted, Body::Register(_) | Body::Login(_) | Body::Resume(_)) => Accept,
            (Phase::Greeted, _) => Refuse(ErrorCode::Unauthenticated, "log in first"),
            (Phase::Authenticated { .. }, Body::Register(_) | Body::Login(_) | Body::Resume(_)) => {
                Refuse(ErrorCode::AlreadyAuthenticated, "the session is logged in")
            }
            (Phase::Authenticated { .. }, _) => Accept,
            // Answered above, before the request-id check.
            (Phase::Draining, _) => Ignore,
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
        assert_eq!(s.admit(1, Some(&hello(1))), Verdict::Accept);
        assert_eq!(
            s.admit(1, Some(&Body::Ping(pb::Ping { nonce: 1 }))),
            Verdict::Accept
        );
        assert!(matches!(
            s.admit(1, Some(&Body::Login(pb::Login::default()))),
            Verdict::Refuse(ErrorCode::HelloRequired, _)
        ));
        assert!(matches!(
            s.admit(1, Some(&hello(2))),
            Verdict::Refuse(ErrorCode::UnsupportedVersion, _)
        ));
        assert!(ErrorCode::UnsupportedVersion.closes_connection());
    }

    #[test]
    fn only_authentication_before_login_and_not_after() {
        let mut s = SessionState::default();
        s.greeted();
        let send = Body::SendMessage(pb::SendMessage::default());
        assert!(matches!(
            s.admit(1, Some(&send)),
            Verdict::Refuse(ErrorCode::Unauthenticated, _)
        ));
        assert_eq!(
            s.admit(1, Some(&Body::Login(pb::Login::default()))),
            Verdict::Accept
        );
        assert_eq!(
            s.admit(1, Some(&Body::Register(pb::Register::default()))),
            Verdict::Accept
        );
        s.authenticated(9);
        assert_eq!(s.user(), Some(9));
        assert_eq!(s.admit(1, Some(&send)), Verdict::Accept);
        assert!(matches!(
            s.admit(1, Some(&Body::Login(pb::Login::default()))),
            Verdict::Refuse(ErrorCode::AlreadyAuthenticated, _)
        ));
        assert!(matches!(
            s.admit(1, Some(&hello(1))),
            Verdict::Refuse(ErrorCode::InvalidArgument, _)
        ));
        s.logged_out();
        assert!(matches!(
            s.admit(1, Some(&send)),
            Verdict::Refuse(ErrorCode::Unauthenticated, _)
        ));
    }

    #[test]
    fn frames_without_a_body_are_unknown_and_draining_refuses_work() {
        let mut s = SessionState::default();
        assert!(matches!(
            s.admit(1, None),
            Verdict::Refuse(ErrorCode::UnknownMessage, _)
        ));
        s.greeted();
        s.authenticated(1);
        s.drain();
        assert!(matches!(
            s.admit(1, Some(&Body::SendMessage(pb::SendMessage::default()))),
            Verdict::Refuse(ErrorCode::ShuttingDown, _)
        ));
        assert_eq!(
            s.admit(1, Some(&Body::Ping(pb::Ping::default()))),
            Verdict::Accept
        );
    }

    #[test]
    fn requests_need_a_request_id_and_fire_and_forget_frames_get_no_reply() {
        let mut s = SessionState::default();
        let typing = Body::Typing(pb::Typing::default());
        let read = Body::MarkRead(pb::MarkRead::default());
        let send = Body::SendMessage(pb::SendMessage::default());
        // Before Hello and before login, fire-and-forget frames are dropped.
        assert_eq!(s.admit(0, Some(&typing)), Verdict::Ignore);
        assert_eq!(s.admit(0, Some(&read)), Verdict::Ignore);
        assert!(matches!(
            s.admit(0, Some(&hello(1))),
            Verdict::Refuse(ErrorCode::InvalidArgument, _)
        ));
        s.greeted();
        assert_eq!(s.admit(0, Some(&typing)), Verdict::Ignore);
        assert_eq!(s.admit(0, Some(&read)), Verdict::Ignore);
        assert!(matches!(
            s.admit(1, Some(&read)),
            Verdict::Refuse(ErrorCode::Unauthenticated, _)
        ));
        s.authenticated(3);
        assert_eq!(s.admit(0, Some(&typing)), Verdict::Accept);
        assert_eq!(s.admit(0, Some(&read)), Verdict::Accept);
        assert_eq!(s.admit(7, Some(&read)), Verdict::Accept);
        assert!(matches!(
            s.admit(0, Some(&send)),
            Verdict::Refuse(ErrorCode::InvalidArgument, _)
        ));
        assert_eq!(
            s.admit(0, Some(&Body::Ping(pb::Ping::default()))),
            Verdict::Accept
        );
        s.drain();
        assert_eq!(s.admit(0, Some(&typing)), Verdict::Ignore);
    }
}
