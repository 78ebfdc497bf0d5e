//! Broadcast channels: 10,000 subscribed sessions receive a post.
//!
//! The server runs as a separate `chatd` process here so that the test's
//! 10,000 client sockets and the server's 10,000 do not share one process's
//! file descriptor limit.

mod common;

use chat_protocol::ErrorCode;
use chat_protocol::pb::{self, client_frame::Body as C, server_frame::Body as S};
use common::process::Chatd;
use common::{Raw, error_code};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_reaches_10_000_subscribed_sessions() {
    const SUBSCRIBERS: usize = 10_000;
    let dir = tempfile::tempdir().expect("dir");
    let server = Chatd::start(dir.path(), "heartbeat_interval_ms = 600000");
    let addr = server.addr;
    let mut admin = Raw::register(addr, "admin").await;
    let channel = match admin
        .request(C::CreateConversation(pb::CreateConversation {
            kind: pb::ConversationKind::Channel as i32,
            member_ids: vec![],
            title: "news".into(),
        }))
        .await
    {
        S::Conversation(c) => c.conversation_id,
        other => panic!("{other:?}"),
    };
    admin
        .send_text(channel, "before", "posted before anyone subscribed")
        .await;

    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut joins = tokio::task::JoinSet::new();
    for i in 0..SUBSCRIBERS {
        let sem = sem.clone();
        joins.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore");
            let mut s = Raw::register(addr, &format!("sub{i:05}")).await;
            let r = s
                .request(C::SubscribeChannel(pb::SubscribeChannel {
                    conversation_id: channel,
                }))
                .await;
            assert!(matches!(r, S::Done(_)), "{r:?}");
            s
        });
    }
    let mut subs = Vec::with_capacity(SUBSCRIBERS);
    while let Some(s) = joins.join_next().await {
        subs.push(s.expect("subscribed"));
    }

    // Subscribers may not post.
    let refused = subs[0]
        .request(common::send_body(channel, "x", "me too"))
        .await;
    assert_eq!(error_code(&refused), ErrorCode::Forbidden);

    let ack = admin.send_text(channel, "news-1", "breaking").await;
    assert_eq!(ack.seq, 2);
    let mut readers = tokio::task::JoinSet::new();
    for mut s in subs.drain(..) {
        readers.spawn(async move {
            let m = s.next_message().await;
            assert_eq!((m.seq, m.text.as_str()), (2, "breaking"));
            s
        });
    }
    let mut received = 0;
    while let Some(r) = readers.join_next().await {
        subs.push(r.expect("delivered"));
        received += 1;
    }
    assert_eq!(received, SUBSCRIBERS);

    // Earlier posts come from history; an unsubscribed session gets no more.
    match subs[0].history(channel, 0, 0, 10).await {
        S::MessagePage(p) => assert_eq!(
            p.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![2, 1]
        ),
        other => panic!("{other:?}"),
    }
    let r = subs[0]
        .request(C::UnsubscribeChannel(pb::UnsubscribeChannel {
            conversation_id: channel,
        }))
        .await;
    assert!(matches!(r, S::Done(_)));
    admin.send_text(channel, "news-2", "more").await;
    assert_eq!(subs[1].next_message().await.seq, 3);
    let pong = subs[0].request(C::Ping(pb::Ping { nonce: 1 })).await;
    assert!(matches!(pong, S::Pong(_)));
    assert!(
        subs[0]
            .pushes
            .iter()
            .all(|f| !matches!(f.body, Some(S::MessagePush(_))))
    );
}
