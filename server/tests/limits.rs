//! Documented limits with their error codes: send rate, sessions per user,
//! failed logins.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer, error_code};

fn server_with(edit: impl FnOnce(&mut chatd::Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    edit(&mut config);
    TestServer::start_with(dir, config)
}

#[tokio::test]
async fn sending_faster_than_the_rate_is_refused_with_a_retry_hint() {
    let server = server_with(|c| {
        c.rate_connection_per_sec = 5;
        c.rate_connection_burst = 5;
    });
    let mut alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;
    let mut rids = Vec::new();
    for i in 0..20 {
        rids.push(
            alice
                .send(common::send_body(conv, &i.to_string(), "fast"))
                .await,
        );
    }
    let (mut acked, mut limited) = (0, 0);
    for rid in rids {
        match alice.reply(rid).await {
            S::SendAck(_) => acked += 1,
            S::Error(e) => {
                assert_eq!(e.code, ErrorCode::RateLimited as i32);
                assert!(e.retry_after_ms > 0);
                limited += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        acked >= 5 && limited >= 10,
        "acked {acked}, limited {limited}"
    );
    // A refused send stored nothing: history holds exactly the acked ones.
    match alice.history(conv, 0, 0, 100).await {
        S::MessagePage(p) => assert_eq!(p.messages.len(), acked),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_user_may_hold_only_so_many_sessions() {
    let server = server_with(|c| c.max_sessions_per_user = 2);
    let _first = Raw::register(server.addr, "alice").await;
    let _second = Raw::login(server.addr, "alice").await;
    let mut third = Raw::connect(server.addr).await;
    let reply = third
        .request(C::Login(pb::Login {
            username: "alice".into(),
            password: "password123".into(),
            device: None,
        }))
        .await;
    assert_eq!(error_code(&reply), ErrorCode::TooManySessions);
    assert!(
        third.read_frame().await.is_none(),
        "closed after TOO_MANY_SESSIONS"
    );
    drop(_second);
    // The freed slot can be used again (the server notices the close).
    let mut again = None;
    for _ in 0..50 {
        let mut c = Raw::connect(server.addr).await;
        let r = c
            .request(C::Login(pb::Login {
                username: "alice".into(),
                password: "password123".into(),
                device: None,
            }))
            .await;
        if matches!(r, S::AuthOk(_)) {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(again.is_some());
    server.stop().await;
}

#[tokio::test]
async fn repeated_failed_logins_are_slowed_down() {
    let server = server_with(|c| c.login_failures_per_username = 3);
    drop(Raw::register(server.addr, "alice").await);
    let mut guesser = Raw::connect(server.addr).await;
    for _ in 0..3 {
        let r = guesser
            .request(C::Login(pb::Login {
                username: "alice".into(),
                password: "wrong-guess".into(),
                device: None,
            }))
            .await;
        assert_eq!(error_code(&r), ErrorCode::InvalidCredentials);
    }
    // Even the right password is refused while the limit holds.
    let r = guesser
        .request(C::Login(pb::Login {
            username: "alice".into(),
            password: "password123".into(),
            device: None,
        }))
        .await;
    match r {
        S::Error(e) => {
            assert_eq!(e.code, ErrorCode::TooManyLoginAttempts as i32);
            assert!(e.retry_after_ms > 0);
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}
