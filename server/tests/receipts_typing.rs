//! Receipts, unread counts across devices, typing indicators.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::{Raw, TestServer, error_code};

async fn next_matching<T>(c: &mut Raw, mut pick: impl FnMut(&S) -> Option<T>) -> T {
    loop {
        let f = match c.pushes.pop_front() {
            Some(f) => f,
            None => c.read_frame().await.expect("open"),
        };
        if let Some(b) = &f.body {
            if let Some(t) = pick(b) {
                return t;
            }
        }
    }
}

async fn receipt(c: &mut Raw) -> pb::ReceiptEvent {
    next_matching(c, |b| match b {
        S::ReceiptEvent(r) => Some(*r),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn delivered_and_read_receipts_reach_the_sender_and_unread_counts_follow() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let mut bob_phone = Raw::login(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;
    for i in 1..=5 {
        alice.send_text(conv, &i.to_string(), "hi").await;
    }

    let delivered = bob
        .request(C::MarkDelivered(pb::MarkDelivered {
            conversation_id: conv,
            seq: 5,
        }))
        .await;
    assert!(matches!(delivered, S::Done(_)));
    let r = receipt(&mut alice).await;
    assert_eq!(
        (r.user_id, r.kind, r.seq),
        (bob.user_id, pb::ReceiptKind::Delivered as i32, 5)
    );

    let read = bob
        .request(C::MarkRead(pb::MarkRead {
            conversation_id: conv,
            seq: 3,
        }))
        .await;
    assert!(matches!(read, S::Done(_)));
    let r = receipt(&mut alice).await;
    assert_eq!((r.kind, r.seq), (pb::ReceiptKind::Read as i32, 3));
    // Bob's other device hears of the delivery and the read too.
    let r = receipt(&mut bob_phone).await;
    assert_eq!(
        (r.user_id, r.kind, r.seq),
        (bob.user_id, pb::ReceiptKind::Delivered as i32, 5)
    );
    let r = receipt(&mut bob_phone).await;
    assert_eq!(
        (r.user_id, r.kind, r.seq),
        (bob.user_id, pb::ReceiptKind::Read as i32, 3)
    );

    // Seen from the other device, 2 unread remain.
    let list = match bob_phone
        .request(C::ListConversations(pb::ListConversations::default()))
        .await
    {
        S::ConversationList(l) => l,
        other => panic!("{other:?}"),
    };
    let summary = &list.conversations[0];
    assert_eq!(
        (summary.last_seq, summary.read_seq, summary.unread_count),
        (5, 3, 2)
    );
    assert_eq!(summary.last_message.as_ref().map(|m| m.seq), Some(5));

    // Cursors never move back; a stale report is not an error.
    let back = bob
        .request(C::MarkRead(pb::MarkRead {
            conversation_id: conv,
            seq: 1,
        }))
        .await;
    assert!(matches!(back, S::Done(_)));
    let counts = alice
        .request(C::GetReceipts(pb::GetReceipts {
            conversation_id: conv,
            seq: 3,
        }))
        .await;
    match counts {
        S::ReceiptCounts(c) => {
            assert_eq!((c.member_count, c.delivered_count, c.read_count), (2, 1, 1))
        }
        other => panic!("{other:?}"),
    }
    let mut eve = Raw::register(server.addr, "eve").await;
    let refused = eve
        .request(C::MarkRead(pb::MarkRead {
            conversation_id: conv,
            seq: 5,
        }))
        .await;
    assert_eq!(error_code(&refused), ErrorCode::NotAMember);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_counts_for_a_500_member_group() {
    let server = TestServer::start();
    let addr = server.addr;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500 {
        tasks.spawn(async move { (i, Raw::register(addr, &format!("m{i:03}")).await) });
    }
    let mut members = Vec::new();
    while let Some(r) = tasks.join_next().await {
        members.push(r.expect("register"));
    }
    members.sort_by_key(|(i, _)| *i);
    let mut members: Vec<Raw> = members.into_iter().map(|(_, c)| c).collect();
    let ids: Vec<u64> = members.iter().map(|m| m.user_id).collect();
    let conv = members[0].create_group("big", &ids[1..]).await;
    let ack = members[0].send_text(conv, "post", "read me").await;

    // 480 report delivery, 312 of them also read it.
    let mut reporters = tokio::task::JoinSet::new();
    for (i, mut m) in members.drain(20..).enumerate() {
        reporters.spawn(async move {
            let seq = ack.seq;
            let d = m
                .request(C::MarkDelivered(pb::MarkDelivered {
                    conversation_id: conv,
                    seq,
                }))
                .await;
            assert!(matches!(d, S::Done(_)));
            if i < 312 {
                let r = m
                    .request(C::MarkRead(pb::MarkRead {
                        conversation_id: conv,
                        seq,
                    }))
                    .await;
                assert!(matches!(r, S::Done(_)));
            }
        });
    }
    while let Some(r) = reporters.join_next().await {
        r.expect("reported");
    }
    let counts = members[0]
        .request(C::GetReceipts(pb::GetReceipts {
            conversation_id: conv,
            seq: ack.seq,
        }))
        .await;
    match counts {
        S::ReceiptCounts(c) => {
            assert_eq!(
                (c.member_count, c.delivered_count, c.read_count),
                (500, 480, 312)
            );
        }
        other => panic!("{other:?}"),
    }
    // The sender heard each receipt; the other members heard none (a group
    // this large does not broadcast receipts).
    let kinds: Vec<i32> = members[0]
        .pushes
        .iter()
        .filter_map(|f| match &f.body {
            Some(S::ReceiptEvent(r)) => Some(r.kind),
            _ => None,
        })
        .collect();
    let reads = kinds
        .iter()
        .filter(|&&k| k == pb::ReceiptKind::Read as i32)
        .count();
    assert_eq!((kinds.len() - reads, reads), (480, 312));
    for m in &mut members[1..] {
        let pong = m.request(C::Ping(pb::Ping { nonce: 1 })).await;
        assert!(matches!(pong, S::Pong(_)));
        assert!(
            m.pushes
                .iter()
                .all(|f| !matches!(f.body, Some(S::ReceiptEvent(_))))
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn typing_reaches_the_others_not_the_typist_and_is_debounced() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut alice_tablet = Raw::login(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;

    for _ in 0..5 {
        alice
            .send(C::Typing(pb::Typing {
                conversation_id: conv,
                active: true,
            }))
            .await;
    }
    alice
        .send(C::Typing(pb::Typing {
            conversation_id: conv,
            active: false,
        }))
        .await;
    let first = next_matching(&mut bob, |b| match b {
        S::TypingEvent(t) => Some(*t),
        _ => None,
    })
    .await;
    assert!(first.active);
    assert_eq!(first.user_id, alice.user_id);
    assert_eq!(u64::from(first.expires_in_ms), chatd::owner::TYPING_TTL_MS);
    // The four refreshes within the debounce interval were not forwarded:
    // the next event is the stop.
    let second = next_matching(&mut bob, |b| match b {
        S::TypingEvent(t) => Some(*t),
        _ => None,
    })
    .await;
    assert!(!second.active);

    // Neither of Alice's devices got her own typing events.
    for c in [&mut alice, &mut alice_tablet] {
        let pong = c.request(C::Ping(pb::Ping { nonce: 1 })).await;
        assert!(matches!(pong, S::Pong(_)));
        assert!(
            c.pushes
                .iter()
                .all(|f| !matches!(f.body, Some(S::TypingEvent(_))))
        );
    }
    // Typing is never stored.
    match bob.history(conv, 0, 0, 10).await {
        S::MessagePage(p) => assert!(p.messages.is_empty()),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_typing_indicator_without_refresh_expires_by_itself() {
    let server = TestServer::start();
    let mut alice = Raw::register(server.addr, "alice").await;
    let mut bob = Raw::register(server.addr, "bob").await;
    let conv = alice.create_direct(bob.user_id).await;
    let started = server.config.clock.now();
    alice
        .send(C::Typing(pb::Typing {
            conversation_id: conv,
            active: true,
        }))
        .await;
    let on = next_matching(&mut bob, |b| match b {
        S::TypingEvent(t) => Some(*t),
        _ => None,
    })
    .await;
    assert!(on.active);
    server.advance(std::time::Duration::from_millis(
        chatd::owner::TYPING_TTL_MS,
    ));
    let off = next_matching(&mut bob, |b| match b {
        S::TypingEvent(t) => Some(*t),
        _ => None,
    })
    .await;
    assert!(!off.active, "the server ends a stale indicator itself");
    assert!(
        server
            .config
            .clock
            .now()
            .duration_since(started)
            .as_millis() as u64
            >= chatd::owner::TYPING_TTL_MS
    );
    server.stop().await;
}
