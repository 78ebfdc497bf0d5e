//! Hostile and mistaken input: each gets the spec's error, and nobody else
//! notices.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer, error_code};

/// A healthy pair that must keep working through every test.
async fn bystanders(server: &TestServer) -> (Raw, Raw, u64) {
    let mut a = Raw::register(server.addr, "alice").await;
    let b = Raw::register(server.addr, "bob").await;
    let conv = a.create_direct(b.user_id).await;
    (a, b, conv)
}

async fn still_chatting(a: &mut Raw, b: &mut Raw, conv: u64, tag: &str) {
    let ack = a.send_text(conv, tag, tag).await;
    loop {
        let m = b.next_message().await;
        if m.seq == ack.seq {
            assert_eq!(m.text, tag);
            return;
        }
    }
}

/// Reads until the server closes, returning the last error code seen.
async fn closed_with(c: &mut Raw) -> Option<ErrorCode> {
    let mut code = None;
    while let Some(f) = c.read_frame().await {
        if let Some(S::Error(e)) = f.body {
            code = ErrorCode::try_from(e.code).ok();
        }
    }
    code
}

#[tokio::test]
async fn malformed_and_oversized_frames_close_only_that_session() {
    let server = TestServer::start();
    let (mut a, mut b, conv) = bystanders(&server).await;

    let mut garbage = Raw::connect(server.addr).await;
    garbage.write_bytes(&[0x03, 0x92, 0x03, 0x05]).await; // nested length overflow
    assert_eq!(
        closed_with(&mut garbage).await,
        Some(ErrorCode::MalformedFrame)
    );

    let mut varint = Raw::connect_bare(server.addr).await;
    varint.write_bytes(&[0x80; 11]).await;
    assert_eq!(
        closed_with(&mut varint).await,
        Some(ErrorCode::MalformedFrame)
    );

    let mut huge = Raw::register(server.addr, "mallory").await;
    let mut prefix = Vec::new();
    prost::encoding::encode_varint(64 << 20, &mut prefix);
    huge.write_bytes(&prefix).await; // announces 64 MiB, sends nothing more
    assert_eq!(closed_with(&mut huge).await, Some(ErrorCode::FrameTooLarge));

    still_chatting(&mut a, &mut b, conv, "after garbage").await;
    server.stop().await;
}

