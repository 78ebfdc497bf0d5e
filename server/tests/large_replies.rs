//! Replies that would exceed a frame: history pages and sync gaps of large
//! messages are cut to fit (more follows with `has_more` / `truncated`)
//! instead of failing, so a client with big messages can still page,
//! sync and resume.

mod common;

use std::time::Duration;

use chat_client::{Client, ClientOptions, ConversationId, Event, UserId};
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer};

#[tokio::test]
async fn history_pages_of_large_messages_are_cut_to_a_frame() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;
    let text = "h".repeat(60 * 1024);
    for i in 0..40 {
        alice.send_text(conv, &i.to_string(), &text).await;
    }
    // 40 × 60 KiB does not fit one frame: pages come in parts, and paging
    // on gets every message once.
    let mut seqs = Vec::new();
    let mut after = 0;
    loop {
        let page = match alice
            .request(C::GetHistory(pb::GetHistory {
                conversation_id: conv,
                before_seq: 0,
                after_seq: Some(after),
                limit: 200,
            }))
            .await
        {
            S::MessagePage(p) => p,
            other => panic!("{other:?}"),
        };
        assert!(!page.messages.is_empty());
        seqs.extend(page.messages.iter().map(|m| m.seq));
        after = page.messages.last().map_or(after, |m| m.seq);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    // Newest first, likewise.
    match alice.history(conv, 0, 0, 200).await {
        S::MessagePage(p) => {
            assert!(p.has_more && p.messages.len() < 40);
            assert_eq!(p.messages.first().map(|m| m.seq), Some(40));
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_over_megabytes_of_missed_large_messages() {
    let server = TestServer::start();
    let url = format!("tcp://{}", server.addr);
    let (alice, _alice_events) = Client::connect(&url, ClientOptions::default())
        .await
        .expect("connect");
    alice
        .register("alice", "password123", "")
        .await
        .expect("register");
    let (bob, bob_events) = Client::connect(&url, ClientOptions::default())
        .await
        .expect("connect");
    let bob_id = UserId(
        bob.register("bob", "password123", "")
            .await
            .expect("register")
            .user_id,
    );
    let token = bob.session_token().expect("token");
    bob.close().await;
    drop(bob_events);
    let text = "r".repeat(60 * 1024);
    let mut convs = Vec::new();
    for g in 0..3 {
        let conv = ConversationId(
            alice
                .create_group(&format!("g{g}"), &[bob_id])
                .await
                .expect("group")
                .conversation_id,
        );
        for _ in 0..30 {
            alice.send_text(conv, &text).await.expect("ack");
        }
        convs.push(conv);
    }
    // 5 MiB missed across three conversations: more than a Resume reply
    // can carry.
    let (bob, mut events) = Client::connect(&url, ClientOptions::default())
        .await
        .expect("connect");
    bob.resume(&token).await.expect("resume");
    let mut got: std::collections::HashMap<u64, Vec<u64>> = Default::default();
    while got.values().map(Vec::len).sum::<usize>() < 90 {
        match tokio::time::timeout(Duration::from_secs(30), events.next()).await {
            Ok(Some(Event::Message(m))) => got.entry(m.conversation_id).or_default().push(m.seq),
            Ok(Some(_)) => {}
            other => panic!("stalled: {other:?}"),
        }
    }
    for conv in convs {
        assert_eq!(got[&conv.0], (1..=30).collect::<Vec<_>>(), "{conv:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn a_sync_over_thousands_of_conversations_fits_a_frame() {
    let dir = tempfile::tempdir().expect("dir");
    let mut config = chatd::Config::for_tests(dir.path());
    config.durability = chatd::Durability::Buffered;
    let server = TestServer::start_with(dir, config);
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    // Enough large messages to fill a reply, then thousands of gaps more.
    const CONVERSATIONS: usize = 10_000;
    let big = "b".repeat(65_000);
    let mut rids = Vec::new();
    for i in 0..CONVERSATIONS {
        rids.push(
            alice
                .send(C::CreateConversation(pb::CreateConversation {
                    kind: pb::ConversationKind::Group as i32,
                    member_ids: vec![bob.user_id],
                    title: format!("g{i}"),
                }))
                .await,
        );
    }
    let mut convs = Vec::new();
    for rid in rids {
        match alice.reply(rid).await {
            S::Conversation(c) => convs.push(c.conversation_id),
            other => panic!("{other:?}"),
        }
    }
    let mut rids = Vec::new();
    for (i, &conv) in convs.iter().enumerate() {
        let text = if i < 20 { big.as_str() } else { "small" };
        rids.push(alice.send(common::send_body(conv, "m", text)).await);
    }
    for rid in rids {
        assert!(matches!(alice.reply(rid).await, S::SendAck(_)));
    }
    // Bob's sync from nothing: every conversation has a gap (the system
    // message of its creation and alice's message).
    let result = match bob
        .request(C::Sync(pb::Sync {
            cursors: vec![],
            limit_per_conversation: 0,
        }))
        .await
    {
        S::SyncResult(r) => r,
        other => panic!("{other:?}"),
    };
    eprintln!(
        "sync reply {} bytes, {} with messages",
        prost::Message::encoded_len(&result),
        result
            .gaps
            .iter()
            .filter(|g| !g.messages.is_empty())
            .count()
    );
    assert_eq!(result.gaps.len(), CONVERSATIONS);
    assert!(
        result
            .gaps
            .iter()
            .any(|g| g.truncated && g.messages.is_empty())
    );
    server.stop().await;
}
