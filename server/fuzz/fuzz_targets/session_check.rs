//! The session fuzz target's check, shared with the regression test that
//! replays saved inputs (`server/tests/fuzz_regressions.rs`): drives the
//! session state machine with whatever frames arbitrary bytes decode to,
//! applying the transitions the connection applies, and checks the rules
//! of `spec/states.md`: nothing but Hello, Ping and Pong before Hello;
//! nothing but authentication before login; no authentication twice;
//! nothing new while draining; fire-and-forget frames never answered;
//! requests without a request id never carried out.

use chat_protocol::pb::client_frame::Body;
use chat_protocol::{ErrorCode, FrameDecoder, pb};
use chatd::session_state::{Phase, SessionState, Verdict};

/// Panics if `data` makes the state machine break a rule.
pub fn run(data: &[u8]) {
    let mut decoder = FrameDecoder::new(4096);
    decoder.extend(data);
    let mut state = SessionState::default();
    let mut user = 0u64;
    loop {
        let frame = match decoder.next_frame::<pb::ClientFrame>() {
            Ok(Some(f)) => f,
            Ok(None) | Err(_) => return,
        };
        let before = state.phase();
        let verdict = state.admit(frame.request_id, frame.body.as_ref());
        let refused = |code| matches!(verdict, Verdict::Refuse(c, _) if c == code);
        let Some(body) = frame.body else {
            assert!(refused(ErrorCode::UnknownMessage));
            continue;
        };
        let always = matches!(body, Body::Ping(_) | Body::Pong(_));
        let fire_and_forget = match body {
            Body::Typing(_) => true,
            Body::MarkRead(_) | Body::MarkDelivered(_) => frame.request_id == 0,
            _ => false,
        };
        if fire_and_forget {
            assert!(!matches!(verdict, Verdict::Refuse(..)), "{body:?} answered");
        } else if frame.request_id == 0 && !always && before != Phase::Draining {
            assert!(
                refused(ErrorCode::InvalidArgument),
                "{body:?} without a request id"
            );
            continue;
        }
        match before {
            Phase::Connecting if !always && !fire_and_forget => {
                assert!(matches!(body, Body::Hello(_)) || refused(ErrorCode::HelloRequired));
            }
            Phase::Greeted if !always => {
                let auth = matches!(body, Body::Register(_) | Body::Login(_) | Body::Resume(_));
                assert!(
                    auth || verdict != Verdict::Accept,
                    "{body:?} accepted before login"
                );
            }
            Phase::Authenticated { .. } => {
                let auth = matches!(body, Body::Register(_) | Body::Login(_) | Body::Resume(_));
                assert!(!auth || refused(ErrorCode::AlreadyAuthenticated));
            }
            Phase::Draining if !always => {
                if fire_and_forget {
                    assert_eq!(verdict, Verdict::Ignore);
                } else {
                    assert!(refused(ErrorCode::ShuttingDown));
                }
            }
            _ => {}
        }
        if verdict != Verdict::Accept {
            if let Verdict::Refuse(code, _) = verdict {
                if code.closes_connection() {
                    state.drain();
                }
            }
            continue;
        }
        // The transitions the connection makes on success.
        match body {
            Body::Hello(_) => state.greeted(),
            Body::Register(_) | Body::Login(_) | Body::Resume(_) => {
                user += 1;
                state.authenticated(user);
                assert_eq!(state.user(), Some(user));
            }
            Body::Logout(_) => {
                state.logged_out();
                assert_eq!(state.user(), None);
            }
            Body::Ping(p) if p.nonce == u64::MAX => state.drain(),
            _ => {}
        }
    }
}