#[tokio::test]
async fn protocol_order_is_enforced_with_clear_errors() {
    let server = TestServer::start();
    let (mut a, mut b, conv) = bystanders(&server).await;

    let mut early = Raw::connect_bare(server.addr).await;
    let reply = early
        .request(common::send_body(conv, "x", "too early"))
        .await;
    assert_eq!(error_code(&reply), ErrorCode::HelloRequired);

    let mut anonymous = Raw::connect(server.addr).await;
    let reply = anonymous
        .request(common::send_body(conv, "x", "who am i"))
        .await;
    assert_eq!(error_code(&reply), ErrorCode::Unauthenticated);
    let reply = anonymous.history(conv, 0, 0, 10).await;
    assert_eq!(error_code(&reply), ErrorCode::Unauthenticated);

    // An empty frame and a frame with an unknown field number: no known
    // message, the session stays open.
    anonymous.write_bytes(&[0x00]).await;
    anonymous
        .write_bytes(&[0x05, 0x08, 0x63, 0xba, 0x06, 0x00])
        .await;
    let mut codes = Vec::new();
    while codes.len() < 2 {
        let f = anonymous.read_frame().await.expect("still open");
        if let Some(S::Error(e)) = f.body {
            codes.push((f.request_id, ErrorCode::try_from(e.code).expect("code")));
        }
    }
    assert_eq!(
        codes,
        vec![
            (0, ErrorCode::UnknownMessage),
            (99, ErrorCode::UnknownMessage)
        ]
    );
    let pong = anonymous.request(C::Ping(pb::Ping { nonce: 3 })).await;
    assert!(matches!(pong, S::Pong(pb::Pong { nonce: 3 })));

    let wrong = anonymous
        .request(C::Login(pb::Login {
            username: "alice".into(),
            password: "nope-nope".into(),
            device: None,
        }))
        .await;
    assert_eq!(error_code(&wrong), ErrorCode::InvalidCredentials);
    let taken = anonymous
        .request(C::Register(pb::Register {
            username: "alice".into(),
            password: "password123".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(error_code(&taken), ErrorCode::UsernameTaken);
    let again = a
        .request(C::Login(pb::Login {
            username: "alice".into(),
            password: "password123".into(),
            device: None,
        }))
        .await;
    assert_eq!(error_code(&again), ErrorCode::AlreadyAuthenticated);

    let mut future = Raw::connect_bare(server.addr).await;
    let reply = future
        .request(C::Hello(pb::Hello {
            protocol_version: 99,
            ..Default::default()
        }))
        .await;
    assert_eq!(error_code(&reply), ErrorCode::UnsupportedVersion);
    assert_eq!(
        closed_with(&mut future).await,
        None,
        "closed after the error"
    );

    still_chatting(&mut a, &mut b, conv, "after mistakes").await;
    server.stop().await;
}

#[tokio::test]
async fn outsiders_are_refused_and_change_nothing() {
    let server = TestServer::start();
    let (mut a, mut b, conv) = bystanders(&server).await;
    let mut eve = Raw::register(server.addr, "eve").await;

    assert_eq!(
        error_code(&eve.request(common::send_body(conv, "e", "hi")).await),
        ErrorCode::NotAMember
    );
    assert_eq!(
        error_code(&eve.history(conv, 0, 0, 10).await),
        ErrorCode::NotAMember
    );
    let get = C::GetConversation(pb::GetConversation {
        conversation_id: conv,
    });
    assert_eq!(error_code(&eve.request(get).await), ErrorCode::NotAMember);
    let add = C::AddMembers(pb::AddMembers {
        conversation_id: conv,
        user_ids: vec![eve.user_id],
    });
    assert_eq!(error_code(&eve.request(add).await), ErrorCode::NotAMember);
    assert_eq!(
        error_code(&eve.request(common::send_body(987_654, "e", "hi")).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        error_code(&eve.history(987_654, 0, 0, 10).await),
        ErrorCode::NotFound
    );

    let big = "x".repeat(server.config.max_message_bytes + 1);
    assert_eq!(
        error_code(&a.request(common::send_body(conv, "big", &big)).await),
        ErrorCode::MessageTooLarge
    );
    assert_eq!(
        error_code(&a.request(common::send_body(conv, "", "no id")).await),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        error_code(&a.request(common::send_body(conv, "empty", "")).await),
        ErrorCode::InvalidArgument
    );

    still_chatting(&mut a, &mut b, conv, "first real message").await;
    match a.history(conv, 0, 0, 10).await {
        S::MessagePage(p) => assert_eq!(p.messages.len(), 1, "refused requests stored nothing"),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn connections_that_never_say_hello_are_closed() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    config.handshake_timeout_ms = 200;
    let server = TestServer::start_with(dir, config);
    let mut silent = Raw::connect_bare(server.addr).await;
    assert_eq!(closed_with(&mut silent).await, Some(ErrorCode::IdleTimeout));
    server.stop().await;
}

#[tokio::test]
async fn a_username_registered_from_many_shards_at_once_is_taken_once() {
    let server = common::TestServer::start_configured(|c| c.shards = 4);
    let mut attempts = Vec::new();
    for _ in 0..8 {
        let addr = server.addr;
        attempts.push(tokio::spawn(async move {
            let mut raw = Raw::connect(addr).await;
            raw.request(C::Register(pb::Register {
                username: "alice".into(),
                password: "password123".into(),
                ..Default::default()
            }))
            .await
        }));
    }
    let mut created = 0;
    for attempt in attempts {
        match attempt.await.expect("register task") {
            S::AuthOk(_) => created += 1,
            other => assert_eq!(error_code(&other), ErrorCode::UsernameTaken),
        }
    }
    assert_eq!(created, 1);
    server.stop().await;
}
