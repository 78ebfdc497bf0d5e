//! 1:1 chats over real sockets: delivery to every device exactly once and in
//! order, direct conversations found again, idempotent retries.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::server_frame::Body as S;
use common::{Raw, TestServer, error_code};

#[tokio::test]
async fn every_device_of_both_users_receives_each_message_once_in_order() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let mut bob_tablet = Raw::login(server.addr, "bob").await;
    let mut alice_laptop = Raw::login(server.addr, "alice").await;

    let conv = alice.create_direct(bob.user_id).await;
    assert_eq!(
        bob.create_direct(alice.user_id).await,
        conv,
        "a direct chat is found again"
    );

    for i in 1..=20u64 {
        let ack = alice
            .send_text(conv, &format!("a{i}"), &format!("hello {i}"))
            .await;
        assert_eq!(ack.seq, i);
        assert!(!ack.duplicate);
    }
    let alice_id = alice.user_id;
    for device in [&mut bob, &mut bob_tablet, &mut alice_laptop, &mut alice] {
        for i in 1..=20u64 {
            let m = device.next_message().await;
            assert_eq!((m.conversation_id, m.seq), (conv, i));
            assert_eq!(m.text, format!("hello {i}"));
            assert_eq!(m.sender_id, alice_id);
        }
    }
    // Nothing more arrives: each device got each message exactly once.
    let pong = bob
        .request(chat_protocol::pb::client_frame::Body::Ping(
            Default::default(),
        ))
        .await;
    assert!(matches!(pong, S::Pong(_)));
    assert!(
        bob.pushes.is_empty(),
        "unexpected extra frames: {:?}",
        bob.pushes
    );
    server.stop().await;
}

#[tokio::test]
async fn a_retried_send_returns_the_original_ack_and_stores_one_message() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;

    let first = alice.send_text(conv, "same-id", "once").await;
    let retry = alice.send_text(conv, "same-id", "once").await;
    assert!(retry.duplicate);
    assert_eq!(
        (retry.seq, retry.message_id, retry.sent_at_ms),
        (first.seq, first.message_id, first.sent_at_ms)
    );

    // Pipelined duplicates, before the first is even acknowledged.
    let r1 = alice.send(common::send_body(conv, "burst", "x")).await;
    let r2 = alice.send(common::send_body(conv, "burst", "x")).await;
    let (a1, a2) = match (alice.reply(r1).await, alice.reply(r2).await) {
        (S::SendAck(a), S::SendAck(b)) => (a, b),
        other => panic!("{other:?}"),
    };
    assert_eq!(a1.seq, a2.seq);
    assert!(a2.duplicate && !a1.duplicate);

    // After a restart the key is found in the store.
    let server = server.restart().await;
    let mut alice = Raw::login(server.addr, "alice").await;
    let again = alice.send_text(conv, "same-id", "once").await;
    assert!(again.duplicate);
    assert_eq!(again.seq, first.seq);

    let page = match alice.history(conv, 0, 0, 50).await {
        S::MessagePage(p) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        page.messages.len(),
        2,
        "two distinct client_msg_ids, two messages"
    );
    server.stop().await;
}

/// A send marked `first_attempt` skips only the store lookup: keys still in
/// memory are deduplicated, and a retry without the mark finds its original
/// in the store after a restart.
#[tokio::test]
async fn first_attempts_are_still_deduplicated_and_retries_after_a_restart_are_found() {
    fn first(conversation: u64, cmid: &str, text: &str) -> chat_protocol::pb::client_frame::Body {
        chat_protocol::pb::client_frame::Body::SendMessage(chat_protocol::pb::SendMessage {
            conversation_id: conversation,
            client_msg_id: cmid.into(),
            text: text.into(),
            first_attempt: true,
            ..Default::default()
        })
    }
    fn ack(reply: S) -> chat_protocol::pb::SendAck {
        match reply {
            S::SendAck(a) => a,
            other => panic!("expected SendAck, got {other:?}"),
        }
    }
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;

    let original = ack(alice.request(first(conv, "k1", "one")).await);
    assert!(!original.duplicate);
    // A client wrongly marking a retry as a first attempt is still caught
    // while the key is in memory.
    let again = ack(alice.request(first(conv, "k1", "one")).await);
    assert!(again.duplicate);
    assert_eq!(again.seq, original.seq);

    let server = server.restart().await;
    let mut alice = Raw::login(server.addr, "alice").await;
    // The honest retry after a restart: found in the store.
    let retry = alice.send_text(conv, "k1", "one").await;
    assert!(retry.duplicate);
    assert_eq!(
        (retry.seq, retry.message_id),
        (original.seq, original.message_id)
    );
    let next = ack(alice.request(first(conv, "k2", "two")).await);
    assert_eq!((next.seq, next.duplicate), (original.seq + 1, false));
    server.stop().await;
}

#[tokio::test]
async fn direct_chats_need_exactly_one_existing_other_user() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let reply = alice
        .request(chat_protocol::pb::client_frame::Body::CreateConversation(
            chat_protocol::pb::CreateConversation {
                kind: chat_protocol::pb::ConversationKind::Direct as i32,
                member_ids: vec![999],
                title: String::new(),
            },
        ))
        .await;
    assert_eq!(error_code(&reply), ErrorCode::NotFound);
    let reply = alice
        .request(chat_protocol::pb::client_frame::Body::CreateConversation(
            chat_protocol::pb::CreateConversation {
                kind: chat_protocol::pb::ConversationKind::Direct as i32,
                member_ids: vec![alice.user_id],
                title: String::new(),
            },
        ))
        .await;
    assert_eq!(error_code(&reply), ErrorCode::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn a_direct_chat_created_from_both_sides_at_once_is_one_chat() {
    let server = TestServer::start_configured(|c| c.shards = 4);
    let alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let (a, b) = (alice.user_id, bob.user_id);
    let mut creations = Vec::new();
    for i in 0..8 {
        let addr = server.addr;
        let (me, other) = if i % 2 == 0 { ("alice", b) } else { ("bob", a) };
        creations.push(tokio::spawn(async move {
            let mut raw = Raw::login(addr, me).await;
            raw.create_direct(other).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for c in creations {
        ids.insert(c.await.expect("create task"));
    }
    assert_eq!(ids.len(), 1, "one direct chat: {ids:?}");
    server.stop().await;
}
