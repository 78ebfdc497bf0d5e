//! History pagination, offline sync, and restarts that keep every
//! acknowledged message.

mod common;

use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer};

fn page(reply: S) -> pb::MessagePage {
    match reply {
        S::MessagePage(p) => p,
        other => panic!("{other:?}"),
    }
}

fn seqs(p: &pb::MessagePage) -> Vec<u64> {
    p.messages.iter().map(|m| m.seq).collect()
}

#[tokio::test]
async fn history_pages_backwards_and_forwards() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;
    for i in 1..=120u64 {
        alice
            .send_text(conv, &i.to_string(), &format!("m{i}"))
            .await;
    }
    let newest = page(alice.history(conv, 0, 0, 50).await);
    assert_eq!(seqs(&newest), (71..=120).rev().collect::<Vec<_>>());
    assert!(newest.has_more);
    assert_eq!(newest.last_seq, 120);
    let older = page(alice.history(conv, 71, 0, 50).await);
    assert_eq!(seqs(&older), (21..=70).rev().collect::<Vec<_>>());
    let oldest = page(alice.history(conv, 21, 0, 50).await);
    assert_eq!(seqs(&oldest), (1..=20).rev().collect::<Vec<_>>());
    assert!(!oldest.has_more);
    let forward = page(alice.history(conv, 0, 100, 50).await);
    assert_eq!(seqs(&forward), (101..=120).collect::<Vec<_>>());
    assert!(!forward.has_more);
    let forward = page(alice.history(conv, 0, 10, 5).await);
    assert_eq!(seqs(&forward), vec![11, 12, 13, 14, 15]);
    assert!(forward.has_more);
    // Oversized limits are clamped to the documented maximum.
    let clamped = page(alice.history(conv, 0, 0, 10_000).await);
    assert_eq!(
        clamped.messages.len(),
        120.min(chatd::catalog::HISTORY_PAGE_MAX as usize)
    );
    server.stop().await;
}

#[tokio::test]
async fn sync_after_missing_1000_messages_returns_exactly_the_gap() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;
    for i in 1..=5u64 {
        alice.send_text(conv, &format!("early{i}"), "early").await;
    }
    for _ in 1..=5 {
        bob.next_message().await;
    }
    drop(bob);

    // 1,000 messages while Bob is away, pipelined in windows of 100.
    for chunk in 0..10u64 {
        let mut rids = Vec::new();
        for j in 0..100u64 {
            let n = chunk * 100 + j;
            rids.push(
                alice
                    .send(common::send_body(
                        conv,
                        &format!("late{n}"),
                        &format!("late {n}"),
                    ))
                    .await,
            );
        }
        for rid in rids {
            assert!(matches!(alice.reply(rid).await, S::SendAck(_)));
        }
    }

    let mut bob = Raw::login(server.addr, "bob").await;
    let result = match bob
        .request(C::Sync(pb::Sync {
            cursors: vec![pb::Cursor {
                conversation_id: conv,
                seq: 5,
            }],
            limit_per_conversation: 300,
        }))
        .await
    {
        S::SyncResult(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(result.gaps.len(), 1);
    let gap = &result.gaps[0];
    assert_eq!(
        (gap.conversation_id, gap.from_seq, gap.to_seq),
        (conv, 6, 1005)
    );
    assert!(gap.truncated);
    let mut got: Vec<u64> = gap.messages.iter().map(|m| m.seq).collect();
    // The rest by history after the last received seq.
    while let Some(&last) = got.last() {
        let p = page(bob.history(conv, 0, last, 200).await);
        got.extend(seqs(&p));
        if !p.has_more {
            break;
        }
    }
    assert_eq!(
        got,
        (6..=1005).collect::<Vec<_>>(),
        "exactly the missed messages, in order"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_every_acked_message_and_continues_the_sequence() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let bob = Raw::register(server.addr, "bob").await;
    let direct = alice.create_direct(bob.user_id).await;
    let group = alice.create_group("g", &[bob.user_id]).await;
    let mut acked = Vec::new();
    for i in 1..=30u64 {
        acked.push(
            alice
                .send_text(direct, &format!("d{i}"), &format!("d{i}"))
                .await,
        );
        alice
            .send_text(group, &format!("g{i}"), &format!("g{i}"))
            .await;
    }

    let server = server.restart().await;
    let mut alice = Raw::login(server.addr, "alice").await;
    let p = page(alice.history(direct, 0, 0, 100).await);
    assert_eq!(seqs(&p), (1..=30).rev().collect::<Vec<_>>());
    for (m, a) in p.messages.iter().rev().zip(&acked) {
        assert_eq!((m.seq, m.message_id), (a.seq, a.message_id));
    }
    let next = alice.send_text(direct, "after-restart", "hi").await;
    assert_eq!(next.seq, 31);
    assert!(next.message_id > acked.last().map_or(0, |a| a.message_id));
    assert_eq!(alice.send_text(group, "after-restart", "hi").await.seq, 31);
    // The conversation list survives too, with unread counts.
    match alice
        .request(C::ListConversations(pb::ListConversations {
            limit: 10,
            before_activity_ms: 0,
        }))
        .await
    {
        S::ConversationList(l) => {
            assert_eq!(l.conversations.len(), 2);
            assert!(
                l.conversations
                    .iter()
                    .all(|c| c.last_seq == 31 && c.unread_count == 31)
            );
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}
