//! Documented limits with their error codes: send rate per connection and
//! per user, sessions per user, failed logins per username and per address,
//! connections per shard. (Frame and message size: `bad_input.rs`; group
//! size: `group.rs`; history page clamp: `history_sync.rs`.)

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
    // Two shards: sessions land on either, and one shard keeps the count.
    let server = server_with(|c| {
        c.max_sessions_per_user = 2;
        c.shards = 2;
    });
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
    common::wait_until("a login once a session slot is free", async || {
        let mut c = Raw::connect(server.addr).await;
        let r = c
            .request(C::Login(pb::Login {
                username: "alice".into(),
                password: "password123".into(),
                device: None,
            }))
            .await;
        matches!(r, S::AuthOk(_))
    })
    .await;
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

#[tokio::test]
async fn the_send_rate_is_also_limited_per_user_across_connections() {
    // One shard, so that both connections are on it (the user bucket is
    // per shard); connections themselves unlimited.
    let server = server_with(|c| {
        c.shards = 1;
        c.rate_user_per_sec = 5;
        c.rate_user_burst = 5;
    });
    let mut phone = Raw::register(server.addr, "alice").await;
    let mut laptop = Raw::login(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let conv = phone.create_direct(bob.user_id).await;
    let (mut acked, mut limited) = (0, 0);
    for (i, c) in [&mut phone, &mut laptop].into_iter().enumerate() {
        let mut rids = Vec::new();
        for j in 0..10 {
            rids.push(
                c.send(common::send_body(conv, &format!("{i}-{j}"), "x"))
                    .await,
            );
        }
        for rid in rids {
            match c.reply(rid).await {
                S::SendAck(_) => acked += 1,
                S::Error(e) => {
                    assert_eq!(e.code, ErrorCode::RateLimited as i32);
                    assert!(e.retry_after_ms > 0);
                    limited += 1;
                }
                other => panic!("{other:?}"),
            }
        }
    }
    // 20 sends against a burst of 5 (plus whatever refilled meanwhile).
    assert!(limited >= 10, "acked {acked}, limited {limited}");
    match phone.history(conv, 0, 0, 100).await {
        S::MessagePage(p) => assert_eq!(p.messages.len(), acked),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn failed_logins_are_also_limited_per_address() {
    let server = server_with(|c| {
        c.login_failures_per_username = 0;
        c.login_failures_per_address = 3;
    });
    drop(Raw::register(server.addr, "alice").await);
    let mut guesser = Raw::connect(server.addr).await;
    // Three wrong guesses at three different names from one address.
    for name in ["bob", "carol", "dave"] {
        let r = guesser
            .request(C::Login(pb::Login {
                username: name.into(),
                password: "wrong-guess".into(),
                device: None,
            }))
            .await;
        assert_eq!(error_code(&r), ErrorCode::InvalidCredentials);
    }
    // The address is now refused, even with the right password of another
    // user, and on a new connection.
    let mut again = Raw::connect(server.addr).await;
    let r = again
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

#[tokio::test]
async fn connections_beyond_the_per_shard_limit_get_server_busy() {
    let server = server_with(|c| {
        c.shards = 2;
        c.max_connections_per_shard = 3;
        c.handshake_timeout_ms = 2000;
    });
    // 20 connections that say nothing: at most 2 × 3 are taken (and closed
    // at the handshake timeout), the others are refused at once.
    let mut conns = Vec::new();
    for _ in 0..20 {
        conns.push(Raw::connect_bare(server.addr).await);
    }
    let mut busy = 0;
    for mut c in conns {
        let mut code = None;
        while let Some(f) = c.read_frame().await {
            if let Some(S::Error(e)) = f.body {
                code = ErrorCode::try_from(e.code).ok();
                if code == Some(ErrorCode::ServerBusy) {
                    assert_eq!(f.request_id, 0);
                }
            }
        }
        match code {
            Some(ErrorCode::ServerBusy) => busy += 1,
            Some(ErrorCode::IdleTimeout) => {}
            other => panic!("closed with {other:?}"),
        }
    }
    assert!(busy >= 14, "{busy} of 20 refused");
    // Slots are free again once those connections are gone.
    let _later = common::wait_for("a slot to come free", async || {
        let mut c = Raw::connect_bare(server.addr).await;
        let reply = c
            .request(C::Hello(pb::Hello {
                protocol_version: 1,
                ..Default::default()
            }))
            .await;
        matches!(reply, S::Welcome(_)).then_some(c)
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn failed_logins_are_counted_once_however_connections_spread_over_shards() {
    // Each guess on a new connection, so guesses land on several of the
    // four shards: the username's count is kept at its home shard alone.
    let server = server_with(|c| {
        c.shards = 4;
        c.login_failures_per_username = 3;
    });
    drop(Raw::register(server.addr, "alice").await);
    let mut codes = Vec::new();
    for _ in 0..8 {
        let mut guesser = Raw::connect(server.addr).await;
        let r = guesser
            .request(C::Login(pb::Login {
                username: "alice".into(),
                password: "wrong-guess".into(),
                device: None,
            }))
            .await;
        codes.push(error_code(&r));
    }
    let expected: Vec<ErrorCode> = [ErrorCode::InvalidCredentials; 3]
        .into_iter()
        .chain([ErrorCode::TooManyLoginAttempts; 5])
        .collect();
    assert_eq!(codes, expected);
    server.stop().await;
}
